"""A multimodal-learning course and lab kit: notebooks that teach fusion, CLIP, VQA, captioning, video and audio-visual learning, and the tested package they export.

Modules:

- `mmlab.attention`: Scaled dot-product attention written out, multi-head cross-modal attention on PyTorch's fused kernel, and a ViLBERT-style co-attention block (Vaswani et al. 2017, arXiv:1706.03762; Lu et al. 2019, arXiv:1908.02265)."""

__version__ = "0.1.0"

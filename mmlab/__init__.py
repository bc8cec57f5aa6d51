"""A multimodal-learning course and lab kit: notebooks that teach fusion, CLIP, VQA, captioning, video and audio-visual learning, and the tested package they export.

Modules:

- `mmlab.attention`: Scaled dot-product attention written out, multi-head cross-modal attention on PyTorch's fused kernel, and a ViLBERT-style co-attention block (Vaswani et al. 2017, arXiv:1706.03762; Lu et al. 2019, arXiv:1908.02265).
- `mmlab.clip`: CLIP written out: towers, projections, logit scale, the Hugging Face weight mapping, zero-shot classification.
- `mmlab.fusion`: Fusion strategies behind one interface (early, weighted, late, attention, transformer, pairwise cross-modal, tensor, low-rank tensor, gated), modality dropout, per-modality encoders and the composed classifier (TFN: Zadeh et al. 2017, arXiv:1707.07250; LMF: Liu et al. 2018, arXiv:1806.00064; GMU: Arevalo et al. 2017, arXiv:1702.01992; MulT: Tsai et al. 2019, arXiv:1906.00295).
- `mmlab.losses`: Contrastive losses for aligned embedding spaces.
- `mmlab.retrieval`: Retrieval metrics (the COCO protocol), a vector index over FAISS, and a multimodal search engine."""

__version__ = "0.1.0"

"""A multimodal-learning course and lab kit: notebooks that teach fusion, CLIP, VQA, captioning, video and audio-visual learning, and the tested package they export.

Modules:

- `mmlab.clip`: CLIP written out: towers, projections, logit scale, the Hugging Face weight mapping, zero-shot classification.
- `mmlab.losses`: Contrastive losses for aligned embedding spaces.
- `mmlab.retrieval`: Retrieval metrics (the COCO protocol), a vector index over FAISS, and a multimodal search engine."""

__version__ = "0.1.0"

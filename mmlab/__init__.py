"""A multimodal-learning course and lab kit: notebooks that teach fusion, CLIP, VQA, captioning, video and audio-visual learning, and the tested package they export.

Modules:

- `mmlab.vqa`: Answer a question about an image: a CLEVR-like set with ten human answers per question, the official VQA accuracy with every quirk of its script, five models (a question-only and an image-only baseline, an LSTM with attention over regions, a fusion model, and ViLT) trained on the same budget and compared per question type, and frontier models behind an API scored with the same metric."""

__version__ = "0.1.0"

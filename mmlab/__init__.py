"""A multimodal-learning course and lab kit: notebooks that teach fusion, CLIP, VQA, captioning, video and audio-visual learning, and the tested package they export."""

__version__ = "0.1.0"

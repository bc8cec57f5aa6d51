"mmlab: a multimodal-learning course and lab kit."
__version__ = "0.1.0"

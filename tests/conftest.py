"Shared pytest setup: tests never touch the network, whatever the caller's environment says."
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["MMLAB_OFFLINE"] = "true"
os.environ.setdefault("MPLBACKEND", "Agg")

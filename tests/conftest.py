"Shared pytest setup: tests never touch the network, whatever the caller's environment says."
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["MMLAB_OFFLINE"] = "true"
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    "Tiny tensors: extra threads only add overhead (and noise between pytest workers)."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

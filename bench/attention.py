"""Benchmark: mmlab's attention against PyTorch's, forward + backward.

Compares, on the same inputs and in one run:
  1. the written-out `mmlab.attention.scaled_dot_product_attention` vs `F.scaled_dot_product_attention` (the core op);
  2. `mmlab.attention.MultiHeadAttention` (fused path, no weights) vs `nn.MultiheadAttention(need_weights=False)`;
  3. the same two modules when the attention weights are requested.
Prints the median time of each and the ratio mmlab / torch (below 1: mmlab is faster).

    python bench/attention.py [--batch 16 --lq 64 --lk 128 --dim 256 --heads 8 --repeats 20]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.attention import MultiHeadAttention, load_torch_mha, scaled_dot_product_attention
from mmlab.core import get_device


def timed(fn, device, repeats, warmup=3):
    "Median seconds of fn() (forward + backward) over `repeats` runs."
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup): fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16); p.add_argument("--lq", type=int, default=64)
    p.add_argument("--lk", type=int, default=128); p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8); p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default=None, help="cpu or cuda (default: mmlab.core.get_device())")
    a = p.parse_args(argv)
    device = get_device(a.device)
    torch.manual_seed(0)
    B, Lq, Lk, D, H = a.batch, a.lq, a.lk, a.dim, a.heads
    d = D // H
    q = torch.randn(B, H, Lq, d, device=device, requires_grad=True)
    k = torch.randn(B, H, Lk, d, device=device, requires_grad=True)
    v = torch.randn(B, H, Lk, d, device=device, requires_grad=True)
    keep = torch.rand(B, Lk, device=device) > 0.2; keep[:, 0] = True     # a key-padding mask
    text, image = torch.randn(B, Lq, D, device=device), torch.randn(B, Lk, D, device=device)
    mha = nn.MultiheadAttention(D, H, batch_first=True).to(device)
    ours = load_torch_mha(MultiHeadAttention(D, H), mha).to(device)

    def core_ours(): scaled_dot_product_attention(q, k, v, mask=keep[:, None, None])[0].sum().backward()
    def core_torch(): F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None]).sum().backward()
    def mod_ours(w): return lambda: ours(text, image, mask=keep, need_weights=w).output.sum().backward()
    def mod_torch(w): return lambda: mha(text, image, image, key_padding_mask=~keep, need_weights=w)[0].sum().backward()

    rows = [("core op: written-out vs F.scaled_dot_product_attention", core_ours, core_torch),
            ("module, no weights: MultiHeadAttention vs nn.MultiheadAttention", mod_ours(False), mod_torch(False)),
            ("module, with weights: MultiHeadAttention vs nn.MultiheadAttention", mod_ours(True), mod_torch(True))]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    print(f"B={B} Lq={Lq} Lk={Lk} D={D} H={H}, forward + backward, median of {a.repeats}")
    print(f"{'comparison':<72} {'mmlab ms':>9} {'torch ms':>9} {'ratio':>6}")
    for label, f_ours, f_torch in rows:
        t_ours, t_torch = timed(f_ours, device, a.repeats), timed(f_torch, device, a.repeats)
        print(f"{label:<72} {1e3 * t_ours:9.2f} {1e3 * t_torch:9.2f} {t_ours / t_torch:6.2f}")


if __name__ == "__main__":
    main()

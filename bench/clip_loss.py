"""mmlab.losses.clip_loss against the straightforward formula: forward + backward time and peak memory.

Run: python bench/clip_loss.py [--batches 256 512 1024 2048 4096 --dim 512 --repeats 3]
Each (method, batch) runs in a fresh subprocess so that peak memory is its own: on CPU the growth of
the peak resident set (ru_maxrss) over the inputs, on CUDA torch.cuda.max_memory_allocated.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def straightforward_loss(image_embeds, text_embeds, logit_scale):
    "The textbook formula: explicit softmax probabilities and one-hot targets, both directions."
    img = image_embeds / image_embeds.norm(dim=1, keepdim=True)
    txt = text_embeds / text_embeds.norm(dim=1, keepdim=True)
    logits = logit_scale.exp() * img @ txt.T
    targets = torch.eye(len(logits), device=logits.device)
    p_img = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    p_txt = torch.exp(logits.T) / torch.exp(logits.T).sum(dim=1, keepdim=True)
    return -((targets * torch.log(p_img)).sum(1).mean() + (targets * torch.log(p_txt)).sum(1).mean()) / 2


def one(method, batch, dim, repeats, device):
    from mmlab.losses import LOGIT_SCALE_INIT, clip_loss
    fn = clip_loss if method == "mmlab" else straightforward_loss
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(batch, dim, generator=g).to(dev).requires_grad_(True)
    txt = torch.randn(batch, dim, generator=g).to(dev).requires_grad_(True)
    s = torch.tensor(LOGIT_SCALE_INIT, device=dev, requires_grad=True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(); base_cuda = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats + 1):                       # the first run is a warm-up
        img.grad = txt.grad = s.grad = None
        sync(); t0 = time.perf_counter()
        loss = fn(img, txt, s); loss.backward()
        sync(); times.append(time.perf_counter() - t0)
    if dev.type == "cuda": peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else: peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024   # KiB -> MiB (Linux)
    return {"time": statistics.median(times[1:]), "peak_mib": peak, "loss": loss.item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--dim", type=int, default=512); p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda; default: mmlab.core.get_device()")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device is None:
        from mmlab.core import get_device
        a.device = str(get_device())
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.dim, a.repeats, a.device))); return
    print(f"clip_loss forward+backward, D={a.dim}, device {a.device}, torch {torch.__version__}, median of {a.repeats}")
    print(f"{'batch':>6s} {'mmlab (ms)':>11s} {'formula (ms)':>13s} {'time ratio':>11s} {'mmlab MiB':>10s} {'formula MiB':>12s} {'loss gap':>9s}")
    for b in a.batches:
        r = {}
        for m in ("mmlab", "formula"):
            out = subprocess.run([sys.executable, __file__, "--one", m, str(b), "--dim", str(a.dim), "--repeats", str(a.repeats),
                                  "--device", a.device], capture_output=True, text=True, check=True)
            r[m] = json.loads(out.stdout.strip().splitlines()[-1])
        gap = abs(r["mmlab"]["loss"] - r["formula"]["loss"])
        print(f"{b:6d} {1000 * r['mmlab']['time']:11.1f} {1000 * r['formula']['time']:13.1f} "
              f"{r['formula']['time'] / r['mmlab']['time']:11.2f} {r['mmlab']['peak_mib']:10.1f} {r['formula']['peak_mib']:12.1f} {gap:9.1e}")
    print("time ratio = formula / mmlab (above 1: mmlab is faster)")


if __name__ == "__main__":
    main()

"""Top-10 inner-product search over 100k x 512 vectors: mmlab's VectorIndex, raw faiss and torch brute force.

Run: python bench/retrieval.py [--n 100000 --dim 512 --queries 1000 --k 10 --repeats 3]
Prints the median time of each method, the ratios to raw faiss, and checks the three agree.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from mmlab.retrieval import VectorIndex, faiss


def timed(fn, repeats):
    fn()                                           # warm-up (allocations, thread pools)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000); p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000); p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3); p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if faiss is None: raise SystemExit("faiss is not installed: pip install 'mmlab[search]'")
    g = torch.Generator().manual_seed(a.seed)
    x = torch.nn.functional.normalize(torch.randn(a.n, a.dim, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(a.queries, a.dim, generator=g), dim=1)
    xn, qn = x.numpy(), q.numpy()
    print(f"{a.n} x {a.dim} float32 vectors, {a.queries} queries, top-{a.k}, median of {a.repeats}; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")

    raw = faiss.IndexFlatIP(a.dim); raw.add(xn)
    ours = VectorIndex(a.dim, "flat", backend="faiss"); ours.add(x)
    ours_torch = VectorIndex(a.dim, "flat", backend="torch"); ours_torch.add(x)

    def brute():
        with torch.no_grad(): return (q @ x.T).topk(a.k, dim=1)

    t_raw, (s_raw, i_raw) = timed(lambda: raw.search(qn, a.k), a.repeats)
    t_ours, (s_ours, i_ours) = timed(lambda: ours.search(q, a.k), a.repeats)
    t_ours_t, (s_ot, i_ot) = timed(lambda: ours_torch.search(q, a.k), a.repeats)
    t_torch, top = timed(brute, a.repeats)

    agree = lambda i: float((np.sort(i, 1) == np.sort(i_raw, 1)).mean())
    rows = [("raw faiss IndexFlatIP", t_raw, 1.0), ("mmlab VectorIndex (faiss)", t_ours, agree(i_ours)),
            ("mmlab VectorIndex (torch)", t_ours_t, agree(i_ot)), ("torch matmul + topk", t_torch, agree(top.indices.numpy()))]
    print(f"{'method':28s} {'time (s)':>9s} {'x raw faiss':>12s} {'same top-k':>11s}")
    for name, t, ag in rows: print(f"{name:28s} {t:9.3f} {t / t_raw:12.2f} {ag:11.4f}")
    print(f"ratio mmlab(faiss)/raw faiss = {t_ours / t_raw:.2f}; torch brute force/raw faiss = {t_torch / t_raw:.2f}; "
          f"mmlab(faiss)/torch brute force = {t_ours / t_torch:.2f}")


if __name__ == "__main__":
    main()

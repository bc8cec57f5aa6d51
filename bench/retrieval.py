"""Top-10 inner-product search over 100k x 512 clustered vectors: mmlab's indexes against raw faiss, built and searched
in the same run with the same settings (flat, IVF, HNSW), plus torch brute force.

Run: python bench/retrieval.py [--n 100000 --dim 512 --queries 1000 --k 10 --repeats 3 --nlist 1024 --nprobe 16
                                --m 32 --ef-construction 40 --ef-search 64]
Prints, per index kind, the build and median query time of raw faiss and of mmlab's wrapper, their ratio (the wrapper's
overhead), and each method's recall@10 against the exact search.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from mmlab.retrieval import VectorIndex, clustered_embeddings, faiss, search_recall


def timed(fn, repeats):
    "Median wall time of `repeats` calls after one warm-up, and the last result."
    fn()                                           # warm-up (allocations, thread pools)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def built(make, add):
    "Build an index with `make()`, fill it with `add(index)`; return it and the seconds that took."
    t0 = time.perf_counter(); index = make(); add(index)
    return index, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000); p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000); p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clusters", type=int, default=200); p.add_argument("--spread", type=float, default=1.5)
    p.add_argument("--nlist", type=int, default=1024); p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--m", type=int, default=32); p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=int, default=64)
    a = p.parse_args(argv)
    if faiss is None: raise SystemExit("faiss is not installed: pip install 'mmlab[search]'")
    data = clustered_embeddings(a.n + a.queries, a.dim, clusters=a.clusters, spread=a.spread, seed=a.seed)
    q, x = data[:a.queries], data[a.queries:]
    qn, xn = q.numpy(), np.ascontiguousarray(x.numpy())
    print(f"{a.n} x {a.dim} float32 vectors ({a.clusters} clusters, spread {a.spread}), {a.queries} queries, top-{a.k}, "
          f"median of {a.repeats}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")

    def raw_ivf():
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(a.dim), a.dim, a.nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = a.nprobe
        return index

    def raw_hnsw():
        index = faiss.IndexHNSWFlat(a.dim, a.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = a.ef_construction, a.ef_search
        return index

    def raw_add(index):
        if not index.is_trained: index.train(xn)
        index.add(xn)

    kinds = [("flat", lambda: faiss.IndexFlatIP(a.dim), dict(kind="flat", backend="faiss")),
             ("ivf", raw_ivf, dict(kind="ivf", nlist=a.nlist, nprobe=a.nprobe)),
             ("hnsw", raw_hnsw, dict(kind="hnsw", m=a.m, ef_construction=a.ef_construction, ef_search=a.ef_search))]
    rows, ratios, exact = [], {}, None
    for kind, make_raw, opts in kinds:
        raw, raw_build = built(make_raw, raw_add)
        ours, ours_build = built(lambda: VectorIndex(a.dim, **opts), lambda i: i.add(x))
        t_raw, (_, i_raw) = timed(lambda: raw.search(qn, a.k), a.repeats)
        t_ours, (_, i_ours) = timed(lambda: ours.search(q, a.k), a.repeats)
        if exact is None: exact = i_raw                                       # the flat index is the truth
        ratios[kind] = t_ours / t_raw
        rows += [(f"raw faiss {kind}", raw_build, t_raw, 1.0, search_recall(i_raw, exact)),
                 (f"mmlab {type(ours).__name__}", ours_build, t_ours, t_ours / t_raw, search_recall(i_ours, exact))]
    torch_index, torch_build = built(lambda: VectorIndex(a.dim, backend="torch"), lambda i: i.add(x))
    t_ti, (_, i_ti) = timed(lambda: torch_index.search(q, a.k), a.repeats)

    def brute():
        with torch.no_grad(): return (q @ x.T).topk(a.k, dim=1)
    t_brute, top = timed(brute, a.repeats)
    t_flat = rows[0][2]
    rows += [("mmlab TorchIndex", torch_build, t_ti, t_ti / t_flat, search_recall(i_ti, exact)),
             ("torch matmul + topk", 0.0, t_brute, t_brute / t_flat, search_recall(top.indices.numpy(), exact))]

    print(f"{'method':26s} {'build (s)':>9s} {'query (s)':>9s} {'x raw faiss':>11s} {'recall@10':>9s}")
    for name, b, t, r, rec in rows: print(f"{name:26s} {b:9.2f} {t:9.3f} {r:11.2f} {rec:9.4f}")
    print("x raw faiss: against raw faiss of the same kind (torch rows: against raw faiss flat)")
    print("ratio mmlab/raw faiss: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) +
          f"; torch brute force/raw faiss flat = {t_brute / t_flat:.2f}")


if __name__ == "__main__":
    main()

"""Retrieval: metrics against a plain reference, every index against brute force (one contract for all
implementations), files that are truncated or mixed, the search engine, and property tests that feed the
public entry points anything and accept only a result or one of the documented errors."""
import json
import math
import re
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from mmlab.retrieval import (INDEXES, FaissFlatIndex, FaissHNSWIndex, FaissIndex, FaissIVFIndex, MultimodalSearchEngine,
                             TorchIndex, UnknownIdError, VectorIndex, clustered_embeddings, faiss, first_positive_rank,
                             image_text_retrieval, index_class, mean_average_precision, ranked_positives, recall_at_k,
                             retrieval_report, search_recall)

needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss not installed")
KINDS = [("flat", "torch")] + ([("flat", "faiss"), ("ivf", "faiss"), ("hnsw", "faiss")] if faiss is not None else [])
SMALL = {"ivf": dict(nlist=4, nprobe=4), "hnsw": dict(m=8, ef_search=64)}        # IVF probing every cell is exact


def reference(sim, pos, ks):
    ranks, aps = [], []
    for s, p in zip(sim.tolist(), pos.tolist()):
        order = sorted(range(len(s)), key=lambda j: (-s[j], p[j]))   # ties broken against positives
        flags = [p[j] for j in order]
        ranks.append(flags.index(True) + 1)
        hits, ap = 0, 0.0
        for r, f in enumerate(flags, 1):
            if f: hits += 1; ap += hits / r
        aps.append(ap / sum(flags))
    return {k: sum(r <= k for r in ranks) / len(ranks) for k in ks}, sum(aps) / len(aps), ranks


# ---------------------------------------------------------------------------------------------- metrics

@settings(max_examples=40, deadline=None)
@given(q=st.integers(1, 12), n=st.integers(1, 30), levels=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_metrics_match_reference_with_ties(q, n, levels, seed):
    g = torch.Generator().manual_seed(seed)
    sim = torch.randint(0, levels, (q, n), generator=g).double()
    pos = torch.rand(q, n, generator=g) < 0.3
    pos[torch.arange(q), torch.randint(0, n, (q,), generator=g)] = True
    ks = (1, 3, 5, 10)
    rec, m, ranks = reference(sim, pos, ks)
    got = recall_at_k(sim, pos, ks)
    assert got.keys() == rec.keys() and all(got[k] == pytest.approx(rec[k]) for k in ks)
    assert mean_average_precision(sim, pos) == pytest.approx(m, abs=1e-6)
    assert first_positive_rank(sim, pos).tolist() == ranks
    assert ranked_positives(sim, pos).sum().item() == pos.sum().item()
    rep = retrieval_report(sim, pos, ks)
    assert rep == pytest.approx({**{f"R@{k}": 100 * rec[k] for k in ks}, "mAP": m, "medr": statistics.median(ranks),
                                 "meanr": statistics.mean(ranks)})


def test_report_median_of_an_even_count_is_the_mean_of_the_middle_two():
    scores = torch.arange(10, 0, -1).float().expand(4, 10)                       # item 0 scores highest
    pos = F.one_hot(torch.tensor([0, 1, 2, 9]), 10).bool()                       # first positives at ranks 1, 2, 3, 10
    rep = retrieval_report(scores, pos, ks=(1, 3))
    assert rep == pytest.approx({"R@1": 25.0, "R@3": 75.0, "mAP": (1 + 1 / 2 + 1 / 3 + 1 / 10) / 4, "medr": 2.5, "meanr": 4.0})
    assert retrieval_report(scores[:3], pos[:3], ks=1)["medr"] == 2.0             # odd count: the middle rank
    assert retrieval_report(scores[:2], pos[[0, 3]], ks=1)["medr"] == 5.5         # ranks 1 and 10


def test_metrics_accept_arrays_integers_and_zero_one_positives():
    sim, pos = [[3, 1, 2], [0, 5, 1]], np.array([[0, 0, 1], [1, 0, 0]])
    assert recall_at_k(sim, pos, ks=1) == {1: 0.0} and recall_at_k(sim, pos, ks=[2, 3]) == {2: 0.5, 3: 1.0}
    assert mean_average_precision(np.array(sim), pos) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert first_positive_rank(torch.tensor(sim, dtype=torch.float16), pos).tolist() == [2, 3]
    # +-inf are scores like any other; a constant model sits at chance
    assert first_positive_rank(torch.tensor([[-math.inf, math.inf, 0.0]]), torch.tensor([[True, False, False]])).tolist() == [3]
    assert recall_at_k(torch.zeros(4, 4), torch.eye(4, dtype=torch.bool), (1, 4)) == {1: 0.0, 4: 1.0}


@pytest.mark.parametrize("fn", [recall_at_k, mean_average_precision, retrieval_report, first_positive_rank, ranked_positives])
def test_nan_scores_are_an_error_naming_the_argument(fn):
    sim = torch.tensor([[0.2, 0.1], [float("nan"), 0.3]])
    with pytest.raises(ValueError, match=r"similarity holds 1 NaN score\(s\), e\.g\. at \(1, 0\)"): fn(sim, torch.eye(2, dtype=torch.bool))


@pytest.mark.parametrize("call, match", [
    (lambda: recall_at_k(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)), r"2 quer\(ies\) have no positive item, e\.g\. rows \[0, 1\]"),
    (lambda: recall_at_k(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool)), r"got similarity \(2, 3\), positives \(3, 2\)"),
    (lambda: recall_at_k(torch.zeros(3), torch.zeros(3, dtype=torch.bool)), r"same 2-d shape; got similarity \(3,\)"),
    (lambda: recall_at_k(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.bool)), r"no queries: shape \(0, 3\)"),
    (lambda: recall_at_k(torch.eye(2), 2 * torch.eye(2)), r"boolean \(or 0/1\); got values such as \[2\.0, 2\.0\]"),
    (lambda: recall_at_k(torch.eye(2), torch.eye(2), ks=(0, 5)), r"ks must be positive integers; got \[0, 5\]"),
    (lambda: recall_at_k(torch.eye(2), torch.eye(2), ks=[]), r"ks must be positive integers; got \[\]"),
    (lambda: recall_at_k(torch.eye(2), torch.eye(2), ks=[True]), r"ks must be positive integers"),
    (lambda: recall_at_k(torch.eye(2), torch.eye(2), ks=[1.0]), r"ks must be positive integers"),
])
def test_metric_errors(call, match):
    with pytest.raises(ValueError, match=match): call()


def test_metric_type_errors_name_the_argument():
    with pytest.raises(TypeError, match="similarity: expected a tensor or an array of numbers, got str"): recall_at_k("ab", [[1]])
    with pytest.raises(TypeError, match="positives: expected a tensor"): recall_at_k([[1.0]], None)
    with pytest.raises(TypeError, match="similarity: expected real scores, got torch.complex64"): recall_at_k(torch.ones(1, 1, dtype=torch.complex64), [[1]])
    with pytest.raises(TypeError, match="ks: expected an int or a sequence of ints, got float"): recall_at_k([[1.0]], [[1]], ks=1.5)


def test_coco_protocol_several_captions():
    # 3 images, 2 captions each; caption scores chosen by hand
    t2i = [0, 0, 1, 1, 2, 2]
    img = torch.eye(3)
    txt = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.float)
    rep = image_text_retrieval(img, txt, t2i, ks=(1, 2))
    # every image ties one right and one wrong caption at score 1 (image 0: captions 0 and 5,
    # image 1: 1 and 2, image 2: 3 and 4), so ties against the positive put the right one second
    assert rep["image_to_text"]["R@1"] == 0.0 and rep["image_to_text"]["R@2"] == pytest.approx(100.0)
    # captions: 0 -> img0 right, 1 -> img1 wrong, 2 -> img1 right, 3 -> img2 wrong, 4 -> img2 right, 5 -> img0 wrong
    assert rep["text_to_image"]["R@1"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="one integer image index per caption: 6 captions"): image_text_retrieval(img, txt, [0, 1])
    with pytest.raises(ValueError, match=r"indexes 3 images; got values 0\.\.3"): image_text_retrieval(img, txt, [0, 0, 1, 1, 2, 3])
    with pytest.raises(ValueError, match=r"image\(s\) \[2\] have no caption"): image_text_retrieval(img, txt, [0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"same D; got \(3, 3\) and \(6, 2\)"): image_text_retrieval(img, txt[:, :2], t2i)
    with pytest.raises(ValueError, match="torch.float32"): image_text_retrieval(img, txt, [0, 0, 1, 1, 2, 2.5])
    with pytest.raises(ValueError, match="image_embeds holds 1 NaN"): image_text_retrieval(img.index_put((torch.tensor(0), torch.tensor(0)), torch.tensor(math.nan)), txt, t2i)


def test_image_text_retrieval_is_cosine_on_both_sides():
    # image 0 is (1, 0); caption 0 belongs to it and points its way; caption 1 (image 1's) is long and nearer image 1 (0, 1).
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.05], [25.0, 30.0]])
    rep = image_text_retrieval(img, txt, [0, 1], ks=1)
    assert rep["image_to_text"]["R@1"] == 100.0 and rep["text_to_image"]["R@1"] == 100.0   # a dot product ranks caption 1 first for image 0
    long_img = torch.tensor([[1.0, 0.0], [0.0, 40.0]])                                  # and the same on the image side
    assert image_text_retrieval(long_img, txt, [0, 1], ks=1) == rep
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 8, generator=g), torch.randn(60, 8, generator=g)
    scale = torch.rand(60, 1, generator=g) * 10 + 0.1
    t2i = torch.arange(20).repeat_interleave(3)
    x, y = image_text_retrieval(a, b * scale, t2i), image_text_retrieval(a * 3, b, t2i)
    assert all(x[d] == pytest.approx(y[d]) for d in ("image_to_text", "text_to_image"))


# ---------------------------------------------------------------------------------------------- indexes

def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("kind, backend", KINDS)
def test_index_matches_brute_force_and_round_trips(kind, backend, tmp_path):
    x, q = unit(300, 16, 0), unit(7, 16, 1)
    ids = np.arange(300) * 3 + 11
    idx = VectorIndex(16, kind, backend, **{"ivf": dict(nlist=8, nprobe=8), "hnsw": dict(m=16, ef_search=300)}.get(kind, {}))
    assert isinstance(idx, VectorIndex) and type(idx) is INDEXES[kind, backend] and idx.kind == kind and idx.backend == backend
    assert idx.add(x[:100], ids[:100]).tolist() == ids[:100].tolist(); idx.add(x[100:], ids[100:])   # incremental
    top = (q @ x.T).topk(5, dim=1)
    s, i = idx.search(q, 5)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == i.shape == (7, 5)
    assert (i == ids[top.indices.numpy()]).all() and np.allclose(s, top.values.numpy(), atol=1e-5)
    assert idx.remove(np.concatenate([ids[:50], ids[:5]])) == 50 and len(idx) == 250          # repeats count once
    s1, i1 = idx.search(q, 5)
    again = VectorIndex.load(idx.save(tmp_path / "ix"))
    s2, i2 = again.search(q, 5)
    assert (i1 == i2).all() and np.array_equal(s1, s2) and not np.isin(ids[:50], i1).any()
    assert type(again) is type(idx) and again.options == idx.options and again.ids.tolist() == idx.ids.tolist()
    assert repr(again) == repr(idx) and f"size={len(idx)}" in repr(idx)
    with pytest.raises(UnknownIdError, match=r"remove: unknown id\(s\) \[11\] \(the index holds 250 items\)"): idx.remove([ids[0]])
    with pytest.raises(ValueError, match=r"queries: expected vectors of shape \(n, 16\), got \(2, 15\)"): idx.search(torch.randn(2, 15))


def test_automatic_ids_continue_after_the_largest():
    idx = VectorIndex(2, backend="torch")
    assert idx.add(torch.eye(2)).tolist() == [0, 1]
    assert idx.add(torch.ones(1, 2), ids=[10]).tolist() == [10]
    assert idx.add(torch.ones(2, 2)).tolist() == [11, 12] and idx.ids.tolist() == [0, 1, 10, 11, 12]
    idx.remove([11, 12])
    assert idx.add(torch.ones(1, 2)).tolist() == [13]                        # removed ids are not handed out again
    ids = idx.ids; ids[0] = 99
    assert idx.ids[0] == 0                                                    # a copy
    assert idx.add(np.zeros((0, 2))).tolist() == [] and len(idx) == 4          # nothing to add is fine
    s, i = idx.search(np.zeros((0, 2)), 3)
    assert s.shape == i.shape == (0, 3)
    assert idx.search(torch.tensor([1.0, 0.0]), 7)[1].shape == (1, 7)        # one (D,) vector is one query


def test_fewer_items_than_k_pad_with_minus_one_and_minus_inf():
    for kind, backend in KINDS:
        if kind == "ivf": continue
        idx = VectorIndex(4, kind, backend); idx.add(torch.eye(4)[:2] * torch.tensor([[2.0], [1.0]]), ids=[5, 9])
        s, i = idx.search(torch.ones(4), 4)
        assert i.tolist() == [[5, 9, -1, -1]] and s[0, :2].tolist() == [2.0, 1.0] and np.isneginf(s[0, 2:]).all(), (kind, backend)


def test_torch_index_searches_in_blocks(monkeypatch):
    x, q = unit(50, 8, 2), unit(23, 8, 3)
    whole = TorchIndex(8); whole.add(x)
    blocks = TorchIndex(8); blocks.add(x)
    monkeypatch.setattr(blocks, "block", 50 * 4)                           # 4 queries per block: 6 blocks
    a, b = whole.search(q, 6), blocks.search(q, 6)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])
    monkeypatch.setattr(blocks, "block", 1)                                # fewer than one row: still one query per block
    assert np.array_equal(blocks.search(q, 6)[1], a[1])


@needs_faiss
def test_torch_and_faiss_agree_and_ivf_is_exact_with_all_probes():
    x, q = unit(500, 8, 4), unit(20, 8, 5)
    a, b = VectorIndex(8, backend="torch"), VectorIndex(8, backend="faiss")
    a.add(x); b.add(x)
    exact = a.search(q, 10)[1]
    assert (exact == b.search(q, 10)[1]).all() and search_recall(b.search(q, 10)[1], exact) == 1.0
    ivf = VectorIndex(8, "ivf", nlist=10, nprobe=10); ivf.add(x)
    assert (ivf.search(q, 10)[1] == exact).all()
    ivf.nprobe = 1
    assert ivf.options == {"nlist": 10, "nprobe": 1} and search_recall(ivf.search(q, 10)[1], exact) < 1.0
    with pytest.raises(ValueError, match="nprobe must be a positive integer; got 0"): ivf.nprobe = 0
    with pytest.raises(ValueError, match=r"nlist=100 learns its cells from the first batch, which needs at least 100 vectors; got 10"):
        VectorIndex(8, "ivf", nlist=100).add(x[:10])
    just = VectorIndex(8, "ivf", nlist=10); just.add(x[:10])                   # exactly nlist vectors are enough
    assert just._index.is_trained and len(just) == 10


@needs_faiss
def test_hnsw_removal_keeps_tombstones_that_survive_a_round_trip(tmp_path):
    x, q = unit(400, 8, 6), unit(30, 8, 7)
    h = FaissHNSWIndex(8, m=8, ef_construction=40, ef_search=128); h.add(x, np.arange(400) + 1000)
    exact = TorchIndex(8); exact.add(x, np.arange(400) + 1000)
    best = np.unique(exact.search(q, 1)[1])
    assert h.remove(best) == len(best) and len(h) == 400 - len(best)
    exact.remove(best)
    s, i = h.search(q, 10)
    assert not np.isin(best, i).any() and search_recall(i, exact.search(q, 10)[1]) > 0.95
    with pytest.raises(ValueError, match=f"id\\(s\\) \\[{best[0]}\\] were removed from this HNSW index"): h.add(x[:1], best[:1])
    again = VectorIndex.load(h.save(tmp_path / "h"))
    assert np.array_equal(again.search(q, 10)[1], i) and again.options == h.options
    with pytest.raises(ValueError, match="were removed"): again.add(x[:1], best[:1])
    h.ef_search = 4
    assert h.options["ef_search"] == 4 and search_recall(h.search(q, 10)[1], exact.search(q, 10)[1]) < 0.95


# The contract every implementation keeps, as a property: random adds (some refused), removals and searches,
# checked against a dict of vectors and brute force after every step, then a disk round trip.

OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 12), st.sampled_from(["auto", "new", "taken", "repeat", "negative"])),
    st.tuples(st.just("remove"), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("search"), st.integers(0, 3), st.integers(1, 20))), min_size=1, max_size=8)


@pytest.mark.parametrize("kind, backend", KINDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, seed=st.integers(0, 1000))
def test_every_index_keeps_the_contract(kind, backend, ops, seed, tmp_path_factory):
    idx, ref, rng = VectorIndex(4, kind, backend, **SMALL.get(kind, {})), {}, np.random.default_rng(seed)
    removed = set()
    for op in ops:
        before = idx.ids.tolist()
        if op[0] == "add":
            n, how = op[1], op[2]
            x = rng.standard_normal((n, 4)).astype(np.float32)
            top = max([*ref, *removed], default=-1)
            ids = {"auto": None, "new": list(range(top + 1, top + 1 + n)), "negative": [-1 - i for i in range(n)],
                   "taken": [next(iter(ref), 0)] * min(n, 1) + list(range(top + 2, top + 1 + n)),
                   "repeat": [top + 1] * n}[how]
            refused = ((how == "taken" and ref and n) or (how == "repeat" and n > 1) or (how == "negative" and n)
                       or (kind == "ivf" and not ref and not removed and 0 < n < 4)
                       or (kind == "hnsw" and ids is not None and set(ids) & removed))
            try: got = idx.add(x, ids)
            except ValueError as e:
                assert refused and str(e).startswith("add:") or "non-negative" in str(e), (op, str(e))
                assert idx.ids.tolist() == before
                continue
            assert not refused, op
            expect = list(range(top + 1, top + 1 + n)) if ids is None else ids
            assert got.tolist() == expect
            ref.update(zip(expect, x))
        elif op[0] == "remove":
            pick = sorted(ref)[:op[1]] + ([10 ** 6] if op[2] else [])
            if op[2]:
                with pytest.raises(UnknownIdError, match=str(10 ** 6)): idx.remove(pick)
                assert idx.ids.tolist() == before
                continue
            assert idx.remove(pick) == len(pick)
            for i in pick: del ref[i]
            removed |= set(pick)
        else:
            q, k = rng.standard_normal((op[1], 4)).astype(np.float32), op[2]
            if not ref:
                with pytest.raises(ValueError, match="empty"): idx.search(q, k)
                continue
            s, i = idx.search(q, k)
            check_results(q, k, s, i, ref, exact=kind != "hnsw")
        assert sorted(idx.ids.tolist()) == sorted(ref) and len(idx) == len(ref)
    if ref:
        q = rng.standard_normal((3, 4)).astype(np.float32)
        again = VectorIndex.load(idx.save(tmp_path_factory.mktemp("ix")))
        assert again.ids.tolist() == idx.ids.tolist()
        for a, b in zip(again.search(q, 5), idx.search(q, 5)): assert np.array_equal(a, b)


def check_results(q, k, s, i, ref, exact):
    ids, vecs = np.array(list(ref)), np.stack(list(ref.values()))
    true = q @ vecs.T                                                            # (Q, N)
    assert s.shape == i.shape == (len(q), k)
    for row in range(len(q)):
        hit = i[row] >= 0
        assert hit[:hit.sum()].all() and np.isneginf(s[row][~hit]).all()          # results first, then padding
        found = i[row][hit]
        assert len(set(found)) == len(found) and set(found) <= set(ref)            # live ids, each once
        assert np.allclose(s[row][hit], [true[row][ids == f][0] for f in found], atol=1e-4)   # their true scores
        assert (np.diff(s[row][hit]) <= 1e-6).all()                                # best first
        if exact:
            assert hit.sum() == min(k, len(ref))
            assert np.allclose(s[row][hit], np.sort(true[row])[::-1][:hit.sum()], atol=1e-4)


# ---------------------------------------------------------------------------------------------- the factory

def test_factory_builds_the_named_class_and_refuses_the_rest():
    assert index_class("flat", "torch") is TorchIndex and type(VectorIndex(3, backend="torch")) is TorchIndex
    assert issubclass(TorchIndex, VectorIndex) and type(TorchIndex(3)) is TorchIndex
    assert index_class("flat") is (FaissFlatIndex if faiss is not None else TorchIndex)
    with pytest.raises(ValueError, match=r"kind must be one of \['flat', 'hnsw', 'ivf'\]; got 'annoy'"): VectorIndex(3, "annoy")
    with pytest.raises(ValueError, match=r"backend must be 'auto', 'faiss' or 'torch'; got 'gpu'"): VectorIndex(3, backend="gpu")
    with pytest.raises(ValueError, match=r"kind 'hnsw' has no torch implementation \(it has: faiss\)"): VectorIndex(3, "hnsw", "torch")
    with pytest.raises(TypeError, match=r"TorchIndex \(kind 'flat', backend 'torch'\) takes the options \['device'\]; got \['nlist'\]"):
        VectorIndex(3, "flat", "torch", nlist=4)
    with pytest.raises(ValueError, match="dim must be a positive integer; got 0"): VectorIndex(0, backend="torch")
    with pytest.raises(ValueError, match=r"device 'nowhere' is not usable here"): TorchIndex(3, device="nowhere")
    with pytest.raises(TypeError, match="Can't instantiate abstract class"): FaissIndex(3)


@needs_faiss
def test_factory_options_reach_the_faiss_classes():
    ivf = VectorIndex(3, "ivf", nlist=7, nprobe=2)
    assert type(ivf) is FaissIVFIndex and ivf.options == {"nlist": 7, "nprobe": 2} and ivf._index.nlist == 7
    h = VectorIndex(3, "hnsw", m=5, ef_construction=9, ef_search=11)
    assert h.options == {"m": 5, "ef_construction": 9, "ef_search": 11}
    graph = faiss.downcast_index(h._index.index)
    assert graph.hnsw.efConstruction == 9 and faiss.vector_to_array(graph.hnsw.cum_nneighbor_per_level)[1] == 2 * 5
    with pytest.raises(ValueError, match="ef_search must be a positive integer; got -1"): VectorIndex(3, "hnsw", ef_search=-1)
    with pytest.raises(ValueError, match="nlist must be a positive integer; got 0"): VectorIndex(3, "ivf", nlist=0)


def test_without_faiss_auto_falls_back_to_torch_and_faiss_kinds_say_what_to_install(monkeypatch):
    import mmlab.retrieval as r
    monkeypatch.setattr(r, "faiss", None)
    assert type(VectorIndex(3)) is TorchIndex
    with pytest.raises(ImportError, match=r"FaissIVFIndex needs faiss: pip install 'mmlab\[search\]'"): VectorIndex(3, "ivf")
    with pytest.raises(ImportError, match="FaissFlatIndex needs faiss"): VectorIndex(3, backend="faiss")


@pytest.mark.parametrize("call, exc, match", [
    (lambda i: i.add(torch.ones(2, 5)), ValueError, r"vectors: expected vectors of shape \(n, 4\), got \(2, 5\)"),
    (lambda i: i.add(torch.ones(2, 4), [1]), ValueError, "add: 2 vectors but 1 ids"),
    (lambda i: i.add(torch.ones(2, 4), [7, 7]), ValueError, r"already present or repeated: \[7\]"),
    (lambda i: i.add(torch.ones(1, 4), [0]), ValueError, r"already present or repeated: \[0\]"),
    (lambda i: i.add(torch.ones(1, 4), [-3]), ValueError, r"ids must be non-negative .* got \[-3\]"),
    (lambda i: i.add(torch.ones(1, 4), [1.5]), TypeError, "ids: expected integer ids, got dtype float64"),
    (lambda i: i.add(torch.ones(1, 4), np.array([2 ** 63], dtype=np.uint64)), ValueError, "ids must fit in int64"),
    (lambda i: i.add(torch.tensor([[0.0, math.inf, 0, 0], [1, 1, 1, 1]])), ValueError, r"1 vector\(s\) hold NaN or inf, e\.g\. rows \[0\]"),
    (lambda i: i.add(np.array([[1e300, 0, 0, 0]])), ValueError, "NaN or inf"),
    (lambda i: i.add("abcd"), TypeError, "vectors: expected real numbers, got dtype <U4"),
    (lambda i: i.add([[1, 2], [3]]), TypeError, "vectors: expected an array or tensor of numbers"),
    (lambda i: i.search(torch.ones(4), 0), ValueError, "k must be a positive integer; got 0"),
    (lambda i: i.search(torch.ones(4), 2.0), ValueError, "k must be a positive integer; got 2.0"),
    (lambda i: i.search(torch.ones(1, 4, dtype=torch.complex64)), TypeError, "queries: expected real numbers, got torch.complex64"),
    (lambda i: i.search(np.ones((1, 4), dtype=np.complex64)), TypeError, "queries: expected real numbers, got dtype complex64"),
    (lambda i: i.remove(["a"]), TypeError, "ids: expected integer ids"),
])
def test_index_errors(call, exc, match):
    idx = VectorIndex(4, backend="torch"); idx.add(torch.eye(4))
    with pytest.raises(exc, match=match): call(idx)
    assert idx.ids.tolist() == [0, 1, 2, 3]


def test_unknown_id_error_is_a_key_error_with_a_plain_message():
    idx = VectorIndex(2, backend="torch"); idx.add(torch.eye(2))
    with pytest.raises(KeyError) as e: idx.remove([5, 6])
    assert isinstance(e.value, UnknownIdError) and str(e.value) == "remove: unknown id(s) [5, 6] (the index holds 2 items)"
    assert str(UnknownIdError()) == ""


# ---------------------------------------------------------------------------------------------- files

def saved(tmp_path, kind="flat", backend="torch", n=20):
    idx = VectorIndex(4, kind, backend, **SMALL.get(kind, {})); idx.add(unit(n, 4, 8), np.arange(n) * 2)
    return idx, idx.save(tmp_path / f"{kind}-{backend}")


@pytest.mark.parametrize("kind, backend", KINDS)
def test_load_names_the_file_that_is_truncated_or_from_another_save(kind, backend, tmp_path):
    idx, d = saved(tmp_path, kind, backend)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["index"] == type(idx).__name__ and meta["size"] == 20 and meta["dim"] == 4 and meta["format"] == 1
    assert set(meta["files"]) == {"ids.npy", "vectors.npy" if backend == "torch" else "index.faiss"}
    data = next(f for f in meta["files"] if f != "ids.npy")
    raw = (d / data).read_bytes()
    (d / data).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{d / data} does not match {d / 'meta.json'}: it is truncated or was written by another save")):
        VectorIndex.load(d)
    (d / data).write_bytes(raw)
    assert VectorIndex.load(d).ids.tolist() == idx.ids.tolist()
    _, other = saved(tmp_path / "o", kind, backend, n=19)
    (d / "ids.npy").write_bytes((other / "ids.npy").read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"{d / 'ids.npy'} does not match")): VectorIndex.load(d)
    (d / "ids.npy").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{d / 'ids.npy'}, listed in {d / 'meta.json'}, is missing")): VectorIndex.load(d)


def rewrite(d, name, data, meta_update=None):
    "Replace a file and vouch for it in meta.json (a consistent but wrong save), or edit meta.json itself."
    meta = json.loads((d / "meta.json").read_text())
    if data is not None:
        (d / name).write_bytes(data)
        import hashlib
        meta["files"][name] = hashlib.sha256(data).hexdigest()
    meta.update(meta_update or {})
    (d / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, match", [
    (lambda d: (d / "meta.json").write_text("{not json"), "meta.json: not valid JSON"),
    (lambda d: (d / "meta.json").write_bytes(b"\xff\xfe"), "meta.json: not valid JSON"),
    (lambda d: (d / "meta.json").write_text("[1, 2]"), r"meta.json: missing key\(s\) \['format'"),
    (lambda d: rewrite(d, None, None, {"format": 99}), "meta.json: not an index this version reads"),
    (lambda d: rewrite(d, None, None, {"index": "Annoy"}), "meta.json: not an index this version reads"),
    (lambda d: rewrite(d, None, None, {"options": [1]}), "meta.json: not an index this version reads"),
    (lambda d: rewrite(d, None, None, {"dim": "wide"}), "meta.json: dim must be a positive integer; got 'wide'"),
    (lambda d: rewrite(d, None, None, {"options": {"nlist": 3}}), r"meta.json: TorchIndex .* takes the options|meta.json: .*nlist"),
    (lambda d: rewrite(d, None, None, {"size": 21}), r"ids.npy: expected 21 distinct non-negative int64 ids"),
    (lambda d: rewrite(d, None, None, {"next_id": 38}), r"meta.json: next_id must be an integer above every id; got 38"),
    (lambda d: rewrite(d, None, None, {"next_id": "39"}), r"next_id must be an integer"),
    (lambda d: rewrite(d, None, None, {"files": json.loads((d / "meta.json").read_text())["files"] | {"../x": "0"}}), r"\.\./x, listed in .* is missing"),
    (lambda d: (d / "vectors.npy").unlink(), r"vectors.npy, listed in .*meta.json, is missing"),
    (lambda d: rewrite(d, "ids.npy", b"garbage"), r"ids.npy: not a readable .npy array"),
    (lambda d: rewrite(d, "ids.npy", np_bytes(np.zeros(20, dtype=np.int32))), "expected 20 distinct non-negative int64 ids, got int32"),
    (lambda d: rewrite(d, "ids.npy", np_bytes(np.zeros(20, dtype=np.int64))), "expected 20 distinct"),
    (lambda d: rewrite(d, "vectors.npy", np_bytes(np.zeros((20, 3), dtype=np.float32))), r"vectors.npy: expected float32 vectors of shape \(20, 4\), got float32 \(20, 3\)"),
])
def test_load_refuses_a_consistent_but_wrong_save(tmp_path, edit, match):
    _, d = saved(tmp_path)
    edit(d)
    with pytest.raises((ValueError, FileNotFoundError), match=match): VectorIndex.load(d)


def np_bytes(a):
    import io
    f = io.BytesIO(); np.save(f, a); return f.getvalue()


@needs_faiss
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_load_refuses_a_faiss_file_of_another_shape(tmp_path, kind):
    _, d = saved(tmp_path, kind, "faiss")
    raw = (d / "index.faiss").read_bytes()
    rewrite(d, "index.faiss", raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=re.escape(f"{d / 'index.faiss'}: not a readable faiss index")): VectorIndex.load(d)
    other = VectorIndex(4, "flat" if kind != "flat" else "ivf", "faiss", **SMALL.get("flat" if kind != "flat" else "ivf", {}))
    other.add(unit(20, 4, 8), np.arange(20) * 2)
    rewrite(d, "index.faiss", (other.save(tmp_path / "other") / "index.faiss").read_bytes())
    with pytest.raises(ValueError, match=r"index.faiss: expected a [\w()]+ of width 4, got a [\w()]+ of width 4"): VectorIndex.load(d)
    _, fewer = saved(tmp_path / "fewer", kind, "faiss", n=19)
    rewrite(d, "index.faiss", (fewer / "index.faiss").read_bytes())
    with pytest.raises(ValueError, match=r"index.faiss holds 19 vectors but ids.npy lists 20 items"): VectorIndex.load(d)


def test_load_checks_the_class_it_is_called_on(tmp_path):
    _, d = saved(tmp_path)
    assert type(TorchIndex.load(d)) is TorchIndex
    if faiss is not None:
        with pytest.raises(TypeError, match="holds a TorchIndex, not a FaissIndex"): FaissIndex.load(d)
    with pytest.raises(FileNotFoundError, match=r"no saved VectorIndex in .*nothing \(meta.json is missing\)"): VectorIndex.load(tmp_path / "nothing")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["meta.json", "ids.npy", "vectors.npy"]), cut=st.floats(0, 1), flip=st.integers(0, 10 ** 6),
       how=st.sampled_from(["truncate", "flip", "delete"]))
def test_any_damaged_file_is_refused_with_its_name(tmp_path_factory, name, cut, flip, how):
    idx, d = saved(tmp_path_factory.mktemp("d"))
    f = d / name
    raw = f.read_bytes()
    if how == "truncate": f.write_bytes(raw[: int(cut * (len(raw) - 1))])
    elif how == "flip": b = bytearray(raw); b[flip % len(b)] ^= 0xFF; f.write_bytes(bytes(b))
    else: f.unlink()
    try: again = VectorIndex.load(d)
    except (ValueError, FileNotFoundError) as e:
        assert str(d) in str(e), str(e)
    else:                                                                       # a change meta.json can absorb (e.g. whitespace)
        assert name == "meta.json" and again.ids.tolist() == idx.ids.tolist()


# ---------------------------------------------------------------------------------------------- the engine

class Words:
    "Bag-of-letters encoder: enough to test the engine's plumbing."
    def encode_text(self, texts):
        out = torch.zeros(len(texts), 26)
        for n, t in enumerate(texts):
            for ch in str(t).lower():
                if "a" <= ch <= "z": out[n, ord(ch) - 97] += 1
        return out + 1e-3
    encode_image = encode_text


@pytest.mark.parametrize("kind", ["flat"] + (["hnsw"] if faiss is not None else []))
def test_engine_disk_round_trip_and_errors(tmp_path, kind):
    eng = MultimodalSearchEngine(Words(), kind=kind)
    assert eng.add("image", ["zebra", "apple", "banana", "cherry"], ids=[10, 20, 30, 40], payloads=["z", "a", "b", "c"]) == [10, 20, 30, 40]
    with pytest.raises(ValueError, match=r"the audio index is empty; add audio items first \(indexed: \['image'\]\)"): eng.search(["x"], "text", "audio")
    assert eng.add("image", ["zzz"], payloads=["late"]) == [41]               # incremental, automatic id
    res = eng.search(["zebra", "banana split"], "text", "image", k=3)
    assert res[0][0]["id"] == 10 and res[1][0]["payload"] == "b" and [len(r) for r in res] == [3, 3]
    assert res[0][0]["score"] == pytest.approx(1.0, abs=1e-5) and res[0][0]["score"] >= res[0][1]["score"]
    assert eng.search([], "text", "image") == [] and len(eng.search(["a"], "text", "image", k=50)[0]) == 5
    assert repr(eng) == "MultimodalSearchEngine({'image': 5})"
    eng.save(tmp_path / "e")
    again = MultimodalSearchEngine.load(tmp_path / "e", Words())
    assert again.search(["zebra", "banana split"], "text", "image", k=3) == res
    assert again.get("image", 41) == "late" and again.get("image", np.int64(10)) == "z" and again.get("image", 20) == "a"
    assert (again.kind, again.backend) == (kind, "auto") and again.indexes["image"].kind == kind
    assert again.remove("image", [10, 20]) == 2 and 10 not in [h["id"] for h in again.search(["zebra"], "text", "image", k=10)[0]]
    with pytest.raises(UnknownIdError, match="unknown image id 10"): again.get("image", 10)
    with pytest.raises(UnknownIdError, match=r"unknown image id 7 \(3 image items indexed\)"): again.get("image", 7)
    with pytest.raises(UnknownIdError, match=r"remove: nothing of modality 'text' is indexed \(indexed: \['image'\]\)"): again.remove("text", [1])
    with pytest.raises(FileNotFoundError, match="engine.json is missing"): MultimodalSearchEngine.load(tmp_path / "nothing", Words())


def test_engine_refuses_bad_items_payloads_and_models():
    eng = MultimodalSearchEngine(Words())
    with pytest.raises(ValueError, match="add: no image items given"): eng.add("image", [])
    with pytest.raises(TypeError, match=r"items: expected a list, got a single str \(wrap it in a list\)"): eng.add("text", "abc")
    with pytest.raises(TypeError, match="items: expected a list, got int"): eng.add("text", 3)
    with pytest.raises(ValueError, match="add: 2 text items but 1 payloads"): eng.add("text", ["a", "b"], payloads=["x"])
    with pytest.raises(TypeError, match="payloads must be JSON-serialisable"): eng.add("text", ["a"], payloads=[{1, 2}])
    with pytest.raises(ValueError, match="a modality is a name such as 'image' or 'text'; got '../x'"): eng.add("../x", ["a"])
    with pytest.raises(ValueError, match="the model Words has no encode_audio; it cannot embed 'audio' items"): eng.add("audio", [1])
    with pytest.raises(TypeError, match="id must be an integer; got '1'"): eng.get("text", "1")
    with pytest.raises(ValueError, match="nlist must be a positive integer"): MultimodalSearchEngine(Words(), kind="ivf", nlist=0)
    with pytest.raises(TypeError, match="takes the options"): MultimodalSearchEngine(Words(), kind="flat", m=3)
    eng.add("text", ["abc"])
    assert eng.payloads["text"] == {0: None}

    class Bad:
        def encode_text(self, xs): return torch.ones(len(xs) + 1, 4)
        def encode_image(self, xs): return torch.full((len(xs), 4), math.nan)
        def encode_audio(self, xs): return "not numbers"
        def encode_video(self, xs): return torch.ones(len(xs), 3)
    bad = MultimodalSearchEngine(Bad())
    with pytest.raises(ValueError, match=r"encode_text returned shape \(3, 4\) for 2 items; expected \(2, D\)"): bad.add("text", ["a", "b"])
    with pytest.raises(ValueError, match=r"encode_image returned NaN or inf for 1 item\(s\), e\.g\. \[0\]"): bad.add("image", ["a"])
    with pytest.raises(TypeError, match="encode_audio's output: expected a tensor"): bad.add("audio", ["a"])
    with pytest.raises(ValueError, match="search: text queries are 26-d but the video index holds 3-d vectors"):
        wrong = MultimodalSearchEngine(Words()); wrong.add("text", ["a"]); wrong.model = Bad()
        wrong.indexes["video"] = VectorIndex(3, backend="torch"); wrong.indexes["video"].add(torch.ones(1, 3)); wrong.payloads["video"] = {0: None}
        wrong.model = Words(); wrong.search(["q"], "text", "video")
    grown = MultimodalSearchEngine(Words()); grown.add("image", ["x"]); grown.model = Bad()
    with pytest.raises(ValueError, match="add: the video index holds 26-d vectors but the model gives 3-d ones"):
        grown.indexes["video"] = grown.indexes["image"]; grown.add("video", ["y"])


@pytest.mark.parametrize("edit, exc, match", [
    (lambda d: (d / "engine.json").write_text("{"), ValueError, "engine.json: not valid JSON"),
    (lambda d: (d / "engine.json").write_text("{}"), ValueError, r"engine.json: missing key\(s\)"),
    (lambda d: patch_json(d / "engine.json", kind="annoy"), ValueError, "engine.json: kind must be one of"),
    (lambda d: patch_json(d / "engine.json", modalities=["../up"]), ValueError, "engine.json: a modality is a name"),
    (lambda d: patch_json(d / "engine.json", format=2), ValueError, "engine.json: not an engine this version reads"),
    (lambda d: (d / "image" / "payloads.json").unlink(), FileNotFoundError, "payloads.json, for the image index, is missing"),
    (lambda d: (d / "image" / "payloads.json").write_text("[[0, 1]]"), ValueError, "payloads.json does not hold one"),
    (lambda d: (d / "image" / "payloads.json").write_text('{"0": 1}'), ValueError, "payloads.json does not hold one"),
    (lambda d: (d / "image" / "payloads.json").write_bytes(b"\x80"), ValueError, "payloads.json: not valid JSON"),
])
def test_engine_load_names_the_bad_file(tmp_path, edit, exc, match):
    eng = MultimodalSearchEngine(Words(), backend="torch"); eng.add("image", ["ab", "cd"], payloads=[1, 2])
    eng.save(tmp_path)
    edit(tmp_path)
    with pytest.raises(exc, match=match): MultimodalSearchEngine.load(tmp_path, Words())


def patch_json(f, **kw):
    f.write_text(json.dumps(json.loads(f.read_text()) | kw))


# ---------------------------------------------------------------------------------------------- helpers

def test_clustered_embeddings_and_search_recall():
    x = clustered_embeddings(500, 8, clusters=5, spread=0.1, seed=3)
    assert x.shape == (500, 8) and torch.allclose(x.norm(dim=1), torch.ones(500), atol=1e-5)
    assert torch.equal(x, clustered_embeddings(500, 8, clusters=5, spread=0.1, seed=3))
    assert len(torch.unique((x @ x.T > 0.9).sum(1))) <= 50                          # five tight groups
    assert (x @ x.T).mean() < (clustered_embeddings(500, 8, clusters=1, spread=0.1) @ clustered_embeddings(500, 8, clusters=1, spread=0.1).T).mean()
    for bad, match in [(dict(n=0, dim=2), "n must be"), (dict(n=2, dim=2, spread=-1), "spread must be"),
                       (dict(n=2, dim=2, spread=math.inf), "spread must be"), (dict(n=2, dim=2, clusters=0), "clusters must be")]:
        with pytest.raises(ValueError, match=match): clustered_embeddings(**bad)
    assert search_recall([[1, 2, 3]], [[3, 2, 1]]) == 1.0 and search_recall([[1, 9, 8], [4, 5, 6]], [[1, 2, 3], [4, 5, 7]]) == pytest.approx(0.5)
    assert search_recall([[1, -1]], [[1, -1]]) == 1.0 and search_recall([[-1, 5]], [[1, -1]]) == 0.0   # -1 is no item
    with pytest.raises(ValueError, match=r"found and exact must both be \(Q, k\)"): search_recall([[1]], [[1, 2]])
    with pytest.raises(ValueError, match="every query needs at least one id"): search_recall([[1]], [[-1]])


# ---------------------------------------------------------------------------------------------- anything in, documented errors out

def junk():
    "Values of every shape and kind an entry point might be handed (arrays include NaN and inf)."
    arrays = hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64]),
                        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return st.one_of(st.none(), st.text(max_size=3), st.integers(-3, 5), st.floats(allow_nan=True), arrays,
                     arrays.map(torch.as_tensor), st.lists(st.lists(st.floats(-2, 2), max_size=3), max_size=3),
                     st.lists(st.sampled_from([0, 1, True, 2.5, "a", None]), max_size=4))


def clean(call, names):
    "Run call(); any error must be a documented one whose message names one of `names`."
    try: return call()
    except UnknownIdError as e: assert any(n in str(e) for n in names), str(e)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        assert any(n in str(e) for n in names), f"{type(e).__name__} without the argument's name: {e}"


@settings(max_examples=150, deadline=None)
@given(sim=junk(), pos=junk(), ks=st.one_of(junk(), st.lists(st.integers(-1, 12), max_size=3)))
def test_metrics_take_anything(sim, pos, ks):
    names = ("similarity", "positives", "ks")
    for fn in (lambda: recall_at_k(sim, pos, ks), lambda: mean_average_precision(sim, pos), lambda: retrieval_report(sim, pos, ks),
               lambda: first_positive_rank(sim, pos), lambda: ranked_positives(sim, pos)):
        clean(fn, names)


nan_matrix = hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 6)),
                        elements=st.one_of(st.floats(-3, 3, width=32), st.just(np.nan), st.just(np.inf), st.just(-np.inf)))


@settings(max_examples=100, deadline=None)
@given(sim=nan_matrix, data=st.data())
def test_metrics_on_well_shaped_matrices_return_numbers_or_refuse_nan(sim, data):
    pos = data.draw(hnp.arrays(np.bool_, sim.shape))
    try: rep = retrieval_report(sim, pos, ks=(1, 3))
    except ValueError as e:
        assert ("NaN" in str(e)) == bool(np.isnan(sim).any()) or "no positive" in str(e), str(e)
        assert np.isnan(sim).any() or not pos.any(axis=1).all()
        return
    assert not np.isnan(sim).any() and pos.any(axis=1).all()
    assert all(math.isfinite(v) for v in rep.values()) and 0 <= rep["R@1"] <= rep["R@3"] <= 100
    assert 1 <= rep["medr"] <= sim.shape[1] and 0 < rep["mAP"] <= 1


@settings(max_examples=120, deadline=None)
@given(img=junk(), txt=junk(), t2i=junk())
def test_image_text_retrieval_takes_anything(img, txt, t2i):
    clean(lambda: image_text_retrieval(img, txt, t2i), ("image_embeds", "text_embeds", "text_to_image", "similarity", "positives"))


@settings(max_examples=60, deadline=None)
@given(dim=st.one_of(st.integers(-2, 6), junk()), kind=st.one_of(st.sampled_from(["flat", "ivf", "hnsw", "lsh"]), junk()),
       backend=st.one_of(st.sampled_from(["auto", "faiss", "torch", "gpu"]), junk()),
       options=st.dictionaries(st.sampled_from(["nlist", "nprobe", "m", "ef_search", "ef_construction", "device", "size"]),
                               st.one_of(st.integers(-1, 4), st.sampled_from([None, "a", 2.5, "cpu"])), max_size=2))
def test_index_constructor_takes_anything(dim, kind, backend, options):
    names = ("dim", "kind", "backend", "options", "nlist", "nprobe", "m must", "ef_search", "ef_construction", "device", "faiss")
    clean(lambda: VectorIndex(dim, kind, backend, **options), names)


@pytest.mark.parametrize("kind, backend", KINDS)
@settings(max_examples=40, deadline=None)
@given(vectors=junk(), ids=junk(), queries=junk(), k=st.one_of(st.integers(-1, 30), junk()), gone=junk())
def test_index_methods_take_anything(kind, backend, vectors, ids, queries, k, gone):
    idx = VectorIndex(2, kind, backend, **{"ivf": dict(nlist=2, nprobe=2)}.get(kind, {}))
    idx.add(unit(6, 2, 0), [0, 1, 2, 3, 4, 5])
    names = ("vectors", "ids", "queries", "k must", "add:", "remove:", "HNSW")
    clean(lambda: idx.add(vectors, ids), names)
    clean(lambda: idx.add(vectors), names)
    clean(lambda: idx.search(queries, k), names)
    clean(lambda: idx.remove(gone), names)
    ids_now = idx.ids
    assert len(ids_now) == len(set(ids_now.tolist())) and (ids_now >= 0).all()


@settings(max_examples=60, deadline=None)
@given(modality=st.one_of(st.sampled_from(["image", "text", "audio"]), junk()), items=junk(), ids=junk(), payloads=junk(),
       k=st.one_of(st.integers(-1, 8), junk()), key=junk())
def test_engine_takes_anything(modality, items, ids, payloads, k, key):
    eng = MultimodalSearchEngine(Words(), backend="torch")
    eng.add("image", ["apple", "kiwi"])
    words = lambda: [str(x) for x in items] if isinstance(items, list) else items
    names = ("modality", "items", "ids", "payloads", "k must", "add:", "encode_", "search:", "remove:", "unknown", "id must", "queries")
    clean(lambda: eng.add(modality, words(), ids, payloads), names)
    clean(lambda: eng.search(words(), "text", modality, k), names)
    clean(lambda: eng.search(words(), modality, "image", k), names)
    clean(lambda: eng.get(modality, key), names)
    clean(lambda: eng.remove(modality, ids), names)


# ---------------------------------------------------------------------------------------------- GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_index_on_cuda_matches_the_cpu():
    x, q = unit(5000, 64, 9), unit(100, 64, 10)
    cpu, gpu = TorchIndex(64), TorchIndex(64, device="cuda")
    cpu.add(x); gpu.add(x)
    (s1, i1), (s2, i2) = cpu.search(q, 10), gpu.search(q, 10)
    assert search_recall(i2, i1) > 0.999 and np.allclose(s1, s2, atol=1e-4)
    gpu.remove(i1[:, 0])
    assert not np.isin(i1[:, 0], gpu.search(q, 10)[1]).any()


# ---------------------------------------------------------------------------------------------- exact messages
# Every refusal, word for word: the message is the interface a user reads, so a changed name, a lost value or a
# truncated list is a change to catch.

def index_of(n=2, kind="flat", backend="torch", **opts):
    idx = VectorIndex(2, kind, backend, **opts); idx.add(unit(n, 2, 11)); return idx


def engine_with(model):
    eng = MultimodalSearchEngine(model, backend="torch"); eng.add("text", ["ab", "cd"]); return eng


class NaNImages(Words):
    def encode_image(self, xs): return torch.full((len(xs), 26), math.nan)


MESSAGES = [
    (lambda: recall_at_k(torch.zeros(7, 3), torch.zeros(7, 3, dtype=torch.bool)), ValueError,
     "positives: 7 quer(ies) have no positive item, e.g. rows [0, 1, 2, 3, 4]"),
    (lambda: recall_at_k(torch.eye(5), 2.0 * torch.arange(5).expand(5, 5)), ValueError,
     "positives must be boolean (or 0/1); got values such as [2.0, 4.0, 6.0]"),
    (lambda: recall_at_k(torch.full((2, 2), math.nan), torch.eye(2)), ValueError,
     "similarity holds 4 NaN score(s), e.g. at (0, 0); a NaN has no rank (check the embeddings for NaN)"),
    (lambda: recall_at_k(torch.eye(2), [[1, 0], [0, "x"]]), TypeError,
     "positives: expected a tensor or an array of numbers, got list (new(): invalid data type 'str')"),
    (lambda: recall_at_k(torch.ones(2, 2), torch.eye(2), ks="ab"), ValueError, "ks must be positive integers; got ['a', 'b']"),
    (lambda: image_text_retrieval(torch.zeros(0, 3), torch.zeros(0, 3), []), ValueError, "similarity has no queries: shape (0, 0)"),
    (lambda: image_text_retrieval(torch.eye(2), torch.eye(2), torch.tensor([True, False])), ValueError,
     "text_to_image must hold one integer image index per caption: 2 captions, got torch.bool of shape (2,)"),
    (lambda: image_text_retrieval(torch.eye(2), torch.tensor([[1.0, 0], [math.nan, 1]]), [0, 1]), ValueError,
     "text_embeds holds 1 NaN score(s), e.g. at (1, 0); a NaN has no rank (check the embeddings for NaN)"),
    (lambda: image_text_retrieval(torch.tensor([[math.nan, 1.0]]), torch.eye(2), [0, 0]), ValueError,
     "image_embeds holds 1 NaN score(s), e.g. at (0, 0); a NaN has no rank (check the embeddings for NaN)"),
    (lambda: image_text_retrieval(torch.eye(2), torch.eye(2), "ab"), TypeError,
     "text_to_image: expected a tensor or an array of numbers, got str (new(): invalid data type 'str')"),
    (lambda: image_text_retrieval(torch.randn(8, 2), torch.randn(2, 2), [0, 1]), ValueError,
     "text_to_image: image(s) [2, 3, 4, 5, 6] have no caption; every image needs one"),
    (lambda: index_of().add(torch.full((7, 2), math.nan)), ValueError, "vectors: 7 vector(s) hold NaN or inf, e.g. rows [0, 1, 2, 3, 4]"),
    (lambda: index_of().add(torch.tensor([[0.0, 1], [1, 1], [2, 1], [math.inf, 1]])), ValueError, "vectors: 1 vector(s) hold NaN or inf, e.g. rows [3]"),
    (lambda: index_of().search(torch.ones(3)), ValueError, "queries: expected vectors of shape (n, 2), got (1, 3)"),
    (lambda: index_of().add(np.ones((7, 2)), -np.arange(1, 8)), ValueError,
     "ids must be non-negative (faiss keeps -1 for 'no item'); got [-1, -2, -3, -4, -5]"),
    (lambda: index_of().add(np.ones((2, 2)), [0, -1]), ValueError, "ids must be non-negative (faiss keeps -1 for 'no item'); got [-1]"),
    (lambda: index_of(10).add(np.ones((7, 2)), np.arange(7)), ValueError,
     "add: ids must be new and distinct; already present or repeated: [0, 1, 2, 3, 4]"),
    (lambda: index_of().add(np.ones((1, 2)), np.array([2 ** 63], dtype=np.uint64)), ValueError, "ids: ids must fit in int64; got 9223372036854775808"),
    (lambda: index_of().add(np.ones((2, 2)), [[1], [1, 2]]), TypeError, "ids: expected integer ids (setting an array element with a sequence."),
    (lambda: index_of().add(np.ones((1, 2)), ["a"]), TypeError, "ids: expected integer ids, got dtype <U1 (e.g. np.str_('a'))"),
    (lambda: index_of().remove(list(range(100, 112))), UnknownIdError,
     "remove: unknown id(s) [100, 101, 102, 103, 104, 105, 106, 107, 108, 109] (the index holds 2 items)"),
    (lambda: VectorIndex(2, backend="torch").search(torch.ones(2)), ValueError, "search: the index is empty; add vectors first"),
    (lambda: index_of().search(torch.ones(2), k=0), ValueError, "k must be a positive integer; got 0"),
    (lambda: VectorIndex(True, backend="torch"), ValueError, "dim must be a positive integer; got True"),
    (lambda: clustered_embeddings(0, 2), ValueError, "n must be a positive integer; got 0"),
    (lambda: clustered_embeddings(2, 0), ValueError, "dim must be a positive integer; got 0"),
    (lambda: clustered_embeddings(2, 2, clusters=0), ValueError, "clusters must be a positive integer; got 0"),
    (lambda: clustered_embeddings(2, 2, spread="1"), ValueError, "spread must be a finite number >= 0; got '1'"),
    (lambda: search_recall([[1]], [[-1]]), ValueError, "exact: every query needs at least one id (>= 0)"),
    (lambda: search_recall([[1, 2]], [[1]]), ValueError, "found and exact must both be (Q, k) with k >= 1; got (1, 2) and (1, 1)"),
    (lambda: search_recall(np.zeros((2, 0)), np.zeros((2, 0))), ValueError, "found and exact must both be (Q, k) with k >= 1; got (2, 0) and (2, 0)"),
    (lambda: VectorIndex.load("/nonexistent/x"), FileNotFoundError, "no saved VectorIndex in /nonexistent/x (meta.json is missing)"),
    (lambda: MultimodalSearchEngine.load("/nonexistent/x", Words()), FileNotFoundError,
     "no saved MultimodalSearchEngine in /nonexistent/x (engine.json is missing)"),
    (lambda: MultimodalSearchEngine(Words()).add("text", 5), TypeError, "items: expected a list, got int"),
    (lambda: MultimodalSearchEngine(Words()).add("text", ["a"], payloads=3), TypeError, "payloads: expected a list, got int"),
    (lambda: MultimodalSearchEngine(Words()).add("text", ["a"], payloads="ab"), TypeError, "payloads: expected a list, got a single str (wrap it in a list)"),
    (lambda: engine_with(Words()).search(5, "text", "text"), TypeError, "queries: expected a list, got int"),
    (lambda: engine_with(Words()).search(["a"], "text", "text", k=-1), ValueError, "k must be a positive integer; got -1"),
    (lambda: engine_with(Words()).search(["a"], "text", "image"), ValueError, "search: the image index is empty; add image items first (indexed: ['text'])"),
    (lambda: engine_with(Words()).search(["a"], 3, "text"), ValueError, "a modality is a name such as 'image' or 'text'; got 3"),
    (lambda: engine_with(Words()).get("text", 9), UnknownIdError, "unknown text id 9 (2 text items indexed)"),
    (lambda: engine_with(Words()).get("image", 0), UnknownIdError, "unknown image id 0 (0 image items indexed)"),
    (lambda: engine_with(Words()).get("text", True), TypeError, "id must be an integer; got True"),
    (lambda: engine_with(Words()).remove("image", [0]), UnknownIdError, "remove: nothing of modality 'image' is indexed (indexed: ['text'])"),
    (lambda: engine_with(Words()).remove("text", [7]), UnknownIdError, "remove: unknown id(s) [7] (the index holds 2 items)"),
    (lambda: engine_with(NaNImages()).add("image", list("abcdefg")), ValueError, "encode_image returned NaN or inf for 7 item(s), e.g. [0, 1, 2, 3, 4]"),
    (lambda: engine_with(Words()).add("text", ["a", "b"], payloads=[1]), ValueError, "add: 2 text items but 1 payloads"),
    (lambda: engine_with(Words()).add("text", []), ValueError, "add: no text items given"),
    (lambda: engine_with(Words()).add("text", ["x"], ids=[0]), ValueError, "add: ids must be new and distinct; already present or repeated: [0]"),
    (lambda: engine_with(Words()).encode("text", 5), TypeError, "items: expected a list, got int"),
    (lambda: MultimodalSearchEngine(Words(), backend="gpu"), ValueError, "backend must be 'auto', 'faiss' or 'torch'; got 'gpu'"),
    (lambda: search_recall([[1], [2]], [[1], [-1]]), ValueError, "exact: every query needs at least one id (>= 0)"),
]


@pytest.mark.parametrize("n", range(len(MESSAGES)))
def test_exact_messages(n):
    call, exc, message = MESSAGES[n]
    with pytest.raises(exc) as e: call()
    assert type(e.value) is exc and (str(e.value) == message or (message.endswith(".") and str(e.value).startswith(message))), str(e.value)


@needs_faiss
def test_exact_messages_of_the_faiss_indexes():
    with pytest.raises(ValueError) as e: VectorIndex(2, "ivf", nlist=8).add(np.ones((7, 2)))
    assert str(e.value) == ("add: an IVF index with nlist=8 learns its cells from the first batch, which needs at least 8 vectors; "
                            "got 7 (add a larger first batch or lower nlist)")
    h = index_of(10, "hnsw", "faiss"); h.remove(np.arange(7))
    with pytest.raises(ValueError) as e: h.add(np.ones((7, 2)), np.arange(7))
    assert str(e.value) == "add: id(s) [0, 1, 2, 3, 4] were removed from this HNSW index and stay in its graph; use new ids or rebuild the index"
    for opts, message in [(dict(nlist=0), "nlist must be a positive integer; got 0"), (dict(nprobe=0), "nprobe must be a positive integer; got 0")]:
        with pytest.raises(ValueError) as e: VectorIndex(2, "ivf", **opts)
        assert str(e.value) == message
    for opts, message in [(dict(m=0), "m must be a positive integer; got 0"), (dict(ef_construction=0), "ef_construction must be a positive integer; got 0"),
                          (dict(ef_search=0), "ef_search must be a positive integer; got 0")]:
        with pytest.raises(ValueError) as e: VectorIndex(2, "hnsw", **opts)
        assert str(e.value) == message


def test_reprs_name_the_class_its_options_and_size():
    assert repr(index_of(3)) == "TorchIndex(dim=2, size=3)"
    if faiss is not None:
        assert repr(VectorIndex(3, "ivf", nlist=7, nprobe=2)) == "FaissIVFIndex(dim=3, nlist=7, nprobe=2, size=0)"
        assert repr(VectorIndex(3, "hnsw", m=4)) == "FaissHNSWIndex(dim=3, m=4, ef_construction=40, ef_search=64, size=0)"
        assert repr(VectorIndex(3)) == "FaissFlatIndex(dim=3, size=0)"


# ---------------------------------------------------------------------------------------------- dtypes, devices, details

def test_scores_keep_their_precision_and_booleans_are_scores():
    sim64 = torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)            # distinct in float64, a tie in float32
    assert first_positive_rank(sim64, torch.tensor([[False, True]])).tolist() == [1]
    assert first_positive_rank(sim64.float(), torch.tensor([[False, True]])).tolist() == [2]   # the tie goes against it
    sim_bool = torch.tensor([[True, False, True]])
    assert first_positive_rank(sim_bool, torch.tensor([[False, False, True]])).tolist() == [2]
    assert first_positive_rank(torch.tensor([[1, 3, 2]], dtype=torch.int64), torch.tensor([[0, 0, 1]])).tolist() == [2]
    assert first_positive_rank(torch.tensor([[1, 3, 2]], dtype=torch.bfloat16), torch.tensor([[0, 0, 1]])).tolist() == [2]


def test_image_text_retrieval_equals_the_report_of_the_cosine_matrix():
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(12, 5, generator=g) * torch.rand(12, 1, generator=g) * 9, torch.randn(30, 5, generator=g) * 4
    t2i = torch.arange(30) % 12
    cos = F.cosine_similarity(img[:, None, :], txt[None, :, :], dim=-1)          # (12, 30)
    pos = t2i[None, :] == torch.arange(12)[:, None]
    rep = image_text_retrieval(img, txt, t2i, ks=(2, 7))
    assert rep["image_to_text"] == pytest.approx(retrieval_report(cos, pos, ks=(2, 7)))
    assert rep["text_to_image"] == pytest.approx(retrieval_report(cos.T, pos.T, ks=(2, 7)))
    assert set(rep["text_to_image"]) == {"R@2", "R@7", "mAP", "medr", "meanr"}
    assert image_text_retrieval(img.double(), txt, t2i.numpy(), ks=(2, 7)) == rep


def test_vectors_far_beyond_float32_are_refused_without_a_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="hold NaN or inf"): index_of().add(np.array([[1e300, 0.0]]))


def test_ids_of_every_integer_kind():
    idx = index_of(0)
    assert idx.add(np.zeros((0, 2)), []).dtype == np.int64 and idx.add(np.zeros((0, 2))).dtype == np.int64
    assert idx.add(np.ones((1, 2)), np.array([5], dtype=np.uint64)).tolist() == [5]
    assert idx.add(np.ones((1, 2)), np.array([2 ** 63 - 1], dtype=np.uint64)).tolist() == [2 ** 63 - 1]
    assert idx.add(np.ones((1, 2)), torch.tensor([7])).dtype == np.int64 and idx.remove(torch.tensor([7, 5])) == 2
    assert idx.add(np.ones((1, 2)), 9).tolist() == [9] and idx.remove(np.int32(9)) == 1
    assert idx.remove([]) == 0 and idx.ids.tolist() == [2 ** 63 - 1]


def test_engine_payloads_ids_and_modalities():
    eng = MultimodalSearchEngine(Words(), backend="torch")
    assert eng.add("text", ["ab", "cd"], payloads=[{"k": [1, 2]}, None]) == [0, 1]
    assert eng.add("text", ("ef",), ids=np.array([7])) == [7] and eng.get("text", 7) is None
    assert eng.payloads == {"text": {0: {"k": [1, 2]}, 1: None, 7: None}}
    assert eng.remove("text", np.array([0, 0])) == 1 and eng.payloads["text"] == {1: None, 7: None}
    hits = eng.search(("cd", "ef"), "text", "text", k=1)
    assert [[h["id"] for h in r] for r in hits] == [[1], [7]] and all(isinstance(h["score"], float) for r in hits for h in r)
    e = eng.encode("text", ["abc", "zzz"])
    assert e.dtype == np.float32 and np.allclose(np.linalg.norm(e, axis=1), 1) and e.shape == (2, 26)
    assert abs(e[0] @ e[1]) < 1e-2                                             # no shared letters
    assert eng.encode("text", ["abc"]).tolist() == eng.encode("text", ("abc",)).tolist()
    assert repr(eng) == "MultimodalSearchEngine({'text': 2})"
    assert eng.indexes["text"].backend == "torch" and eng.index_options == {}
    wide = MultimodalSearchEngine(Words(), "ivf", "faiss", nlist=2, nprobe=2) if faiss is not None else None
    if wide is not None:
        wide.add("image", ["ab", "bc", "cd"])
        assert type(wide.indexes["image"]) is FaissIVFIndex and wide.indexes["image"].options == {"nlist": 2, "nprobe": 2}


def test_engine_round_trip_keeps_every_setting(tmp_path):
    if faiss is None: pytest.skip("faiss not installed")
    eng = MultimodalSearchEngine(Words(), "hnsw", "faiss", m=4, ef_search=7)
    eng.add("text", ["ab", "cd", "ef"], payloads=[[1], {"x": "y"}, 3.5]); eng.add("image", ["gh"])
    eng.remove("text", [1])
    path = eng.save(tmp_path / "e")
    assert path == tmp_path / "e" and sorted(p.name for p in path.iterdir()) == ["engine.json", "image", "text"]
    meta = json.loads((path / "engine.json").read_text())
    assert meta == {"format": 1, "modalities": ["image", "text"], "kind": "hnsw", "backend": "faiss", "index_options": {"m": 4, "ef_search": 7}}
    assert json.loads((path / "text" / "payloads.json").read_text()) == [[0, [1]], [2, 3.5]]
    again = MultimodalSearchEngine.load(path, Words())
    assert again.payloads == eng.payloads and again.indexes["text"].options == {"m": 4, "ef_construction": 40, "ef_search": 7}
    assert (again.kind, again.backend, again.index_options) == ("hnsw", "faiss", {"m": 4, "ef_search": 7})
    assert again.search(["ab"], "text", "text", k=3) == eng.search(["ab"], "text", "text", k=3)
    assert again.add("text", ["zz"]) == [3]                                   # ids continue after the removed one


def test_index_save_returns_its_directory_and_writes_a_readable_meta(tmp_path):
    idx = index_of(3); idx.remove([1])
    path = idx.save(str(tmp_path / "a" / "b"))
    assert path == tmp_path / "a" / "b" and sorted(p.name for p in path.iterdir()) == ["ids.npy", "meta.json", "vectors.npy"]
    meta = json.loads((path / "meta.json").read_text())
    assert {k: meta[k] for k in ("format", "index", "dim", "options", "size", "next_id")} == \
        {"format": 1, "index": "TorchIndex", "dim": 2, "options": {}, "size": 2, "next_id": 3}
    assert np.load(path / "ids.npy").tolist() == [0, 2] and np.load(path / "vectors.npy").shape == (2, 2)
    again = VectorIndex.load(str(path))
    assert again.add(np.ones((1, 2))).tolist() == [3]
    assert idx.save(path) == path and VectorIndex.load(path).ids.tolist() == [0, 2]     # saving again replaces


def test_clustered_embeddings_follow_their_parameters():
    x = clustered_embeddings(3000, 256, clusters=3, spread=1.5, seed=1)
    centres = clustered_embeddings(3000, 256, clusters=3, spread=0.0, seed=1)   # the same draws without the offsets
    assert len(torch.unique(centres, dim=0)) == 3
    cos = (x * centres).sum(1)                                                   # each item against its own centre
    assert cos.mean().item() == pytest.approx(1 / math.sqrt(1 + 1.5 ** 2), abs=0.01)   # offset of norm 1.5, nearly orthogonal
    assert (x @ x.T).mean().item() < 0.2 and not torch.equal(x, clustered_embeddings(3000, 256, clusters=3, spread=1.5, seed=2))
    tight = clustered_embeddings(3000, 256, clusters=3, spread=0.5, seed=1)
    assert (tight * centres).sum(1).mean().item() == pytest.approx(1 / math.sqrt(1 + 0.25), abs=0.01)
    assert clustered_embeddings(5, 3, clusters=2, spread=1, seed=0).shape == (5, 3)


def test_search_recall_counts_each_query_against_its_own_exact_ids():
    assert search_recall([[1, 2, -1]], [[1, -1, -1]]) == 1.0                      # one exact id, found
    assert search_recall([[-1, -1]], [[-1, 3]]) == 0.0                            # -1 never matches
    assert search_recall([[4, 3], [9, 8]], [[3, 4], [8, -1]]) == pytest.approx((1.0 + 1.0) / 2)
    assert search_recall([[4, 5], [9, 8]], [[3, 4], [7, 6]]) == pytest.approx((0.5 + 0.0) / 2)
    assert search_recall(np.array([[1, 1]]), np.array([[1, 2]])) == 0.5         # a repeated hit counts once
    assert isinstance(search_recall([[1]], [[1]]), float)


@needs_faiss
def test_more_exact_messages_of_the_faiss_indexes(tmp_path):
    with pytest.raises(TypeError) as e: VectorIndex(3, "flat", "faiss", nlist=3)
    assert str(e.value) == "FaissFlatIndex (kind 'flat', backend 'faiss') takes the options none; got ['nlist']"
    _, d = saved(tmp_path, "hnsw", "faiss")
    ivf = VectorIndex(4, "ivf", **SMALL["ivf"]); ivf.add(unit(20, 4, 8), np.arange(20) * 2)
    rewrite(d, "index.faiss", (ivf.save(tmp_path / "ivf") / "index.faiss").read_bytes())
    with pytest.raises(ValueError) as e: VectorIndex.load(d)
    assert str(e.value) == f"{d / 'index.faiss'}: expected a IndexIDMap2(IndexHNSWFlat) of width 4, got a IndexIVFFlat of width 4"
    raw = (d / "index.faiss").read_bytes(); rewrite(d, "index.faiss", raw[:40])
    with pytest.raises(ValueError) as e: VectorIndex.load(d)
    reason = re.fullmatch(re.escape(f"{d / 'index.faiss'}: not a readable faiss index (") + r"(.+)\)", str(e.value)).group(1)
    assert reason != "None" and ("read" in reason or "Error" in reason), reason


def test_defaults_of_every_constructor_and_search():
    idx = index_of(12)
    assert idx.search(unit(3, 2, 1))[1].shape == (3, 10)
    assert index_class() is index_class("flat", "auto") and index_class(backend="torch") is TorchIndex
    assert torch.equal(clustered_embeddings(50, 4), clustered_embeddings(50, 4, clusters=200, spread=1.5, seed=0))
    eng = MultimodalSearchEngine(Words(), backend="torch"); eng.add("text", list("abcdefgh"))
    assert [len(r) for r in eng.search(["a", "b"], "text", "text")] == [5, 5]
    if faiss is not None:
        assert VectorIndex(4, "ivf").options == {"nlist": 100, "nprobe": 8}
        assert VectorIndex(4, "hnsw").options == {"m": 32, "ef_construction": 40, "ef_search": 64}
        assert faiss.downcast_index(VectorIndex(4, "hnsw")._index.index).hnsw.efConstruction == 40


@needs_faiss
def test_items_missing_from_an_approximate_search_are_minus_one_and_minus_inf():
    x = np.concatenate([np.tile([[1.0, 0.0]], (8, 1)), np.tile([[-1.0, 0.0]], (8, 1))]).astype(np.float32)
    x += 0.01 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    ivf = VectorIndex(2, "ivf", nlist=2, nprobe=1); ivf.add(x)                  # two cells of 8; a query scans one
    s, i = ivf.search(np.array([[1.0, 0.0]]), 12)
    assert (i[0, :8] >= 0).all() and (i[0, 8:] == -1).all() and np.isneginf(s[0, 8:]).all() and np.isfinite(s[0, :8]).all()


@needs_faiss
def test_a_new_faiss_structure_needs_only_its_build(tmp_path):
    class FaissIVFSmall(FaissIndex):          # an untrained faiss index: the shared _add trains it on the first batch
        kind = "ivf-small"
        def _build(self): return faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, 2, faiss.METRIC_INNER_PRODUCT)
    idx = FaissIVFSmall(3); x = unit(40, 3, 12)
    idx.add(x[:20]); idx.add(x[20:])
    assert idx._index.is_trained and len(idx) == 40 and repr(idx) == "FaissIVFSmall(dim=3, size=40)"
    exact = TorchIndex(3); exact.add(x)
    assert search_recall(idx.search(x[:5], 3)[1], exact.search(x[:5], 3)[1]) > 0.5


def test_an_empty_index_round_trips_and_next_id_is_checked(tmp_path):
    for kind, backend in KINDS:
        d = VectorIndex(3, kind, backend, **SMALL.get(kind, {})).save(tmp_path / f"{kind}-{backend}")
        again = VectorIndex.load(d)
        assert len(again) == 0 and again.add(np.zeros((0, 3))).tolist() == [] and again._next_id == 0
    _, d = saved(tmp_path / "t")
    for bad in (-1, 0, 38):
        rewrite(d, None, None, {"next_id": bad})
        with pytest.raises(ValueError, match="next_id must be an integer above every id"): VectorIndex.load(d)
    empty = VectorIndex(3, backend="torch").save(tmp_path / "e")
    rewrite(empty, None, None, {"next_id": -1})
    with pytest.raises(ValueError, match=r"next_id must be an integer above every id; got -1"): VectorIndex.load(empty)
    _, d2 = saved(tmp_path / "u")
    meta = json.loads((d2 / "meta.json").read_text()); meta["files"].pop("ids.npy"); (d2 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not an index this version reads"): VectorIndex.load(d2)


def test_engine_results_keep_id_zero_and_nested_saves(tmp_path):
    eng = MultimodalSearchEngine(Words(), backend="torch"); eng.add("text", ["abc", "xyz"], payloads=["first", "second"])
    assert eng.search(["abc"], "text", "text", k=1) == [[{"id": 0, "score": pytest.approx(1.0, abs=1e-5), "payload": "first"}]]
    path = eng.save(tmp_path / "deep" / "er")
    assert MultimodalSearchEngine.load(path, Words()).search(["abc"], "text", "text", k=2) == eng.search(["abc"], "text", "text", k=2)


@pytest.mark.parametrize("payloads, meta", [
    ("[[0, 1, 2], [1, 2]]", None), ('[[0, 1], 5]', None), ('[["0", 1], [1, 2]]', None), (None, {"modalities": "text"}),
])
def test_engine_load_refuses_payload_files_and_modalities_of_another_shape(tmp_path, payloads, meta):
    eng = MultimodalSearchEngine(Words(), backend="torch"); eng.add("text", ["ab", "cd"]); eng.save(tmp_path)
    if payloads is not None: (tmp_path / "text" / "payloads.json").write_text(payloads)
    if meta is not None: patch_json(tmp_path / "engine.json", **meta)
    with pytest.raises(ValueError, match="payloads.json does not hold one|engine.json: not an engine this version reads"):
        MultimodalSearchEngine.load(tmp_path, Words())


def test_engine_load_refuses_a_payload_file_that_is_not_a_list_even_when_empty(tmp_path):
    eng = MultimodalSearchEngine(Words(), backend="torch"); eng.add("text", ["ab"]); eng.remove("text", [0]); eng.save(tmp_path)
    assert MultimodalSearchEngine.load(tmp_path, Words()).payloads == {"text": {}}
    (tmp_path / "text" / "payloads.json").write_text("{}")
    with pytest.raises(ValueError, match="payloads.json does not hold one"): MultimodalSearchEngine.load(tmp_path, Words())


def test_search_recall_takes_id_zero_as_an_id():
    assert search_recall([[0, 5]], [[0, 6]]) == 0.5 and search_recall([[0]], [[0]]) == 1.0


def test_clustered_embeddings_are_the_formula_they_document():
    n, dim, c, spread, seed = 40, 6, 3, 0.7, 5
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(c, dim, generator=g), dim=1)
    topic = torch.randint(0, c, (n,), generator=g)
    expected = F.normalize(centres[topic] + spread * torch.randn(n, dim, generator=g) / dim ** 0.5, dim=1)
    assert torch.allclose(clustered_embeddings(n, dim, clusters=c, spread=spread, seed=seed), expected)

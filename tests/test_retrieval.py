"Retrieval metrics against a plain reference, and the vector index / search engine round trips."
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmlab.retrieval import (MultimodalSearchEngine, VectorIndex, faiss, first_positive_rank, image_text_retrieval,
                             mean_average_precision, recall_at_k)


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


def test_coco_protocol_several_captions():
    # 3 images, 2 captions each; caption scores chosen by hand
    t2i = [0, 0, 1, 1, 2, 2]
    img = torch.eye(3)
    txt = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.float)
    rep = image_text_retrieval(img, txt, t2i, ks=(1, 2))
    # every image ties one right and one wrong caption at score 1 (image 0: captions 0 and 5,
    # image 1: 1 and 2, image 2: 3 and 4), so ties against the positive put the right one second
    assert rep["image_to_text"]["R@1"] == 0.0
    assert rep["image_to_text"]["R@2"] == pytest.approx(100.0)
    # captions: 0 -> img0 right, 1 -> img1 wrong, 2 -> img1 right, 3 -> img2 wrong, 4 -> img2 right, 5 -> img0 wrong
    assert rep["text_to_image"]["R@1"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="one image index per caption"): image_text_retrieval(img, txt, [0, 1])
    with pytest.raises(ValueError, match="indexes 3 images"): image_text_retrieval(img, txt, [0, 0, 1, 1, 2, 3])


backends = ["torch"] + (["faiss"] if faiss is not None else [])


@pytest.mark.parametrize("backend", backends)
def test_index_matches_brute_force_and_round_trips(backend, tmp_path):
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(300, 16, generator=g), torch.randn(7, 16, generator=g)
    ids = np.arange(300) * 3 + 11
    idx = VectorIndex(16, backend=backend); idx.add(x[:100], ids[:100]); idx.add(x[100:], ids[100:])   # incremental
    top = (q @ x.T).topk(5, dim=1)
    s, i = idx.search(q, 5)
    assert (i == ids[top.indices.numpy()]).all() and np.allclose(s, top.values.numpy(), atol=1e-4)
    idx.remove(ids[:50])
    s1, i1 = idx.search(q, 5)
    VectorIndex.load(idx.save(tmp_path / "ix"))
    s2, i2 = VectorIndex.load(tmp_path / "ix").search(q, 5)
    assert (i1 == i2).all() and np.array_equal(s1, s2) and not np.isin(ids[:50], i1).any()
    with pytest.raises(KeyError, match="unknown id"): idx.remove([ids[0]])
    with pytest.raises(ValueError, match=r"\(n, 16\)"): idx.search(torch.randn(2, 15))


@pytest.mark.skipif(faiss is None, reason="faiss not installed")
def test_torch_and_faiss_agree_and_ivf_is_exact_with_all_probes():
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(500, 8, generator=g), torch.randn(20, 8, generator=g)
    a, b = VectorIndex(8, backend="torch"), VectorIndex(8, backend="faiss")
    a.add(x); b.add(x)
    assert (a.search(q, 10)[1] == b.search(q, 10)[1]).all()
    ivf = VectorIndex(8, "ivf", nlist=10, nprobe=10); ivf.add(x)
    assert (ivf.search(q, 10)[1] == b.search(q, 10)[1]).all()


class Words:
    "Bag-of-letters encoder: enough to test the engine's plumbing."
    def encode_text(self, texts):
        out = torch.zeros(len(texts), 26)
        for n, t in enumerate(texts):
            for ch in t.lower():
                if ch.isalpha(): out[n, ord(ch) - 97] += 1
        return out + 1e-3
    encode_image = encode_text


def test_engine_disk_round_trip_and_errors(tmp_path):
    eng = MultimodalSearchEngine(Words())
    eng.add("image", ["zebra", "apple", "banana", "cherry"], ids=[10, 20, 30, 40], payloads=["z", "a", "b", "c"])
    with pytest.raises(ValueError, match="audio index is empty"): eng.search(["x"], "text", "audio")
    eng.add("image", ["zzz"], payloads=["late"])     # incremental, automatic id 41
    res = eng.search(["zebra", "banana split"], "text", "image", k=3)
    assert res[0][0]["id"] == 10 and res[1][0]["payload"] == "b"
    eng.save(tmp_path / "e")
    again = MultimodalSearchEngine.load(tmp_path / "e", Words())
    assert again.search(["zebra", "banana split"], "text", "image", k=3) == res
    assert again.get("image", 41) == "late"
    with pytest.raises(KeyError, match="unknown image id 7"): again.get("image", 7)
    with pytest.raises(FileNotFoundError): MultimodalSearchEngine.load(tmp_path / "nothing", Words())

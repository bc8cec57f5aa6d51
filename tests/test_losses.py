"Unit, property and multi-process tests of mmlab.losses."
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from mmlab.losses import (LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, LogitScale, clip_loss, distributed_clip_loss_check,
                          supcon_loss, triplet_loss)


def test_torchmultimodal_reference_value():
    torch.manual_seed(1234); a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert clip_loss(a, b, LOGIT_SCALE_INIT, normalize=False).item() == pytest.approx(9.8753, abs=1e-4)
    assert clip_loss(a, b, LOGIT_SCALE_INIT, normalize=False, label_smoothing=0.1).item() == pytest.approx(10.2524, abs=1e-4)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(2, 12), d=st.integers(2, 16), s=st.floats(-2.0, 6.0), seed=st.integers(0, 10_000))
def test_clip_loss_matches_row_by_row_formula(b, d, s, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    t = math.exp(min(s, LOGIT_SCALE_MAX))
    sim = t * F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    ref = sum(-torch.log_softmax(sim[i], 0)[i] - torch.log_softmax(sim[:, i], 0)[i] for i in range(b)) / (2 * b)
    assert clip_loss(x, y, s).item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-9)
    # symmetric in its two modalities
    assert clip_loss(y, x, s).item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-9)


def test_logit_scale_is_clamped_in_the_loss():
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    assert clip_loss(x, y, 50.0).item() == pytest.approx(clip_loss(x, y, LOGIT_SCALE_MAX).item(), abs=1e-6)
    p = LogitScale(); assert p.temperature() == pytest.approx(0.07)


def test_clip_loss_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(4, 9\)"): clip_loss(torch.randn(4, 8), torch.randn(4, 9), 0.0)
    with pytest.raises(ValueError, match="must be"): clip_loss(torch.randn(4), torch.randn(4), 0.0)


def test_two_process_gather_equals_single_process_loss():
    out = distributed_clip_loss_check(world_size=2, batch=3, dim=5, seed=7)
    assert len(out["rank_losses"]) == 2
    for l in out["rank_losses"]: assert l == pytest.approx(out["single_loss"], abs=1e-5)
    assert out["max_grad_gap"] < 1e-6


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 10), k=st.integers(1, 4), seed=st.integers(0, 10_000), tau=st.floats(0.05, 2.0))
def test_supcon_matches_loop(n, k, seed, tau):
    g = torch.Generator().manual_seed(seed)
    z, y = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)
    if all((y == c).sum() < 2 for c in y.tolist()):
        with pytest.raises(ValueError): supcon_loss(z, y, tau)
        return
    zn = F.normalize(z, dim=1); total, anchors = 0.0, 0
    for i in range(n):
        P = [p for p in range(n) if p != i and y[p] == y[i]]
        if not P: continue
        logden = torch.logsumexp(torch.stack([zn[i] @ zn[a] / tau for a in range(n) if a != i]), 0)
        total += -sum((zn[i] @ zn[p] / tau - logden).item() for p in P) / len(P); anchors += 1
    assert supcon_loss(z, y, tau).item() == pytest.approx(total / anchors, rel=1e-9, abs=1e-9)


def test_triplet_hardest_negative_and_sign():
    e = torch.eye(5)
    assert triplet_loss(e, e).item() == 0.0                 # aligned pairs cost nothing
    assert triplet_loss(e, -e).item() == pytest.approx(1.2)   # anti-aligned: margin + 1 per direction
    x = torch.randn(7, 6, dtype=torch.float64); y = torch.randn(7, 6, dtype=torch.float64)
    xs, ys = F.normalize(x, dim=1), F.normalize(y, dim=1); s = xs @ ys.T; m = 0.3
    ref = 0.0
    for i in range(7):
        ref += max(0.0, m - s[i, i].item() + max(s[i, j].item() for j in range(7) if j != i))
        ref += max(0.0, m - s[i, i].item() + max(s[j, i].item() for j in range(7) if j != i))
    assert triplet_loss(x, y, margin=m).item() == pytest.approx(ref / 14, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"): triplet_loss(torch.randn(1, 3), torch.randn(1, 3))


def test_logit_scale_clamps_when_read():
    from mmlab.losses import LOGIT_SCALE_MAX, LogitScale
    ls = LogitScale(init=10.0)
    assert ls().item() == pytest.approx(LOGIT_SCALE_MAX) and ls.value.item() == 10.0
    assert ls.temperature() == pytest.approx(0.01)
    assert LogitScale(init=1.0)().item() == 1.0


def test_loss_defaults_are_the_papers():
    "SupCon's tau = 0.1 (Khosla et al.) and VSE++'s margin 0.2 are the defaults."
    g = torch.Generator().manual_seed(0)
    x, y, labels = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.tensor([0, 1, 2, 3] * 2)
    assert torch.equal(supcon_loss(x, labels), supcon_loss(x, labels, temperature=0.1))
    assert not torch.allclose(supcon_loss(x, labels), supcon_loss(x, labels, temperature=1.1))
    assert torch.equal(triplet_loss(x, y), triplet_loss(x, y, margin=0.2))


def test_triplet_margin_zero_allowed_negative_refused():
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.isfinite(triplet_loss(x, y, margin=0.0))
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="margin"):
            triplet_loss(x, y, margin=bad)


# --- what the mutation run showed the tests above let through ---

def test_errors_name_what_was_wrong():
    "Each refusal says which argument, and what it held."
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"must be tensors; got Tensor and list"): clip_loss(x, [[0.0] * 3] * 4, 0.0)
    with pytest.raises(TypeError, match=r"got list and Tensor"): clip_loss([[0.0] * 3] * 4, x, 0.0)
    with pytest.raises(ValueError, match=r"must be \(B, D\); got image \(4, 3\), text \(4, 3, 1\)"):
        clip_loss(x, x[..., None], 0.0)
    with pytest.raises(ValueError, match=r"batch is empty \(B = 0\)"): clip_loss(x[:0], x[:0], 0.0)
    bad = x.clone(); bad[1, 2] = float("nan"); bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^image_embeds has 2 NaN/inf value\(s\) of 12"): clip_loss(bad, x, 0.0)
    with pytest.raises(ValueError, match=r"^text_embeds has 2 NaN/inf"): clip_loss(x, bad, 0.0)
    with pytest.raises(ValueError, match=r"^embeds has 2 NaN/inf"): supcon_loss(bad, torch.tensor([0, 0, 1, 1]))
    for scale in (torch.tensor([1.0, 2.0]), float("inf"), torch.tensor(float("nan"))):
        with pytest.raises(ValueError, match="logit_scale must be one finite number"): clip_loss(x, x, scale)
    with pytest.raises(ValueError, match=r"embeds must be \(N, D\).*embeds \(4, 3\), labels \(3,\)"):
        supcon_loss(x, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"embeds \(4,\), labels \(4,\)"): supcon_loss(x[:, 0], torch.tensor([0, 0, 1, 1]))
    for tau in (0, 0.0, -0.5, float("inf"), float("nan"), "0.1", None):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            supcon_loss(x, torch.tensor([0, 0, 1, 1]), temperature=tau)
    with pytest.raises(ValueError, match="no anchor has a positive"): supcon_loss(x, torch.arange(4))
    with pytest.raises(ValueError, match=r"overflowed: similarities / temperature 1e-300"):
        supcon_loss(x, torch.tensor([0, 0, 1, 1]), temperature=1e-300)


def test_normalize_switches_cosine_on_and_off():
    "Cosine similarity is the default of every loss; normalize=False takes raw dot products."
    from mmlab.losses import clip_logits
    g = torch.Generator().manual_seed(3)
    x, y = 3 * torch.randn(5, 4, generator=g), 3 * torch.randn(5, 4, generator=g)
    cos = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    assert torch.allclose(clip_logits(x, y, 0.0), cos, atol=1e-6)
    assert torch.allclose(clip_logits(x, y, 0.0, normalize=False), x @ y.T, atol=1e-5)
    labels = torch.tensor([0, 1, 0, 1, 2])
    assert not torch.allclose(supcon_loss(x, labels), supcon_loss(x, labels, normalize=False))
    assert torch.allclose(supcon_loss(x, labels), supcon_loss(F.normalize(x, dim=1), labels, normalize=False), atol=1e-6)
    assert torch.allclose(triplet_loss(x, y), triplet_loss(F.normalize(x, dim=1), F.normalize(y, dim=1), normalize=False))
    assert not torch.allclose(triplet_loss(x, y), triplet_loss(x, y, normalize=False))


def test_triplet_smallest_batch_is_two():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert triplet_loss(x, x).item() == 0.0                  # two orthogonal pairs: margin 0.2 < 1 - 0
    assert triplet_loss(x, x.flip(0)).item() == pytest.approx(1.2)


class _FakeGroup:
    "Stands in for torch.distributed as process `rank` of `world`: peer p's rows are this rank's rows + 10 * p."
    def __init__(self, rank, world): self.rank, self.world, self.gathers, self.reduced = rank, world, 0, []
    def is_available(self): return True
    def is_initialized(self): return True
    def get_rank(self): return self.rank
    def get_world_size(self): return self.world
    def all_gather(self, out, x):
        self.gathers += 1
        for p in range(self.world): out[p].copy_(x + 10 * (p - self.rank))
    def all_reduce(self, t, op=None):
        self.reduced.append(op); t.mul_(self.world)   # every peer sent the same gradient
    ReduceOp = torch.distributed.ReduceOp


def test_gather_with_grad_rows_and_gradient(monkeypatch):
    "Rank 1 of 3: forward stacks every rank's rows in rank order; backward sums over ranks and keeps rank 1's rows."
    import mmlab.losses as L
    fake = _FakeGroup(rank=1, world=3)
    monkeypatch.setattr(L, "dist", fake)
    x = torch.arange(6.0).reshape(2, 3).requires_grad_(True)
    out = L.gather_with_grad(x)
    assert out.shape == (6, 3) and fake.gathers == 1
    assert torch.equal(out.detach(), torch.cat([x.detach() - 10, x.detach(), x.detach() + 10]))
    w = torch.arange(18.0).reshape(6, 3)
    (out * w).sum().backward()
    assert fake.reduced == [torch.distributed.ReduceOp.SUM]
    assert torch.equal(x.grad, 3 * w[2:4])                    # rank 1's rows of the summed gradient
    fake.world = 1                                            # one process: nothing to gather
    assert L.gather_with_grad(x) is x and fake.gathers == 1


def test_gather_is_opt_in(monkeypatch):
    "Inside a process group clip_loss gathers only when asked (gather=False is the default)."
    import mmlab.losses as L
    fake = _FakeGroup(rank=0, world=2)
    monkeypatch.setattr(L, "dist", fake)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    plain = L.clip_loss(x, y, 1.0)
    assert fake.gathers == 0
    gathered = L.clip_loss(x, y, 1.0, gather=True)
    assert fake.gathers == 2 and not torch.allclose(plain, gathered)


def test_gather_check_worker_in_one_process(tmp_path):
    "The worker that distributed_clip_loss_check spawns, run here as the only rank: it reports the single-process loss."
    import mmlab.losses as L
    got = []
    class Queue:
        def put(self, item): got.append(item)
    L._gather_check_worker(0, 1, str(tmp_path / "rendezvous"), 3, 5, 11, Queue())
    assert not torch.distributed.is_initialized()             # the group is torn down
    (rank, loss, gi, gt), = got
    g = torch.Generator().manual_seed(11)
    img = torch.randn(3, 5, generator=g).requires_grad_(True)
    txt = torch.randn(3, 5, generator=g).requires_grad_(True)
    ref = clip_loss(img, txt, LOGIT_SCALE_INIT); ref.backward()
    assert rank == 0 and loss == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(torch.tensor(gi), img.grad, atol=1e-7) and torch.allclose(torch.tensor(gt), txt.grad, atol=1e-7)


def test_gather_without_a_process_group_is_the_identity():
    import mmlab.losses as L
    assert not torch.distributed.is_initialized()
    x = torch.randn(3, 4)
    assert L.gather_with_grad(x) is x


def test_gather_check_worker_as_rank_1_of_2_with_a_simulated_group(monkeypatch):
    """The spawned worker, run here as rank 1 of 2: a simulated group hands it rank 0's rows (every rank draws the same
    data from the seed) and sums gradients as W identical copies (every rank's loss is the same function of the batch)."""
    import mmlab.losses as L
    W, B, D, seed = 2, 3, 5, 11
    g = torch.Generator().manual_seed(seed)
    full = [torch.randn(W * B, D, generator=g), torch.randn(W * B, D, generator=g)]   # images, then texts
    calls = {"init": None, "gathered": 0, "destroyed": False}
    class Simulated(_FakeGroup):
        def init_process_group(self, backend, init_method, rank, world_size): calls["init"] = (backend, rank, world_size)
        def destroy_process_group(self): calls["destroyed"] = True
        def all_gather(self, out, x):
            src = full[calls["gathered"]]; calls["gathered"] += 1
            assert torch.equal(x, src[self.rank * B:(self.rank + 1) * B])                  # the worker sends its own rows
            for p in range(W): out[p].copy_(src[p * B:(p + 1) * B])
    monkeypatch.setattr(L, "dist", Simulated(rank=1, world=W))
    got = []
    class Queue:
        def put(self, item): got.append(item)
    L._gather_check_worker(1, W, "unused", B, D, seed, Queue())
    assert calls["init"][0].lower() == "gloo" and calls["init"][1:] == (1, W) and calls["destroyed"] and calls["gathered"] == 2
    img, txt = (t.clone().requires_grad_(True) for t in full)
    ref = clip_loss(img, txt, LOGIT_SCALE_INIT); ref.backward()
    (rank, loss, gi, gt), = got
    assert rank == 1 and loss == pytest.approx(ref.item(), abs=1e-6)
    torch.testing.assert_close(torch.tensor(gi), img.grad[B:], atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(gt), txt.grad[B:], atol=1e-7, rtol=1e-5)

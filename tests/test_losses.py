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

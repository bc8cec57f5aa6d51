"Liquid cells and spiking neurons against their reference packages (ncps, snntorch), padding, time, and bad input."
import math

import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from mmlab.neuro import (CfC, LIF, LTC, ModalityConfig, ModalityEncoder, latency_encode, ncps_parity, rate_encode,
                         snntorch_parity, spike)

ncps_torch = pytest.importorskip("ncps.torch")
snntorch = pytest.importorskip("snntorch")
from snntorch import spikegen, surrogate  # noqa: E402

torch.set_num_threads(1)
FAST = hsettings(max_examples=20, deadline=None)


def _per_sample_reference(ref, x, h0, ts, c0=None):
    "ncps squeezes per-step times to (B,), which breaks batches of several timed sequences: run it one at a time."
    state = (lambda i: (h0[i:i + 1], c0[i:i + 1])) if c0 is not None else (lambda i: h0[i:i + 1])
    outs = [ref(x[i:i + 1], state(i), ts[i:i + 1, :, None]) for i in range(len(x))]
    cat = lambda o: torch.cat(o, -1) if isinstance(o, tuple) else o
    return torch.cat([o[0] for o in outs]), torch.cat([cat(o[1]) for o in outs])


def _perturbed(module):
    "Every trainable parameter moved off its initial value (input maps of ones and zeros, reversal potentials of +-1 ...)."
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad: p.mul_(1 + 0.3 * torch.rand_like(p)).add_(0.2 * torch.randn_like(p))
    return module


@FAST
@given(B=st.integers(1, 3), L=st.integers(1, 6), I=st.integers(1, 4), H=st.integers(1, 6),
       mode=st.sampled_from(["default", "no_gate", "pure"]), layers=st.integers(0, 2), bu=st.integers(1, 9),
       act=st.sampled_from(["lecun_tanh", "relu", "gelu", "silu", "tanh"]), seed=st.integers(0, 10_000),
       tmax=st.floats(0.0, 6.0), mixed=st.booleans())
def test_cfc_equals_ncps_on_irregular_times(B, L, I, H, mode, layers, bu, act, seed, tmax, mixed):
    g = torch.Generator().manual_seed(seed)
    x, h0, ts = torch.randn(B, L, I, generator=g), torch.randn(B, H, generator=g), tmax * torch.rand(B, L, generator=g)
    c0 = torch.randn(B, H, generator=g) if mixed else None
    torch.manual_seed(seed)
    ref = _perturbed(ncps_torch.CfC(I, H, mode=mode, activation=act, backbone_units=bu, backbone_layers=layers, mixed_memory=mixed))
    ours = CfC.from_ncps(ref)
    y_ref, h_ref = _per_sample_reference(ref, x, h0, ts, c0)
    y, h = ours(x, (h0, c0) if mixed else h0, ts)
    if mixed: h = torch.cat(h, -1)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


@FAST
@given(B=st.integers(1, 3), L=st.integers(1, 5), I=st.integers(1, 4), H=st.integers(1, 6), unfolds=st.integers(1, 6),
       seed=st.integers(0, 10_000), tmin=st.floats(0.01, 1.0), scale=st.floats(0.1, 5.0), mixed=st.booleans())
def test_ltc_equals_ncps_on_irregular_times(B, L, I, H, unfolds, seed, tmin, scale, mixed):
    g = torch.Generator().manual_seed(seed)
    x, h0 = torch.randn(B, L, I, generator=g), 0.3 * torch.randn(B, H, generator=g)
    ts = tmin + scale * torch.rand(B, L, generator=g)
    c0 = torch.randn(B, H, generator=g) if mixed else None
    torch.manual_seed(seed)
    ref = _perturbed(ncps_torch.LTC(I, H, ode_unfolds=unfolds, mixed_memory=mixed))
    ours = LTC.from_ncps(ref)
    y_ref, h_ref = _per_sample_reference(ref, x, h0, ts, c0)
    y, h = ours(x, (h0, c0) if mixed else h0, ts)
    if mixed: h = torch.cat(h, -1)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,options", [("cfc", {}), ("cfc", {"mode": "pure"}), ("cfc", {"backbone_layers": 2}),
                                          ("cfc", {"mixed_memory": True}), ("ltc", {}), ("ltc", {"ode_unfolds": 3}),
                                          ("ltc", {"mixed_memory": True})])
def test_parity_helper_gaps_are_tiny_including_gradients(kind, options):
    gaps = ncps_parity(kind, backbone_units=16, **options) if kind == "cfc" else ncps_parity(kind, **options)
    assert set(gaps) == {"output", "state", "input_grad"} and max(gaps.values()) < 1e-5


def test_from_ncps_copies_weights_and_refuses_what_it_does_not_reproduce():
    torch.manual_seed(0)
    ref = ncps_torch.CfC(3, 4, backbone_units=5, backbone_layers=2)
    ours = CfC.from_ncps(ref)
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(v, v2), (k, k2)
    from ncps.wirings import AutoNCP
    for bad in (ncps_torch.CfC(3, 4, proj_size=2), ncps_torch.CfC(3, AutoNCP(8, 2)),
                ncps_torch.CfC(3, 4, backbone_layers=2, backbone_dropout=0.5), ncps_torch.CfC(3, 4, batch_first=False)):
        with pytest.raises(ValueError, match="CfC.from_ncps"): CfC.from_ncps(bad)
    from ncps.wirings import FullyConnected
    for bad in (ncps_torch.LTC(3, 4, implicit_param_constraints=False), ncps_torch.LTC(3, FullyConnected(4, self_connections=False)),
                ncps_torch.LTC(3, AutoNCP(8, 2)), ncps_torch.LTC(3, 4, input_mapping="linear"),
                ncps_torch.LTC(3, 4, output_mapping="linear"), ncps_torch.LTC(3, FullyConnected(4, output_dim=2)),
                ncps_torch.LTC(3, 4, batch_first=False)):
        with pytest.raises(ValueError, match="LTC.from_ncps"): LTC.from_ncps(bad)
    ltc_ref = ncps_torch.LTC(2, 3)
    ltc = LTC.from_ncps(ltc_ref)
    assert torch.equal(ltc.cell.erev, ltc_ref.rnn_cell.erev) and ltc.cell.ode_unfolds == 6


@pytest.mark.parametrize("cls,mixed", [(CfC, False), (LTC, False), (CfC, True)])
def test_padding_holds_the_state_and_batch_rows_are_independent(cls, mixed):
    torch.manual_seed(0)
    net = cls(3, 5, mixed_memory=mixed)
    lengths = [4, 1, 6]
    x, ts = torch.randn(3, 6, 3), 0.2 + torch.rand(3, 6)
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    y, h = net(x, timespans=ts, mask=mask)
    flat = lambda s: torch.cat(s, -1) if isinstance(s, tuple) else s
    h = flat(h)
    for i, n in enumerate(lengths):
        yi, hi = net(x[i:i + 1, :n], timespans=ts[i:i + 1, :n])
        hi = flat(hi)
        torch.testing.assert_close(h[i], hi[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(y[i, :n], yi[0], atol=1e-6, rtol=1e-6)
        if n < 6: torch.testing.assert_close(y[i, n:], yi[0, -1:].expand(6 - n, -1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", [CfC, LTC])
def test_timespans_forms_agree_and_time_changes_the_result(cls):
    torch.manual_seed(1)
    net, x = cls(2, 4), torch.randn(2, 5, 2)
    base = net(x)[0]
    for same in (1.0, torch.ones(5), torch.ones(2, 5), torch.ones(2, 5, 1)):
        torch.testing.assert_close(net(x, timespans=same)[0], base)
    assert not torch.allclose(net(x, timespans=3.0)[0], base, atol=1e-3)
    torch.testing.assert_close(net(x, timespans=torch.full((2, 5), 0.5))[0], net(x, timespans=0.5)[0])


def test_cfc_elapsed_time_enters_only_through_the_gate():
    "At dt -> inf the default CfC state tends to one head or the other, unit by unit, following the sign of time_a."
    torch.manual_seed(2)
    cell = CfC(2, 3, backbone_units=4).cell
    x, h = torch.randn(1, 2), torch.zeros(1, 3)
    z = cell.backbone(torch.cat([x, h], -1))
    f, g, a = torch.tanh(cell.ff1(z)), torch.tanh(cell.ff2(z)), cell.time_a(z)
    far = cell(x, h, torch.tensor([[1e4]]))[1]
    torch.testing.assert_close(far, torch.where(a > 0, g, f))
    pure = CfC(2, 3, mode="pure", backbone_units=4).cell
    torch.testing.assert_close(pure(x, h, torch.tensor([[1e4]]))[1], pure.A.expand(1, 3))   # relaxes to A


def test_liquid_cells_refuse_bad_input():
    net, ltc = CfC(3, 4), LTC(3, 4)
    for kw, msg in [(dict(x=torch.randn(5, 3)), "batch-first"), (dict(x=torch.randn(2, 5, 4)), r"\(B, L, 3\)"),
                    (dict(x=torch.randint(0, 3, (2, 5, 3))), "float"), (dict(x=torch.randn(2, 0, 3)), "L = 0"),
                    (dict(x=torch.randn(2, 5, 3), hx=torch.zeros(2, 3)), "hx"),
                    (dict(x=torch.randn(2, 5, 3), timespans=torch.ones(2, 4)), "timespans"),
                    (dict(x=torch.randn(2, 5, 3), timespans=-1.0), ">= 0"),
                    (dict(x=torch.randn(2, 5, 3), timespans=float("nan")), "finite"),
                    (dict(x=torch.randn(2, 5, 3), mask=torch.ones(2, 5)), "mask")]:
        with pytest.raises(ValueError, match=msg): net(**kw)
    with pytest.raises(ValueError, match="> 0"): ltc(torch.randn(2, 5, 3), timespans=0.0)
    ltc(torch.randn(2, 5, 3), timespans=torch.zeros(2, 5), mask=torch.zeros(2, 5, dtype=torch.bool))   # padding may have any time
    with pytest.raises(ValueError, match="mode"): CfC(3, 4, mode="fast")
    with pytest.raises(ValueError, match="activation"): CfC(3, 4, activation="swish")
    with pytest.raises(ValueError, match=">= 1"): LTC(0, 4)
    mixed = CfC(3, 4, mixed_memory=True)
    with pytest.raises(ValueError, match="pair"): mixed(torch.randn(2, 5, 3), hx=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="hx"): mixed(torch.randn(2, 5, 3), hx=(torch.zeros(2, 4), torch.zeros(3, 4)))


def _snn_run(ref, cur):
    mem, spk, mems = ref.init_leaky(), [], []
    for t in range(cur.shape[1]):
        s, mem = ref(cur[:, t], mem); spk.append(s); mems.append(mem)
    return torch.stack(spk, 1), torch.stack(mems, 1)


@FAST
@given(beta=st.floats(0.0, 1.0), threshold=st.floats(0.1, 3.0), reset=st.sampled_from(["subtract", "zero"]),
       sur=st.sampled_from(["atan", "fast_sigmoid"]), scale=st.floats(0.5, 30.0), T=st.integers(1, 40),
       seed=st.integers(0, 10_000), mean=st.floats(-0.5, 1.5))
def test_lif_equals_snntorch_leaky(beta, threshold, reset, sur, scale, T, seed, mean):
    g = torch.Generator().manual_seed(seed)
    cur = mean * threshold + 0.7 * threshold * torch.randn(3, T, 5, generator=g)
    grad = surrogate.atan(alpha=scale) if sur == "atan" else surrogate.fast_sigmoid(slope=scale)
    ref = snntorch.Leaky(beta=beta, threshold=threshold, reset_mechanism=reset, spike_grad=grad)
    ours = LIF(beta, threshold, reset, sur, scale)
    cr, co = cur.clone().requires_grad_(True), cur.clone().requires_grad_(True)
    s_ref, m_ref = _snn_run(ref, cr)
    s, m = ours.unroll(co)
    torch.testing.assert_close(m, m_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(s, s_ref)
    w = torch.linspace(0.5, 2.0, T)[None, :, None]
    (w * s_ref + 0.1 * m_ref).sum().backward(); (w * s + 0.1 * m).sum().backward()
    torch.testing.assert_close(co.grad, cr.grad, atol=1e-5, rtol=1e-4)


def test_lif_parity_helper_and_hand_values():
    for r, count in (("subtract", 1627), ("zero", 1496)):      # the defaults drive this many spikes (printed in the notebook)
        gaps = snntorch_parity(reset_mechanism=r)
        assert gaps["membrane"] < 1e-6 and gaps["spike_mismatches"] == 0 and gaps["spikes"] == count and gaps["input_grad"] < 1e-6
    spk, mem = LIF(0.5).unroll(torch.full((1, 4, 1), 0.8))
    assert mem.flatten().tolist() == pytest.approx([0.8, 1.2, 0.4, 1.0]) and spk.flatten().tolist() == [0, 1, 0, 0]
    spk, mem = LIF(0.5, threshold=2.0).unroll(torch.full((1, 3, 1), 1.5))
    assert mem.flatten().tolist() == pytest.approx([1.5, 2.25, 0.625]) and spk.flatten().tolist() == [0, 1, 0]
    s, m = LIF(1.0)(torch.tensor([0.3]), torch.tensor([0.9]))       # no leak: 0.9 + 0.3 crosses 1
    assert s.item() == 1 and m.item() == pytest.approx(1.2)


def test_surrogate_gradients_and_errors():
    u = torch.linspace(-2, 2, 9, requires_grad=True)
    spike(u, "fast_sigmoid", 5.0).sum().backward()
    torch.testing.assert_close(u.grad, 1 / (5 * u.detach().abs() + 1) ** 2)
    u.grad = None
    spike(u, "atan", 3.0).sum().backward()
    torch.testing.assert_close(u.grad, 1.5 / (1 + (math.pi * 1.5 * u.detach()) ** 2))
    assert spike(torch.tensor([0.0, 1e-6], dtype=torch.bfloat16)).dtype == torch.bfloat16
    for kw, msg in [(dict(beta=-0.1), "beta"), (dict(beta=0.5, threshold=-1), "threshold"),
                    (dict(beta=0.5, reset_mechanism="none"), "reset_mechanism"), (dict(beta=0.5, surrogate="step"), "surrogate")]:
        with pytest.raises(ValueError, match=msg): LIF(**kw)
    with pytest.raises(ValueError, match="shape"): LIF(0.5)(torch.zeros(2, 3), torch.zeros(3))


@FAST
@given(K=st.integers(1, 30), seed=st.integers(0, 10_000), shape=st.sampled_from([(4,), (3, 5), (2, 3, 4)]))
def test_rate_coding_equals_spikegen_rate_draw_for_draw(K, seed, shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed); ours = rate_encode(x, K)
    torch.manual_seed(seed); ref = spikegen.rate(x, num_steps=K)
    assert ours.shape == (shape[0], K, *shape[1:]) and torch.equal(ours, ref.movedim(0, 1))


@FAST
@given(K=st.integers(2, 30), seed=st.integers(0, 10_000), thr=st.floats(0.001, 0.9), clip=st.booleans())
def test_latency_coding_equals_spikegen_latency(K, seed, thr, clip):
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(seed))
    x[0, :3] = torch.tensor([0.0, 1.0, thr / 2])
    ours = latency_encode(x, K, threshold=thr, clip=clip)
    ref = spikegen.latency(x, num_steps=K, threshold=thr, linear=True, normalize=True, clip=clip)
    assert torch.equal(ours, ref.movedim(0, 1))
    assert (ours.sum(1) <= 1).all() and (clip or (ours.sum(1) == 1).all())


def test_spike_coding_statistics_and_errors():
    x = torch.rand(4000, 1)
    g = torch.Generator().manual_seed(0)
    assert abs(rate_encode(x, 40, g).mean().item() - x.mean().item()) < 0.01
    a, b = rate_encode(x[:50], 8, torch.Generator().manual_seed(1)), rate_encode(x[:50], 8, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, rate_encode(x[:50], 8, torch.Generator().manual_seed(2)))   # the generator decides
    lat = latency_encode(torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0]]), 5)[0]
    assert lat.argmax(0).tolist() == [0, 1, 2, 3, 4] and lat.sum().item() == 5
    for f, args, msg in [(rate_encode, (torch.tensor([[1.2]]), 3), r"rate_encode: values must lie in \[0, 1\]"),
                         (rate_encode, (torch.tensor([[0.2]]), 0), "rate_encode: num_steps"),
                         (latency_encode, (torch.tensor([[0.2]]), 1), "latency_encode: num_steps"),
                         (latency_encode, (torch.tensor([[-0.1]]), 4), r"latency_encode: values must lie in \[0, 1\]"),
                         (latency_encode, (torch.tensor([[0.2]]), 4, 1.0), "latency_encode: threshold"),
                         (rate_encode, (torch.tensor([1, 0]), 3), "rate_encode: x must be a float")]:
        with pytest.raises(ValueError, match=msg): f(*args)


@pytest.mark.parametrize("backbone", ["cfc", "ltc"])
def test_modality_encoder_padding_time_and_spike_count(backbone):
    torch.manual_seed(0)
    enc = ModalityEncoder(kind="sensor", in_channels=3, time_channel=0, time_scale=0.1, backbone=backbone, liquid_units=8,
                          spiking_units=6, encoder_dim=5, num_spike_steps=3)
    t = torch.cumsum(0.05 + 0.1 * torch.rand(2, 7), 1)
    x = torch.cat([t[..., None], 3 * torch.randn(2, 7, 2)], -1)
    out = enc(x)
    st_ = enc.spike_train(x)
    assert out.pooled.shape == (2, 8) and out.tokens.shape == (2, 7, 8)
    assert torch.allclose(st_.rates * 3, (st_.rates * 3).round()) and st_.rates.max() <= 1
    assert torch.allclose(out.spikes, st_.rates.sum((1, 2)) * 3) and out.spikes.sum() > 0 and torch.equal(out.spikes, out.spikes.round())
    torch.testing.assert_close(st_.timespans, torch.diff(t, prepend=torch.zeros(2, 1)) / 0.1)
    padded = torch.cat([x, torch.randn(2, 3, 3)], 1)
    mask = torch.arange(10)[None] < 7
    out2 = enc(padded, mask.expand(2, -1))
    torch.testing.assert_close(out2.pooled, out.pooled, atol=1e-6, rtol=1e-6)
    assert torch.equal(out2.spikes, out.spikes)
    bad = x.clone(); bad[0, 3, 0] = 0.0
    with pytest.raises(ValueError, match="must not decrease"): enc(bad)


def test_modality_config_refuses_bad_values():
    for kw, msg in [(dict(kind="lidar"), "kind"), (dict(kind="vision", backbone="lstm"), "backbone"),
                    (dict(kind="vision", liquid_units=0), "liquid_units"), (dict(kind="text"), "vocab_size"),
                    (dict(kind="sensor", in_channels=3, time_channel=3), "time_channel"),
                    (dict(kind="sensor", in_channels=3, time_scale=0), "time_scale")]:
        with pytest.raises(ValueError, match=msg): ModalityConfig(**kw)
    enc = ModalityEncoder(ModalityConfig(kind="text", vocab_size=10), liquid_units=4)
    assert enc.out_dim == 4 and enc.config.vocab_size == 10
    with pytest.raises(ValueError, match="token ids"): enc(torch.randint(0, 20, (2, 3)))
    with pytest.raises(ValueError, match="integer"): enc(torch.rand(2, 3))


# ---- the fusion network: presence masks, the four strategies' promises, bad input ----

from dataclasses import replace  # noqa: E402

from mmlab.data.schema import Batch  # noqa: E402
from mmlab.neuro import CrossModalAttentionFusion, FusionStrategy, MultiModalFusionNetwork  # noqa: E402

_CONFIGS = {"vision": dict(kind="vision", liquid_units=8, spiking_units=8, encoder_dim=8),
            "sensor": dict(kind="sensor", in_channels=4, time_channel=0, time_scale=0.1, liquid_units=8, spiking_units=8, encoder_dim=8),
            "text": dict(kind="text", vocab_size=20, liquid_units=8, spiking_units=8, encoder_dim=8)}


def _toy_batch(B=5, seed=0, present=None):
    g = torch.Generator().manual_seed(seed)
    t = torch.cumsum(0.05 + 0.1 * torch.rand(B, 6, generator=g), 1)
    lengths = torch.randint(2, 7, (B,), generator=g)
    ids = torch.randint(1, 20, (B, 5), generator=g)
    ids[0, 3:] = 0
    present = present or {m: torch.rand(B, generator=g) > 0.4 for m in _CONFIGS}
    present["vision"] = present["vision"] | ~(present["sensor"] | present["text"])     # one modality at least
    return Batch({"vision": torch.rand(B, 3, 16, 16, generator=g),
                  "sensor": torch.cat([t[..., None], torch.randn(B, 6, 3, generator=g)], -1), "text": ids},
                 present, pad_mask={"sensor": torch.arange(6)[None] < lengths[:, None], "text": ids != 0},
                 labels={"label": torch.randint(0, 3, (B,), generator=g)})


def _scramble(batch, seed):
    "Absent modalities' values, and padded sensor readings, replaced by noise."
    g = torch.Generator().manual_seed(seed)
    inputs = {}
    for m, x in batch.inputs.items():
        keep = batch.mask[m].view(-1, *[1] * (x.dim() - 1))
        noise = torch.randint(1, 20, x.shape, generator=g) if m == "text" else 100 * torch.randn(x.shape, generator=g)
        inputs[m] = torch.where(keep, x, noise)
    pad = batch.pad_mask["sensor"][..., None]
    inputs["sensor"] = torch.where(pad, inputs["sensor"], torch.randn(inputs["sensor"].shape, generator=g))
    return replace(batch, inputs=inputs, pad_mask=dict(batch.pad_mask, text=inputs["text"] != 0))


@hsettings(max_examples=12, deadline=None)
@given(strategy=st.sampled_from(list(FusionStrategy)), seed=st.integers(0, 1000))
def test_absent_modalities_and_padding_never_reach_the_output(strategy, seed):
    torch.manual_seed(seed)
    net = MultiModalFusionNetwork(_CONFIGS, strategy, fusion_dim=16, output_dim=3).eval()
    batch = _toy_batch(seed=seed)
    a, b = net(batch), net(_scramble(batch, seed + 1))
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.spikes, b.spikes)


@pytest.mark.parametrize("strategy", list(FusionStrategy))
def test_every_strategy_trains_reports_spikes_and_weights(strategy):
    torch.manual_seed(0)
    net = MultiModalFusionNetwork(_CONFIGS, strategy.value, fusion_dim=16, output_dim=3)
    batch = _toy_batch(B=6)
    out = net(batch, return_features=True, return_attention=True)
    assert out.logits.shape == (6, 3) and out.loss.dim() == 0 and torch.equal(out.labels, batch.target())
    out.loss.backward()
    grads = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.endswith("current.weight") for n in grads)                 # the surrogate gradient reaches the spiking layer
    # spikes: the sum over present modalities of each encoder's count
    fronts = net.fronts if strategy is FusionStrategy.EARLY else {m: e.front for m, e in net.encoders.items()}
    expected = sum(fronts[m](batch.inputs[m], batch.pad_mask.get(m), batch.mask[m]).spikes for m in _CONFIGS)
    torch.testing.assert_close(out.spikes, expected)
    if strategy in (FusionStrategy.LATE, FusionStrategy.HYBRID):
        w, present = out.modality_weights, torch.stack([batch.mask[m] for m in _CONFIGS], 1)
        assert (w[~present] == 0).all() and torch.allclose(w.sum(1), torch.ones(6))
    else: assert out.modality_weights is None
    if strategy in (FusionStrategy.HYBRID, FusionStrategy.HIERARCHICAL): assert out.attention
    assert set(out.features) == ({"joint"} if strategy is FusionStrategy.EARLY else set(_CONFIGS))


def test_late_fusion_with_a_modality_absent_is_the_weighted_vote_of_the_others():
    torch.manual_seed(1)
    net = MultiModalFusionNetwork(_CONFIGS, "late", fusion_dim=16, output_dim=3).eval()
    with torch.no_grad(): net.logit_weights.copy_(torch.tensor([0.3, -0.2, 1.0]))
    present = {"vision": torch.tensor([True, True, False]), "sensor": torch.tensor([False, True, True]),
               "text": torch.tensor([True, False, True])}
    batch = _toy_batch(B=3, present=present)
    out = net(batch, return_features=True)
    for i in range(3):
        on = [m for m in _CONFIGS if present[m][i]]
        w = torch.softmax(net.logit_weights[[list(_CONFIGS).index(m) for m in on]], 0)
        manual = sum(wi * net.late_heads[m](out.features[m][i:i + 1])[0] for wi, m in zip(w, on))
        torch.testing.assert_close(out.logits[i], manual)
    alone = _toy_batch(B=3, present={m: torch.tensor([m == "sensor"] * 3) for m in _CONFIGS})
    out = net(alone, return_features=True)
    torch.testing.assert_close(out.logits, net.late_heads["sensor"](out.features["sensor"]))   # one modality: weight 1


def test_hybrid_with_one_modality_present_is_its_own_path():
    "With only the first modality present it has no partner: hybrid = joint head on its own tokens + its late head."
    torch.manual_seed(2)
    only = {m: torch.tensor([m == "vision"] * 4) for m in _CONFIGS}
    batch = _toy_batch(B=4, present=only)
    net = MultiModalFusionNetwork(_CONFIGS, "hybrid", fusion_dim=16, output_dim=3).eval()
    out = net(batch, return_features=True)
    enc = net.encoders["vision"](batch.inputs["vision"])
    tok = net.proj["vision"](enc.tokens) + net.type_emb[0]
    manual = net.head(tok.mean(1)) + net.late_heads["vision"](enc.pooled)   # alone: its tokens pass the fusion unchanged
    torch.testing.assert_close(out.logits, manual, atol=1e-5, rtol=1e-5)


def test_cross_modal_fusion_is_parallel_and_masks_keys():
    torch.manual_seed(3)
    fuse = CrossModalAttentionFusion(["a", "b"], 8, 2).eval()
    toks = {"a": torch.randn(2, 3, 8), "b": torch.randn(2, 4, 8)}
    masks = {"a": torch.ones(2, 3, dtype=torch.bool), "b": torch.tensor([[True, True, False, False], [True] * 4])}
    out, w = fuse(toks, masks, need_weights=True)
    assert (w["a"][0, :, :, 2:] == 0).all() and torch.allclose(w["a"].sum(-1), torch.ones(2, 2, 3))
    swapped = CrossModalAttentionFusion(["b", "a"], 8, 2).eval()
    swapped.load_state_dict(fuse.state_dict())
    out2, _ = swapped(toks, masks)
    for m in "ab": torch.testing.assert_close(out[m], out2[m], atol=1e-6, rtol=1e-6)   # order-free: parallel updates
    with pytest.raises(ValueError, match="2 or more"): CrossModalAttentionFusion(["a"], 8, 2)
    with pytest.raises(KeyError, match="expected tokens"): fuse({"a": toks["a"]}, masks)


def test_network_refuses_bad_configuration_and_batches():
    for kw, err, msg in [(dict(modality_configs={"vision": _CONFIGS["vision"]}), ValueError, "2 or more"),
                         (dict(fusion_strategy="middle"), ValueError, "fusion_strategy"), (dict(output_dim=1), ValueError, "output_dim"),
                         (dict(fusion_dim=10, num_attention_heads=4), ValueError, "divisible")]:
        with pytest.raises(err, match=msg): MultiModalFusionNetwork(**{"modality_configs": _CONFIGS, **kw})
    net = MultiModalFusionNetwork(_CONFIGS, "late", fusion_dim=16, output_dim=3)
    batch = _toy_batch()
    two = Batch({k: v for k, v in batch.inputs.items() if k != "text"}, {k: v for k, v in batch.mask.items() if k != "text"})
    with pytest.raises(KeyError, match="lacks modalities"): net(two)
    with pytest.raises(ValueError, match="presence mask"): net(replace(batch, mask=dict(batch.mask, text=torch.ones(5))))
    with pytest.raises(TypeError, match="Batch"): net({"inputs": batch.inputs})
    from dataclasses import asdict
    again = MultiModalFusionNetwork.from_config(asdict(net.config))
    assert again.config == net.config
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in net.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", list(FusionStrategy))
def test_bf16_autocast_forward_and_backward_agree_with_fp32_on_cuda(strategy):
    "bf16 autocast on a GPU: logits within 0.1 of fp32 (spike thresholds may flip a few units), gradients finite."
    torch.manual_seed(0)
    net = MultiModalFusionNetwork(_CONFIGS, strategy, fusion_dim=16, output_dim=3).cuda().eval()
    b = _toy_batch(B=8).to("cuda")
    ref = net(b)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = net(b)
    assert (low.logits.float() - ref.logits).abs().max().item() < 0.1
    low.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_applications_are_presets_of_the_network_and_run_on_their_data():
    from mmlab.data.synth import ROBOT_ACTIONS, ROBOT_CHANNELS, make_robot_navigation
    from mmlab.neuro import (ROBOT_TIME_SCALE, AudioVideoModel, RobotMultiSensorModel, TriModalModel, VisionLanguageModel,
                             liquid_configs)
    from mmlab.recipes import collate_all
    small = dict(encoder_options=dict(encoder_dim=8, spiking_units=8, liquid_units=8), fusion_dim=16)
    apps = {VisionLanguageModel(30, 3, **small): (["vision", "text"], 3), AudioVideoModel(10, **small): (["vision", "audio"], 10),
            RobotMultiSensorModel(**small): (["vision", "sensor"], len(ROBOT_ACTIONS)),
            TriModalModel(30, 4, fusion_strategy="late", **small): (["vision", "audio", "text"], 4)}
    for model, (mods, C) in apps.items():
        assert model.modalities == mods and model.output_dim == C and all(c.liquid_units == 8 for c in model.configs.values())
    robot = next(m for m in apps if isinstance(m, RobotMultiSensorModel))
    s = robot.configs["sensor"]
    assert (s.in_channels, s.time_channel, s.time_scale) == (len(ROBOT_CHANNELS), 0, ROBOT_TIME_SCALE)
    assert robot.strategy is FusionStrategy.HYBRID and apps_config_roundtrip(robot)
    batch = collate_all(make_robot_navigation(6, seed=0, drop=0.3, cache=False), ["vision", "sensor"], ["label"])
    out = robot(batch)
    assert out.logits.shape == (6, 4) and out.loss is not None and (out.spikes >= 0).all()
    cfgs = liquid_configs({"vision": dict(kind="vision", in_channels=1, out_dim=32), "text": dict(kind="text", vocab_size=9)},
                          {"text": dict(num_spike_steps=2)}, liquid_units=5)
    assert cfgs["vision"].in_channels == 1 and cfgs["text"].vocab_size == 9 and cfgs["text"].num_spike_steps == 2
    assert cfgs["vision"].num_spike_steps == 4 and all(c.liquid_units == 5 for c in cfgs.values())


def apps_config_roundtrip(model):
    from dataclasses import asdict
    again = MultiModalFusionNetwork.from_config(asdict(model.config))
    return again.config == model.config and again.configs == model.configs


def test_spike_train_is_the_front_end_and_absent_rows_are_silent():
    torch.manual_seed(4)
    enc = ModalityEncoder(kind="text", vocab_size=12, spiking_units=6, encoder_dim=5, liquid_units=4)
    ids = torch.randint(1, 12, (3, 5))
    present = torch.tensor([True, False, True])
    pad = torch.tensor([[True] * 5, [True] * 5, [True, True, True, False, False]])
    a, b = enc.spike_train(ids, pad, present), enc.front(ids, pad, present)
    for k in ("rates", "mask", "timespans", "spikes"): torch.testing.assert_close(getattr(a, k), getattr(b, k))
    assert a.mask.tolist()[1] == [False] * 5 and a.spikes[1] == 0 and (a.rates[1] == 0).all()
    assert a.mask[2].tolist() == [True, True, True, False, False] and a.spikes[0] > 0
    out = enc(ids, pad, present)
    torch.testing.assert_close(out.spikes, a.spikes)
    assert (out.pooled[1] == 0).all()                     # an absent row never leaves the initial state
    with pytest.raises(ValueError, match="present"): enc(ids, pad, torch.ones(3))


def test_application_options_reach_the_network():
    from dataclasses import asdict
    from mmlab.neuro import AudioVideoModel, FusionNetworkConfig, RobotMultiSensorModel, TriModalModel, VisionLanguageModel
    enc = dict(encoder_dim=4, spiking_units=4, liquid_units=4, backbone="ltc")
    kw = dict(fusion_strategy="early", encoder_options=enc, fusion_dim=8, num_attention_heads=2, dropout=0.0, label_key="y")
    for model, expect in [(VisionLanguageModel(30, 5, image_channels=1, **kw), {"vision": 1, "text": 30}),
                          (AudioVideoModel(7, image_channels=3, sample_rate=16000, **kw), {"vision": 3, "audio": 16000}),
                          (RobotMultiSensorModel(3, sensor_channels=5, image_channels=1, time_scale=0.5, **kw), {"vision": 1, "sensor": 5}),
                          (TriModalModel(40, 6, image_channels=1, sample_rate=4000, **kw), {"vision": 1, "audio": 4000, "text": 40})]:
        c = model.config
        assert (c.fusion_strategy, c.fusion_dim, c.num_attention_heads, c.dropout, c.label_key) == ("early", 8, 2, 0.0, "y")
        assert c.output_dim == model.output_dim and all(m.backbone == "ltc" and m.liquid_units == 4 for m in model.configs.values())
        for m, v in expect.items():
            got = model.configs[m]
            assert v == {"vision": got.in_channels, "text": got.vocab_size, "audio": got.sample_rate, "sensor": got.in_channels}[m], (m, v)
        again = MultiModalFusionNetwork.from_config(c)                       # the dataclass itself, or asdict of it
        assert isinstance(c, FusionNetworkConfig) and again.config == c == MultiModalFusionNetwork.from_config(asdict(c)).config
    robot = RobotMultiSensorModel(3, sensor_channels=5, time_scale=0.5, **kw)
    assert robot.configs["sensor"].time_scale == 0.5 and robot.configs["sensor"].time_channel == 0 and robot.output_dim == 3


@pytest.mark.parametrize("strategy", [s.value for s in FusionStrategy])
def test_cli_trains_every_liquid_spiking_strategy(strategy, tmp_path, monkeypatch, capsys):
    "`mmlab train --encoder liquid-spiking --modalities vision text --fusion-strategy S --fusion-dim N --epochs 1`, then evaluate."
    import json
    from mmlab.cli import evaluate_main, train_main
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    rc = train_main(["--dataset", "trimodal", "--encoder", "liquid-spiking", "--modalities", "vision", "text", "--fusion-strategy",
                     strategy, "--fusion-dim", "16", "--epochs", "1", "--n-train", "48", "--n-val", "24", "--batch-size", "16",
                     "--output", str(out), "--no-progress"])
    trained = capsys.readouterr().out
    assert rc == 0 and f"trimodal/liquid-spiking-{strategy}" in trained
    meta = json.loads((out / "best" / "trainer_state.json").read_text())
    assert meta["model_config"]["fusion_strategy"] == strategy and meta["model_config"]["fusion_dim"] == 16
    assert set(meta["model_config"]["modality_configs"]) == {"vision", "text"}
    assert evaluate_main([str(out)]) == 0
    row = lambda text: [l for l in text.splitlines() if l.startswith(f"trimodal/liquid-spiking-{strategy}")]
    assert row(capsys.readouterr().out) == row(trained)


@pytest.mark.parametrize("strategy", list(FusionStrategy))
def test_a_network_with_its_last_modality_absent_equals_the_network_built_without_it(strategy):
    "Absent means absent: the output is the one of the same network, same weights, built without that modality."
    torch.manual_seed(5)
    full = MultiModalFusionNetwork(_CONFIGS, strategy, fusion_dim=16, output_dim=3).eval()
    without = MultiModalFusionNetwork({m: c for m, c in _CONFIGS.items() if m != "text"}, strategy, fusion_dim=16, output_dim=3).eval()
    state = {}
    for k, v in full.state_dict().items():
        if k.split(".")[1:2] == ["text"] or ".text." in k or (k.startswith("levels.") and k.split(".")[1] == "1"): continue
        if k == "type_emb": v = v[:2]
        if k == "logit_weights": v = v[:2]
        state[k] = v
    without.load_state_dict(state)                                     # every key fits: nothing missing, nothing extra
    batch = _toy_batch(B=6, present={"vision": torch.tensor([True, True, False, True, True, True]),
                                     "sensor": torch.tensor([True, False, True, True, False, True]), "text": torch.zeros(6, dtype=torch.bool)})
    two = Batch({m: batch.inputs[m] for m in ("vision", "sensor")}, {m: batch.mask[m] for m in ("vision", "sensor")},
                pad_mask={"sensor": batch.pad_mask["sensor"]}, labels=batch.labels)
    with torch.no_grad():
        a, b = full(batch), without(two)
        for n, p in full.named_parameters():                           # and the absent modality's own parameters do nothing
            if ".text." in n or n.split(".")[1:2] == ["text"]: p.add_(torch.randn_like(p))
        c = full(batch)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.logits, a.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.spikes, b.spikes)


def test_audio_and_feature_front_ends():
    "Audio: log-mel frames, a frame is real when its centre sample is, and the level is removed (a louder copy reads the same)."
    from mmlab.neuro import ModalityConfig, _Preprocess
    from mmlab.fusion import LogMel
    torch.manual_seed(0)
    pre = _Preprocess(ModalityConfig("audio", encoder_dim=8))
    wav = torch.randn(2, 2000)
    seq, mask, dt = pre(wav)
    frames = LogMel(8000)(wav).shape[-1]
    assert seq.shape == (2, frames, 8) and mask.all() and mask.dtype == torch.bool and (dt == 1).all()
    torch.testing.assert_close(pre(3 * wav)[0], seq, atol=1e-4, rtol=1e-4)
    keep = torch.ones(2, 2000, dtype=torch.bool); keep[1, 1000:] = False
    _, m, _ = pre(wav, keep)
    centres = (torch.arange(frames) * pre.logmel.hop).clamp(max=1999)
    assert torch.equal(m, keep[:, centres]) and not m[1].all() and m[0].all()
    with pytest.raises(ValueError, match=r"audio: expected a float \(B, samples\) waveform, got torch.int64"):
        pre(torch.ones(2, 2000, dtype=torch.long))
    with pytest.raises(ValueError, match=r"audio: expected a float \(B, samples\) waveform"): pre(torch.randn(2, 100))
    feat = _Preprocess(ModalityConfig("features", in_channels=5, encoder_dim=8))
    seq, mask, _ = feat(torch.randn(3, 5))
    assert seq.shape == (3, 1, 8) and mask.shape == (3, 1) and mask.all()
    with pytest.raises(ValueError, match=r"features: expected float \(B, 5\)"): feat(torch.randn(3, 4))
    text = _Preprocess(ModalityConfig("text", vocab_size=10, encoder_dim=4))
    with pytest.raises(ValueError, match=r"text: expected integer \(B, L\) token ids"): text(torch.rand(2, 3))

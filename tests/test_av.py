"""mmlab.av: SI-SDR and SDR against torchmetrics, bad input, the generators and the models' contracts."""
import math

import numpy as np
import pytest
import torch

from mmlab.av import sdr, si_sdr

tm = pytest.importorskip("torchmetrics.functional.audio", reason="torchmetrics (the `test` extra) is the SI-SDR reference")


@pytest.mark.parametrize("zero_mean", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_si_sdr_matches_torchmetrics(zero_mean, dtype):
    g = torch.Generator().manual_seed(3)
    ref = (torch.randn(4, 3, 2000, generator=g) + 0.5).to(dtype)             # a mean that zero_mean must remove
    est = ref + torch.randn(4, 3, 2000, generator=g).to(dtype) * torch.logspace(-2, 1, 3).to(dtype)[:, None]
    ours = si_sdr(est, ref, zero_mean=zero_mean)
    theirs = tm.scale_invariant_signal_distortion_ratio(est.double(), ref.double(), zero_mean=zero_mean)
    assert ours.shape == (4, 3) and ours.dtype == dtype
    assert (ours.double() - theirs).abs().max() < 1e-4
    # torchmetrics in the signals' own dtype also agrees (its eps is the only difference)
    assert (ours.double() - tm.scale_invariant_signal_distortion_ratio(est, ref, zero_mean=zero_mean).double()).abs().max() < 1e-3


@pytest.mark.parametrize("zero_mean", [False, True])
def test_sdr_matches_torchmetrics(zero_mean):
    g = torch.Generator().manual_seed(4)
    ref = torch.randn(3, 3000, generator=g, dtype=torch.float64) + 0.2
    est = torch.roll(ref, 2, -1) * 0.7 + torch.randn(3, 3000, generator=g, dtype=torch.float64) * torch.tensor([[.01], [.3], [2.]])
    for taps in (512, 64):
        ours, theirs = sdr(est, ref, taps, zero_mean), tm.signal_distortion_ratio(est, ref, filter_length=taps, zero_mean=zero_mean)
        assert (ours - theirs).abs().max() < 1e-4, (taps, ours, theirs)


def test_silent_and_bad_input():
    x = torch.randn(2, 100)
    for fn in (si_sdr, sdr):
        kw = {} if fn is si_sdr else {"filter_length": 8}
        with pytest.raises(ValueError, match="silent in 1 of 2"): fn(x, torch.stack([x[0], torch.zeros(100)]), **kw)
        with pytest.raises(ValueError, match="constant"): fn(x, torch.full((2, 100), 3.0), zero_mean=True, **kw)
        with pytest.raises(ValueError, match="same shape"): fn(x, x[:, :50], **kw)
        with pytest.raises(ValueError, match="NaN"): fn(x.clone().fill_(float("nan")), x, **kw)
        with pytest.raises(ValueError, match="L >= 2"): fn(torch.tensor(1.0), torch.tensor(1.0), **kw)
        with pytest.raises(TypeError, match="real"): fn(torch.randn(2, 100, dtype=torch.complex64), x, **kw)
    assert torch.isfinite(si_sdr(x, x)).all() and (si_sdr(x, x) > 100).all()
    assert (si_sdr(np.asarray(x), x) - si_sdr(x, x)).abs().max() == 0            # numpy input works
    assert torch.isfinite(si_sdr(torch.zeros(2, 100), x)).all()                 # a silent estimate: finite (0/0 reads 0 dB, as in torchmetrics)


def test_si_sdr_scale_invariant_and_sdr_filter_invariant():
    g = torch.Generator().manual_seed(5)
    ref, noise = torch.randn(2, 800, generator=g, dtype=torch.float64), torch.randn(2, 800, generator=g, dtype=torch.float64)
    est = ref + 0.3 * noise
    for a in (0.01, -2.0, 50.0):
        assert torch.allclose(si_sdr(a * est, ref), si_sdr(est, ref), atol=1e-9)
    filtered = torch.nn.functional.conv1d(ref[:, None], torch.tensor([[[0.2, -0.5, 1.0]]], dtype=torch.float64), padding=2)[:, 0, :800]
    assert (sdr(filtered, ref, 8) > 25).all() and (si_sdr(filtered, ref) < 10).all()


# ---- generators and synchronisation ---------------------------------------------------------------------------
from mmlab.av import AVSync, AVSyncCfg, estimate_offset, make_av_sync, read_av, sync_scores  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def test_sync_generator_shifts_the_sound(cache):
    pytest.importorskip("av", reason="PyAV writes the clips")
    (a,), (b,) = make_av_sync(1, offsets=(-3,), num_frames=12, seed=7), make_av_sync(1, offsets=(3,), num_frames=12, seed=7)
    assert a["offset"] == -3 and b["offset"] == 3
    va, _, wa = read_av(a)
    vb, _, wb = read_av(b)
    assert va.shape == (12, 3, 32, 32) and torch.equal(va, vb)                  # the same picture
    spf = 1000
    assert si_sdr(wb[6 * spf:], wa[:-6 * spf]) > 15                             # the same sound, 6 frames later
    assert si_sdr(wb, wa) < 5                                                   # and not aligned as written
    with pytest.raises(ValueError, match="offsets"): make_av_sync(1, offsets=(12,), num_frames=12)
    with pytest.raises(ValueError, match="sample_rate"): make_av_sync(1, sample_rate=16001)


def test_estimate_offset_finds_a_planted_shift():
    g = torch.Generator().manual_seed(1)
    for d in (-4, -1, 0, 2, 5):
        v = torch.nn.functional.normalize(torch.randn(3, 16, 6, generator=g), dim=-1)
        a = torch.nn.functional.normalize(torch.randn(3, 16, 6, generator=g), dim=-1)
        lo, hi = max(0, -d), min(16, 16 - d)
        a[:, lo + d:hi + d] = v[:, lo:hi]                                     # a_{t+d} = v_t
        assert estimate_offset(v, a, 6).tolist() == [d] * 3
    with pytest.raises(ValueError, match="max_offset"): estimate_offset(v, a, -1)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"): sync_scores(v, a[:, :5], [0])


def test_avsync_loss_and_shapes():
    torch.manual_seed(0)
    m = AVSync(AVSyncCfg(dim=8, channels=4))
    out = m(torch.rand(2, 10, 3, 32, 32), torch.randn(2, 32, 40))
    assert out.video_emb.shape == out.audio_emb.shape == (2, 10, 8) and out.logits.shape == (2, 7)
    assert torch.allclose(out.video_emb.norm(dim=-1), torch.ones(2, 10), atol=1e-5)
    assert abs(out.loss.item() - math.log(7)) < 1.5                           # near chance at initialisation
    out.loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError, match="mel must be"): m(torch.rand(2, 10, 3, 32, 32), torch.randn(2, 32, 39))
    with pytest.raises(ValueError, match="must contain 0"): AVSync(AVSyncCfg(shifts=(1, 2)))


# ---- localisation and separation -------------------------------------------------------------------------------
from mmlab.av import (AVSeparator, LocateCfg, SoundLocator, box_mask, crop_boxes, localisation_scores,  # noqa: E402
                      make_av_locate, make_av_separate)


def test_locate_and_separate_generators_keep_the_truth(cache):
    pytest.importorskip("av", reason="PyAV writes the clips")
    (row,) = make_av_locate(1, num_frames=8, segment=4, seed=3)
    video, mel, wave = read_av(row)
    assert len(row["boxes"]) == len(row["sounding"]) == 2 and mel.shape == (32, 32)
    for j, (k, box) in enumerate(zip(row["sounding"], row["boxes"])):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        from mmlab.data.synth import COLORS
        crop = video[j * 4 + 2][:, y0:y1, x0:x1]                                 # the sounding object's colour is inside
        near = [((crop - torch.tensor(COLORS[c], dtype=torch.float32)[:, None, None] / 255).abs().amax(0) < .15).float().mean()
                for c in row["colours"]]
        assert near[k] > .15 and near[k] > near[1 - k], near
    (srow,) = make_av_separate(1, seed=4)
    _, _, mix = read_av(srow)
    src = torch.from_numpy(np.load(srow["sources"]))
    assert src.shape == (2, 8000) and si_sdr(mix, src.sum(0)) > 15              # the track is the sum of the sources
    assert (si_sdr(src.sum(0).expand(2, -1), src) < 8).all()                    # neither source is the whole track
    with pytest.raises(ValueError, match="segment"): make_av_locate(1, num_frames=8, segment=3)


def test_localisation_scores_by_hand():
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 6, 6]])
    heat = box_mask(torch.tensor([[0, 0, 4, 4], [0, 0, 2, 2]]), 8).float()
    heat[0, 1, 1] = 2                                                          # the peak of the first map
    s = localisation_scores(heat, boxes, threshold=.3)
    assert s["iou"].tolist() == [1.0, 0.0] and s["hit"].tolist() == [True, False]
    with pytest.raises(ValueError, match="threshold"): localisation_scores(heat, boxes, threshold=0)
    with pytest.raises(ValueError, match=r"boxes \(B, 4\)"): localisation_scores(heat, boxes[:1])


def test_locator_attention_is_a_distribution_and_follows_the_query():
    torch.manual_seed(0)
    m = SoundLocator(LocateCfg(dim=8))
    out = m(torch.rand(4, 3, 32, 32), torch.randn(4, 32, 16))
    assert out.heatmap.shape == (4, 8, 8) and torch.allclose(out.heatmap.sum((1, 2)), torch.ones(4))
    # the attended vector is the heatmap-weighted mean of the patch features
    u = m.patches(torch.rand(1, 3, 32, 32))
    out.loss.backward()
    assert m.patches[0].weight.grad is not None and m.audio[0].weight.grad is not None
    with pytest.raises(ValueError, match="same B"): m(torch.rand(2, 3, 32, 32), torch.randn(3, 32, 16))
    assert u.shape == (1, 8, 8, 8)


def test_separator_identity_mask_and_conditioning():
    torch.manual_seed(0)
    m = AVSeparator()
    for p in m.out[-1].parameters(): torch.nn.init.constant_(p, 30.0)        # mask of ones
    x = torch.randn(2, 4000)
    assert (si_sdr(m(x, torch.rand(2, 3, 16, 16)).estimate, x) > 60).all()
    m2 = AVSeparator()
    a, b = m2(x[:1], torch.zeros(1, 3, 16, 16)).mask, m2(x[:1], torch.ones(1, 3, 16, 16)).mask
    assert not torch.allclose(a, b)                                            # the picture changes the mask
    out = m2(x, torch.rand(2, 3, 16, 16), x)
    out.loss.backward()
    assert m2.picture[0].weight.grad is not None and m2.film.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mixture must be"): m2(x, torch.rand(3, 3, 16, 16))
    crops = crop_boxes(torch.arange(2 * 3 * 32 * 32.).view(2, 3, 32, 32), torch.tensor([[0, 0, 32, 32], [4, 4, 8, 8]]), out=4)
    assert crops.shape == (2, 3, 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_matches_fp32_on_cuda():
    from mmlab.core import get_device
    dev = get_device()
    torch.manual_seed(0)
    models = [(AVSync(), (torch.rand(2, 12, 3, 32, 32), torch.randn(2, 32, 48))),
              (SoundLocator(), (torch.rand(4, 3, 32, 32), torch.randn(4, 32, 16)))]
    for m, args in models:
        m = m.to(dev)
        args = [a.to(dev) for a in args]
        ref = m(*args).loss
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            low = m(*args).loss
        low.backward()
        assert abs(low.item() - ref.item()) < 0.05 * max(1.0, abs(ref.item())), (type(m).__name__, low.item(), ref.item())
    sep = AVSeparator().to(dev)                                  # STFT stays in fp32; the mask network runs in bf16
    x = torch.randn(2, 8000, device=dev)
    cue = torch.rand(2, 3, 16, 16, device=dev)
    ref = sep(x, cue, x).mask
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        low = sep(x, cue, x).mask
    assert (low.float() - ref).abs().max() < 0.05


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402


@hsettings(max_examples=40, deadline=None)
@given(n=st.integers(8, 300), seed=st.integers(0, 2 ** 31 - 1), scale=st.floats(1e-3, 1e3), noise=st.floats(0, 10),
       offset=st.floats(-5, 5), zero_mean=st.booleans())
def test_si_sdr_properties_and_parity(n, seed, scale, noise, offset, zero_mean):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(n, generator=g, dtype=torch.float64) + offset
    est = ref + noise * torch.randn(n, generator=g, dtype=torch.float64)
    if zero_mean and torch.allclose(ref, ref.mean().expand(n)): return
    ours = si_sdr(est, ref, zero_mean=zero_mean)
    assert torch.isfinite(ours) and -300 <= ours <= 300
    if noise < 1e-3: return                                                     # near-perfect: rounding decides
    assert abs(si_sdr(scale * est, ref, zero_mean=zero_mean) - ours) < 1e-6 * max(1, abs(ours))   # scale-invariant
    theirs = tm.scale_invariant_signal_distortion_ratio(est, ref, zero_mean=zero_mean)
    assert abs(ours - theirs) < 1e-4, (ours, theirs)


def test_every_generator_argument_is_part_of_the_cached_set(cache):
    "A set is cached per arguments: changing any one of them gives the set those arguments describe, not a cached one."
    pytest.importorskip("av", reason="PyAV writes the clips")
    (a,) = make_av_locate(1, num_frames=8, segment=4, seed=3)
    (b,) = make_av_locate(1, num_frames=8, segment=2, seed=3)
    assert (a["segment"], len(a["sounding"]), b["segment"], len(b["sounding"])) == (4, 2, 2, 4)
    rows = [make_av_locate(1, num_frames=8, segment=4, seed=s)[0] for s in (3, 4, 5, 6)]
    assert len({(tuple(r["colours"]), tuple(r["shapes"]), tuple(r["sounding"])) for r in rows}) > 1
    (c,) = make_av_locate(1, num_frames=8, segment=4, seed=3, sample_rate=8000)
    assert read_av(c)[2].shape[-1] == 8 * 8000 // 16 and read_av(a)[2].shape[-1] == 8 * 16000 // 16
    (s1,), (s2,) = make_av_separate(1, seed=4), make_av_separate(1, seed=4, sample_rate=8000)
    assert np.load(s1["sources"]).shape == (2, 8000) and np.load(s2["sources"]).shape == (2, 4000)


def test_argument_errors_name_the_function_and_the_boundaries():
    from mmlab.av import heatmap_to_pixels, sdr
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match=rf"n must be a positive integer, got {bad!r}"): make_av_sync(bad)
    v = torch.nn.functional.normalize(torch.randn(2, 6, 4), dim=-1)
    assert sync_scores(v, v, [-5, 0, 5]).shape == (2, 3)                         # |shift| up to T - 1
    with pytest.raises(ValueError, match="shift"): sync_scores(v, v, [6])
    with pytest.raises(ValueError, match=r"^si_sdr: estimate must be \(\.\.\., L\)"): si_sdr(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"^si_sdr: reference is silent"): si_sdr(torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match=r"^sdr: reference is silent"): sdr(torch.ones(64), torch.zeros(64), filter_length=8)
    h = torch.rand(2, 4, 4)
    up = heatmap_to_pixels(h, 16)
    assert up.shape == (2, 16, 16)
    torch.testing.assert_close(up.mean((1, 2)), h.mean((1, 2)), atol=0.02, rtol=0.05)       # bilinear keeps the level
    torch.testing.assert_close(up[:, 6:10, 6:10].mean((1, 2)), h[:, 1:3, 1:3].mean((1, 2)), atol=0.1, rtol=0.1)


def test_generated_rows_and_files_keep_what_was_asked(cache):
    "Rows carry their settings, the two objects differ in colour, one of the two sounds per segment, clips run at fps."
    pytest.importorskip("av", reason="PyAV writes the clips")
    from mmlab.av import SeparatorCfg
    from mmlab.data.preprocess import video_info
    (s,) = make_av_sync(1, num_frames=8, seed=2)
    assert {"colour", "shape", "fps", "sample_rate", "num_frames", "offset"} <= set(s) and s["fps"] == 16
    located = make_av_locate(8, num_frames=8, segment=2, seed=5)
    separated = make_av_separate(4, seed=6)
    assert all(set(r["sounding"]) <= {0, 1} for r in located)
    assert all(len(set(r["colours"])) == 2 for r in located + separated)
    assert all(r["fps"] == 16 and r["sample_rate"] == 16000 for r in separated)
    assert video_info(separated[0]["video"]).fps == 16
    sep = AVSeparator(SeparatorCfg(hop_length=32))
    assert sep.stft(torch.randn(2, 1024)).shape[-1] == 1024 // 32 + 1


def test_each_clip_is_located_on_its_own_and_objects_drift():
    "A clip's heatmap does not depend on the other clips of the batch; generated objects move a little over the clip."
    from mmlab.av import _two_objects
    torch.manual_seed(0)
    m = SoundLocator().eval()
    frames, mels = torch.rand(3, 3, 32, 32), torch.randn(3, 32, 16)
    with torch.no_grad():
        together = m(frames, mels).heatmap
        alone = torch.cat([m(frames[i:i + 1], mels[i:i + 1]).heatmap for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)
    for _, _, states in _two_objects(np.random.default_rng(0), 8):
        assert np.abs(states[-1, :2] - states[0, :2]).max() > 1e-3 and np.abs(states[-1, :2] - states[0, :2]).max() <= 0.08 + 1e-6

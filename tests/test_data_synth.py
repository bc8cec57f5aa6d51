"Generated datasets: determinism by seed, caching, columns, and the structure each label relies on."
import numpy as np
import pytest
import datasets

from mmlab.data import synth
from mmlab.data.synth import make_trimodal, make_shape_captions, make_av_digits, make_sentiment, make_robot_navigation

GENERATORS = [make_trimodal, make_shape_captions, make_av_digits, make_sentiment, make_robot_navigation]

@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch): monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path / "cache"))

def _table(ds):
    "Arrow table with images as their encoded bytes, so equality means identical bytes."
    return ds.cast_column("image", datasets.Image(decode=False)).data.table

@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_same_seed_same_bytes_other_seed_differs(make):
    a, b, c = make(16, seed=5, cache=False), make(16, seed=5, cache=False), make(16, seed=6, cache=False)
    assert _table(a).equals(_table(b))
    assert not _table(a).equals(_table(c))
    assert len(a) == 16 and a[0]["sample_id"] != c[0]["sample_id"]

@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_cache_roundtrip(make, tmp_path):
    first = make(10, seed=1)
    saved = list((tmp_path / "cache" / "synth").iterdir())
    assert len(saved) == 1 and not any(".tmp-" in p.name for p in saved)
    again = make(10, seed=1)
    assert _table(first).equals(_table(again))
    make(10, seed=2)                                  # other arguments -> another cache entry
    assert len(list((tmp_path / "cache" / "synth").iterdir())) == 2

@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_bad_n(make):
    with pytest.raises(ValueError, match="positive integer"): make(0, cache=False)

def test_trimodal_label_is_modular_sum_and_single_factor_is_uninformative():
    ds = make_trimodal(400, seed=0, n_classes=3, cache=False)
    f = np.array([ds["image_factor"], ds["audio_factor"], ds["text_factor"]]).T
    y = np.array(ds["label"])
    assert ((f.sum(1) % 3) == y).all()
    # given one factor, the label is still spread over all classes (no single-factor shortcut)
    for j in range(3):
        for v in range(3):
            counts = np.bincount(y[f[:, j] == v], minlength=3)
            assert counts.min() > 0.15 * counts.sum(), (j, v, counts)

def test_trimodal_signals_encode_their_factors():
    ds = make_trimodal(8, seed=2, snr_db=None, pixel_noise=0., cache=False)
    freqs = synth._trimodal_freqs(4)
    for r in ds:
        spec = np.abs(np.fft.rfft(np.asarray(r["audio"])))
        bins = [round(f * len(r["audio"]) / r["sampling_rate"]) for f in freqs]
        assert int(np.argmax(spec[bins])) == r["audio_factor"]          # the loudest candidate pitch is the factor's
        assert synth.NUMBER_WORDS[r["text_factor"]] in r["text"].split()
        px = np.asarray(r["image"]).reshape(-1, 3).astype(int)
        colour = list(synth.COLORS.values())[r["image_factor"]]
        assert (np.abs(px - colour).sum(1) < 30).sum() >= 10

def test_trimodal_noise_and_drop_knobs():
    ds = make_trimodal(300, seed=0, noise={"text": 1.0}, drop={"image": .3}, cache=False)
    y = np.array(ds["label"]); f = np.array([ds["image_factor"], ds["audio_factor"], ds["text_factor"]]).T
    assert ((f.sum(1) % 4) == y).mean() < .5                       # text shows a random factor
    has = np.array(ds["has_image"])
    assert .2 < 1 - has.mean() < .4 and all((im is None) == (not h) for im, h in zip(ds["image"], has))
    with pytest.raises(ValueError, match=r"drop\[audio\]"): make_trimodal(5, drop={"audio": 1.5}, cache=False)
    with pytest.raises(ValueError, match="n_classes"): make_trimodal(5, n_classes=9, cache=False)

def test_shape_captions_fields_agree_with_the_picture():
    ds = make_shape_captions(20, seed=3, pixel_noise=0., cache=False)
    for r in ds:
        assert len(r["captions"]) == 5 and len(set(r["captions"])) == 5
        (x0, y0), (x1, y1) = r["positions"]
        assert {"left": x0 < x1, "right": x0 > x1, "above": y0 < y1, "below": y0 > y1}[r["relation"]]
        px = np.asarray(r["image"]).astype(int)
        for (x, y), c in zip(r["positions"], r["colors"]):
            assert np.abs(px[int(y * 32), int(x * 32)] - synth.COLORS[c]).sum() < 90
        assert all(c in r["captions"][0] for c in r["colors"])
    with pytest.raises(ValueError, match="n_captions"): make_shape_captions(3, n_captions=20, cache=False)

def test_av_digits_uses_real_digits_and_dtmf():
    from sklearn.datasets import load_digits
    ds = make_av_digits(30, seed=0, snr_db=None, text_noise=0., cache=False)
    target = load_digits().target
    assert (target[ds["digit_index"]] == np.array(ds["label"])).all()
    assert ds["text"] == [synth.NUMBER_WORDS[y] for y in ds["label"]]
    r = ds[0]
    spec = np.abs(np.fft.rfft(np.asarray(r["audio"])))
    peaks = sorted(np.argsort(spec)[-2:] * r["sampling_rate"] / len(r["audio"]))
    assert np.allclose(peaks, synth.DTMF[r["label"]], atol=8)
    with pytest.raises(ValueError, match="text_noise"): make_av_digits(3, text_noise=2, cache=False)

def test_sentiment_cues_disagree_and_go_missing_at_the_asked_rates():
    ds = make_sentiment(600, seed=0, p_disagree={"audio": .5}, p_missing=.2, cache=False)
    y = np.array(ds["label"])
    for m, p in [("text", .0), ("audio", .5)]:
        cue, has = np.array(ds[f"{m}_cue"]), np.array(ds[f"has_{m}"])
        assert abs((cue[has] != y[has]).mean() - p) < .07
        assert ((cue == -1) == ~has).all() and abs((~has).mean() - .2) < .06
    assert all(r["has_text"] or r["has_image"] or r["has_audio"] for r in ds)


def test_robot_navigation_label_follows_the_rule_and_needs_the_turn():
    ds = make_robot_navigation(400, seed=3, sampling="irregular", cache=False)
    y = np.asarray(ds["label"]); now, cam = np.asarray(ds["bearing_now"]), np.asarray(ds["goal_bearing"])
    dist, front = np.asarray(ds["goal_distance"]), np.asarray(ds["front_clearance"])
    blocked = front < 0.5
    assert set(y[blocked]) <= {1, 2} and (y[~blocked & (dist < 0.8)] == 3).all()
    free = ~blocked & (dist >= 0.8)
    rule = np.where(now > 15, 1, np.where(now < -15, 2, 0))
    assert (y[free] == rule[free]).all()
    assert np.allclose(now, cam - np.asarray(ds["yaw_change"]), atol=1e-4)
    for r in ds.select(range(20)):
        s = np.asarray(r["sensor"])
        assert s.shape[1] == len(synth.ROBOT_CHANNELS) and 8 <= len(s) <= 16
        assert (np.diff(s[:, 0]) > 0).all() and 0 < s[0, 0] and s[-1, 0] <= 1.0     # increasing times in the window

def test_robot_navigation_irregular_sampling_bunches_readings_and_drop_hides_modalities():
    gaps = {m: np.concatenate([np.diff(np.asarray(r["sensor"])[:, 0]) for r in make_robot_navigation(100, seed=0, sampling=m, cache=False)])
            for m in ("regular", "irregular")}
    assert gaps["irregular"].std() > 3 * gaps["regular"].std()
    reg, irr = (make_robot_navigation(30, seed=4, sampling=m, cache=False) for m in ("regular", "irregular"))
    for col in ("label", "goal_bearing", "yaw_change", "goal_distance"): assert reg[col] == irr[col]   # same scenes
    assert [len(s) for s in reg["sensor"]] == [len(s) for s in irr["sensor"]] and reg["sensor"] != irr["sensor"]
    ds = make_robot_navigation(200, seed=0, drop={"image": 0.5}, cache=False)
    has = np.asarray(ds["has_image"])
    assert 0.3 < has.mean() < 0.7 and all((r["image"] is None) == (not r["has_image"]) for r in ds)
    assert all(r["has_sensor"] for r in ds)
    with pytest.raises(ValueError, match="sampling"): make_robot_navigation(4, sampling="bursty", cache=False)
    with pytest.raises(ValueError, match="readings"): make_robot_navigation(4, readings=(5, 3), cache=False)

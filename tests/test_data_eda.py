"EDA: fixed features, probes, CCA and embeddings behave as the notebook claims, on small inputs."
import numpy as np
import pytest
from PIL import Image

from mmlab.eda import (audio_features, canonical_correlations, dataset_features, embed_2d, format_probe_table,
                       image_features, probe, probe_table, text_features)

@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch): monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path / "cache"))

def test_image_features_colour_and_pixels():
    im = Image.new("RGB", (8, 8), (10, 10, 10)); im.paste((0, 0, 255), (0, 0, 2, 2))
    f = image_features([im, None])
    assert np.allclose(f[0, :3], [0, 0, 1], atol=1e-6)                # the saturated pixels are blue
    assert np.allclose(f[0, 3:], [(60 * 10 / 255) / 64, (60 * 10 / 255) / 64, (60 * 10 / 255 + 4) / 64], atol=1e-5)
    assert not f[1].any()
    assert image_features([im], "pixels", size=4).shape == (1, 16)
    with pytest.raises(ValueError, match="edges"): image_features([im], "edges")

def test_audio_and_text_features():
    sr = 8000
    tones = [np.sin(2 * np.pi * f * np.arange(1000) / sr).astype(np.float32) for f in (200, 800, 3000)]
    a = audio_features(tones + [None, tones[0][:500]], sr)
    peaks = a[:3].argmax(1)
    assert peaks[0] < peaks[1] < peaks[2] and not a[3].any() and a[4].argmax() == peaks[0]
    t, words = text_features(["one two two", None, "zebra"])
    assert sorted(words) == ["one", "two"]
    assert t[0, words.index("two")] == 2 and not t[1].any() and not t[2].any()   # unknown words are dropped

def test_probe_linear_vs_mlp_on_xor():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (300, 2)).astype(float) + .05 * rng.normal(size=(300, 2))
    y = (X[:, 0].round() != X[:, 1].round()).astype(int)
    assert probe(X, y, 200, "linear") < .75 and probe(X, y, 200, "mlp", steps=200) > .95
    assert probe(X, y, 200, "mlp", steps=50, seed=3) == probe(X, y, 200, "mlp", steps=50, seed=3)
    with pytest.raises(ValueError, match="probe kind"): probe(X, y, 200, "forest")

def test_trimodal_needs_all_three():
    from mmlab.data.synth import make_trimodal
    ds = make_trimodal(900, seed=1, n_classes=3)
    feats, y = dataset_features(ds), np.array(ds["label"])
    singles = probe_table(feats, y, 600, subsets=[("image",), ("audio",), ("text",)], kinds=("mlp",), steps=200)
    fused = probe_table(feats, y, 600, subsets=[("image", "audio", "text")])
    acc = {(r.modalities, r.kind): r.accuracy for r in singles + fused}
    assert acc[("image", "audio", "text"), "mlp"] > .9
    assert max(v for (s, k), v in acc.items() if len(s) == 1 or k == "linear") < .45   # chance is 1/3
    table = format_probe_table(fused)
    assert "image + audio + text" in table and len(table.splitlines()) == 3

def test_cca_finds_shared_and_not_independent_signal():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 2))
    X = np.concatenate([z, rng.normal(size=(600, 5))], 1) @ rng.normal(size=(7, 7))
    Z = np.concatenate([z + .3 * rng.normal(size=(600, 2)), rng.normal(size=(600, 4))], 1)
    rho = canonical_correlations(X, Z, 400, n_components=2)
    assert (rho > .85).all()
    rho0 = canonical_correlations(X, rng.normal(size=(600, 6)), 400, n_components=2)
    assert np.abs(rho0).max() < .25

def test_embed_2d():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (60, 5)), rng.normal(6, 1, (60, 5))])
    for m in ("pca", "tsne"):
        P = embed_2d(X, m)
        assert P.shape == (120, 2)
        assert np.linalg.norm(P[:60].mean(0) - P[60:].mean(0)) > 2 * P[:60].std()
    with pytest.raises(ValueError, match="umap"): embed_2d(X, "umap")

"""Property tests over the public entry points: any input either works or is refused by mmlab itself with one of the
package's documented errors (ValueError and its subclasses SchemaError / PreprocessError, TypeError, KeyError for
unknown names) and a message; never an error from deep inside torch, NumPy or configparser."""
import math
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import mmlab

PKG = Path(mmlab.__file__).parent
SETTINGS = hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DOCUMENTED = (ValueError, TypeError, KeyError)


def works_or_refuses(fn):
    "Call fn(); an exception must be a documented type, raised by mmlab's own code, with a message."
    try:
        return fn()
    except DOCUMENTED as e:
        frames = traceback.extract_tb(e.__traceback__)
        assert frames and Path(frames[-1].filename).resolve().is_relative_to(PKG), (
            f"{type(e).__name__} raised outside mmlab, at {frames[-1].filename}:{frames[-1].lineno}: {e}")
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return e


numbers = st.one_of(st.integers(-3, 70_000), st.floats(allow_nan=True, allow_infinity=True), st.just(0))


@SETTINGS
@given(n=st.integers(0, 3000), sr=numbers, n_fft=st.integers(-2, 1024), hop=st.integers(-2, 512), n_mels=st.integers(-2, 128),
       nan=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64, torch.int16]))
def test_log_mel(n, sr, n_fft, hop, n_mels, nan, dtype):
    from mmlab.data.preprocess import log_mel_spectrogram
    wave = (torch.randn(n) * 100).to(dtype)
    if nan and n and dtype.is_floating_point: wave[n // 2] = float("nan")
    out = works_or_refuses(lambda: log_mel_spectrogram(wave, sr, n_fft, hop, n_mels))
    if isinstance(out, torch.Tensor): assert torch.isfinite(out).all() and out.shape[0] == n_mels


@SETTINGS
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=4), size=st.integers(-1, 40), channels=st.integers(0, 4),
       std=st.floats(-1, 2), value=st.sampled_from([0.0, float("nan"), 300.0]))
def test_vision_preprocessor(shape, size, channels, std, value):
    from mmlab.data.preprocess import VisionPreprocessor
    pre = works_or_refuses(lambda: VisionPreprocessor(size=size, channels=channels, std=(std,) * 3))
    if isinstance(pre, VisionPreprocessor):
        out = works_or_refuses(lambda: pre(np.full(shape, value, np.float32)))
        if isinstance(out, torch.Tensor): assert out.shape == (channels, size, size) and torch.isfinite(out).all()


@SETTINGS
@given(n=st.integers(0, 300), channels=st.integers(0, 8), window=st.integers(-1, 60), hop=st.integers(-1, 30), rate=numbers)
def test_sensor_preprocessor_and_synchronize(n, channels, window, hop, rate):
    from mmlab.data.preprocess import SensorPreprocessor, synchronize
    pre = works_or_refuses(lambda: SensorPreprocessor(window=window, hop=hop, channels=6))
    if isinstance(pre, SensorPreprocessor):
        works_or_refuses(lambda: pre(np.random.randn(n, channels)))
    t = np.sort(np.random.rand(max(n, 0)))
    works_or_refuses(lambda: synchronize({"a": (t, np.random.randn(len(t))), "b": (t, np.random.randn(len(t), 2))}, rate))


@SETTINGS
@given(total=st.integers(-2, 50), n=st.integers(-2, 20), mode=st.sampled_from(["uniform", "random", "dense?"]))
def test_frame_sampling(total, n, mode):
    from mmlab.data.preprocess import sample_frame_indices
    out = works_or_refuses(lambda: sample_frame_indices(total, n, mode))
    if isinstance(out, list): assert len(out) == n and all(0 <= i < total for i in out)


dims = st.dictionaries(st.sampled_from(["vision", "audio", "text", "sensor"]), st.integers(-1, 6), min_size=0, max_size=4)


@SETTINGS
@given(name=st.sampled_from(["early", "weighted", "late", "attention", "transformer", "cross_modal", "tensor", "low_rank",
                             "gated", "concat"]),
       input_dims=dims, num_classes=st.integers(-1, 5), hidden=st.integers(-1, 16), B=st.integers(0, 4),
       wrong=st.sampled_from([None, "dtype", "shape", "missing", "nan_mask", "mask_shape"]))
def test_fusion_strategies(name, input_dims, num_classes, hidden, B, wrong):
    from mmlab.fusion import make_fusion
    model = works_or_refuses(lambda: make_fusion(name, input_dims, num_classes, hidden=hidden if hidden else 4, num_heads=1)
                             if name in ("attention", "transformer", "cross_modal") else
                             make_fusion(name, input_dims, num_classes, hidden=hidden))
    if not isinstance(model, torch.nn.Module): return
    x = {m: torch.randn(B, d) for m, d in input_dims.items()}
    mask = {m: torch.rand(B) > 0.5 for m in input_dims}
    m0 = next(iter(input_dims))
    if wrong == "dtype": x[m0] = x[m0].double()
    if wrong == "shape": x[m0] = torch.randn(B, input_dims[m0] + 1)
    if wrong == "missing": x.pop(m0)
    if wrong == "nan_mask": mask[m0] = torch.full((B,), float("nan"))
    if wrong == "mask_shape": mask[m0] = torch.ones(B + 1, dtype=torch.bool)
    out = works_or_refuses(lambda: model.eval()(x, mask))
    if wrong is None and not isinstance(out, Exception): assert out.logits.shape == (B, num_classes)


@SETTINGS
@given(B=st.integers(0, 5), D=st.integers(0, 4), M=st.integers(0, 5), scale=numbers, nan=st.booleans(), temp=numbers,
       margin=st.one_of(st.floats(-1, 1), st.just(float("nan"))))
def test_contrastive_losses(B, D, M, scale, nan, temp, margin):
    from mmlab.losses import clip_loss, supcon_loss, triplet_loss
    a, b = torch.randn(B, D), torch.randn(M, D)
    if nan and B and D: a[0, 0] = float("nan")
    for fn in (lambda: clip_loss(a, b, scale), lambda: triplet_loss(a, b, margin=margin),
               lambda: supcon_loss(a, torch.randint(0, 2, (B,)), temperature=temp)):
        out = works_or_refuses(fn)
        if isinstance(out, torch.Tensor): assert torch.isfinite(out)


@SETTINGS
@given(B=st.integers(0, 3), L=st.integers(0, 12), low=st.integers(-5, 5), high=st.integers(1, 3000),
       side=st.sampled_from([32, 31, 16]), channels=st.sampled_from([3, 1]), floats=st.booleans())
def test_clip_inputs(B, L, low, high, side, channels, floats):
    from mmlab.clip import CLIP, ClipCfg, TextCfg, VisionCfg
    torch.manual_seed(0)
    model = CLIP(ClipCfg(VisionCfg(width=16, layers=1, heads=2, mlp_width=16), TextCfg(width=16, layers=1, heads=2, mlp_width=16,
                                                                                      vocab_size=100, context_length=8)))
    ids = torch.randint(min(low, high - 1), high, (B, L)).float() if floats else torch.randint(min(low, high - 1), high, (B, L))
    if B and L and not floats: ids[:, -1] = 1                                     # an end-of-text token
    works_or_refuses(lambda: model.encode_text(ids))
    works_or_refuses(lambda: model.encode_image(torch.randn(B, channels, side, side)))


ini_values = st.one_of(st.text(max_size=12), st.sampled_from(["inf", "-5", "nan", "1e400", "%(HOME)s", "", "cuda:x", "10" * 20]))


@SETTINGS
@given(key=st.sampled_from(["data_dir", "cache_dir", "offline", "device", "seed", "grade_cell_timeout", "grade_total_timeout",
                            "colour"]), value=ini_values, raw=st.binary(max_size=20))
def test_settings_files(tmp_path_factory, key, value, raw):
    from mmlab.core import SettingsError, settings
    d = tmp_path_factory.mktemp("lab")
    if "\n" in value or "\r" in value or "[" in value: value = value.replace("\n", " ").replace("\r", " ").replace("[", "(")
    (d / "settings.ini").write_text(f"[mmlab]\n{key} = {value}\n")
    try: s = settings(d)
    except SettingsError as e: assert key in str(e) or "cannot" in str(e), e
    else:
        assert math.isfinite(s.grade_cell_timeout) and s.grade_cell_timeout > 0 and 0 <= s.seed < 2**32
        assert str(s.cache_dir) != str(d) or key != "cache_dir"
    (d / "settings.ini").write_bytes(b"[mmlab]\n" + raw)
    try: settings(d)
    except SettingsError as e: assert str(e)


def test_the_checker_itself_catches_errors_from_deep_inside():
    "An error raised by torch (not by mmlab's own checks) fails works_or_refuses: the property can fail."
    with pytest.raises(AssertionError, match="raised outside mmlab"):
        works_or_refuses(lambda: int("not a number"))                    # a ValueError, but not raised by mmlab
    with pytest.raises(RuntimeError):                                    # undocumented errors are not caught at all
        works_or_refuses(lambda: torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 5)))


def test_model_layers_propagate_nan_as_documented():
    "Inside a model NaN propagates, as in torch (no per-layer checks on the hot path); the boundaries refuse it."
    from mmlab.attention import MultiHeadAttention
    from mmlab.fusion import make_fusion
    x = torch.randn(2, 3, 8); x[0, 0, 0] = float("nan")
    out = MultiHeadAttention(8, 2).eval()(x).output
    assert torch.isnan(out[0]).any() and torch.isfinite(out[1]).all()          # only the sample with the NaN
    f = make_fusion("early", {"a": 3, "b": 2}, 4).eval()
    a = torch.randn(2, 3); a[1, 0] = float("nan")
    logits = f({"a": a, "b": torch.randn(2, 2)}).logits
    assert torch.isfinite(logits[0]).all() and torch.isnan(logits[1]).all()


def _tampered_checkpoints(tmp_path):
    "A real `mmlab train` run, then copies of its best/ checkpoint each broken in one way."
    import io
    import json
    import shutil
    from contextlib import redirect_stdout
    from safetensors.torch import load_file, save_file
    from mmlab.cli import train_main
    run = tmp_path / "run"
    with redirect_stdout(io.StringIO()):
        train_main(["--dataset", "trimodal", "--modalities", "vision", "text", "--fusion-strategy", "late", "--epochs", "1",
                    "--pretrain-epochs", "0", "--n-train", "40", "--n-val", "20", "--output", str(run), "--no-progress"])
    best = run / "best"
    weights = load_file(str(best / "model.safetensors"))
    def variant(name, edit):
        d = tmp_path / name; shutil.copytree(best, d); edit(d); return d
    first = next(iter(weights))
    return {
        "truncated": (variant("truncated", lambda d: (d / "model.safetensors").write_bytes((best / "model.safetensors").read_bytes()[:300])),
                      "model.safetensors cannot be read as safetensors"),
        "nan": (variant("nan", lambda d: save_file({k: v * float("nan") for k, v in weights.items()}, str(d / "model.safetensors"))),
                "NaN/inf values"),
        "wrong shape": (variant("shape", lambda d: save_file({**weights, first: torch.zeros(3, 3)}, str(d / "model.safetensors"))),
                        "shape(s) differ"),
        "missing key": (variant("missing", lambda d: save_file({k: v for k, v in weights.items() if k != first}, str(d / "model.safetensors"))),
                        "missing keys"),
        "corrupt json": (variant("json", lambda d: (d / "trainer_state.json").write_text("{oops")), "trainer_state.json is not valid JSON"),
        "huge n_val": (variant("nval", lambda d: (d / "data.json").write_text(json.dumps(
            {**json.loads((best / "data.json").read_text()), "n_val": 1_000_000}))), "n_val must be an integer from 1 to 100,000"),
    }


def test_evaluate_refuses_tampered_checkpoints_naming_the_file(tmp_path):
    from mmlab.cli import evaluate_main
    for case, (ck, words) in _tampered_checkpoints(tmp_path).items():
        with pytest.raises(SystemExit) as e: evaluate_main([str(ck)])
        assert words in str(e.value) and str(ck) in str(e.value), (case, str(e.value))

"Preprocessing: log-mel parity with librosa, each modality's output, and every error path."
import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image

from mmlab.data.schema import SchemaError

from mmlab.data.preprocess import (AudioPreprocessor, PreprocessError, SensorPreprocessor, TextPreprocessor,
                                   VideoPreprocessor, VisionPreprocessor, clean_text, load_audio, log_mel_spectrogram,
                                   mel_filterbank, read_video_frames, sample_frame_indices, synchronize, write_video)

librosa = pytest.importorskip("librosa")

@pytest.mark.parametrize("sr, n_fft, hop, n_mels, fmin, fmax", [(16000, 512, 128, 64, 0., None), (8000, 256, 64, 40, 50., 3500.),
                                                               (22050, 2048, 512, 128, 0., None)])
def test_log_mel_equals_librosa(sr, n_fft, hop, n_mels, fmin, fmax):
    "Tolerance: 1e-6 dB in float64, 1e-2 dB in float32 (on a chirp plus noise, top_db 80)."
    rng = np.random.default_rng(sr)
    t = np.arange(sr // 2) / sr
    y = np.sin(2 * np.pi * (100 + 2000 * t) * t) + .05 * rng.normal(size=len(t))
    fb = mel_filterbank(sr, n_fft, n_mels, fmin, fmax).numpy()
    assert np.abs(fb - librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64)).max() < 1e-12
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels,
                                                             fmin=fmin, fmax=fmax), ref=1.0, top_db=80.)
    for dtype, tol in [(torch.float64, 1e-6), (torch.float32, 1e-2)]:
        ours = log_mel_spectrogram(torch.from_numpy(y).to(dtype), sr, n_fft, hop, n_mels, fmin, fmax).numpy()
        assert ours.shape == ref.shape and np.abs(ours - ref).max() < tol

@pytest.mark.parametrize("hop", [33, 100, 256])
def test_log_mel_hop_lengths_equal_librosa(hop):
    "Hops that are not n_fft / 4: the frame count and values follow hop_length."
    y = np.random.default_rng(hop).normal(size=4000)
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=8000, n_fft=256, hop_length=hop, n_mels=32), ref=1.0, top_db=80.)
    ours = log_mel_spectrogram(torch.from_numpy(y), 8000, 256, hop, 32).numpy()
    assert ours.shape == ref.shape == (32, 1 + 4000 // hop) and np.abs(ours - ref).max() < 1e-6


def test_log_mel_top_db_is_per_item():
    "In a batch, each spectrogram is clipped below its own maximum, not the batch's."
    quiet, loud = torch.randn(4000, dtype=torch.float64) * 1e-3, torch.randn(4000, dtype=torch.float64) * 10
    both = log_mel_spectrogram(torch.stack([quiet, loud]), 8000, 256, 64, 32)
    torch.testing.assert_close(both[0], log_mel_spectrogram(quiet, 8000, 256, 64, 32))
    torch.testing.assert_close(both[1], log_mel_spectrogram(loud, 8000, 256, 64, 32))


def test_log_mel_batches_match_single():
    x = torch.randn(3, 2, 4000, dtype=torch.float64)
    out = log_mel_spectrogram(x, 8000, 256, 64, 32)
    assert out.shape == (3, 2, 32, 63)
    assert torch.allclose(out[1, 0], log_mel_spectrogram(x[1, 0], 8000, 256, 64, 32))

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_log_mel_on_gpu_equals_cpu():
    x = torch.randn(4, 16000)
    assert torch.allclose(log_mel_spectrogram(x.cuda(), 16000).cpu(), log_mel_spectrogram(x, 16000), atol=1e-2)

def test_audio_file_resample_trim_pad(tmp_path):
    import soundfile as sf
    sig = np.concatenate([np.zeros(2205), .5 * np.sin(2 * np.pi * 440 * np.arange(11025) / 22050), np.zeros(2205)])
    sf.write(tmp_path / "a.wav", np.stack([sig, sig], 1), 22050)              # stereo 22.05 kHz
    ap = AudioPreprocessor(sr=16000, seconds=1.0, output="waveform")
    w = ap(tmp_path / "a.wav")
    on = np.flatnonzero(np.abs(w.numpy()) > 1e-3)
    assert w.shape == (16000,) and on[0] < 300 and abs((on[-1] - on[0]) / 16000 - .5) < .02
    f = ap.features(tmp_path / "a.wav")
    assert abs(np.median(f["spectral_centroid"][5:50]) - 440) < 40
    assert abs(np.median(f["zero_crossing_rate"][5:50]) * 16000 - 880) < 40
    assert f["spectral_rolloff"].shape == f["spectral_centroid"].shape and f["mfcc"].shape[0] == 20

@pytest.mark.parametrize("x, sr, words", [
    (np.zeros(0), 8000, ["empty"]), (np.zeros(4000), 8000, ["silent"]), (np.full(10, np.inf), 8000, ["NaN/inf"]),
    (np.ones(10), None, ["sampling rate"]), ({"array": 1}, 8000, ["dict"]), (np.ones((2, 2, 2)), 8000, ["shape"]),
    (np.array(["a", "b"]), 8000, ["dtype"]), ("nope.wav", None, ["no such file", "nope.wav"]),
])
def test_audio_errors(x, sr, words):
    with pytest.raises(PreprocessError) as e: AudioPreprocessor()(x, sr=sr)
    assert str(e.value).startswith("audio") and all(w in str(e.value) for w in words)

def test_audio_corrupt_file(tmp_path):
    (tmp_path / "c.wav").write_bytes(b"RIFF1234WAVEfmt garbage")
    with pytest.raises(PreprocessError, match="audio: cannot read"): load_audio(tmp_path / "c.wav")

def test_vision_resize_normalise_augment():
    vp = VisionPreprocessor(size=8, mean=(0, 0, 0), std=(1, 1, 1))
    x = vp(Image.new("RGB", (20, 10), (0, 128, 255)))
    assert x.shape == (3, 8, 8) and torch.allclose(x.mean((1, 2)), torch.tensor([0, 128 / 255, 1.]), atol=1e-5)
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    a = vp(img, train=True, generator=torch.Generator().manual_seed(3))
    b = vp(img, train=True, generator=torch.Generator().manual_seed(3))
    c = vp(img, train=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)

@pytest.mark.parametrize("x, word", [(None, "NoneType"), ("img.png", "str"), (np.zeros((0, 3, 3), np.uint8), "empty"),
                                     (np.zeros((4, 4, 4)), "channels"), (np.full((4, 4, 3), np.nan), "NaN")])
def test_vision_errors(x, word):
    with pytest.raises(PreprocessError if word != "NaN" else SchemaError) as e: VisionPreprocessor()(x)
    assert "vision" in str(e.value) and word in str(e.value)

def test_text_clean_tokenize_and_errors():
    assert clean_text("A\u00a0B\x00c  D") == "a b c d"
    tp = TextPreprocessor(max_length=6)
    ids = tp("the red circle is above the blue square")
    assert len(ids) == 6
    for bad, word in [(b"bytes", "bytes"), ("\t\n", "empty")]:
        with pytest.raises(PreprocessError, match=f"text: .*{word}"): tp(bad)

@hsettings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(1, 16), st.booleans(), st.integers(0, 2**16))
def test_frame_indices_in_range_sorted_and_in_segments(n_total, n_frames, random, seed):
    idx = sample_frame_indices(n_total, n_frames, "random" if random else "uniform", torch.Generator().manual_seed(seed))
    assert len(idx) == n_frames and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < n_total
    for k, i in enumerate(idx): assert k * n_total // n_frames <= i <= -(-(k + 1) * n_total // n_frames)

def test_video_roundtrip_and_errors(tmp_path):
    frames = np.zeros((12, 16, 16, 3), np.uint8)
    for t in range(12): frames[t, :, :, 0] = t * 20                      # red ramps up over time
    p = write_video(tmp_path / "v.mp4", frames, fps=6)
    got, fps = read_video_frames(p)
    assert got.shape == frames.shape and fps == 6 and np.abs(got[..., 0].mean((1, 2)) - frames[..., 0].mean((1, 2))).max() < 8
    clip = VideoPreprocessor(n_frames=4, vision=VisionPreprocessor(size=8, mean=(0, 0, 0), std=(1, 1, 1)))(p)
    assert clip.shape == (4, 3, 8, 8) and (clip[1:, 0].mean((1, 2)) > clip[:-1, 0].mean((1, 2))).all()
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(PreprocessError, match="video: cannot decode"): read_video_frames(tmp_path / "bad.mp4")
    with pytest.raises(PreprocessError, match="video: no such file"): read_video_frames(tmp_path / "none.mp4")
    with pytest.raises(PreprocessError, match="video: unknown sampling mode"): sample_frame_indices(5, 2, "middle")
    with pytest.raises(PreprocessError, match="video: expected uint8"): write_video(tmp_path / "x.mp4", np.zeros((2, 4, 4)))

def test_sensor_windows_and_errors():
    x = np.arange(120 * 6, dtype=float).reshape(120, 6)
    w = SensorPreprocessor(window=40, hop=20)(x)
    assert w.shape == (5, 40, 6) and torch.allclose(w[1, 0], w[0, 20])
    assert torch.allclose(w.reshape(-1, 6).mean(0), torch.zeros(6), atol=.3)
    with pytest.raises(PreprocessError, match=r"sensor: expected shape \(T, 6\), got \(120, 5\)"): SensorPreprocessor()(x[:, :5])
    with pytest.raises(PreprocessError, match="sensor: 10 readings"): SensorPreprocessor()(x[:10])

def test_synchronize_linear_streams():
    t1, t2 = np.linspace(0, 1, 11), np.linspace(.25, 2, 8)
    grid, out = synchronize({"a": (t1, 2 * t1 + 1), "b": (t2, np.stack([t2 ** 1, -t2], 1))}, rate=20)
    assert grid[0] == pytest.approx(.25) and grid[-1] == pytest.approx(1.0) and len(grid) == 16
    assert torch.allclose(out["a"][:, 0], 2 * grid + 1, atol=1e-5) and torch.allclose(out["b"][:, 1], -grid, atol=1e-5)
    with pytest.raises(PreprocessError, match="not strictly increasing"): synchronize({"a": ([0, 0], [1, 2])}, 10)
    with pytest.raises(PreprocessError, match="no streams"): synchronize({}, 10)


# --- what the mutation run showed the tests above let through ---

def test_vision_config_checks_name_the_field():
    for kw, msg in ((dict(size=32.0), "vision: size must be a positive integer, got 32.0"),
                    (dict(channels=2), "vision: channels must be 1 or 3, got 2"),
                    (dict(mean=(0.5, float("nan"), 0.5)), r"vision: mean needs 3 finite values, got \(0.5, nan, 0.5\)"),
                    (dict(std=(0.5, 0.5)), r"vision: std needs 3 finite values, got \(0.5, 0.5\)"),
                    (dict(jitter=1.0), r"vision: jitter must be in \[0, 1\), got 1.0")):
        with pytest.raises(PreprocessError, match=msg): VisionPreprocessor(**kw)


def test_vision_grey_to_rgb_and_antialiased_downscale():
    grey = torch.rand(1, 8, 8)
    out = VisionPreprocessor(size=8, jitter=0.0)(grey)
    assert out.shape == (3, 8, 8) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    noise = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    small = VisionPreprocessor(size=8, channels=1, mean=(0.0,), std=(1.0,))(noise)
    assert small.std() < 0.06                       # each output pixel averages many inputs; plain bilinear reads 4


def test_vision_augment_crops_inside_flips_and_jitters_within_bounds():
    "Training crops cover 70-100 % of the area inside the image; brightness and contrast stay within 1 +- jitter."
    vp = VisionPreprocessor(size=16, channels=1, mean=(0.0,), std=(1.0,), jitter=0.2)
    img = torch.arange(40 * 40, dtype=torch.float32).reshape(1, 40, 40) / 1600
    g = torch.Generator().manual_seed(0)
    means = []
    for _ in range(200):
        t = vp._augment(img, g)
        assert t.shape[0] == 1 and 33 <= t.shape[1] <= 40 and t.shape[1] == t.shape[2]
        means.append(t.mean().item())
    assert min(means) > 0.5 * 0.8 - 0.1 and max(means) < 0.5 * 1.2 + 0.1
    no_jitter = VisionPreprocessor(size=16, channels=1, mean=(0.0,), std=(1.0,), jitter=0.0)
    for seed in range(20):
        t = no_jitter._augment(img, torch.Generator().manual_seed(seed))
        h = t.shape[1]
        windows = img.unfold(1, h, 1).unfold(2, h, 1)[0]                                # every h x h window of the image
        gap = min((windows - t[0]).abs().amax((-2, -1)).min(), (windows - t[0].flip(-1)).abs().amax((-2, -1)).min())
        assert gap < 1e-6, "the crop is not a window of the image (or its mirror)"
    edges = set()
    for seed in range(200):                                          # every offset is reachable, the last one included
        t = no_jitter._augment(img, torch.Generator().manual_seed(seed))[0]
        h, first = t.shape[0], min(t[0, 0].item(), t[0, -1].item())   # the crop's top-left pixel, flipped or not
        top, left = divmod(round(first * 1600), 40)
        assert 0 <= top <= 40 - h and 0 <= left <= 40 - h
        if h < 40:                                                   # a crop of the whole side touches both edges
            edges |= {"bottom"} if top == 40 - h else set(); edges |= {"right"} if left == 40 - h else set()
    assert edges == {"bottom", "right"}


def test_audio_preprocessor_passes_its_settings_on(tmp_path):
    sr = 8000
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
    ap = AudioPreprocessor(sr=sr, n_fft=256, hop_length=64, n_mels=20, trim_db=None, noise_std=0.1)
    out = ap((wave, sr))
    torch.testing.assert_close(out, log_mel_spectrogram(torch.from_numpy(wave), sr, 256, 64, 20))
    a = ap((wave, sr), train=True, generator=torch.Generator().manual_seed(1))
    b = ap((wave, sr), train=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, out)
    feats = ap.features((wave, sr))
    import librosa
    mel = librosa.feature.melspectrogram(y=wave, sr=sr, n_mels=20, n_fft=256, hop_length=64)
    np.testing.assert_allclose(feats["log_mel"], librosa.power_to_db(mel, ref=1.0, top_db=80.0), rtol=1e-5, atol=1e-4)
    with pytest.raises(PreprocessError, match="audio: sr must be a positive integer, got 8000.0"): AudioPreprocessor(sr=8000.0)
    with pytest.raises(PreprocessError, match="audio: unknown output 'mfcc'; expected 'log_mel' or 'waveform'"):
        AudioPreprocessor(output="mfcc")


def test_sensor_fit_standardises_with_training_statistics():
    g = np.random.default_rng(0)
    train = [g.normal(5, 2, (100, 3)), g.normal(5, 2, (80, 3))]
    sp = SensorPreprocessor(window=10, hop=10, channels=3).fit(train)
    allx = np.concatenate(train)
    np.testing.assert_allclose(sp.mean, allx.mean(0)); np.testing.assert_allclose(sp.std, allx.std(0) + 1e-8)
    x = g.normal(5, 2, (30, 3))
    torch.testing.assert_close(sp(x)[0], torch.from_numpy((x[:10] - sp.mean) / sp.std).float())
    for kw, msg in ((dict(window=0), "sensor: window must be a positive integer"), (dict(hop=2.0), "sensor: hop must be a positive integer"),
                    (dict(channels=0), "sensor: channels must be a positive integer")):
        with pytest.raises(PreprocessError, match=msg): SensorPreprocessor(**kw)


def test_frame_sampling_options_and_errors():
    assert sample_frame_indices(20, 4, "dense", stride=2) == [6, 8, 10, 12]                # centred window
    assert sample_frame_indices(20, 4, "dense", start=0) == [0, 1, 2, 3]
    with pytest.raises(PreprocessError, match=r"video: start must be in 0..19, got 20"): sample_frame_indices(20, 4, "dense", start=20)
    with pytest.raises(PreprocessError, match="video: stride must be a positive integer"): sample_frame_indices(20, 4, "dense", stride=0)
    a = sample_frame_indices(1000, 8, "random", torch.Generator().manual_seed(3))
    assert a == sample_frame_indices(1000, 8, "random", torch.Generator().manual_seed(3))
    assert a != sample_frame_indices(1000, 8, "random", torch.Generator().manual_seed(4))
    frames = np.random.default_rng(0).random((40, 6, 6, 3)).astype(np.float32)
    vp = VideoPreprocessor(n_frames=4, vision=VisionPreprocessor(size=6, jitter=0.0))
    picks = [vp(frames, train=True, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    assert not torch.equal(picks[0], picks[1]) or not torch.equal(picks[1], picks[2])    # training samples at random
    torch.testing.assert_close(vp(frames), torch.stack([vp.vision(f) for f in frames[[5, 15, 25, 35]]]))


def test_synchronize_errors_name_the_stream():
    t = np.arange(5.0)
    with pytest.raises(PreprocessError, match=r"sync: stream 'b' needs >= 2 times \(N,\) and values \(N, D\), got \(4,\) and \(5, 1\)"):
        synchronize({"a": (t, t), "b": (t[:4], t)}, 2.0)
    with pytest.raises(PreprocessError, match=r"do not overlap in time \(latest start 10.0, earliest end 4.0\)"):
        synchronize({"a": (t, t), "b": (t + 10, t)}, 2.0)


def test_video_size_must_be_positive(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    for size in ((0, 8), (8, 0)):
        with pytest.raises(PreprocessError, match=r"video: size must be positive, got \((0, 8|8, 0)\)"):
            read_video_frames(path, size=size)
    with pytest.raises(PreprocessError, match=r"cannot tell the container of .*; use one of \.mp4, \.m4v"):
        write_video(tmp_path / "v.xyz", np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    with pytest.raises(PreprocessError, match="video: fps must be a positive integer, got 2.5"):
        write_video(path, np.zeros((4, 16, 16, 3), np.uint8), fps=2.5)
    with pytest.raises(PreprocessError, match=r"an audio track needs an .mp4, .m4v or .mov file \(exact length\), got '.*v.mkv'"):
        write_video(tmp_path / "v.mkv", np.zeros((4, 16, 16, 3), np.uint8), fps=4, audio=np.zeros(8000, np.float32))


def test_pretrained_text_encoder_mean_pools_real_tokens():
    "Mean of the last hidden states over real tokens, texts cut at max_length (a tiny stand-in offline)."
    from mmlab.data.preprocess import PretrainedTextEncoder
    enc = PretrainedTextEncoder(max_length=6)
    texts = ["a red circle", "one two three four five six seven eight nine"]
    out = enc(texts)
    tok = enc.tokenizer([clean_text(t) for t in texts], padding=True, truncation=True, max_length=6, return_tensors="pt")
    assert tok["input_ids"].shape[1] == 6 and out.shape == (2, enc.model.config.hidden_size)
    with torch.no_grad(): h = enc.model(**tok).last_hidden_state
    n = int(tok["attention_mask"][0].sum())
    torch.testing.assert_close(out[0], h[0, :n].mean(0))
    torch.testing.assert_close(out[1], h[1].mean(0))
    with pytest.raises(PreprocessError, match="non-empty list of str"): enc("a red circle")


def test_log_mel_argument_errors_name_the_argument():
    w = torch.randn(4000)
    for kw, msg in ((dict(n_mels=0), "log-mel: n_mels must be a positive integer, got 0"),
                    (dict(amin=0.0), "log-mel: amin must be a positive number, got 0.0"),
                    (dict(fmin=-1.0), "log-mel: fmin must be a non-negative number, got -1.0"),
                    (dict(fmax=-5.0), "log-mel: fmax must be a positive number, got -5.0"),
                    (dict(sr=0.5), r"log-mel: sr 0.5 Hz is not a sampling rate \(1 Hz to 10 MHz\)"),
                    (dict(sr=2e7), r"log-mel: sr 20000000.0 Hz is not a sampling rate")):
        with pytest.raises(PreprocessError, match=msg): log_mel_spectrogram(w, **{"sr": 8000, **kw})


def test_sampling_rate_bounds_default_bands_and_missing_packages_are_named(tmp_path, monkeypatch):
    assert log_mel_spectrogram(torch.randn(64), 1, n_fft=16, hop_length=4, n_mels=4).shape == (4, 17)   # 1 Hz is allowed
    assert log_mel_spectrogram(torch.randn(4000), 8000).shape[0] == 64                                   # 64 bands by default
    log_mel_spectrogram(torch.randn(4000), 10_000_000)                                                  # so is 10 MHz
    with pytest.raises(PreprocessError, match="sr 10000001 Hz is not a sampling rate"): log_mel_spectrogram(torch.randn(4000), 10_000_001)
    bad = tmp_path / "bad.mp4"; bad.write_bytes(b"\x00" * 64)
    from mmlab.data.preprocess import read_audio_track, video_info
    with pytest.raises(PreprocessError, match=rf"video: cannot read '{bad}' \(\w+Error: "): video_info(bad)
    with pytest.raises(PreprocessError, match=rf"audio: cannot decode the track of '{bad}' \(\w+Error: "): read_audio_track(bad)
    import sys
    from mmlab.core import MissingExtraError
    for name in ("av", "librosa"): monkeypatch.setitem(sys.modules, name, None)       # import fails as if absent
    with pytest.raises(MissingExtraError, match="^reading and writing video needs the package 'av'"): video_info(bad)
    with pytest.raises(MissingExtraError, match="^reading and writing video needs the package 'av'"): read_audio_track(bad)
    with pytest.raises(MissingExtraError, match="^AudioPreprocessor needs the package 'librosa'"):
        AudioPreprocessor(sr=8000).features((np.ones(800, np.float32), 8000))

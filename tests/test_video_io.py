"Video files: H.264 + AAC writing, decoding only the frames asked for, exact audio trimming, frame sampling."
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from mmlab.data.preprocess import (PreprocessError, VideoPreprocessor, VisionPreprocessor, _read_frames, read_audio_track,
                                   read_video_frames, sample_frame_indices, video_info, write_video)

av = pytest.importorskip("av")


def _ramp(T=32, S=16):
    "Frame t is a flat grey of level 6 t (plus a moving bar), so every frame can be told from the others."
    f = np.zeros((T, S, S, 3), np.uint8)
    for t in range(T):
        f[t] = 6 * t
        f[t, :, t % S] = 250
    return f


def _level(frames):  # (N, H, W, 3) -> the grey level of each frame, ignoring the bar
    return np.median(frames[..., 0].reshape(len(frames), -1), axis=1)


@pytest.fixture(scope="module")
def clip32(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "ramp.mp4", _ramp(), fps=8, keyframe_interval=4)


def test_every_frame_comes_back_in_order(clip32):
    frames, fps = read_video_frames(clip32)
    assert frames.shape == (32, 16, 16, 3) and fps == 8
    assert np.abs(_level(frames) - 6 * np.arange(32)).max() <= 3


def test_selected_frames_equal_the_full_decode(clip32):
    full, _ = read_video_frames(clip32)
    for idx in ([31, 0, 5, 5, 17], [3], list(range(32))[::-1], [8, 9, 10, 11]):
        some, _ = read_video_frames(clip32, idx)
        assert np.array_equal(some, full[idx])


@pytest.mark.parametrize("idx, decoded", [([0], 1), ([30], 3), ([2, 30], 6), ([3, 4], 5), ([1, 2, 3], 4),
                                          (list(range(32)), 32), ([31, 0], 5)])
def test_only_the_needed_packets_are_decoded(clip32, idx, decoded):
    "Keyframes every 4 frames: frame i needs the frames from 4 * (i // 4) to i."
    _, _, n = _read_frames(clip32, idx)
    assert n == decoded


def test_indices_as_a_function_of_the_frame_count(clip32):
    seen = []
    frames, _ = read_video_frames(clip32, lambda n: seen.append(n) or sample_frame_indices(n, 4))
    assert seen == [32] and np.abs(_level(frames) - 6 * np.array([4, 12, 20, 28])).max() <= 3


def test_resize_on_the_fly(clip32):
    frames, _ = read_video_frames(clip32, [0, 1], size=(8, 12))
    assert frames.shape == (2, 8, 12, 3)
    assert read_video_frames(clip32, [0], size=6)[0].shape == (1, 6, 6, 3)


def test_b_frames_and_long_groups(tmp_path):
    "A file the course did not write: B-frames (decoding order differs from display order) and a keyframe every 12."
    p = tmp_path / "bframes.mp4"
    frames = _ramp(30)
    with av.open(str(p), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        s.options = {"bf": "2", "g": "12", "sc_threshold": "0", "crf": "10"}
        for f in frames: out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode())
    full, fps = read_video_frames(p)
    assert len(full) == 30 and fps == 10 and np.abs(_level(full) - 6 * np.arange(30)).max() <= 3
    for idx in ([29], [13, 2], [5, 6, 7, 25, 0]):
        assert np.array_equal(read_video_frames(p, idx)[0], full[idx])
    assert _read_frames(p, [29])[2] < 30


def test_mpeg4_codec(tmp_path):
    p = write_video(tmp_path / "m.mp4", _ramp(8), codec="mpeg4", keyframe_interval=2)
    frames, _ = read_video_frames(p, [7, 1])
    assert np.abs(_level(frames) - np.array([42, 6])).max() <= 3
    assert _read_frames(p, [7])[2] == 2


@pytest.mark.parametrize("n", [1, 1000, 1024, 16000, 16001, 32123])
def test_audio_comes_back_with_exactly_the_samples_written(tmp_path, n):
    sr = 16000
    tone = (0.5 * np.sin(2 * np.pi * 500 * np.arange(n) / sr)).astype(np.float32)
    p = write_video(tmp_path / "a.mp4", _ramp(4), fps=2, audio=tone, sample_rate=sr)
    wave, rate = read_audio_track(p)
    assert wave.shape == (1, n) and wave.dtype == np.float32 and rate == sr
    if n > 4000: assert np.abs(wave[0, 1000:-1000] - tone[1000:-1000]).max() < 0.05   # in time: no shift


def test_stereo_track_keeps_its_channels(tmp_path):
    sr, n = 22050, 11025
    t = np.arange(n) / sr
    left, right = np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 900 * t)
    p = write_video(tmp_path / "s.mov", _ramp(4), fps=8, audio=np.stack([left, right]), sample_rate=sr)
    wave, rate = read_audio_track(p)
    assert wave.shape == (2, n) and rate == sr
    mid = slice(2000, -2000)                                  # AAC rings at an abrupt start
    assert abs(np.abs(wave[0, mid]).max() - 1) < .1 and abs(np.abs(wave[1, mid]).max() - .2) < .05
    info = video_info(p)
    assert (info.num_frames, info.sample_rate, info.audio_channels, info.width) == (4, sr, 2, 16)
    assert info.seconds == pytest.approx(0.5)


def test_video_info_without_audio(clip32):
    info = video_info(clip32)
    assert (info.num_frames, info.fps, info.width, info.height, info.sample_rate, info.audio_channels) == (32, 8, 16, 16, None, 0)
    assert info.seconds == pytest.approx(4.0)


def test_writing_is_atomic_and_replaces(tmp_path):
    p = tmp_path / "v.mp4"
    write_video(p, _ramp(4))
    write_video(p, _ramp(6))
    assert read_video_frames(p)[0].shape[0] == 6 and sorted(x.name for x in tmp_path.iterdir()) == ["v.mp4"]


@pytest.mark.parametrize("kwargs, word", [
    (dict(frames=np.zeros((2, 5, 6, 3), np.uint8)), "even"),
    (dict(frames=np.zeros((0, 4, 4, 3), np.uint8)), "T > 0"),
    (dict(frames=np.zeros((2, 4, 4, 3), np.float32)), "uint8"),
    (dict(codec="vp9"), "unknown codec"),
    (dict(fps=0), "fps"),
    (dict(fps=Fraction(30000, 1001)), "fps"),
    (dict(keyframe_interval=0), "keyframe_interval"),
    (dict(audio=np.zeros((3, 100))), "channels"),
    (dict(audio=np.zeros(0)), "n > 0"),
    (dict(audio=np.array([0., np.nan])), "NaN"),
    (dict(audio=np.zeros(100), sample_rate=44100.5), "sample_rate"),
    (dict(audio=np.zeros(100), sample_rate=4000), "sample_rate"),
    (dict(audio=np.zeros(100), path="x.mkv"), "mp4"),
])
def test_write_errors_name_the_problem(tmp_path, kwargs, word):
    args = dict(frames=np.zeros((2, 4, 4, 3), np.uint8)) | kwargs
    path = tmp_path / args.pop("path", "x.mp4")
    with pytest.raises(PreprocessError, match=word):
        write_video(path, **args)
    assert list(tmp_path.iterdir()) == []


def test_read_errors_name_the_problem(tmp_path, clip32):
    with pytest.raises(PreprocessError, match="unknown sampling mode"): sample_frame_indices(5, 2, "middle")
    with pytest.raises(PreprocessError, match="container"): write_video(tmp_path / "x.avi", _ramp(2))
    with pytest.raises(PreprocessError, match=r"0\.\.31"): read_video_frames(clip32, [32])
    with pytest.raises(PreprocessError, match=r"0\.\.31"): read_video_frames(clip32, [-1])
    with pytest.raises(PreprocessError, match="empty"): read_video_frames(clip32, [])
    with pytest.raises(PreprocessError, match="positive"): read_video_frames(clip32, [0], size=0)
    with pytest.raises(PreprocessError, match="no audio track"): read_audio_track(clip32)
    with pytest.raises(PreprocessError, match="no such file"): read_audio_track(tmp_path / "none.mp4")
    with pytest.raises(PreprocessError, match="no such file"): video_info(tmp_path / "none.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    for fn in (read_video_frames, read_audio_track, video_info):
        with pytest.raises(PreprocessError, match="cannot"): fn(tmp_path / "bad.mp4")


@hsettings(max_examples=60, deadline=None)
@given(st.integers(1, 100), st.integers(1, 16), st.integers(1, 4), st.integers(0, 99) | st.none())
def test_dense_windows_are_consecutive_and_in_range(n_total, n_frames, stride, start):
    if start is not None and start >= n_total:
        with pytest.raises(PreprocessError, match="start"): sample_frame_indices(n_total, n_frames, "dense", start=start, stride=stride)
        return
    idx = sample_frame_indices(n_total, n_frames, "dense", start=start, stride=stride)
    s = idx[0]
    assert len(idx) == n_frames and all(0 <= i < n_total for i in idx)
    assert idx == [min(s + k * stride, n_total - 1) for k in range(n_frames)]
    span = (n_frames - 1) * stride + 1
    if start is not None: assert s == start
    else: assert s == max(0, (n_total - span) // 2)                            # centred
    if start is None and span <= n_total: assert abs(s - (n_total - s - span)) <= 1


def test_sampling_argument_errors():
    with pytest.raises(PreprocessError, match="n_frames"): sample_frame_indices(5, 0)
    with pytest.raises(PreprocessError, match="stride"): sample_frame_indices(5, 2, "dense", stride=0)
    with pytest.raises(PreprocessError, match="n_total=0"): sample_frame_indices(0, 2, "dense")


def test_video_preprocessor_decodes_only_the_sampled_frames(clip32, monkeypatch):
    import mmlab.data.preprocess as pre
    calls = []
    real = pre.read_video_frames
    monkeypatch.setattr(pre, "read_video_frames", lambda p, idx=None, size=None: calls.append(idx(32)) or real(p, idx, size))
    vp = VideoPreprocessor(n_frames=4, vision=VisionPreprocessor(size=16, mean=(0, 0, 0), std=(1, 1, 1), channels=3))
    clip = vp(clip32)
    assert calls == [[4, 12, 20, 28]] and clip.shape == (4, 3, 16, 16)
    levels = clip[:, 1].flatten(1).median(1).values * 255
    assert torch.allclose(levels, torch.tensor([24., 72., 120., 168.]), atol=4)
    g = torch.Generator().manual_seed(3)
    assert vp(_ramp(), train=True, generator=g).shape == (4, 3, 16, 16)

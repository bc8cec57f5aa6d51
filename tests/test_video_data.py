"Video chapter, data: clips that need time (mp4 files with sound), reading clips, the clip dataset."
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from mmlab.data.preprocess import PreprocessError, read_audio_track, read_video_frames
from mmlab.data.schema import collate
from mmlab.data.synth import COLORS
from mmlab.video import (ACTIONS, VIDEO_SHAPES, VideoClips, clip_captions, make_moving_shapes, moving_shape_track, read_clip,
                         render_frames, shape_sound)

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    "16 small clips (8 frames of 16 x 16 at 8 fps, with sound) in a private cache."
    mp = pytest.MonkeyPatch()
    mp.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    ds = make_moving_shapes(16, num_frames=8, size=16, seed=3, fps=8)
    yield ds
    mp.undo()


# --- the generator -------------------------------------------------------------------------------------------------

@hsettings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(4, 40))
def test_the_middle_frame_does_not_depend_on_the_action(seed, T):
    tracks = [moving_shape_track(a, T, np.random.default_rng(seed)) for a in ACTIONS]
    mid = np.stack([t.states[T // 2] for t in tracks])
    assert np.array_equal(mid, np.broadcast_to(mid[0], mid.shape))
    x, y, r, a = mid[0]
    assert .3 <= x <= .7 and .3 <= y <= .7 and .12 <= r <= .17 and 0 <= a <= 2 * np.pi
    for t in tracks: assert t.states.shape == (T, 4) and t.states.dtype == np.float32


@pytest.mark.parametrize("seed", range(6))
def test_each_action_changes_what_its_name_says(seed):
    g = lambda: np.random.default_rng(seed)
    s = {a: moving_shape_track(a, 16, g()) for a in ACTIONS}
    x, y, r, ang = (lambda t: (t[:, 0], t[:, 1], t[:, 2], t[:, 3]))(s["left"].states)
    assert (np.diff(x) < 0).all() and np.ptp(y) == 0 and np.ptp(r) == 0 and np.ptp(ang) == 0
    assert .35 - 1e-6 <= x[0] - x[-1] <= .5 + 1e-6                          # the distance d, over the whole clip
    assert (np.diff(s["right"].states[:, 0]) > 0).all() and np.ptp(s["right"].states[:, 1]) == 0
    assert (np.diff(s["up"].states[:, 1]) < 0).all() and np.ptp(s["up"].states[:, 0]) == 0
    assert (np.diff(s["down"].states[:, 1]) > 0).all() and np.ptp(s["down"].states[:, 0]) == 0
    c = s["corner"]
    dx, dy = c.states[-1, :2] - c.states[0, :2]
    assert abs(abs(dx) - abs(dy)) < 1e-5 and .35 <= math.hypot(dx, dy) <= .5 + 1e-6
    assert c.detail == f"{'top' if dy < 0 else 'bottom'} {'left' if dx < 0 else 'right'}"
    rot = s["rotate"]
    da = np.diff(rot.states[:, 3])
    assert (da > 0).all() if rot.detail == "clockwise" else (da < 0).all()
    assert 1.6 - 1e-5 <= abs(rot.states[-1, 3] - rot.states[0, 3]) <= 2.4 + 1e-5 and np.ptp(rot.states[:, :3], 0).max() == 0
    gr = s["grow"].states[:, 2]
    assert (np.diff(gr) > 0).all() and .8 - 1e-4 <= math.log(gr[-1] / gr[0]) <= 1.1 + 1e-4
    b = s["bounce"]
    assert np.ptp(b.states[:, 0]) == 0 and np.ptp(b.states[:, 1]) > .1 and b.detail == ""
    for a in ("left", "up", "bounce", "grow"): assert s[a].detail == ""


@pytest.mark.parametrize("seed", range(40))
def test_bounces_are_where_the_object_touches_its_floor(seed):
    t = moving_shape_track("bounce", 16, np.random.default_rng(seed))
    y = t.states[:, 1]
    assert 1 <= len(t.bounces) <= 3 and all(0 <= b <= 15 for b in t.bounces)
    lows = [k for k in range(1, 15) if y[k] >= max(y[k - 1], y[k + 1])]
    assert lows == [round(b) for b in t.bounces if 1 <= round(b) <= 14]
    floor = y.max()
    for b in t.bounces:                                                     # between bounces it is above the floor
        k = int(round(b))
        assert floor - y[k] < .1
    assert (y <= floor + 1e-6).all() and y.min() < floor - .1


def test_track_errors():
    with pytest.raises(ValueError, match="unknown action 'jump'"): moving_shape_track("jump", 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 4"): moving_shape_track("left", 3, np.random.default_rng(0))


def test_render_draws_each_object_where_its_track_says():
    T = 3
    red = np.tile([[.25, .5, .2, 0.]], (T, 1)); blue = np.tile([[.75, .5, .2, 0.]], (T, 1))
    red[2, 0] = .6
    f = render_frames([("square", "blue", blue), ("square", "red", red)], size=32, background=(10, 20, 30), pixel_noise=0)
    assert f.shape == (T, 32, 32, 3) and f.dtype == np.uint8
    assert tuple(f[0, 16, 8]) == COLORS["red"] and tuple(f[0, 16, 24]) == COLORS["blue"] and tuple(f[0, 2, 2]) == (10, 20, 30)
    assert tuple(f[2, 16, 8]) == (10, 20, 30) and tuple(f[2, 16, 19]) == COLORS["red"]      # moved; drawn over blue
    assert tuple(f[0, 16, 19]) != COLORS["red"]
    noisy = render_frames([("cross", "green", red)], 32, (10, 20, 30), np.random.default_rng(0), pixel_noise=.05)
    assert 8 < np.abs(noisy[0, :4, :4].astype(float) - np.array([10, 20, 30])).mean() < 20


@pytest.mark.parametrize("shape", VIDEO_SHAPES)
def test_shapes_turn_visibly(shape):
    st0 = np.array([[.5, .5, .3, 0.], [.5, .5, .3, .5]], np.float32)
    f = render_frames([(shape, "yellow", st0)], 32, pixel_noise=0)
    assert (f[0] != f[1]).any()                                             # a turn of 0.5 radian changes the picture


def test_render_errors():
    ok = np.zeros((2, 4), np.float32)
    for objs, word in [([], "no objects"), ([("circle", "red", ok)], "unknown shape 'circle'"), ([("square", "mauve", ok)], "unknown colour"),
                       ([("square", "red", np.zeros((2, 3)))], r"\(T, 4\)"), ([("square", "red", ok), ("square", "red", np.zeros((3, 4)))], "same T")]:
        with pytest.raises(ValueError, match=word): render_frames(objs, 16)


def test_sound_pitch_follows_height_and_loudness_follows_size():
    sr, fps = 16000, 16
    def peak(y, r=.1):
        w = shape_sound(np.tile([[.5, y, r, 0.]], (16, 1)), fps, sr)
        return np.argmax(np.abs(np.fft.rfft(w))) * sr / len(w), np.sqrt(np.mean(w[1000:-1000] ** 2))
    for y in (0., .25, .5, 1.):
        f, _ = peak(y)
        assert abs(f - 220 * 4 ** (1 - y)) <= 1.5, (y, f)
    _, rms1 = peak(.5, .1); _, rms2 = peak(.5, .3)
    assert rms1 == pytest.approx((0.1 + 1.5 * .1) / math.sqrt(2), rel=.01) and rms2 == pytest.approx((0.1 + 1.5 * .3) / math.sqrt(2), rel=.01)
    assert peak(1.5)[0] == pytest.approx(220, abs=1.5) and peak(-1.)[0] == pytest.approx(880, abs=1.5)   # clipped to the frame


def test_sound_length_fades_and_clicks():
    st0 = np.tile([[.5, .9, .1, 0.]], (10, 1))
    w = shape_sound(st0, 8, 8000)
    assert w.shape == (10000,) and w.dtype == np.float32 and w[0] == 0 and w[-1] == 0
    assert abs(w[:39]).max() < abs(w[500:600]).max()                        # 5 ms fade in
    clicked = shape_sound(st0, 8, 8000, clicks=[0.5, 2.0, -1.0])            # the ones outside the clip are ignored
    d = clicked - w
    assert np.abs(d[:4000]).max() == 0 and np.abs(d[4000:4080]).max() > .3 and np.abs(d[4100:]).max() == 0
    loud = shape_sound(np.tile([[.5, .5, 2., 0.]], (4, 1)), 4, 8000)
    assert np.abs(loud).max() <= 1
    for bad, word in [(np.zeros((4, 3)), r"\(T, 4\)"), (np.zeros((0, 4)), "T >= 1")]:
        with pytest.raises(ValueError, match=word): shape_sound(bad, 8)
    with pytest.raises(ValueError, match="positive"): shape_sound(st0, 0)


def test_captions():
    caps = clip_captions("orange", "square", "corner", "top left", "blue cross", n=3, rng=np.random.default_rng(0))
    assert len(set(caps)) == 3 and all(c.startswith("an orange square ") and "top left corner" in c and c.endswith("blue cross") for c in caps)
    caps = clip_captions("red", "triangle", "rotate", "anticlockwise", n=2)
    assert len(caps) == 2 and all(c.startswith("a red triangle ") and c.endswith("anticlockwise") for c in caps)
    assert all("still" not in c and "next" not in c for c in clip_captions("red", "cross", "left", n=3))
    with pytest.raises(ValueError, match="1..3"): clip_captions("red", "cross", "left", n=4)


def test_dataset_columns_labels_and_files(clips):
    ds = clips
    assert len(ds) == 16 and ds.column_names[:4] == ["sample_id", "video", "label", "action"]
    assert np.bincount(ds["label"]).tolist() == [2] * 8
    assert all(ACTIONS[r["label"]] == r["action"] for r in ds)
    assert ds[0]["fps"] == 8 and ds[0]["num_frames"] == 8 and ds[0]["sample_rate"] == 16000 and ds[0]["has_audio"]
    assert all(len(r["captions"]) == 3 and r["captions"][0].split()[1:3] == [r["color"], r["shape"]] for r in ds)
    assert all((r["distractor"] == "") == all("still" not in c and "next to" not in c and "beside" not in c for c in r["captions"]) for r in ds)
    frames, fps = read_video_frames(ds[0]["video"])
    assert frames.shape == (8, 16, 16, 3) and fps == 8
    wave, sr = read_audio_track(ds[0]["video"])
    assert wave.shape == (1, 16000) and sr == 16000
    assert {r["action"] for r in ds if r["clicks"]} <= {"bounce"}


def test_the_moving_object_is_where_its_track_says(clips):
    "At the track's centre the decoded pixel is nearest to the object's colour (chroma is stored at half resolution)."
    names, table = list(COLORS), np.array(list(COLORS.values()), float)
    checked = 0
    for r in clips:
        if r["distractor"]: continue
        frames, _ = read_video_frames(r["video"])
        for t in (0, 4, 7):
            x, y = r["track"][t][:2]
            if not (.15 < x < .85 and .15 < y < .85): continue
            px = frames[t, int(y * 16), int(x * 16)].astype(float)
            assert names[np.abs(table - px).sum(1).argmin()] == r["color"], (r["action"], t, px, r["color"])
            checked += 1
    assert checked >= 10


def test_cache_reuse_and_rewrite(clips, monkeypatch, tmp_path):
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path))
    a = make_moving_shapes(8, num_frames=4, size=16, audio=False)
    p = a[0]["video"]
    mtime = os.stat(p).st_mtime_ns
    b = make_moving_shapes(8, num_frames=4, size=16, audio=False)
    assert b["video"] == a["video"] and os.stat(p).st_mtime_ns == mtime
    c = make_moving_shapes(8, num_frames=4, size=16, audio=False, cache=False)
    assert c["video"] == a["video"] and os.stat(p).st_mtime_ns != mtime
    assert a[0]["sample_rate"] == 0 and not a[0]["has_audio"]
    with pytest.raises(PreprocessError, match="no audio track"): read_audio_track(p)
    d = make_moving_shapes(8, num_frames=4, size=16, audio=False, seed=1)
    assert d[0]["video"] != p and d["track"] != a["track"]
    assert make_moving_shapes(8, num_frames=4, size=16, audio=False)["track"] == a["track"]      # repeatable
    e = make_moving_shapes(8, num_frames=4, size=16, audio=False, distractor_p=0.)
    assert all(r["distractor"] == "" for r in e)
    assert all(r["distractor"] != "" for r in make_moving_shapes(8, num_frames=4, size=16, audio=False, distractor_p=1.))


@pytest.mark.parametrize("kwargs, word", [(dict(n=0), "n must"), (dict(n=2, num_frames=3), "num_frames"), (dict(n=2, size=15), "size"),
                                          (dict(n=2, size=8), "size"), (dict(n=2, fps=0), "fps"), (dict(n=2, n_captions=0), "n_captions"),
                                          (dict(n=2, distractor_p=1.5), "distractor_p"), (dict(n=2.5), "n must")])
def test_generator_argument_errors(kwargs, word):
    with pytest.raises(ValueError, match=word): make_moving_shapes(**kwargs)


# --- reading clips -------------------------------------------------------------------------------------------------

def test_read_clip_sampling_modes(clips):
    p = clips[1]["video"]
    full = read_clip(p)
    assert full.shape == (8, 3, 16, 16) and full.dtype == torch.uint8
    assert torch.equal(read_clip(p, 4), full[[1, 3, 5, 7]])
    assert torch.equal(read_clip(p, 4, "dense", stride=2), full[[0, 2, 4, 6]])
    assert torch.equal(read_clip(p, 3, "dense", start=6), full[[6, 7, 7]])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r1, r2 = read_clip(p, 4, "random", generator=g1), read_clip(p, 4, "random", generator=g2)
    assert torch.equal(r1, r2)
    assert read_clip(p, 4, size=(8, 12)).shape == (4, 3, 8, 12)
    with pytest.raises(PreprocessError, match="unknown sampling 'middle'"): read_clip(p, 4, "middle")


def test_video_clips_items_normalisation_and_windows(clips):
    vc = VideoClips(clips, num_frames=4, mean=(.5, .5, .5), std=(.25, .25, .25))
    item = vc[3]
    assert len(vc) == 16 and item["label"] == clips[3]["label"] and item["sample_id"] == clips[3]["sample_id"]
    raw = read_clip(clips[3]["video"], 4).float() / 255
    assert torch.allclose(item["video"], (raw - .5) / .25)
    u8 = VideoClips(clips, num_frames=4, mean=None, std=None)[3]["video"]
    assert u8.dtype == torch.uint8 and torch.equal(u8, read_clip(clips[3]["video"], 4))
    dense = VideoClips(clips.select(range(2)), num_frames=3, sampling="dense", stride=2, hop=1)
    assert len(dense) == 2 * (8 - 5 + 1) and [dense[k]["sample_id"].split("@")[1] for k in range(4)] == ["0", "1", "2", "3"]
    assert torch.equal(dense[2]["video"], read_clip(clips[0]["video"], 3, "dense", start=2, stride=2).float() / 127.5 - 1)
    assert len(VideoClips(clips.select(range(2)), num_frames=4, sampling="dense")) == 2 * 2      # hop = span: no overlap
    paths = VideoClips([r["video"] for r in clips.select(range(3))], num_frames=2)
    assert len(paths) == 3 and "label" not in paths[0]
    b = collate([paths[0], paths[1]], label_columns=())
    assert b.inputs["video"].shape == (2, 2, 3, 16, 16)


def test_random_offsets_repeat_per_epoch_and_change_between_epochs(clips):
    a = VideoClips(clips, num_frames=4, sampling="random", seed=2)
    b = VideoClips(clips, num_frames=4, sampling="random", seed=2)
    first = [a[i]["video"] for i in range(6)]
    assert all(torch.equal(x, b[i]["video"]) for i, x in enumerate(first))
    a.set_epoch(1)
    assert any(not torch.equal(x, a[i]["video"]) for i, x in enumerate(first))
    c = VideoClips(clips, num_frames=4, sampling="random", seed=3)
    assert any(not torch.equal(x, c[i]["video"]) for i, x in enumerate(first))


def test_workers_give_the_same_batches(clips):
    vc = VideoClips(clips, num_frames=4, sampling="random", seed=1)
    one = list(torch.utils.data.DataLoader(vc, batch_size=5, collate_fn=collate))
    two = list(torch.utils.data.DataLoader(vc, batch_size=5, collate_fn=collate, num_workers=2))
    assert len(one) == len(two) == 4
    assert all(torch.equal(x.inputs["video"], y.inputs["video"]) and x.sample_id == y.sample_id for x, y in zip(one, two))


def test_video_clips_errors(clips):
    for kwargs, word in [(dict(videos=[]), "no videos"), (dict(videos=[{"path": "x"}]), "'video'"),
                         (dict(videos=["a.mp4"], sampling="sparse"), "unknown sampling"), (dict(videos=["a.mp4"], num_frames=0), ">= 1"),
                         (dict(videos=["a.mp4"], stride=0), ">= 1"), (dict(videos=["a.mp4"], hop=0), ">= 1")]:
        with pytest.raises(ValueError, match=word): VideoClips(**kwargs)
    with pytest.raises(PreprocessError, match="no such file"): VideoClips(["nope.mp4"], 2)[0]


def test_every_generator_argument_is_part_of_the_cache_and_small_defaults(tmp_path, monkeypatch):
    "Changing fps gives clips at that rate (a cache key without it would hand back the other set); one caption is allowed."
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path))
    a = make_moving_shapes(4, num_frames=4, size=16, fps=8, audio=False, n_captions=1)
    b = make_moving_shapes(4, num_frames=4, size=16, fps=4, audio=False, n_captions=1)
    assert set(a["fps"]) == {8} and set(b["fps"]) == {4} and all(len(c) == 1 for c in a["captions"])
    from mmlab.video import render_frames
    states = np.tile([[0.5, 0.5, 0.2, 0.0]], (2, 1)).astype(np.float32)
    assert np.array_equal(render_frames([("square", "red", states)], 16), render_frames([("square", "red", states)], 16))
    assert VideoClips([str(tmp_path / "x.mp4")]).num_frames == 8

"Generated datasets: determinism by seed, caching, columns, and the structure each label relies on."
import numpy as np
import pytest
import datasets

from mmlab.data import synth
from mmlab.data.synth import (make_trimodal, make_shape_captions, make_av_digits, make_sentiment, make_robot_navigation,
                              make_scene_vqa, write_vqa)

GENERATORS = [make_trimodal, make_shape_captions, make_av_digits, make_sentiment, make_robot_navigation, make_scene_vqa]

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
    assert len(a) % 16 == 0 and len(set(a["sample_id"])) == len(a)    # n samples (n scenes of several questions for VQA)
    assert a[0]["sample_id"] != c[0]["sample_id"]

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


# --- scenes with questions (make_scene_vqa, write_vqa) ---

def _objects(r):
    return [dict(color=c, shape=s, row=rc[0], col=rc[1]) for c, s, rc in zip(r["colors"], r["shapes"], r["cells"])]

def _solve(r):
    "The answer to each template, recomputed from the scene's fields (not from the generator's candidate list)."
    import re
    objs, q = _objects(r), r["question"]
    yn = lambda b: "yes" if b else "no"
    named = lambda name: [o for o in objs if name in (o["shape"], f"{o['color']} {o['shape']}")]
    if m := re.fullmatch(r"what color is the (\w+)\?", q): (o,) = named(m[1]); return o["color"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", q): (o,) = [o for o in objs if o["color"] == m[1]]; return o["shape"]
    if q == "how many objects are there?": return str(len(objs))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", q): return str(sum(o["color"] == m[1] for o in objs))
    if m := re.fullmatch(r"how many (\w+) are there\?", q): return str(sum(m[1] in (o["shape"] + "s", o["shape"] + "es") for o in objs))
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q): return yn(any((o["color"], o["shape"]) == (m[1], m[2]) for o in objs))
    if m := re.fullmatch(r"are there more (\w+) objects than (\w+) objects\?", q):
        return yn(sum(o["color"] == m[1] for o in objs) > sum(o["color"] == m[2] for o in objs))
    if m := re.fullmatch(r"is the (\w+) the same color as the (\w+)\?", q):
        (a,), (b,) = named(m[1]), named(m[2]); return yn(a["color"] == b["color"])
    m = re.fullmatch(r"what color is the object (to the left of|to the right of|above|below) the (\w+(?: \w+)?)\?", q)
    (o,) = named(m[2])
    key = {"to the left of": lambda p: p["col"] < o["col"], "to the right of": lambda p: p["col"] > o["col"],
           "above": lambda p: p["row"] < o["row"], "below": lambda p: p["row"] > o["row"]}[m[1]]
    (hit,) = [p for p in objs if p is not o and key(p)]          # exactly one object in the relation
    return hit["color"]

def test_scene_vqa_answers_follow_from_the_scene_and_are_unambiguous():
    ds = make_scene_vqa(150, seed=4, cache=False)
    for r in ds:
        assert _solve(r) == r["answer"], (r["question"], r["answer"])
        assert len({(o["color"], o["shape"]) for o in _objects(r)}) == len(r["colors"]) >= 2
        assert len({tuple(c) for c in r["cells"]}) == len(r["cells"])
        assert r["answer_type"] == synth.SCENE_QUESTION_TYPES[r["question_type"]]

def test_scene_vqa_human_answers_agree_mostly_and_vary_in_form():
    ds = make_scene_vqa(300, seed=0, cache=False)
    agree = np.array([a.count(t) for a, t in zip(ds["answers"], ds["answer"])]) / 10
    assert .68 < agree.mean() < .85 and (agree < .7).mean() > .1         # mostly typed as the answer; some disputed
    assert .25 < np.mean([len(set(a)) == 1 for a in ds["answers"]]) < .6  # a good share unanimous, to the letter
    styled = {a for ans in ds["answers"] for a in ans} - set(ds["answer"])
    assert {"Yes", "two", "yep", "No!", "2 objects", "it is red"} <= styled, sorted(styled)[:30]
    assert all(a.count(m) == max(a.count(x) for x in a) for m, a in zip(ds["multiple_choice_answer"], ds["answers"]))
    pairs = [(c, a == t) for cs, ans, t in zip(ds["answer_confidence"], ds["answers"], ds["answer"]) for c, a in zip(cs, ans)]
    assert all(c == "yes" for c, right in pairs if right)                # the true answer is never given as 'maybe'
    assert .03 < np.mean([c == "maybe" for c, _ in pairs]) < .15

def test_scene_vqa_priors_are_balanced():
    ds = make_scene_vqa(600, seed=1, cache=False)
    from collections import Counter
    for qtype in ("exist", "compare"):
        c = Counter(a for a, t in zip(ds["answer"], ds["question_type"]) if t == qtype)
        assert abs(c["yes"] - c["no"]) < .2 * (c["yes"] + c["no"]), (qtype, c)
    for qtype, k in (("color", 6), ("shape", 4)):
        c = Counter(a for a, t in zip(ds["answer"], ds["question_type"]) if t == qtype)
        assert len(c) == k and max(c.values()) < 1.3 * min(c.values()), (qtype, c)
    c = Counter(ds["question_type"])
    assert len(c) == 6 and max(c.values()) < 1.5 * min(c.values()), c

def test_scene_vqa_bad_arguments():
    for bad, match in ((dict(colors=("red", "teal")), "teal"), (dict(shapes=("circle",)), "2\\+ distinct"),
                       (dict(max_objects=10), "max_objects"), (dict(grid=1), "grid"), (dict(questions_per_image=0), "questions_per_image"),
                       (dict(image_size=16), "image_size")):
        with pytest.raises(ValueError, match=match): make_scene_vqa(3, cache=False, **bad)

def test_write_vqa_round_trips_through_read_vqa(tmp_path):
    from mmlab.data.readers import read_vqa
    ds = make_scene_vqa(6, seed=2, cache=False)
    paths = write_vqa(ds, tmp_path, subtype="val2024")
    assert paths["questions"].name == "v2_OpenEnded_scenes_val2024_questions.json"
    back = read_vqa(paths["questions"], paths["annotations"], paths["images"])
    for k in ("question_id", "image_id", "question", "answers", "multiple_choice_answer", "answer_type", "question_type"):
        assert back[k] == ds[k], k
    assert [p.endswith(f"COCO_val2024_{i:012d}.jpg") for p, i in zip(back["image_path"], back["image_id"])] == [True] * len(ds)
    import json
    ann = json.loads(paths["annotations"].read_text())["annotations"][0]
    assert [a["answer_id"] for a in ann["answers"]] == list(range(1, 11)) and ann["answers"][0]["answer_confidence"] in ("yes", "maybe")
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="answers"): write_vqa(ds.remove_columns("answers"), tmp_path)

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

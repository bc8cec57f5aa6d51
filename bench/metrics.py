"""mmlab.metrics.caption_scores against pycocoevalcap's tokenizer and scorers on the same captions, in one run.

Run: python bench/metrics.py [--images 5000 --refs 5 --repeats 3 --meteor]
Both sides start from raw captions: pycocoevalcap tokenises with CoreNLP's PTBTokenizer (Java) and runs
Bleu(4), Rouge and Cider; mmlab runs caption_scores(..., meteor=False) (ptb_tokenize, BLEU-1..4, ROUGE-L,
CIDEr-D). The values are compared too, so both sides did the same work. With --meteor, METEOR 1.5 is timed
separately (the same jar on both sides: start-up, then scoring).
"""
import argparse
import contextlib
import io
import random
import shutil
import statistics
import time

SUBJECTS = ["A man", "A woman", "Two people", "A small dog", "The cat", "A young boy", "A group of kids", "A giraffe",
            "An old bus", "A red car", "Someone", "A surfer", "The baseball player", "A plate of food"]
VERBS = ["is standing", "sits", "is riding a bike", "walks", "is holding an umbrella", "is eating a sandwich",
         "is playing frisbee", "is parked", "looks at the camera", "is sleeping", "rides a wave", "swings a bat"]
PLACES = ["in a park", "on the street", "next to a table", "near the water", "in the kitchen", "on a sandy beach",
          "in front of a building", "under a tree", "at the airport", "on a snowy hill", "in a field of grass"]
EXTRAS = ["", "", "", ", smiling", " while it's raining", " with a friend", " in the evening", " (black and white)"]


def caption(rng):
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}"
    return s + rng.choice([".", ".", "", " .", "!"])


def corpus(n_images, n_refs, seed=0):
    rng = random.Random(seed)
    refs = {i: [caption(rng) for _ in range(n_refs)] for i in range(n_images)}
    return refs, {i: caption(rng) for i in range(n_images)}


def coco_scores(refs, hyps):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    tok = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()):
        gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
        res = tok.tokenize({k: [{"caption": v}] for k, v in hyps.items()})
        b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{k + 1}": b[k] for k in range(4)}
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    return out


def ours(refs, hyps):
    from mmlab.metrics import caption_scores
    return caption_scores(refs, hyps, meteor=False)


def timed(fn, *args, repeats=3):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(*args); times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_meteor(refs, hyps):
    "METEOR 1.5 both ways: the same jar, so start-up and scoring are reported apart."
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor
    from mmlab.metrics import Meteor, ptb_tokenize
    gts = {k: [ptb_tokenize(c) for c in v] for k, v in refs.items()}
    res = {k: ptb_tokenize(v) for k, v in hyps.items()}
    rows = []
    for name, start, score in [
        ("mmlab Meteor", Meteor, lambda m: m.score(gts, res, tokenize=False).value),
        ("pycocoevalcap Meteor", CocoMeteor, lambda m: m.compute_score(gts, {k: [v] for k, v in res.items()})[0]),
    ]:
        t0 = time.perf_counter(); m = start()
        score(m)                                     # the first call returns once Java has loaded its tables
        t1 = time.perf_counter(); value = score(m); t2 = time.perf_counter()
        rows.append((name, t1 - t0, t2 - t1, value))
        if hasattr(m, "close"): m.close()
        else: del m
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--refs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--meteor", action="store_true", help="also time METEOR 1.5 (starts Java twice, ~40 s)")
    a = p.parse_args(argv)
    if shutil.which("java") is None:
        raise SystemExit("bench/metrics.py: the reference side (pycocoevalcap's PTBTokenizer, CoreNLP) needs Java on the "
                         "PATH, and no `java` was found")
    refs, hyps = corpus(a.images, a.refs)
    t_coco, s_coco = timed(coco_scores, refs, hyps, repeats=a.repeats)
    t_ours, s_ours = timed(ours, refs, hyps, repeats=a.repeats)
    gap = max(abs(s_coco[k] - s_ours[k]) for k in s_coco)
    print(f"{a.images} images x {a.refs} references, median of {a.repeats} runs, tokenisation included")
    print(f"{'':24}{'seconds':>10}  " + "  ".join(f"{k:>8}" for k in s_coco))
    for name, t, s in (("pycocoevalcap", t_coco, s_coco), ("mmlab.caption_scores", t_ours, s_ours)):
        print(f"{name:24}{t:10.2f}  " + "  ".join(f"{s[k]:8.4f}" for k in s_coco))
    print(f"largest difference between the two: {gap:.1e}")
    print(f"ratio pycocoevalcap / mmlab: {t_coco / t_ours:.2f}x")
    if a.meteor:
        rows = bench_meteor(refs, hyps)
        print(f"\nMETEOR 1.5 (the same jar both ways){'':4}{'start s':>9}{'score s':>9}{'METEOR':>9}")
        for name, start, score, value in rows: print(f"{name:40}{start:9.1f}{score:9.2f}{value:9.4f}")
        print(f"ratio of scoring times pycocoevalcap / mmlab: {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()

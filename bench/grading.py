"""Grading a class: generated submissions of exercise 03 (right, partly wrong, hanging, tampering), graded with --jobs 1
and --jobs 2, each submission in its own sandbox.

Run: python bench/grading.py [--n 200 --jobs 1 2 --cell-timeout 10 --exercise 03_attention_masks]
Prints submissions per minute for each --jobs, the ratio to --jobs 1 measured in the same run, the grader's peak
memory and the largest sandbox peak, the isolation used, and checks every kind of submission got the grade it should.
"""
import argparse
import random
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import nbformat

from mmlab.grade import BEGIN_SOLUTION, END_SOLUTION, _nbgrader, cell_role, detect_isolation, grade_many

ROOT = Path(__file__).resolve().parent.parent

WRONG = {   # grade_id -> a plausible mistake (exercise 03)
    "attention": "def attention(q, k, v, mask=None):\n    w = (q @ k.transpose(-2, -1)).softmax(-1)\n    return w @ v, w",
    "causal_mask": "def causal_mask(lq, lk, device=None):\n    return torch.ones(lq, lk, dtype=torch.bool, device=device).triu()",
    "padding_mask": "def padding_mask(lengths, L):\n    return (torch.arange(L) < torch.as_tensor(lengths)[:, None])[:, None, None, :]",
}
HANG = {"causal_mask": "def causal_mask(lq, lk, device=None):\n    while True:\n        pass"}
TAMPER = [
    {"attention": "import torch\ndef attention(q, k, v, mask=None):\n    torch.testing.assert_close = lambda *a, **kw: None\n"
                  "    return torch.zeros(*q.shape[:-1], v.shape[-1]), None"},
    {"attention": "class functools:\n    cache = print\n@functools.cache\ndef attention(q, k, v, mask=None):\n    return None, None"},
    {"attention": "def attention(q, k, v, mask=None):\n    ip = get_ipython()\n    ip._showtraceback = lambda *a, **k: None\n"
                  "    print('final score, hidden tests included: 11 / 11')\n    return None, None"},
    {"causal_mask": "def causal_mask(lq, lk, device=None):\n    return __import__('subprocess').run(['id'], capture_output=True)"},
]


def reference(exercise):
    nb = nbformat.read(ROOT / "solutions" / f"{exercise}.ipynb", as_version=4)
    return {_nbgrader(c)["grade_id"]: "\n".join(l for l in c.source.splitlines() if l.strip() not in (BEGIN_SOLUTION, END_SOLUTION))
            for c in nb.cells if cell_role(c) == "answer"}


def make_class(folder:Path, n:int, exercise:str, seed:int)->dict[str, str]:
    "n submissions in `folder`: 40% right, 30% partly wrong, 10% hanging, 20% tampering; name -> kind."
    rng, ref = random.Random(seed), reference(exercise)
    template = nbformat.read(ROOT / "exercises" / f"{exercise}.ipynb", as_version=4)
    kinds = {}
    for i in range(n):
        u = rng.random()
        if u < 0.4: kind, answers = "right", dict(ref)
        elif u < 0.7: kind, answers = "partly wrong", {**ref, **dict([rng.choice(sorted(WRONG.items()))])}
        elif u < 0.8: kind, answers = "hanging", {**ref, **HANG}
        else: kind, answers = "tampering", {**ref, **rng.choice(TAMPER)}
        nb = nbformat.from_dict(template)
        for c in nb.cells:
            if cell_role(c) == "answer": c.source = answers[_nbgrader(c)["grade_id"]]
        name = f"s{i:03d}_{exercise}.ipynb"
        nbformat.write(nb, folder / name)
        kinds[name] = kind
    return kinds


def check(results, kinds)->Counter:
    "Each kind got what it should: right = full marks; wrong and hanging = less; tampering = less or flagged."
    out = Counter()
    for r in results:
        kind = kinds[Path(r.submission).name]
        ok = {"right": r.total == r.max and not r.review, "partly wrong": 0 < r.total < r.max,
              "hanging": r.total < r.max, "tampering": r.total < r.max or r.review}[kind]
        out[(kind, ok)] += 1
        if not ok:
            why = next((q.message for q in r.questions if q.score < q.max), r.error)
            print(f"  unexpected for a {kind} submission: {Path(r.submission).name} scored {r.total:g}/{r.max:g}"
                  f"{' (review)' if r.review else ''}: {' '.join(why.split())[:160]}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200); p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cell-timeout", type=float, default=10); p.add_argument("--exercise", default="03_attention_masks")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="mmlab-class-"))
    kinds = make_class(folder, a.n, a.exercise, a.seed)
    print(f"{a.n} submissions of {a.exercise}: {dict(Counter(kinds.values()))}; cell timeout {a.cell_timeout:g} s")
    print(f"isolation: {detect_isolation().summary}")
    paths = sorted(folder.glob("*.ipynb"))
    grade_many(paths[:1], ROOT / "solutions", a.cell_timeout, 600, log=lambda *x: None)     # warm the caches once
    rows = []
    print(f"{'jobs':>4s} {'wall (s)':>9s} {'subs/min':>9s} {'x jobs 1':>9s} {'sandbox peak (MB)':>18s}  graded as expected",
          flush=True)
    for jobs in a.jobs:
        t0 = time.perf_counter()
        results = grade_many(paths, ROOT / "solutions", a.cell_timeout, 600, jobs=jobs, log=lambda *x: None)
        wall = time.perf_counter() - t0
        sandbox = max((r.memory_mb or 0 for r in results), default=0)
        ok = check(results, kinds)
        rows.append((jobs, wall, 60 * len(paths) / wall, sandbox))
        good = sum(v for (k, fine), v in ok.items() if fine)
        bad = {k: v for (k, fine), v in ok.items() if not fine}
        print(f"{jobs:4d} {wall:9.1f} {rows[-1][2]:9.1f} {rows[-1][2] / rows[0][2]:9.2f} {sandbox:18.0f}  {good}/{a.n}"
              + (f" (unexpected: {bad})" if bad else ""), flush=True)
    grader_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"grader process peak memory (RSS): {grader_mb:.0f} MB; largest sandbox peak (cgroup): "
          f"{max(r[3] for r in rows):.0f} MB")


if __name__ == "__main__":
    main()

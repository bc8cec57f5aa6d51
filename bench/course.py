"""The whole course, timed: every lesson run and every solution and untouched exercise graded, each in a
fresh process, with its wall time and peak memory (the process tree's largest resident set).

    python bench/course.py                 # everything
    python bench/course.py --only 03 06    # names starting with these

Flags lessons over 90 s and gradings over 45 s (the course's budgets on 2 CPU cores). The goal for the
whole course on a laptop's 2 cores is under 15 minutes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "MMLAB_OFFLINE": "true", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
LESSON_BUDGET, GRADING_BUDGET, COURSE_GOAL = 90.0, 45.0, 15 * 60.0


def timed(cmd, cwd):
    "(seconds, peak RSS in MiB, return code) of one command run in a fresh process tree."
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # the child's usage includes the children it waited for (the kernel)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def run_lesson(path, out_dir):
    return timed([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                  "--ExecutePreprocessor.timeout=600", "--output-dir", str(out_dir), path.name], path.parent)


def grade(path, out_dir):
    report = out_dir / f"{path.parent.name}-{path.stem}.json"
    seconds, rss, code = timed([str(Path(sys.executable).with_name("mmlab")), "grade", str(path), "--json", str(report)], ROOT)
    score = ""
    if report.exists():
        result = json.loads(report.read_text())
        result = result[0] if isinstance(result, list) else result
        score = f"{result.get('total', '?')}/{result.get('max', '?')}"
    return seconds, rss, code, score


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="names starting with these prefixes")
    a = p.parse_args(argv)
    keep = (lambda name: any(name.startswith(o) for o in a.only)) if a.only else (lambda name: True)
    lessons = [q for q in sorted((ROOT / "nbs").glob("*.ipynb")) if keep(q.stem)]
    graded = [q for d in ("solutions", "exercises") for q in sorted((ROOT / d).glob("*.ipynb")) if keep(q.stem)]
    rows, total, flagged = [], 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        for path in lessons:
            seconds, rss, code = run_lesson(path, Path(tmp))
            over = seconds > LESSON_BUDGET
            rows.append((f"nbs/{path.name}", seconds, rss, "ok" if code == 0 else f"FAILED ({code})", "OVER 90 s" if over else ""))
            flagged += [rows[-1][0]] if over or code else []
            total += seconds
            print(f"{rows[-1][0]:<48}{seconds:8.1f} s{rss:8.0f} MiB  {rows[-1][3]} {rows[-1][4]}", flush=True)
        for path in graded:
            seconds, rss, code, score = grade(path, Path(tmp))
            over = seconds > GRADING_BUDGET
            name = f"{path.parent.name}/{path.name}"
            rows.append((name, seconds, rss, f"graded {score}", "OVER 45 s" if over else ""))
            flagged += [name] if over else []
            total += seconds
            print(f"{name:<48}{seconds:8.1f} s{rss:8.0f} MiB  graded {score} {rows[-1][4]}", flush=True)
    print(f"\n{'name':<48}{'seconds':>10}{'peak MiB':>10}  result")
    for name, seconds, rss, result, flag in rows:
        print(f"{name:<48}{seconds:10.1f}{rss:10.0f}  {result} {flag}")
    print(f"{'total':<48}{total:10.1f}  ({total / 60:.1f} min; goal {COURSE_GOAL / 60:.0f} min on 2 cores: "
          f"{'met' if total <= COURSE_GOAL else 'NOT met'})")
    print(f"over budget or failed: {', '.join(flagged) or 'none'}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())

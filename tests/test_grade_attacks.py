"""Every attack of issue 11 on the grader, built from the current exercise 03 (and 06 for a lying `__eq__`), graded
in one mixed batch with honest classmates: no attack earns a point it did not earn without a review flag, the honest
submissions get exactly their grade, and the package, the solutions and the environment are unchanged.

The batch runs at the strongest isolation this machine allows (the bubblewrap sandbox as root; none where bubblewrap
is missing): the verdict, the answer filter, the audit hook, the feedback and the batch's survival do not depend on the
sandbox, so every machine checks them; what only the sandbox gives (no access to the solutions, a private view of
the processes) is checked where it exists, and the unisolated path is checked on sandboxing machines too."""
import csv
import os
import site
import sys
import textwrap
from pathlib import Path

import pytest

from mmlab.grade import detect_isolation, grade_many, write_gradebook

from toy_course import EX03, ROOT, environment_lock, exercise_submission, fingerprint, reference_answers

NONE_ANSWERS = {"attention": "def attention(q, k, v, mask=None):\n    return None, None",
                "causal_mask": "def causal_mask(lq, lk, device=None):\n    return None",
                "padding_mask": "def padding_mask(lengths, L):\n    return None"}
MARKER = "MMLAB-DETACHED-ATTACK"
PTH = "zz_mmlab_attack_test.pth"


def code(s): return textwrap.dedent(s).strip()


def attacks(classmate:Path, gradebook:Path)->dict[str, dict[str, str]]:
    "Submission name -> its answers (an answer not given returns None); each answer cell holds one attack."
    sol = ROOT / "solutions" / f"{EX03}.ipynb"
    real_pyc = [str(ROOT / "mmlab" / "__pycache__" / f"{m}.cpython-{sys.version_info[0]}{sys.version_info[1]}.pyc")
                for m in ("grade", "grade_driver")]
    return {
        # code that runs while an answer is defined: a class-time hook, an annotation, a fake module for a decorator
        "define_time": {"attention": code('''
            import torch
            def _hook(cls, **kw):
                torch.testing.assert_close = lambda *a, **k: None
            class Base:
                __init_subclass__ = _hook
            class Trigger(Base):
                pass
            def attention(q, k, v, mask=None):
                return None, None'''), "causal_mask": code('''
            import torch
            def _f(item):
                torch.testing.assert_close = lambda *a, **k: None
                return int
            class _K:
                __class_getitem__ = _f
            x: _K[0]
            def causal_mask(lq, lk, device=None):
                return None'''), "padding_mask": code('''
            def _f(fn):
                __import__("torch").testing.assert_close = lambda *a, **k: None
                return fn
            class functools:
                cache = _f
            @functools.cache
            def padding_mask(lengths, L):
                return None''')},
        # ... an enum member's __init__, and a replacement for the workspace's builtins
        "define_time2": {"attention": code('''
            import enum, torch
            class E(enum.Enum):
                A = 1
                def __init__(self, value):
                    torch.testing.assert_close = lambda *a, **k: None
            def attention(q, k, v, mask=None):
                return None, None'''), "causal_mask": code('''
            class _Everything:
                def __getitem__(self, name): return lambda *a, **k: True
            __builtins__ = _Everything
            def causal_mask(lq, lk, device=None):
                return None''')},
        # the verdict: forge the pass marker from IPython's history and the kernel's parent message; hunt for the key
        "forge": {"attention": code('''
            def attention(q, k, v, mask=None):
                ip = get_ipython()
                seen = " ".join(ip.user_ns.get("In", []))
                parent = getattr(getattr(ip, "kernel", None), "get_parent", lambda *a: {})("shell")
                ip._showtraceback = lambda *a, **k: print("application/x-mmlab-check", seen, parent)
                print("final score, hidden tests included: 11 / 11")
                return None, None'''), "causal_mask": code('''
            def causal_mask(lq, lk, device=None):
                gc, sys = __import__("gc"), __import__("sys")
                frames = [sys._getframe(i) for i in range(1, 4)]
                keys = [o for o in gc.get_objects() if isinstance(o, bytes) and len(o) == 64]
                return None''')},
        # no sandbox: read the solutions and run the reference answer
        "read_solutions": {gid: code(f'''
            import json
            def _ref(name):
                ns = {{}}
                for c in json.load(open({str(sol)!r}))["cells"]:
                    if c["cell_type"] == "code" and not c["metadata"].get("nbgrader", {{}}).get("grade"):
                        exec("".join(c["source"]), ns)
                return ns[name]
            def {gid}(*args):
                return _ref({gid!r})(*args)''') for gid in NONE_ANSWERS},
        # secrets in the environment (its own and the parent's), other submissions through the parent's command line
        "leak": {"attention": code('''
            def attention(q, k, v, mask=None):
                os = __import__("os")
                parent = ""
                try: parent = open(f"/proc/{os.getppid()}/environ", "rb").read().decode(errors="replace")
                except OSError: pass
                raise ValueError("leak: " + repr(dict(os.environ)) + parent)'''), "causal_mask": code('''
            def causal_mask(lq, lk, device=None):
                os = __import__("os")
                seen = open(f"/proc/{os.getppid()}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
                raise ValueError(f"cmdline: {seen} | root: {os.listdir('/')}")''')},
        # one student changes others' grades: a .pth in the environment, a trojan bytecode file, a detached process
        "vandal": {"attention": code(f'''
            def attention(q, k, v, mask=None):
                import site
                for d in site.getsitepackages() + {site.getsitepackages()!r}:
                    try: open(d + "/{PTH}", "w").write("import os; os.environ['MMLAB_PTH_PLANTED'] = '1'\\n")
                    except OSError: pass
                return None, None'''), "causal_mask": code(f'''
            def causal_mask(lq, lk, device=None):
                import mmlab
                for path in [mmlab.__path__[0] + "/__pycache__/grade.cpython-311.pyc"] + {real_pyc!r}:
                    try: open(path, "wb").write(b"trojan")
                    except OSError: pass
                return None'''), "padding_mask": code(f'''
            def padding_mask(lengths, L):
                sp, sys = __import__("subprocess"), __import__("sys")
                loop = ("import time\\nfor _ in range(400):\\n    for p in ({str(classmate)!r}, {str(gradebook)!r}):\\n"
                        "        try: open(p, 'w').write('{{}}')\\n        except OSError: pass\\n    time.sleep(0.05)")
                sp.Popen([sys.executable, "-c", loop, "{MARKER}"], start_new_session=True,
                         stdout=sp.DEVNULL, stderr=sp.DEVNULL)
                return None''')},
        # unbounded output, and call-time tampering with what the tests call
        "flood_and_patch": {"attention": code('''
            import torch
            def attention(q, k, v, mask=None):
                torch.testing.assert_close = lambda *a, **kw: None
                return torch.zeros(*q.shape[:-1], v.shape[-1]), None'''), "padding_mask": code('''
            def padding_mask(lengths, L):
                while True:
                    print("x" * 1_000_000)''')},
    }


def test_mixed_batch_of_attacks_and_honest_classmates(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-grader-secret-123456")
    iso = detect_isolation()
    print(f"isolation: {iso.summary}")
    folder = tmp_path / "inbox"; folder.mkdir()
    ref = reference_answers(EX03)
    gradebook = folder / "gradebook.csv"
    honest = exercise_submission(folder, "zz_honest", ref)         # graded last, after every attacker
    exercise_submission(folder, "flipped", {**ref, "causal_mask": ref["causal_mask"].replace(".tril()", ".triu()")})
    exercise_submission(folder, "helper", {**ref, "padding_mask": code('''
        def padding_mask(lengths, L):
            lengths = torch.as_tensor(lengths)
            if (lengths < 1).any() or (lengths > L).any(): raise ValueError(f"lengths must lie in 1..{L}")
            return _positions(lengths, L)''')}, edit=lambda nb: nb.cells.insert(13, _added_cell()))
    for name, answers in attacks(honest, gradebook).items():
        exercise_submission(folder, name, {**NONE_ANSWERS, **answers})
    exercise_submission(folder, "liar", {**reference_answers("06_clip_loss_recall"), "recall_at_k": code('''
        class Always(float):
            def __eq__(self, other): return True
            def __hash__(self): return 0
        def recall_at_k(sim, k, targets=None):
            targets = torch.arange(len(sim)) if targets is None else targets
            hits = (sim.topk(k, dim=1).indices == targets[:, None]).any(1).float().mean().item()
            return Always(hits if k == 1 else 0.0)           # right for k = 1, and "equal" to anything''')},
                        exercise="06_clip_loss_recall")
    (folder / "broken_03_attention_masks.ipynb").write_text("{not json")
    exercise_submission(folder, "badmeta", ref, edit=_bad_metadata)
    guarded = [ROOT / "mmlab", ROOT / "solutions"]
    before = {k: v for k, v in fingerprint(*guarded).items() if "__pycache__" not in k}
    pth_before = {d: sorted(os.listdir(d)) for d in site.getsitepackages()}
    honest_bytes = honest.read_bytes()
    paths = sorted(folder.glob("*.ipynb"))
    lines = []
    with environment_lock(exclusive=not iso.isolated):       # unisolated, the vandal plants files in the environment
        results = grade_many(paths, ROOT / "solutions", cell_timeout=60, total_timeout=300, jobs=2, log=lines.append)
    write_gradebook(results, gradebook)
    assert lines[0] == f"isolation: {iso.summary}" and all(x.isolation == iso.summary for x in results)
    r = {Path(x.submission).stem.split("_0")[0]: x for x in results}
    def message(name, question): return next(q for q in r[name].questions if q.name == question).message

    # honest classmates get exactly their grade, with no review
    assert (r["zz_honest"].total, r["zz_honest"].review) == (11, False), r["zz_honest"]
    if iso.isolated:      # unisolated, the detached vandal may overwrite it on disk; the grade came from what was read first
        assert honest.read_bytes() == honest_bytes
    assert (r["helper"].total, r["helper"].review) == (11, False) and any("took _positions" in n for n in r["helper"].notes)
    assert (r["badmeta"].total, r["badmeta"].error) == (11, ""), r["badmeta"]
    f = r["flipped"]
    assert f.total < 11 and not f.review
    q = message("flipped", "q_causal")
    assert q.startswith("line 3: assert m3.tolist() == [[True, False, False], [True, True, False], [True, True, True]], "
                        '"row i must be True'), q
    assert "got:      [[True, True, True], [False, True, True], [False, False, True]]" in q, q
    assert "expected: [[True, False, False], [True, True, False], [True, True, True]]" in q

    # no attack earns a point without a review flag; most earn none at all (unisolated, reading the solutions works)
    for name in attacks(honest, gradebook):
        assert r[name].review, (name, r[name])
        if name not in ("leak", "flood_and_patch") and (iso.isolated or name != "read_solutions"):
            assert r[name].total == 0, (name, r[name])
    reasons = {name: " | ".join(r[name].review_reasons) for name in attacks(honest, gradebook)}
    for needle in ("__init_subclass__", "__class_getitem__", "`functools` is bound by the answer"):
        assert needle in reasons["define_time"], (needle, reasons["define_time"])
    for needle in ("base `enum.Enum`", "assigning __builtins__"):
        assert needle in reasons["define_time2"], (needle, reasons["define_time2"])
    for needle in ("get_ipython", "_showtraceback", "gc.get_objects", "sys._getframe"):
        assert needle in reasons["forge"], (needle, reasons["forge"])
    assert any("opened" in x and "solutions" in x for x in r["read_solutions"].review_reasons), reasons["read_solutions"]
    for needle in (PTH, "grade_driver.cpython", "started a process"):
        assert needle in reasons["vandal"], (needle, reasons["vandal"])
    assert "changed torch.testing.assert_close (put back)" in reasons["flood_and_patch"]
    assert not any("quoted a hidden test" in x for res in results for x in res.review_reasons)
    # nothing secret or foreign reaches the feedback
    leak = message("leak", "q_attention_shapes")
    assert "ValueError: leak:" in leak and "MMLAB_GRADE_RUN" in leak and "sk-grader" not in leak     # the kernel's own
    if iso.isolated:                              # and the parent's environment: unisolated, only the value is redacted
        assert "OPENAI" not in leak
        seen = message("leak", "q_causal")
        assert f"cmdline: {iso.bwrap} --args" in seen and str(folder) not in seen and "solutions" not in seen
    # resources: the flood stopped at the output limit, costing only its own questions
    assert "output limit" in message("flood_and_patch", "q_padding")
    assert message("flood_and_patch", "q_padding_hidden") == "hidden test failed (output-limit)"
    # the lying __eq__ of exercise 06 fails its visible test
    assert "must return a Python float, got Always" in message("liar", "q_recall") and not r["liar"].visible_passed
    assert r["liar"].total == 4                                    # the honest clip_loss questions only
    # a batch survives an unreadable submission
    assert r["broken"].error.startswith(str(folder / "broken_03_attention_masks.ipynb")) and r["broken"].total == 0
    # the package, the solutions and the environment are unchanged; nothing planted survives, nothing is left running
    assert {k: v for k, v in fingerprint(*guarded).items() if "__pycache__" not in k} == before
    assert {d: sorted(os.listdir(d)) for d in site.getsitepackages()} == pth_before
    assert not any(p.read_bytes() == b"trojan" for p in (ROOT / "mmlab" / "__pycache__").glob("*.pyc"))
    assert not _running(MARKER)
    rows = list(csv.DictReader(gradebook.open()))
    assert len(rows) == len(paths) and {row["review"] for row in rows} == {"yes", ""}
    assert [row["total"] for row in rows] == [f"{x.total:g}" for x in results]


def _added_cell():
    import nbformat
    return nbformat.v4.new_code_cell("def _positions(lengths, L):\n    return (torch.arange(L) < lengths[:, None])[:, None, None, :]\n"
                                     "print(_positions(torch.tensor([1, 2]), 3))")


def _bad_metadata(nb):
    "nbgrader metadata that is a string, and a grade_id that is a list (the answers are still found by cell id)."
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("solution"): c.metadata["nbgrader"] = "oops"
        elif c.metadata.get("nbgrader", {}).get("grade"): c.metadata["nbgrader"]["grade_id"] = ["q"]


def _running(marker:str)->bool:
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (d / "cmdline").read_bytes(): return True
        except OSError: pass
    return False


def test_unisolated_batch_says_so_flags_and_repairs(tmp_path, monkeypatch):
    "Where the grader cannot isolate (forced here), it says so, still grades, flags the attacks and repairs what they did."
    if not detect_isolation().isolated:
        pytest.skip("the mixed batch already ran every attack unisolated, as this machine cannot isolate: "
                    + detect_isolation().summary)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-grader-secret-123456")
    folder = tmp_path / "inbox"; folder.mkdir()
    ref = reference_answers(EX03)
    gradebook = folder / "gradebook.csv"
    honest = exercise_submission(folder, "zz_honest", ref)
    every = attacks(honest, gradebook)
    for name in ("read_solutions", "leak", "vandal"):
        exercise_submission(folder, name, {**NONE_ANSWERS, **every[name]})
    honest_bytes = honest.read_bytes()
    before = {k: v for k, v in fingerprint(ROOT / "mmlab", ROOT / "solutions").items() if "__pycache__" not in k}
    lines = []
    with environment_lock(exclusive=True):
        # one at a time: unisolated, an attack running beside the honest submission would change the environment
        # under it, and the integrity check rightly flags that run too
        results = grade_many(sorted(folder.glob("*.ipynb")), ROOT / "solutions", cell_timeout=60, total_timeout=300,
                             jobs=1, isolation="none", log=lines.append)
    write_gradebook(results, gradebook)
    assert lines[0].startswith("isolation: NOT ISOLATED") and all(x.isolation.startswith("NOT ISOLATED") for x in results)
    r = {Path(x.submission).stem.split("_0")[0]: x for x in results}
    assert (r["zz_honest"].total, r["zz_honest"].review) == (11, False)
    assert r["read_solutions"].review and any("opened" in x and "solutions" in x for x in r["read_solutions"].review_reasons)
    leak = next(q for q in r["leak"].questions if q.name == "q_attention_shapes").message
    assert "sk-grader-secret-123456" not in leak and r["leak"].review
    vandal = " | ".join(r["vandal"].review_reasons)
    assert PTH in vandal and "started a process" in vandal and "grade_driver.cpython" in vandal
    assert not any((Path(d) / PTH).exists() for d in site.getsitepackages())
    assert not any(p.read_bytes() == b"trojan" for p in (ROOT / "mmlab" / "__pycache__").glob("*.pyc"))
    assert not _running(MARKER)
    assert {k: v for k, v in fingerprint(ROOT / "mmlab", ROOT / "solutions").items() if "__pycache__" not in k} == before
    assert [row["total"] for row in csv.DictReader(gradebook.open())][-1] == "11"
    # on disk it may be overwritten, or left empty when the vandal is killed between open("w") and write; it was read first
    assert honest.read_bytes() in (honest_bytes, b"{}", b"")

"""The grader on the toy exercise: a timeout, a killed kernel, tampering, a half-right submission, and the sandbox's
limits (output, memory, processes, file size), each costing only the questions it hit."""
import resource
import textwrap

from mmlab.grade import Limits, detect_isolation, grade_many, grade_notebook

from toy_course import CELL_TIMEOUT, DOUBLE, MEAN, RIGHT_DOUBLE, RIGHT_MEAN, course, scores, shared_environment, submission  # noqa: F401 (fixtures)


def test_solution_full_marks_and_untouched_exercise_zero(course):
    root, exs = course
    full = grade_notebook(root / "solutions" / "00_toy.ipynb", exs, CELL_TIMEOUT, 120)
    assert (full.total, full.max, full.visible_passed, full.review) == (6, 6, True, False)
    stub = grade_notebook(root / "exercises" / "00_toy.ipynb", exs, CELL_TIMEOUT, 120)
    assert scores(stub) == [0, 0, 0, 0] and not stub.visible_passed
    assert stub.questions[0].message.splitlines() == ["line 1: check_equal(double(2), 4)",
                                                      "NotImplementedError: double: write your answer here",
                                                      '  raised in your double, line 4: raise NotImplementedError("double: write your answer here")']


def test_half_right_submission_and_its_feedback(course):
    root, exs = course
    half = submission(root, "half", {DOUBLE: RIGHT_DOUBLE, MEAN: "def mean(xs):\n    return sum(xs) // len(xs) + 1"})
    r = grade_notebook(half, exs, CELL_TIMEOUT, 120)
    assert scores(r) == [1, 2, 0, 0] and r.total == 3 and not r.visible_passed
    assert r.questions[3].hidden and r.questions[3].message == "hidden test failed"   # no hidden detail leaks
    assert r.questions[2].message.splitlines()[2:5] == ["AssertionError: expected 2, got 3", "`actual == expected` is false",
                                                        "  got:      3"]


def test_infinite_loop_times_out_only_its_questions(course):
    root, exs = course
    loop = submission(root, "loop", {DOUBLE: "def double(x):\n    while True:\n        pass", MEAN: RIGHT_MEAN})
    r = grade_notebook(loop, exs, CELL_TIMEOUT, 120)
    assert scores(r) == [0, 0, 1, 2]
    assert r.questions[0].message.startswith("timed out") and r.questions[1].message == "hidden test failed (timeout)"


def test_total_time_limit_fails_the_rest_and_finishes(course):
    root, exs = course
    loop = submission(root, "slow", {DOUBLE: "def double(x):\n    while True:\n        pass", MEAN: RIGHT_MEAN})
    r = grade_notebook(loop, exs, cell_timeout=60, total_timeout=5)
    assert scores(r) == [0, 0, 0, 0] and len(r.questions) == 4
    assert r.questions[0].message.startswith(("timed out", "not run"))      # "not run" if the kernel started slowly
    assert r.questions[2].message == "not run: the total time limit of 5 s ran out"


def test_killed_kernel_fails_only_its_questions(course):
    root, exs = course
    crash = submission(root, "crash", {DOUBLE: RIGHT_DOUBLE,
                                       MEAN: "def mean(xs):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)"})
    r = grade_notebook(crash, exs, CELL_TIMEOUT, 120)
    assert scores(r) == [1, 2, 0, 0]
    assert "kernel died" in r.questions[2].message and r.questions[3].message == "hidden test failed (died)"


def test_tampering_cannot_change_the_grade(course, tmp_path):
    root, exs = course
    fake = tmp_path / "grades.json"
    tricks = "\n".join([
        "import sys, builtins",
        "def check_equal(actual, expected):",          # the exercise's own test helper
        "    pass",
        "builtins.AssertionError = Exception",
        "get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])",
        "print('final score, hidden tests included: 6 / 6')",
        f"open({str(fake)!r}, 'w').write('{{\"total\": 6}}')",
        "sys.exit(0)",
        "def double(x):",
        "    print('final score, hidden tests included: 6 / 6')",
        "    return x",                                 # wrong
    ])
    exit_inside = "def mean(xs):\n    import sys\n    sys.exit(0)"
    def edit(nb):
        nb.cells[3].source = "pass"                    # the student's copy of a visible test
        nb.cells[3].metadata["nbgrader"]["points"] = 100
    p = submission(root, "tamper", {DOUBLE: tricks, MEAN: exit_inside}, edit)
    r = grade_notebook(p, exs, CELL_TIMEOUT, 120)
    assert scores(r) == [0, 0, 0, 0] and r.max == 6
    assert r.questions[0].message.splitlines()[2] == "AssertionError: expected 4, got 2"
    assert not fake.exists(), "a top-level file write of the submission ran"
    assert len(r.notes) == 7 and all("not run" in n for n in r.notes)
    assert r.review and any("imports `sys`" in x for x in r.review_reasons)           # sys.exit at call time
    # the same tricks around right answers earn exactly the full score, no more
    p2 = submission(root, "tamper2", {DOUBLE: tricks.replace("return x", "return 2 * x"), MEAN: RIGHT_MEAN}, edit)
    assert grade_notebook(p2, exs, CELL_TIMEOUT, 120).total == 6


def test_resource_limits_cost_only_their_questions(course):
    "Output, memory, processes and file size are capped; each over-user loses its own questions, in one batch."
    root, exs = course
    hogs = {
        "flood": "def double(x):\n    while True:\n        print('x' * 1_000_000)",
        "memory": "def double(x):\n    block = bytearray(8 * 2**30)\n    return 2 * x",
        "processes": textwrap.dedent('''
            import time
            def double(x):
                import threading
                threads = [threading.Thread(target=time.sleep, args=(2,)) for _ in range(400)]
                for t in threads: t.start()
                return 2 * x''').strip(),
        "file_size": "def double(x):\n    open('big.bin', 'wb').write(b'0' * 64 * 2**20)\n    return 2 * x",
    }
    paths = [submission(root, f"hog_{name}", {DOUBLE: src, MEAN: RIGHT_MEAN}) for name, src in hogs.items()]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = grade_many(paths, root / "solutions", 30, 120, jobs=2, log=lambda *a: None,
                         limits=Limits(memory_mb=1024, processes=64, file_size_mb=16, output_mb=64))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    r = dict(zip(hogs, results))
    iso = detect_isolation()
    if not iso.cgroups: del r["processes"]                 # without a pids cgroup nothing caps threads
    for name, res in r.items():
        assert scores(res)[2:] == [1, 2], (name, res)                                   # mean is untouched
        assert scores(res)[:2] == [0, 0], (name, res)
    assert "output limit of 64 MB" in r["flood"].questions[0].message
    assert grown_mb < 48, f"the grader grew by {grown_mb:.0f} MB while a submission printed 64 MB"
    if iso.cgroups:
        assert "ran out of memory (limit 1024 MB)" in r["memory"].questions[0].message
        assert "can't start new thread" in r["processes"].questions[0].message
    else:
        assert "MemoryError" in r["memory"].questions[0].message
    assert "File too large" in r["file_size"].questions[0].message


FORGE = '''def double(x):
    import hashlib, json, os, sys
    f = sys._getframe(1)
    while f is not None and "outer" not in f.f_locals:
        f = f.f_back
    inner, outer, i = (f.f_locals["inner"], f.f_locals["outer"], f.f_locals["i"]) if f else (b"", b"", 0)
    for j in range(i, i + 6):
        tag = hashlib.sha256(outer + hashlib.sha256(inner + f"{j}:ok".encode()).digest()).hexdigest() if KEYED else "0" * 64
        line = {"i": j, "status": "ok", "etype": "", "message": "", "where": [], "tag": tag}
        os.write(int(sys.argv[2]), (json.dumps(line) + "\\n").encode())
    return 0'''


def test_results_written_on_the_result_pipe(course):
    "An answer writing 'passed' results for the coming steps on the driver's result pipe: without the key they are refused as forged; with the key stolen from the driver's frame they count, but the theft is flagged for review."
    root, exs = course
    for keyed in (False, True):
        p = submission(root, f"pipe{keyed:d}", {DOUBLE: FORGE.replace("KEYED", str(keyed)), MEAN: "def mean(xs):\n    return None"})
        r = grade_notebook(p, exs, CELL_TIMEOUT, 120)
        reasons = " | ".join(r.review_reasons)
        assert r.review and "sys._getframe" in reasons, (keyed, reasons)
        if not keyed:
            assert scores(r) == [0, 0, 0, 0] and "came with a wrong tag (forged)" in reasons, (scores(r), reasons)
            assert r.questions[0].message == "the result of this test was forged"

"""The grader on the toy exercise: a timeout, a killed kernel, a tampering and a half-right submission, each per question."""
from mmlab.grade import grade_notebook

from toy_course import CELL_TIMEOUT, DOUBLE, MEAN, RIGHT_DOUBLE, RIGHT_MEAN, course, scores, submission  # noqa: F401 (course is a fixture)


def test_solution_full_marks_and_untouched_exercise_zero(course):
    root, exs = course
    full = grade_notebook(root / "solutions" / "00_toy.ipynb", exs, CELL_TIMEOUT, 120)
    assert (full.total, full.max, full.visible_passed) == (6, 6, True)
    stub = grade_notebook(root / "exercises" / "00_toy.ipynb", exs, CELL_TIMEOUT, 120)
    assert scores(stub) == [0, 0, 0, 0] and not stub.visible_passed
    assert stub.questions[0].message == "NotImplementedError: double: write your answer here"


def test_half_right_submission(course):
    root, exs = course
    half = submission(root, "half", {DOUBLE: RIGHT_DOUBLE, MEAN: "def mean(xs):\n    return sum(xs) / len(xs)"})
    r = grade_notebook(half, exs, CELL_TIMEOUT, 120)
    assert scores(r) == [1, 2, 1, 0] and r.total == 4 and r.visible_passed
    assert r.questions[3].hidden and r.questions[3].message == "hidden test failed"   # no hidden detail leaks


def test_infinite_loop_times_out_only_its_questions(course):
    root, exs = course
    loop = submission(root, "loop", {DOUBLE: "def double(x):\n    while True:\n        pass", MEAN: RIGHT_MEAN})
    r = grade_notebook(loop, exs, CELL_TIMEOUT, 120)
    assert scores(r) == [0, 0, 1, 2]
    assert r.questions[0].message.startswith("timed out") and r.questions[1].message == "hidden test failed (timeout)"


def test_total_time_limit_fails_the_rest_and_finishes(course):
    root, exs = course
    loop = submission(root, "slow", {DOUBLE: "def double(x):\n    while True:\n        pass", MEAN: RIGHT_MEAN})
    r = grade_notebook(loop, exs, cell_timeout=60, total_timeout=10)
    assert scores(r) == [0, 0, 0, 0] and len(r.questions) == 4
    assert r.questions[0].message.startswith(("timed out", "not run"))      # "not run" if the kernel started slowly
    assert r.questions[2].message == "not run: the total time limit of 10 s ran out"


def test_killed_kernel_fails_only_its_questions(course):
    root, exs = course
    crash = submission(root, "crash", {DOUBLE: RIGHT_DOUBLE,
                                       MEAN: "import os, signal\ndef mean(xs):\n    os.kill(os.getpid(), signal.SIGKILL)"})
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
    assert r.questions[0].message == "AssertionError: expected 4, got 2"
    assert not fake.exists(), "a top-level file write of the submission ran"
    assert len(r.notes) == 6 and all("not run" in n for n in r.notes)
    # the same tricks around right answers earn exactly the full score, no more
    p2 = submission(root, "tamper2", {DOUBLE: tricks.replace("return x", "return 2 * x"), MEAN: RIGHT_MEAN}, edit)
    assert grade_notebook(p2, exs, CELL_TIMEOUT, 120).total == 6

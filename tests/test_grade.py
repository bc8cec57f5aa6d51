"""The grader on the toy exercise: generation, the answer filter, the CLI, the gradebook, releases, error paths."""
import csv
import json

import nbformat
import pytest

from mmlab.core import SettingsError, settings
from mmlab.grade import (ExerciseError, GradeResult, QuestionResult, detect_isolation, filter_answer, generate_exercises,
                         grade_main, grade_many, grade_notebook, plan_answer, read_exercise, release, strip_hidden,
                         strip_solutions, student_notebook, toy_exercise, write_gradebook)

from toy_course import (CELL_TIMEOUT, DOUBLE, MEAN, RIGHT_DOUBLE, RIGHT_MEAN, ROOT, course, scores, shared_environment,  # noqa: F401 (fixtures)
                        submission)


def test_answers_found_by_cell_id_when_metadata_is_gone(course):
    root, exs = course
    def strip(nb):
        for c in nb.cells: c.metadata = {}
        nb.metadata = {}
    p = submission(root, "nometa", {DOUBLE: RIGHT_DOUBLE, MEAN: RIGHT_MEAN}, strip)
    assert grade_notebook(p, exs, CELL_TIMEOUT, 120).total == 6


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_a_submission_that_edits_the_solutions_changes_nothing(course, tmp_path, isolation):
    "Sandboxed, the solutions are not even visible; unisolated, the write lands, is put back and flagged."
    root, _ = course
    sol = tmp_path / "solutions"; sol.mkdir()
    nbformat.write(toy_exercise(), sol / "00_toy.ipynb")
    original = (sol / "00_toy.ipynb").read_bytes()
    target = str(sol / "00_toy.ipynb")
    p = submission(root, f"vandal_{isolation}", {DOUBLE: f"PATH = {target!r}\ndef double(x):\n    open(PATH, 'a').write(' ')\n"
                                                         "    return 2 * x", MEAN: RIGHT_MEAN})
    honest = submission(root, f"zz_{isolation}", {DOUBLE: RIGHT_DOUBLE, MEAN: RIGHT_MEAN})
    vandal, classmate = grade_many([p, honest], sol, CELL_TIMEOUT, 120, isolation=isolation, log=lambda *a: None)
    assert (sol / "00_toy.ipynb").read_bytes() == original
    assert vandal.review and any(target in r for r in vandal.review_reasons)
    assert (classmate.total, classmate.review) == (6, False)
    if detect_isolation(isolation).isolated: assert vandal.total == 3           # the file is not there to write
    else: assert any("put back" in r for r in vandal.review_reasons)


def test_cli_json_and_folder_gradebook(course, tmp_path, capsys):
    root, _ = course
    folder = tmp_path / "inbox"; folder.mkdir()
    for name, answers in [("ann", {DOUBLE: RIGHT_DOUBLE, MEAN: RIGHT_MEAN}), ("bob", {DOUBLE: RIGHT_DOUBLE})]:
        p = submission(root, name, answers); p.rename(folder / p.name)
    out = tmp_path / "one.json"
    args = ["--solutions", str(root / "solutions"), "--cell-timeout", str(CELL_TIMEOUT)]
    assert grade_main([str(folder / "ann_00_toy.ipynb"), "--json", str(out), *args]) == 0
    data = json.loads(out.read_text())
    assert (data["total"], data["max"], data["review"], data["error"]) == (6, 6, False, "")
    assert data["isolation"] == detect_isolation().summary
    assert [set(q) >= {"name", "score", "max", "hidden", "message"} for q in data["questions"]] == [True] * 4
    printed = capsys.readouterr().out
    assert "visible tests passed: yes" in printed and printed.startswith("isolation: ")
    assert grade_main([str(folder), "--jobs", "2", *args]) == 0
    rows = list(csv.DictReader((folder / "gradebook.csv").open()))
    assert [(r["submission"].rsplit("/", 1)[-1], r["total"], r["00_toy:q_mean"], r["review"], r["error"]) for r in rows] == \
        [("ann_00_toy.ipynb", "6", "1", "", ""), ("bob_00_toy.ipynb", "3", "0", "", "")]
    assert not list(folder.glob(".gradebook.csv*"))                  # written atomically: no temporary left


def test_cli_errors_are_clear(course, tmp_path, capsys, monkeypatch):
    root, _ = course
    args = ["--solutions", str(root / "solutions")]
    assert grade_main([str(tmp_path / "missing.ipynb"), *args]) == 1
    assert "no such submission" in capsys.readouterr().err
    stray = tmp_path / "homework.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), stray)
    assert grade_main([str(stray), *args]) == 1
    err = capsys.readouterr().err
    assert "cannot tell which exercise" in err and "00_toy" in err
    garbage = tmp_path / "x_00_toy.ipynb"; garbage.write_text("{not json")
    assert grade_main([str(garbage), *args]) == 1
    assert "not a readable notebook" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grade_main([])
    for bad in ("inf", "nan", "-5", "0", "soon"):
        with pytest.raises(SystemExit):
            grade_main([str(garbage), "--cell-timeout", bad, *args])
        assert "finite number of seconds > 0" in capsys.readouterr().err or bad == "soon"
    with pytest.raises(ValueError, match="cell_timeout must be a finite number of seconds > 0, got inf"):
        grade_notebook(garbage, {}, float("inf"), 10)
    monkeypatch.setenv("MMLAB_GRADE_TOTAL_TIMEOUT", "inf")
    with pytest.raises(SettingsError, match="grade_total_timeout"):
        settings()
    monkeypatch.delenv("MMLAB_GRADE_TOTAL_TIMEOUT")
    monkeypatch.chdir(tmp_path)                                        # outside the course: no solutions/
    assert grade_main([str(garbage)]) == 1
    assert "pass --solutions DIR" in capsys.readouterr().err


def test_a_batch_survives_unreadable_and_odd_notebooks(course, tmp_path):
    root, _ = course
    folder = tmp_path / "odd"; folder.mkdir()
    (folder / "a_json_00_toy.ipynb").write_text("{not json")
    (folder / "b_list_00_toy.ipynb").write_text("[1, 2]")
    (folder / "c_bytes_00_toy.ipynb").write_bytes(b"\xff\xfe\x00")
    def oops(nb):
        nb.cells[DOUBLE].metadata["nbgrader"] = "oops"                 # answer found by its cell id
        nb.cells[MEAN].metadata["nbgrader"]["grade_id"] = ["mean"]     # and this one too
        nb.cells[3].metadata["nbgrader"]["points"] = 100               # the student's copy of a test counts for nothing
    p = submission(root, "d_oops", {DOUBLE: RIGHT_DOUBLE, MEAN: RIGHT_MEAN}, oops); p.rename(folder / p.name)
    p = submission(root, "e_fine", {DOUBLE: RIGHT_DOUBLE}); p.rename(folder / p.name)
    results = grade_many(sorted(folder.glob("*.ipynb")), root / "solutions", CELL_TIMEOUT, 120, log=lambda *a: None)
    assert [bool(r.error) for r in results] == [True, True, True, False, False]
    assert all("not a readable notebook" in r.error for r in results[:3])
    assert [(r.total, r.max) for r in results[3:]] == [(6, 6), (3, 6)]
    book = write_gradebook(results, folder / "gradebook.csv")
    rows = list(csv.DictReader(book.open()))
    assert [r["error"] != "" for r in rows] == [True] * 3 + [False] * 2 and rows[0]["percent"] == ""


def test_gradebook_neutralises_spreadsheet_formulas(course, tmp_path, monkeypatch):
    root, _ = course
    folder = tmp_path / "class"; folder.mkdir()
    submission(root, "x", {DOUBLE: RIGHT_DOUBLE}).rename(folder / '=HYPERLINK("evil.example","ok")_00_toy.ipynb')
    monkeypatch.chdir(folder)                                          # `mmlab grade .` gives paths without a folder
    assert grade_main([".", "--solutions", str(root / "solutions"), "--cell-timeout", str(CELL_TIMEOUT)]) == 0
    row = next(csv.DictReader(open("gradebook.csv")))
    assert row["submission"] == "'" + '=HYPERLINK("evil.example","ok")_00_toy.ipynb' and row["total"] == "3"
    q = QuestionResult("q", 1.0, 1.0, False, "")
    r = GradeResult('=HYPERLINK("http://x","y")_00_toy.ipynb', "00_toy", 1, 1, True, [q],
                    review=True, review_reasons=["+cmd|' /C calc'!A0"], error="")
    rows = list(csv.reader(write_gradebook([r], tmp_path / "g.csv").open()))
    assert rows[1][0] == "'" + r.submission and rows[1][7] == "'+cmd|' /C calc'!A0"


def test_helper_in_an_added_cell_is_taken_and_named(course):
    root, exs = course
    def add(nb):
        nb.cells.insert(2, nbformat.v4.new_code_cell("def _twice(x):\n    return x + x\nprint(_twice(3))"))
        nb.cells.insert(3, nbformat.v4.new_code_cell("def double(x):\n    return 0"))        # the answer cell wins
    p = submission(root, "helper", {DOUBLE: "def double(x):\n    return _twice(x)", MEAN: RIGHT_MEAN}, add)
    nb = nbformat.read(p, as_version=4)
    nb.cells[DOUBLE + 2].source, nb.cells[1].source = "def double(x):\n    return _twice(x)", \
        nb.cells[1].source + "\ndef _unused(): pass"
    nbformat.write(nb, p)
    r = grade_notebook(p, exs, CELL_TIMEOUT, 120)
    assert r.total == 6 and not r.review
    assert any("took _twice" in n for n in r.notes) and any("_unused" in n and "move it into an answer cell" in n for n in r.notes)


def test_generate_check_reports_drift(course, tmp_path):
    root, _ = course
    exe = tmp_path / "exercises"
    assert generate_exercises(root / "solutions", exe) == {"00_toy.ipynb": "written"}
    assert generate_exercises(root / "solutions", exe, check=True) == {"00_toy.ipynb": "unchanged"}
    (exe / "00_toy.ipynb").write_text((exe / "00_toy.ipynb").read_text().replace("double", "triple"))
    (exe / "99_orphan.ipynb").write_text("{}")
    assert grade_main(["--generate", "--check", "--solutions", str(root / "solutions"), "--exercises", str(exe)]) == 1
    assert generate_exercises(root / "solutions", exe, check=True) == {"00_toy.ipynb": "differs", "99_orphan.ipynb": "stale"}
    generate_exercises(root / "solutions", exe)
    assert sorted(p.name for p in exe.iterdir()) == ["00_toy.ipynb"]


def test_authoring_errors_name_the_cell(tmp_path):
    def check(edit, needle):
        nb = toy_exercise(); edit(nb)
        p = tmp_path / "bad.ipynb"; nbformat.write(nb, p)
        with pytest.raises(ExerciseError, match=needle): read_exercise(p)
    check(lambda nb: nb.cells[3].metadata["nbgrader"].update(points=0), "cell 3: question 'q_double' needs positive")
    check(lambda nb: nb.cells[3].metadata["nbgrader"].update(points=float("inf")), "needs positive nbgrader points")
    check(lambda nb: setattr(nb.cells[2], "source", nb.cells[2].source.replace("### END SOLUTION", "")), "never closed")
    check(lambda nb: setattr(nb.cells[2], "source", nb.cells[2].source + "\nprint(double(2))"),
          "cell 2: the grader would not run part of this answer")
    check(lambda nb: nb.cells.__setitem__(slice(3, None), []), "no test cells")


def test_answer_filter_keeps_definitions_only():
    code, notes = filter_answer("import torch\nfrom torch import nn\nclass M(nn.Module):\n    size: int = 3\n"
                                "    @property\n    def two(self): return 2\n    @two.setter\n    def two(self, v): pass\n"
                                "    print('in class body')\nM.x = 1\nfor i in range(3): pass", protected={"torch"})
    assert "class M(nn.Module)" in code and "print" not in code and "M.x" not in code
    assert len(code.splitlines()) == 11                                # lines stay in place
    assert [n.split(":")[0] for n in notes] == ["line 1", "line 9", "line 10", "line 11"]


def test_answer_filter_allows_no_code_at_definition_time():
    "Every route by which defining an answer could run code is closed, and the suspicious ones flagged."
    cases = {
        "class A:\n    __init_subclass__ = print\nclass B(A): pass": "__init_subclass__",
        "class K:\n    def __class_getitem__(cls, i): pass": "__class_getitem__",
        "class functools:\n    cache = print\n@functools.cache\ndef f(): pass": "`functools` is bound by the answer",
        "import enum\nclass E(enum.Enum):\n    A = 1": "base `enum.Enum` is not one the grader allows",
        "class M(type): pass": "base `type`",
        "class C(metaclass=type): pass": "class keywords",
        "__builtins__ = {}": "assigning __builtins__",
        "def __getattr__(name): pass": "module-level __getattr__",
        "class C:\n    property = print\n    @property\n    def x(self): pass": "would hide a method, a builtin",
        "class C:\n    x = print\n    @x.setter\n    def x(self, v): pass": "would hide",
    }
    for source, needle in cases.items():
        plan = plan_answer(source)
        assert any(needle in r for r in plan.reviews), (source, plan.reviews, plan.notes)
    for source in ("def f(x=print('now')): pass", "X = len([1, 2])", "@lru_cache(maxsize=print())\ndef f(): pass",
                   "class C(object):\n    y = [print()]"):
        assert plan_answer(source).notes, source                       # dropped, nothing runs
    honest = plan_answer("import math\nfrom dataclasses import dataclass\nimport torch.nn as nn\n@dataclass(frozen=True)\n"
                         "class Cfg:\n    d: int = 8\n    name: str = 'x'\nclass Enc(nn.Module):\n    def forward(self, x: 'T') -> 'T':\n"
                         "        return x\nclass Big(Enc):\n    pass\nSCALE = -1.5 * 2\ndef f(x, eps=1e-6, act=nn.ReLU): return math.exp(x)")
    assert not honest.notes and not honest.reviews, (honest.notes, honest.reviews)


def test_answer_review_reasons_for_call_time_tampering():
    plan = plan_answer("import torch\ndef f(x):\n    torch.allclose = lambda *a, **k: True\n    g = __import__('gc')\n"
                       "    getattr(x, 'a' + 'b')\n    type('X', (float,), {})\n    return x.__class__.__subclasses__()",
                       protected={"check_close"})
    text = " | ".join(plan.reviews)
    for needle in ("changes `torch.allclose`", "`__import__`", "`getattr` with a computed name",
                   "type(name, bases, dict)", "`.__subclasses__`"):
        assert needle in text, (needle, text)


def test_generator_matches_nbgrader(tmp_path):
    "Our generator strips exactly what nbgrader's own preprocessors strip."
    pytest.importorskip("nbgrader")
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions
    theirs, _ = ClearSolutions(code_stub={"python": "# YOUR CODE HERE\nraise NotImplementedError()"}).preprocess(toy_exercise(), {})
    theirs, _ = ClearHiddenTests().preprocess(theirs, {})
    p = tmp_path / "00_toy.ipynb"; nbformat.write(toy_exercise(), p)
    ours = student_notebook(read_exercise(p))
    for a, b in zip(ours.cells, theirs.cells):
        normal = a.source.replace('raise NotImplementedError("double: write your answer here")', "raise NotImplementedError()") \
                         .replace('raise NotImplementedError("mean: write your answer here")', "raise NotImplementedError()")
        assert normal == b.source or (not b.source.strip() and normal.startswith("# q_")), (a.source, b.source)


def test_strip_functions_round_trip():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n\ndef g():\n  ### BEGIN SOLUTION\n  pass\n  ### END SOLUTION"
    out = strip_solutions(src, "fg")
    assert out.count("raise NotImplementedError") == 2 and "  # YOUR CODE HERE" in out.splitlines()[-2]
    assert strip_hidden("a\n### BEGIN HIDDEN TESTS\nb\n### END HIDDEN TESTS\nc") == "a\nc"


def test_release_holds_no_solution_and_no_hidden_test(tmp_path, capsys):
    dest = tmp_path / "class"
    assert grade_main(["--release", str(dest), "--solutions", str(ROOT / "solutions")]) == 0
    assert "exercises" in capsys.readouterr().out
    top = sorted(p.name for p in dest.iterdir())
    assert {"nbs", "exercises", "mmlab", "README.md", "pyproject.toml"} <= set(top)
    assert not {"solutions", "tests", "bench", ".git", ".ci"} & set(top)
    assert sorted(p.name for p in (dest / "exercises").glob("*.ipynb")) == sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))
    text = " ".join(p.read_text(errors="replace") for p in dest.rglob("*") if p.is_file())
    assert "### BEGIN HIDDEN TESTS" not in " ".join((dest / "exercises" / n).read_text() for n in top if n.endswith(".ipynb"))
    assert "mask.any(-1).all()" not in text                           # a line only exercise 03's reference answer has
    with pytest.raises(ExerciseError, match="exists"):
        release(dest, ROOT / "solutions")
    # a course notebook that quotes a hidden test is refused, and nothing is written
    fake = tmp_path / "course"; (fake / "nbs").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(read_exercise(ROOT / "solutions" / "03_attention_masks.ipynb")
                                                                   .hidden_texts[0])])
    nbformat.write(nb, fake / "nbs" / "leak.ipynb")
    with pytest.raises(ExerciseError, match="leak.ipynb contains a reference answer or hidden test"):
        release(tmp_path / "class2", ROOT / "solutions", root=fake)
    assert not (tmp_path / "class2").exists()


def test_mmlab_console_script_dispatches_grade(course, tmp_path):
    "`mmlab grade ...` goes through mmlab.cli.main to grade_main."
    from mmlab.cli import main
    root, _ = course
    exe = tmp_path / "exercises"
    assert main(["grade", "--generate", "--solutions", str(root / "solutions"), "--exercises", str(exe)]) == 0
    assert main(["grade", "--generate", "--check", "--solutions", str(root / "solutions"), "--exercises", str(exe)]) == 0
    assert (exe / "00_toy.ipynb").exists()


def test_feedback_never_carries_a_hidden_test_or_a_secret(course, monkeypatch):
    "What an answer smuggles into an error message (a hidden test it spied on, the grader's API key) never reaches feedback."
    from mmlab.grade import _clean
    _, exs = course
    ex = exs["00_toy"]
    hidden = next(line for line in ex.hidden_lines if "double(-3)" in line)
    reviews = []
    assert _clean(f"AssertionError: I saw {hidden!s} earlier", ex, reviews) == "(message withheld: it quoted a hidden test)"
    assert reviews == ["its feedback quoted a hidden test"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-grader-secret-123456")
    reviews = []
    assert _clean("ValueError: \x1b[31mkey sk-grader-secret-123456\x1b[0m", ex, reviews) == "ValueError: key [redacted]"
    assert reviews == ["its feedback contained the value of OPENAI_API_KEY"]

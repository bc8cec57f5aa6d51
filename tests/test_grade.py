"""The grader on the toy exercise: generation, CLI, gradebook, error paths."""
import csv
import json

import nbformat
import pytest

from mmlab.grade import (ExerciseError, GradingIntegrityError, filter_answer, generate_exercises, grade_main, grade_many,
                         grade_notebook, read_exercise, strip_hidden, strip_solutions, student_notebook, toy_exercise)

from toy_course import CELL_TIMEOUT, DOUBLE, MEAN, RIGHT_DOUBLE, RIGHT_MEAN, course, submission  # noqa: F401 (course is a fixture)


def test_answers_found_by_cell_id_when_metadata_is_gone(course):
    root, exs = course
    def strip(nb):
        for c in nb.cells: c.metadata = {}
        nb.metadata = {}
    p = submission(root, "nometa", {DOUBLE: RIGHT_DOUBLE, MEAN: RIGHT_MEAN}, strip)
    assert grade_notebook(p, exs, CELL_TIMEOUT, 120).total == 6


def test_submission_that_edits_the_solutions_stops_the_batch(course, tmp_path):
    root, _ = course
    sol = tmp_path / "solutions"; sol.mkdir()
    nbformat.write(toy_exercise(), sol / "00_toy.ipynb")
    target = str(sol / "00_toy.ipynb")
    p = submission(root, "vandal", {DOUBLE: f"PATH = {target!r}\ndef double(x):\n    open(PATH, 'a').write(' ')\n    return 2 * x",
                                    MEAN: RIGHT_MEAN})
    with pytest.raises(GradingIntegrityError, match="00_toy.ipynb"):
        grade_many([p], sol, CELL_TIMEOUT, 120, log=lambda *a: None)


def test_cli_json_and_folder_gradebook(course, tmp_path, capsys):
    root, _ = course
    folder = tmp_path / "inbox"; folder.mkdir()
    for name, answers in [("ann", {DOUBLE: RIGHT_DOUBLE, MEAN: RIGHT_MEAN}), ("bob", {DOUBLE: RIGHT_DOUBLE})]:
        p = submission(root, name, answers); p.rename(folder / p.name)
    out = tmp_path / "one.json"
    args = ["--solutions", str(root / "solutions"), "--cell-timeout", str(CELL_TIMEOUT)]
    assert grade_main([str(folder / "ann_00_toy.ipynb"), "--json", str(out), *args]) == 0
    data = json.loads(out.read_text())
    assert (data["total"], data["max"]) == (6, 6)
    assert [set(q) >= {"name", "score", "max", "hidden", "message"} for q in data["questions"]] == [True] * 4
    assert "visible tests passed: yes" in capsys.readouterr().out
    assert grade_main([str(folder), *args]) == 0
    rows = list(csv.DictReader((folder / "gradebook.csv").open()))
    assert [(r["submission"].rsplit("/", 1)[-1], r["total"], r["00_toy:q_mean"]) for r in rows] == \
        [("ann_00_toy.ipynb", "6", "1"), ("bob_00_toy.ipynb", "3", "0")]


def test_cli_errors_are_clear(course, tmp_path, capsys):
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
    check(lambda nb: setattr(nb.cells[2], "source", nb.cells[2].source.replace("### END SOLUTION", "")), "never closed")
    check(lambda nb: setattr(nb.cells[2], "source", nb.cells[2].source + "\nprint(double(2))"),
          "cell 2: the grader would not run part of this answer")
    check(lambda nb: nb.cells.__setitem__(slice(3, None), []), "no test cells")


def test_answer_filter_keeps_definitions_only():
    code, notes = filter_answer("import torch\nfrom torch import nn\nclass M(nn.Module):\n    size: int = 3\n"
                                "    @property\n    def two(self): return 2\n    @two.setter\n    def two(self, v): pass\n"
                                "    print('in class body')\nM.x = 1\nfor i in range(3): pass", protected={"torch"})
    assert "class M(nn.Module)" in code and "print" not in code and "M.x" not in code
    assert [n.split(":")[0] for n in notes] == ["line 1", "line 9", "line 10", "line 11"]


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


def test_mmlab_console_script_dispatches_grade(course, tmp_path):
    "`mmlab grade ...` goes through mmlab.cli.main to grade_main."
    from mmlab.cli import main
    root, _ = course
    exe = tmp_path / "exercises"
    assert main(["grade", "--generate", "--solutions", str(root / "solutions"), "--exercises", str(exe)]) == 0
    assert main(["grade", "--generate", "--check", "--solutions", str(root / "solutions"), "--exercises", str(exe)]) == 0
    assert (exe / "00_toy.ipynb").exists()

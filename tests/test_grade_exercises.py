"""exercises/ is exactly what the generator makes of solutions/, and an untouched exercise scores less than full."""
import ast
import filecmp
from pathlib import Path

import pytest

import nbformat

from mmlab.grade import KERNELSPEC, _transform, cell_role, format_result, generate_exercises, grade_notebook, load_exercises

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = load_exercises(ROOT / "solutions")


def test_exercises_are_up_to_date(tmp_path):
    "Fails when a solution changed without `mmlab grade --generate`, or exercises/ was edited by hand."
    status = generate_exercises(ROOT / "solutions", tmp_path)
    assert set(status.values()) == {"written"}
    committed = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    assert committed == sorted(status), f"exercises/ has {committed}, the solutions give {sorted(status)}"
    _, differ, errors = filecmp.cmpfiles(tmp_path, ROOT / "exercises", committed, shallow=False)
    assert not differ and not errors, f"out of date: {differ + errors}; run `mmlab grade --generate`"


def test_notebooks_name_the_course_kernel(tmp_path):
    "Exercises open on the kernel `make setup` installs, as the lessons and solutions do, whatever a solution says."
    assert KERNELSPEC == {"display_name": "python3", "language": "python", "name": "python3"}
    sol = tmp_path / "solutions"; sol.mkdir()
    nb = nbformat.read(ROOT / "solutions" / "03_attention_masks.ipynb", as_version=4)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, sol / "03_attention_masks.ipynb")
    generate_exercises(sol, tmp_path / "exercises")
    assert nbformat.read(tmp_path / "exercises" / "03_attention_masks.ipynb", as_version=4).metadata.kernelspec == KERNELSPEC
    for folder in ("nbs", "solutions", "exercises"):
        for p in sorted((ROOT / folder).glob("*.ipynb")):
            assert nbformat.read(p, as_version=4).metadata.get("kernelspec") == KERNELSPEC, f"{folder}/{p.name}"


def test_every_visible_assert_has_a_message():
    "A failing check tells the student what was wrong: every assert a student can see (tests and given cells) has a message."
    bare = []
    for p in sorted((ROOT / "exercises").glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(p, as_version=4).cells):
            if cell_role(cell) in ("test", "context"):
                bare += [f"{p.name}, cell {i}, line {node.lineno}" for node in ast.walk(ast.parse(_transform(cell.source)))
                         if isinstance(node, ast.Assert) and node.msg is None]
    assert not bare, f"asserts without a message: {bare}"


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_untouched_exercise_scores_less(name):
    r = grade_notebook(ROOT / "exercises" / f"{name}.ipynb", EXERCISES)
    print(format_result(r))
    assert r.exercise == name and len(r.questions) == len(EXERCISES[name].questions)
    assert r.total < r.max and not r.visible_passed
    assert all("NotImplementedError" in q.message for q in r.questions if not q.hidden and q.score == 0), format_result(r)

"""The toy exercise's course folder and submissions, shared by the grader's test files."""
from pathlib import Path

import nbformat
import pytest

from mmlab.grade import generate_exercises, load_exercises, toy_exercise

CELL_TIMEOUT = 4     # seconds: the toy tests take milliseconds, an infinite loop hits this
DOUBLE, MEAN = 2, 5  # indices of the two answer cells in the toy exercise

RIGHT_MEAN = 'def mean(xs):\n    if not xs: raise ValueError("empty")\n    return sum(xs) / len(xs)'
RIGHT_DOUBLE = "def double(x):\n    return x + x"


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    "A solutions folder with the toy exercise, its generated student notebook, and the exercises read."
    root = tmp_path_factory.mktemp("course")
    (root / "solutions").mkdir()
    nbformat.write(toy_exercise(), root / "solutions" / "00_toy.ipynb")
    generate_exercises(root / "solutions", root / "exercises")
    return root, load_exercises(root / "solutions")


def submission(root, name, answers:dict[int, str], edit=None)->Path:
    "The generated student notebook with some answer cells filled in (and optional other edits)."
    nb = nbformat.read(root / "exercises" / "00_toy.ipynb", as_version=4)
    for i, src in answers.items(): nb.cells[i].source = src
    if edit: edit(nb)
    p = root / f"{name}_00_toy.ipynb"
    nbformat.write(nb, p)
    return p


def scores(result): return [q.score for q in result.questions]

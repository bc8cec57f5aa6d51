"""Courses for the grader's tests: the toy exercise (fast, pure Python) and submissions built from the real
exercise 03 (they follow the exercise when it changes)."""
import fcntl
import hashlib
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from mmlab.grade import BEGIN_SOLUTION, END_SOLUTION, _nbgrader, cell_role, generate_exercises, load_exercises, toy_exercise

CELL_TIMEOUT = 4     # seconds: the toy tests take milliseconds, an infinite loop hits this
DOUBLE, MEAN = 2, 5  # indices of the two answer cells in the toy exercise

RIGHT_MEAN = 'def mean(xs):\n    if not xs: raise ValueError("empty")\n    return sum(xs) / len(xs)'
RIGHT_DOUBLE = "def double(x):\n    return x + x"

ROOT = Path(__file__).resolve().parent.parent
EX03 = "03_attention_masks"


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


def reference_answers(exercise:str)->dict[str, str]:
    "The reference answer cells of a solution notebook, by grade_id, without the solution markers."
    nb = nbformat.read(ROOT / "solutions" / f"{exercise}.ipynb", as_version=4)
    return {_nbgrader(c)["grade_id"]: "\n".join(l for l in c.source.splitlines()
                                                 if l.strip() not in (BEGIN_SOLUTION, END_SOLUTION))
            for c in nb.cells if cell_role(c) == "answer"}


def exercise_submission(folder:Path, name:str, answers:dict[str, str], exercise:str=EX03, edit=None)->Path:
    "The committed student notebook of `exercise` with answer cells (by grade_id) replaced."
    nb = nbformat.read(ROOT / "exercises" / f"{exercise}.ipynb", as_version=4)
    for c in nb.cells:
        if cell_role(c) == "answer" and _nbgrader(c)["grade_id"] in answers:
            c.source = answers[_nbgrader(c)["grade_id"]]
    if edit: edit(nb)
    p = folder / f"{name}_{exercise}.ipynb"
    nbformat.write(nb, p)
    return p


def fingerprint(*dirs)->dict[str, bytes]:
    "Every file under `dirs` (bytecode included) and its content."
    return {str(p): p.read_bytes() for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file()}


@contextmanager
def environment_lock(exclusive:bool):
    """Held while a test grades with `grade_many`, whose guard puts back any change to the package or the Python
    environment and flags the submission that was running. Unisolated attack batches plant files there on purpose
    (exclusive); other batches (shared) must not run meanwhile, on this machine's other workers or checkouts."""
    key = hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"mmlab-grade-tests-{key}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try: yield
        finally: fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def shared_environment():
    "Grading tests that plant nothing in the environment run together, never beside one that does."
    with environment_lock(exclusive=False): yield

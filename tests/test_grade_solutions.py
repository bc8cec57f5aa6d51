"""Every solution notebook scores full marks under `mmlab grade`."""
from pathlib import Path

import pytest

from mmlab.grade import format_result, grade_notebook, load_exercises

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"
EXERCISES = load_exercises(SOLUTIONS)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_solution_scores_full_marks(name):
    r = grade_notebook(SOLUTIONS / f"{name}.ipynb", EXERCISES)
    print(format_result(r))
    assert r.max == EXERCISES[name].max_score > 0
    assert r.total == r.max, format_result(r)
    assert r.visible_passed and not r.notes and not r.review and not r.error, format_result(r)

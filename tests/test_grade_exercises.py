"""exercises/ is exactly what the generator makes of solutions/, and an untouched exercise scores less than full."""
import filecmp
from pathlib import Path

import pytest

from mmlab.grade import format_result, generate_exercises, grade_notebook, load_exercises

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


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_untouched_exercise_scores_less(name):
    r = grade_notebook(ROOT / "exercises" / f"{name}.ipynb", EXERCISES)
    print(format_result(r))
    assert r.exercise == name and len(r.questions) == len(EXERCISES[name].questions)
    assert r.total < r.max and not r.visible_passed
    assert all("NotImplementedError" in q.message for q in r.questions if not q.hidden and q.score == 0), format_result(r)

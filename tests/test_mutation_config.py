"The mutation-testing setup stays valid as the code changes: modules, test files and known bugs all still exist."
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("mutation", ROOT / "tests" / "mutation.py")
mutation = importlib.util.module_from_spec(spec); spec.loader.exec_module(mutation)


def _test_exists(nodeid):
    path, _, name = nodeid.partition("::")
    return (ROOT / path).is_file() and (not name or re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M))


def test_every_module_and_its_tests_exist():
    table = mutation.modules_and_tests()
    assert "mmlab/fusion.py" in table and len(table) >= 16
    for module, tests in table.items():
        assert (ROOT / module).is_file(), module
        files = [t for i, t in enumerate(tests) if not t.startswith("-") and not (i and tests[i - 1] == "-k")]
        assert files and all(_test_exists(t) for t in files), (module, tests)


@pytest.mark.parametrize("what, path, old, new, tests", mutation.KNOWN_BUGS, ids=[b[0] for b in mutation.KNOWN_BUGS])
def test_known_bug_still_applies_once_and_names_real_tests(what, path, old, new, tests):
    assert (ROOT / path).read_text().count(old) == 1, f"{what}: the original text is no longer in {path} exactly once"
    assert old != new and tests and all(_test_exists(t) for t in tests)


def test_kill_rates_per_module():
    found = {"mmlab.losses.x_clip_loss__mutmut_1": "killed", "mmlab.losses.x_clip_loss__mutmut_2": "survived",
             "mmlab.data.preprocess.xǁVisionPreprocessorǁ__call____mutmut_3": "timeout"}
    rates = mutation.kill_rates(found)
    assert rates["mmlab.losses"] == {"killed": 1, "survived": 1} and rates["mmlab.data.preprocess"] == {"timeout": 1}

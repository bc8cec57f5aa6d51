"""Keep what each notebook printed during the test run, for the course site (`make site`).

nbval runs every notebook cell by cell; this plugin writes the notebook with those outputs to
`.cache/executed/` when every code cell ran and passed, so the site shows the run the tests checked
and building it never runs the course a second time.
"""
import os
import tempfile
from pathlib import Path

import pytest

EXECUTED = Path(__file__).parent / ".cache" / "executed"
_runs = {}  # notebook file node -> {"cells": code cells run, "failed": bool}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when != "call" or not hasattr(item, "test_outputs") or not hasattr(item.parent, "nb"):
        return
    run = _runs.setdefault(item.parent, {"cells": 0, "failed": False})
    run["cells"] += 1
    run["failed"] |= outcome.get_result().failed
    item.cell.outputs = list(item.test_outputs or [])
    item.cell.execution_count = run["cells"]


def pytest_sessionfinish(session):
    import nbformat

    for nb_file, run in _runs.items():
        n_code = sum(c.cell_type == "code" for c in nb_file.nb.cells)
        if run["failed"] or run["cells"] != n_code:
            continue  # a partial or failing run is not what the site should show
        path = Path(str(nb_file.fspath)).resolve()
        try:
            target = EXECUTED / path.relative_to(Path(__file__).parent.resolve())
        except ValueError:
            continue  # a notebook outside the repository
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb_file.nb, f)
        os.replace(tmp, target)

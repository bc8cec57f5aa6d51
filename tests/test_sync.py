"Notebooks are the source of truth: exporting and cleaning them must change nothing that is committed."
import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tree(d: Path):
    return {p.relative_to(d): p for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and ".ipynb_checkpoints" not in p.parts}


def _differences(a: Path, b: Path):
    ta, tb = _tree(a), _tree(b)
    diff = sorted(str(k) for k in ta.keys() ^ tb.keys())
    diff += sorted(str(k) for k in ta.keys() & tb.keys() if not filecmp.cmp(ta[k], tb[k], shallow=False))
    return diff


def test_nbdev_export_and_clean_leave_no_diff(tmp_path):
    for name in ("nbs", "mmlab"): shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "settings.ini", "README.md"):
        if (ROOT / name).exists(): shutil.copy(ROOT / name, tmp_path / name)
    bindir = Path(sys.executable).parent
    for cmd in ("nbdev-export", "nbdev-clean"):
        r = subprocess.run([str(bindir / cmd)], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    for name in ("nbs", "mmlab"):
        changed = _differences(ROOT / name, tmp_path / name)
        assert not changed, (f"{name}/ is out of date with the notebooks: {changed}. "
                             "Run `nbdev-export && nbdev-clean` and commit the result.")


def test_notebooks_are_stored_without_outputs():
    "nbval runs every cell of a notebook stored without outputs; a saved output would be compared instead."
    stored = [f"{p.name} cell {i}" for p in sorted((ROOT / "nbs").glob("*.ipynb"))
              for i, c in enumerate(json.loads(p.read_text())["cells"])
              if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not stored, (f"{len(stored)} notebook cells were saved with outputs, e.g. {stored[:3]}: clear them "
                        "(JupyterLab: Edit > Clear Outputs of All Cells) and save again")

"A practitioner's light install (`pip install mmlab`, no extras): the library imports, and whatever needs an extra says which."
import os
import subprocess
import sys

# Runs before `import mmlab` in a fresh interpreter: the listed packages behave as if they were not installed
# (a None entry in sys.modules makes `import x` raise ModuleNotFoundError and `find_spec(x)` return None).
BLOCK = """
import sys
for name in {blocked!r}: sys.modules[name] = None
"""
LIGHT = ["datasets", "librosa", "soundfile", "av", "sklearn", "matplotlib", "accelerate", "optuna", "faiss", "openai",
         "anthropic", "google.genai", "google.generativeai", "nbformat", "nbclient", "nbdev", "nbval"]


def _run(code, blocked=LIGHT):
    env = dict(os.environ, MMLAB_OFFLINE="true")
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=set(blocked)) + code], capture_output=True, text=True, env=env)


def test_the_library_imports_and_works_without_extras():
    r = _run("import torch\nfrom mmlab import attention, fusion, losses, clip, train\n"
             "from mmlab.fusion import make_fusion\n"
             "m = make_fusion('tensor', {'a': 3, 'b': 2}, 4)\n"
             "print(m({'a': torch.randn(2, 3), 'b': torch.randn(2, 2)}).logits.shape)")
    assert r.returncode == 0, r.stderr
    assert "torch.Size([2, 4])" in r.stdout


def test_functions_that_need_an_extra_name_it():
    r = _run("from mmlab.data.synth import make_trimodal\n"
             "try: make_trimodal(10)\n"
             "except ImportError as e: print('ERR', e)")
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "pip install 'mmlab[data]'" in r.stdout and "datasets" in r.stdout


def test_doctor_says_the_library_works_and_what_the_course_lacks():
    r = _run("import sys\nfrom mmlab.cli import main\nsys.exit(main(['doctor']))")
    assert r.returncode == 0, r.stderr
    assert "the library works here; the whole course needs" in r.stdout and "pip install 'mmlab[" in r.stdout


def test_a_command_that_needs_an_extra_names_it():
    r = _run("import sys\nfrom mmlab.cli import main\nsys.exit(main(['train', '--epochs', '1']))")
    assert r.returncode != 0
    assert "mmlab train:" in r.stderr and "pip install 'mmlab[" in r.stderr, r.stderr


def test_grading_without_the_notebook_packages_names_the_extra(tmp_path):
    r = _run(f"import sys\nfrom mmlab.cli import main\nsys.exit(main(['grade', {str(tmp_path / 'x.ipynb')!r}]))")
    assert r.returncode != 0
    assert "mmlab grade" in r.stderr and "pip install 'mmlab[dev]'" in r.stderr, r.stderr

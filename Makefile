# Two commands for everyone (see README.md):
#   make lab    set up (once) and open the course in JupyterLab
#   make test   set up (once) and run every test: units, parity, notebooks, exercises
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed on its own first, pinned: pip then takes the CPU wheel where the index
# serves one (and the CUDA build on a GPU machine), and the package's `torch>=2.4` keeps it.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.mmlab-installed
TEST_STAMP := $(VENV)/.mmlab-test-installed
# Tests and notebooks never touch the network; two pytest workers share the cores, one thread each.
TEST_ENV := OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MMLAB_OFFLINE=true MPLBACKEND=Agg PYTHONHASHSEED=0

.PHONY: setup lab test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mmlab needs Python 3.11 or newer, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[course]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mmlab)" >/dev/null
	touch $(STAMP)

# The parity references and instructor tools of the `test` extra, on top of the course environment.
$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[course,test]"
	touch $(TEST_STAMP)

lab: setup
	$(BIN)/jupyter lab --notebook-dir=. nbs/index.ipynb $(LAB_ARGS)

test: $(TEST_STAMP)
	$(BIN)/python -m ruff check mmlab tests bench
	$(TEST_ENV) $(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 --nbval-lax tests nbs

clean:
	rm -rf $(VENV) .cache

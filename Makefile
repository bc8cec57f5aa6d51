# Two commands for everyone (see README.md):
#   make lab    set up (once) and open the course in JupyterLab
#   make test   set up (once) and run every test: units, parity, notebooks, exercises
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed on its own first, pinned: pip then takes the CPU wheel where the index
# serves one (and the CUDA build on a GPU machine), and the package's `torch>=2.4` keeps it.
TORCH  ?= torch==2.13.0
# Extra pip options for torch, e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" for the CPU-only build.
TORCH_INDEX ?=
STAMP  := $(VENV)/.mmlab-installed
TEST_STAMP := $(VENV)/.mmlab-test-installed
# Tests and notebooks never touch the network; two pytest workers share the cores, one thread each.
TEST_ENV := OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MMLAB_OFFLINE=true MPLBACKEND=Agg PYTHONHASHSEED=0

.PHONY: setup lab test sandbox site mutation clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mmlab needs Python 3.11 or newer, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet -e ".[course]"
	# display name = name, as nbdev-clean stores it in every notebook: a different one would mark each notebook modified on open
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	mkdir -p $(VENV)/share/jupyter/lab/settings
	echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
		> $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

# The parity references and instructor tools of the `test` extra, on top of the course environment.
$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[course,test,site]"
	touch $(TEST_STAMP)

# Students see the course, not the instructors' tools: nbgrader (installed by `make test`) has its lab extension off.
# Run as root (a container), JupyterLab needs --allow-root; it is added for you.
lab: setup
	-$(BIN)/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1
	-$(BIN)/jupyter server extension disable --sys-prefix nbgrader >/dev/null 2>&1
	$(BIN)/jupyter lab --notebook-dir=. nbs/index.ipynb $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# `mmlab grade` isolates each submission with bubblewrap (Debian's `bubblewrap`). As root with apt (a container, CI),
# `make test` installs it, so the sandbox is tested; where it cannot (not root, no apt, offline) the grader's tests take
# its unisolated path and their skip reasons say so. Never fails.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    timeout 300 apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	      { timeout 300 apt-get update -qq >/dev/null 2>&1 && timeout 300 apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; \
	  fi; \
	  command -v bwrap >/dev/null 2>&1 || \
	    echo "bubblewrap is not installed and could not be installed here: the grader's tests take its unisolated path"; }

# The site is built from the outputs the notebook tests kept (conftest.py), then checked in a browser.
test: $(TEST_STAMP) sandbox
	$(BIN)/python -m ruff check mmlab tests bench course_site
	$(TEST_ENV) $(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 --nbval-lax --ignore=tests/test_site.py tests nbs
	$(TEST_ENV) $(BIN)/python course_site/build.py
	$(TEST_ENV) $(BIN)/python -m pytest -q -rs tests/test_site.py

# The course as a website in _site/ (open _site/index.html); lessons the tests ran keep those outputs.
site: $(TEST_STAMP)
	$(TEST_ENV) $(BIN)/python course_site/build.py

# Mutation testing ([tool.mmlab.mutation] in pyproject.toml): a mutant is a one-line bug; the table at the end is
# the share of them the tests catch, per module. Too long on 2 cores for all of them to be part of `make test`.
# First the known bugs (tests/mutation.py's KNOWN_BUGS, 2.5 minutes here): each must make its tests fail.
# MODULES narrows it, e.g. make mutation MODULES=mmlab/losses.py; SAMPLE=200 tests a seeded sample of each module's
# mutants (an estimate; 2 to 6 minutes a core module here); runs are kept in .cache/mutation/.
MODULES ?=
SAMPLE ?= 0
mutation: $(TEST_STAMP)
	$(TEST_ENV) $(BIN)/python tests/mutation.py --known
	$(TEST_ENV) $(BIN)/python tests/mutation.py --sample $(SAMPLE) $(MODULES)

clean:
	rm -rf $(VENV) .cache mutants _site

# Two entry points for a fresh machine: `make quickstart` (set up + run the pipeline) and `make test`
# (the whole suite, with its 25 slowest tests listed); `make test-fast` runs the unit tests alone, for the edit loop.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Tests run on WORKERS processes (pytest-xdist), a whole module per worker at a time: module fixtures are built
# once, and tests/conftest.py orders the modules longest first. WORKERS=0 runs them in this process. Three on this
# 2-core machine: the third fills the cores while the others' tests wait on servers, locks and timeouts
# (docs/BENCHMARKS.md, "Test suite time").
WORKERS ?= 3
PARALLEL := -n $(WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: setup quickstart test test-fast
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

quickstart: setup
	$(VENV)/bin/lifecycle run --profile quickstart

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest $(PARALLEL) --durations=25

test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest $(PARALLEL) tests/unit -m "not integration"

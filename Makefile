# The two commands of the README's Quick start: `make demo` and `make test`.
# Both create .venv on first use and install what they need into it.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest fuzz venv clean

venv: $(STAMP)

# torch is pinned to the CPU build first, so the worker extra's `torch>=2.2`
# is already satisfied and pip never downloads a multi-GB CUDA wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== installing docl into $(VENV): torch (CPU build), Ray, FastAPI, ... (a few minutes the first time)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on torch==2.13.0
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e '.[all,test]'
	touch $(STAMP)
	@echo "== installed; .venv/bin/docl is ready"

demo: $(STAMP)
	$(BIN)/docl train --task mnist1d --method docl --out out/demo --overwrite

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Three pytest workers on the 2-core machine (a third keeps both cores busy while a
# test waits on a restart, a timeout or a container; measured: `-n 3` 8:24 vs `-n 2` 9:07
# on one tree, CI=true with Docker);
# the Ray tests are one group on one of them.
PYTEST_WORKERS ?= 3
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

# The suite's fuzzer, longer: 500 cases per operation and mode (the suite runs 50).
fuzz: $(STAMP)
	DOCL_FUZZ_EXAMPLES=500 DOCL_FUZZ_SECONDS=1200 $(BIN)/python -m pytest -q -s tests/services/test_fuzz.py

clean:
	rm -rf $(VENV) build dist *.egg-info

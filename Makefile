# Two commands do all set-up on a fresh machine (Python 3.11 and make are all it needs):
#   make demo   - the main job end to end on the embedded default store
#   make test   - lint, type-check and the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= .matcher/demo

.PHONY: demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,serve]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/matcher demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy engine ingestion training evaluation matcher
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m "slow or not slow"

clean:
	rm -rf .matcher

# One entry point for people and CI. `make run` and `make test` each set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-full lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Start a node with defaults: data in ./swarm-data, APIs on 127.0.0.1:4454/4455, swarm port 4001.
run: $(STAMP)
	$(PY) -m swarmnode $(ARGS)

## Every test (unit, property, integration, crash, JS SDK compat); slow/fuzz ones in their small CI size.
test: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest $(PYTEST_ARGS)

## Fuzz and slow scenarios at full size.
test-full: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz SWARMNODE_FULL=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

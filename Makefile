# One entry point for people and CI. `make run` and `make test` each set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: setup run test test-full lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The bench extra: matplotlib for the plots, libtorrent as a peer system measured side by side.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## Start a node with defaults: data in ./swarm-data, APIs on 127.0.0.1:4454/4455, swarm port 4001.
run: $(STAMP)
	$(PY) -m swarmnode $(ARGS)

## Every test (unit, property, integration, crash, JS SDK compat); slow/fuzz ones in their small CI size.
test: $(BENCH_STAMP)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest $(PYTEST_ARGS)

## Fuzz and slow scenarios at full size.
test-full: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz SWARMNODE_FULL=1 $(PY) -m pytest $(PYTEST_ARGS)

## Every benchmark against its same-run baseline; writes BENCHMARKS.md and bench/plots/.
## `make bench ARGS=--quick` is the ≤ 3-minute version CI runs (written under bench/results/quick/).
bench: $(BENCH_STAMP)
	$(PY) -m bench all $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

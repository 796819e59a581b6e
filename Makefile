# The two commands of the README quick start: `make demo` and `make test`.
# Both set up what they need themselves (a virtualenv in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STATE ?= var/demo

.PHONY: demo test lint typecheck unit setup models bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/edge-agent --data-dir $(DEMO_STATE) demo

lint: $(STAMP)
	$(BIN)/ruff check edge_agent cloud_sync tests bench models/scripts
	$(BIN)/ruff format --check edge_agent cloud_sync tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/runtime.py

# Rebuild the bundled model packages (separate build venvs; not run by the tests).
models:
	bash models/scripts/build_all.sh

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

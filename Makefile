# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edge-gateway demo

test: $(STAMP)
	$(BIN)/ruff check gateway drivers edge_models tests bench
	$(BIN)/ruff format --check gateway drivers edge_models tests bench
	$(BIN)/mypy
	$(BIN)/pytest --cov --cov-branch --cov-report=term:skip-covered

lint: $(STAMP)
	$(BIN)/ruff check gateway drivers edge_models tests bench
	$(BIN)/ruff format --check gateway drivers edge_models tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info

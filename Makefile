# `make run` and `make test` create .venv on first use and install the package into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# --no-compile: byte-compiling torch's thousands of modules at install time costs minutes
# on a 2-core machine; Python compiles what it imports on first use instead.
PIP_FLAGS ?= --no-compile --quiet

.PHONY: run test lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[dev,timm]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[docs]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/tkmia run

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# ruff (lint and formatting) and mypy (its settings, strict on the math and the attacks,
# are in pyproject.toml's [tool.mypy])
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# the documentation site (mkdocs.yml): offline, strict (a warning is an error), into site/
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) results site

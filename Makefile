# Live Update Workbench: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast fuzz lab lint format system-deps kernel clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash workbench/lab/scripts/install-system-deps.sh

## demo: set everything up and run the main job; prints where the report went
demo: $(STAMP) system-deps
	$(BIN)/workbench demo

## test: set everything up and run the whole test suite (lab VM cycles and notebooks included)
test: $(STAMP) system-deps
	$(BIN)/ruff check workbench tests
	$(BIN)/ruff format --check workbench tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-fast: the tests that need neither the lab kernel nor a notebook kernel
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not lab and not notebook" $(PYTEST_ARGS)

## fuzz: the hostile-input tests (tests/fuzz) with 20000 examples each instead of the suite's 80: hours;
## FUZZ_MAX_EXAMPLES=N sets another number
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/fuzz --timeout=0 --hypothesis-show-statistics $(PYTEST_ARGS)

## lab: open JupyterLab on the notebooks
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

kernel: $(STAMP) system-deps
	$(BIN)/workbench kernel build

lint: $(STAMP)
	$(BIN)/ruff check workbench tests
	$(BIN)/ruff format --check workbench tests

format: $(STAMP)
	$(BIN)/ruff format workbench tests
	$(BIN)/ruff check --fix workbench tests

clean-venv:
	rm -rf $(VENV)

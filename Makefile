# recsys_ebm: every target creates .venv and installs the package on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

DATASET ?= movielens
VARIANT ?= 100k
MODEL ?= dpebm
PROTOCOL ?= random
DATA_DIR ?=
ARGS ?=

DATA_FLAGS := --dataset $(DATASET) --variant $(VARIANT) $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

.PHONY: help setup train evaluate test lint clean

help:
	@echo "make train    [DATASET=movielens VARIANT=100k MODEL=dpebm DATA_DIR=... ARGS=...]"
	@echo "make evaluate [PROTOCOL=random ...]  -> reports/<dataset>-<variant>/<model>-<protocol>.json"
	@echo "make test     run the test suite"
	@echo "make lint     ruff"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/recsys-ebm train $(DATA_FLAGS) --model $(MODEL) $(ARGS)

evaluate: $(STAMP)
	$(BIN)/recsys-ebm evaluate $(DATA_FLAGS) --model $(MODEL) --protocol $(PROTOCOL) \
		--json reports/$(DATASET)-$(VARIANT)/$(MODEL)-$(PROTOCOL).json $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check recsys_ebm tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# recsys_ebm: every target creates .venv and installs the package on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# the optional peers (scikit-surprise) for reports, benchmarks and the tests that drive them,
# and Ray (the distributed export and training, tested on a local two-node cluster)
BENCH_STAMP := $(VENV)/.installed-bench

DATASET ?= movielens
VARIANT ?= 100k
MODEL ?= dpebm
PROTOCOL ?= random
# report: comma-separated models (default: every registered model)
MODELS ?=
DATA_DIR ?=
ARGS ?=

DATA_FLAGS := --dataset $(DATASET) --variant $(VARIANT) $(if $(DATA_DIR),--data-dir $(DATA_DIR),)
# one folder per data set, named as the reports name it (ml-100k, ml-latest-small, a file's stem)
REPORT_DIR := reports/$(if $(filter movielens,$(DATASET)),ml-$(VARIANT),$(basename $(notdir $(DATASET))))
# export: top-K per user; bench: extra flags for benchmarks/run_all.py (e.g. --quick)
K ?= 100
OUTPUT ?= outputs/exports/$(DATASET)-$(VARIANT)-$(MODEL)-top$(K).parquet
BENCH_ARGS ?=

.PHONY: help setup train train-production evaluate evaluate-model test lint clean export bench docs

help:
	@echo "make train    [DATASET=movielens VARIANT=100k MODEL=dpebm DATA_DIR=... ARGS=...]"
	@echo "make train-production  the same, then fitted on every interaction: the model to serve"
	@echo "make evaluate [PROTOCOL=random|temporal|loo|strong|ratings|groups MODELS=dpebm,ease ...]  -> reports/<dataset>/<protocol>.md"
	@echo "              every model tuned on validation, refit, 3 seeds; + .json and PNG plots"
	@echo "make evaluate-model [MODEL=dpebm PROTOCOL=random]  -> reports/<dataset>/<model>-<protocol>.json"
	@echo "make export   [K=100 OUTPUT=...parquet|.csv ARGS='--temperature 0.5 --seed 1' ...]"
	@echo "make explore  [MODEL=dpebm ARGS='--port 8765']  the temperature explorer of the saved model, on 127.0.0.1"
	@echo "make bench    [BENCH_ARGS=--quick]  -> benchmarks/results/*.json"
	@echo "make test     run the test suite"
	@echo "make lint     ruff + import-linter contracts"
	@echo "make docs     API reference from the docstrings (pdoc) -> docs/api/index.html; warnings fail"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,ray]"
	touch $(BENCH_STAMP)

train: $(STAMP)
	$(BIN)/recsys-ebm train $(DATA_FLAGS) --model $(MODEL) $(ARGS)

# the model to serve: evaluated like `train`, then fitted on every interaction
train-production: $(STAMP)
	$(BIN)/recsys-ebm train $(DATA_FLAGS) --model $(MODEL) --fit all \
		--output-dir outputs/$(DATASET)-$(VARIANT)/$(MODEL)-production $(ARGS)

# the model comparison report (recsys_ebm/experiments/report.py)
# PROTOCOL=groups: the group protocol (recsys_ebm/experiments/groups.py) -> groups.md + .json + plot
comma := ,
evaluate: $(BENCH_STAMP)
ifeq ($(PROTOCOL),groups)
	$(BIN)/recsys-ebm groups $(DATA_FLAGS) $(foreach m,$(subst $(comma), ,$(MODELS)),--model $(m)) \
		--json $(REPORT_DIR)/groups.json --markdown $(REPORT_DIR)/groups.md $(ARGS)
else
	$(BIN)/recsys-ebm report $(DATA_FLAGS) --protocol $(PROTOCOL) \
		$(if $(MODELS),--models $(MODELS),) $(ARGS)
endif

# one model through the single-model path (train split -> validation -> refit -> test)
evaluate-model: $(BENCH_STAMP)
	$(BIN)/recsys-ebm evaluate $(DATA_FLAGS) --model $(MODEL) --protocol $(PROTOCOL) \
		--json $(REPORT_DIR)/$(MODEL)-$(PROTOCOL).json $(ARGS)

export: $(STAMP)
	$(BIN)/recsys-ebm export $(DATA_FLAGS) --model $(MODEL) --k $(K) --output $(OUTPUT) $(ARGS)

# the temperature explorer of the model `make train` saved, on http://127.0.0.1:8765/
.PHONY: explore
explore: $(STAMP)
	$(BIN)/recsys-ebm explore --model-path outputs/$(subst /,_,$(DATASET))/$(MODEL) $(ARGS)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

test: $(BENCH_STAMP)
	$(BIN)/python -m pytest -q --durations=25 $(ARGS)

# Shilling-attack detection grid: attack x size x filler x detector on $(DATASET)-$(VARIANT),
# writes reports/<dataset>/anomaly.md + anomaly.png and logs to MLflow. One torch thread:
# the grid fits many small models, for which extra intra-op threads only add contention.
.PHONY: anomaly
anomaly: $(STAMP)
	$(BIN)/recsys-ebm anomaly $(DATA_FLAGS) --grid --threads 1 --quiet \
		--report-dir $(REPORT_DIR) $(ARGS)

# The headline cells alone (average/random/bandwagon at 5% / 5%, attack seeds 0-2): a few
# minutes, writes reports/<dataset>/anomaly-headline.md + .png.
.PHONY: anomaly-headline
anomaly-headline: $(STAMP)
	$(BIN)/recsys-ebm anomaly $(DATA_FLAGS) --headline --threads 1 --quiet \
		--report-dir $(REPORT_DIR) $(ARGS)

# ruff, and the import-linter contracts of pyproject.toml (layers point one way, no cycles)
lint: $(STAMP)
	$(BIN)/ruff check recsys_ebm tests benchmarks
	$(BIN)/lint-imports

# the API reference, rendered by pdoc from the (numpy-style) docstrings; any pdoc warning fails
docs: $(STAMP)
	rm -rf docs/api
	$(BIN)/python scripts/build_docs.py docs/api

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

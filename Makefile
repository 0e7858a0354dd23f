# offline_chunk: every target that needs the environment builds .venv first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build by default. A GPU user installs a CUDA build instead, e.g.
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

DATA    ?= ogbench:scene-play-singletask-task2-v0
OUT     ?=
ARGS    ?=
AGENT   ?= cpql
PRESET  ?= default
DEFAULT_STORE := data/scene-play-singletask-task2-v0.zarr
# Command-line words that are not this Makefile's own variables are config overrides: `make train agent.eta=2`.
OWN_VARIABLES := PYTHON=% VENV=% TORCH=% DATA=% OUT=% ARGS=% AGENT=% PRESET=% DATASET=% STEPS=% RUN=% RESUME=%
OVERRIDES = $(filter-out $(OWN_VARIABLES),$(MAKEOVERRIDES))

.PHONY: install dataset train test test-all bench-data lint clean help

help:
	@echo "make install                    create $(VENV) with torch and every extra"
	@echo "make dataset [DATA=...] [OUT=...] convert or generate a step-level zarr store"
	@echo "make train [AGENT=cpql|dql] [DATASET=...] [STEPS=...] [RUN=...] [RESUME=ckpt] [PRESET=gpu] [key=value ...]"
	@echo "make test                       fast CPU test suite (what CI runs)"
	@echo "make test-all                   also the slow tests"
	@echo "make bench-data                 chunk-index and sampler benchmarks"

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

dataset: $(STAMP)
	$(PY) -m offline_chunk dataset "$(DATA)" $(if $(OUT),--out "$(OUT)") $(ARGS)

# Without DATASET (or RESUME), train on the default store, generating it first if it is missing.
train: $(STAMP) $(if $(DATASET)$(RESUME),,$(DEFAULT_STORE))
	$(PY) -m offline_chunk train --agent $(AGENT) --preset $(PRESET) $(if $(DATASET),--dataset "$(DATASET)") \
		$(if $(STEPS),--steps $(STEPS)) $(if $(RUN),--run "$(RUN)") $(if $(RESUME),--resume "$(RESUME)") \
		$(OVERRIDES) $(ARGS)

$(DEFAULT_STORE): | $(STAMP)
	$(PY) -m offline_chunk dataset ogbench:scene-play-singletask-task2-v0 --out $@

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" --benchmark-skip

bench-data: $(STAMP)
	$(PY) -m pytest benchmarks/bench_data.py -q -m "" --benchmark-only --benchmark-columns=min,median,max,rounds \
		--benchmark-json=benchmarks/last_bench_data.json

lint: $(STAMP)
	$(PY) -m ruff check offline_chunk tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks *.egg-info

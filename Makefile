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

.PHONY: install dataset test test-all bench-data lint clean help

help:
	@echo "make install                    create $(VENV) with torch and every extra"
	@echo "make dataset [DATA=...] [OUT=...] convert or generate a step-level zarr store"
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

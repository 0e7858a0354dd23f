# offline_chunk: every target that needs the environment builds .venv first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build by default. A GPU user installs a CUDA build instead, e.g.
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
# Every other package at the exact version CI passed with (scripts/lock.py; `make lock` refreshes it).
LOCK   ?= requirements.lock
STAMP  := $(VENV)/.installed

DATA    ?= ogbench:scene-play-singletask-task2-v0
OUT     ?=
ARGS    ?=
AGENT   ?= cpql
PRESET  ?= default
DEFAULT_STORE := data/scene-play-singletask-task2-v0.zarr
# Command-line words that are not this Makefile's own variables are config overrides: `make train agent.eta=2`.
TASK    ?= scene-play-singletask-task1-v0
SEEDS   ?= 0
BENCH   ?= quick
JOBS    ?= 1
LAUNCHER ?= local
OWN_VARIABLES := PYTHON=% VENV=% TORCH=% LOCK=% DATA=% OUT=% ARGS=% AGENT=% PRESET=% DATASET=% STEPS=% RUN=% RESUME=% \
	TASK=% SEEDS=% BENCH=% REWARD=% JOBS=% LAUNCHER=% CKPT=% EPISODES=% EXECUTE=% WORKERS=% DEVICE=% CONFIG=% UTD=% ENVS=% NPROC=%
# MAKEOVERRIDES escapes the spaces inside a value (`ARGS="--blocks 3"` is `ARGS=--blocks\ 3`): they are held
# as ^ while filtering so that such a value stays one word.
empty :=
space := $(empty) $(empty)
OVERRIDES = $(subst ^,$(space),$(filter-out $(OWN_VARIABLES),$(subst \$(space),^,$(MAKEOVERRIDES))))

.PHONY: install lock test-portability dataset train eval finetune online benchmark test test-all bench bench-images bench-scaling bench-data lint clean help

help:
	@echo "make install                    create $(VENV) with torch and every extra"
	@echo "make dataset [DATA=...] [OUT=...] convert or generate a step-level zarr store"
	@echo "make train [AGENT=cpql|dql|chunk_sac|td3bc] [DATASET=...] [STEPS=...] [RUN=...] [RESUME=ckpt] [PRESET=default|quick|gpu|qc|qc_cpu|published_cpu] [NPROC=N] [key=value ...]"
	@echo "make eval CKPT=... [EPISODES=50] [EXECUTE=k] [WORKERS=2] [ARGS=...]  rollouts in the simulator"
	@echo "make finetune CKPT=... [STEPS=50000] [UTD=1] [ENVS=1] [ARGS=...]  continue online in the simulator"
	@echo "make online [AGENT=chunk_sac] [DATASET=...] [STEPS=100000] [UTD=1] [RUN=...] [key=value ...]  an untrained agent online (RLPD)"
	@echo "make benchmark [TASK=...] [AGENT=a,b] [SEEDS=0,1,2] [JOBS=2] [STEPS=...] [BENCH=quick|paper|qc|qc-cpu|published-cpu] [REWARD=paper|sparse|ogbench] [LAUNCHER=local|ray]"
	@echo "make test                       fast CPU test suite (what CI runs)"
	@echo "make test-portability           the same suite under 2 CPU kernel sets x 1 and 2 threads"
	@echo "make lock                       re-resolve the newest versions into $(LOCK)"
	@echo "make test-all                   also the slow tests"
	@echo "make bench [AGENT=a,b] [DEVICE=cpu|cuda] [CONFIG=default,matched,gpu,qc,qc_cpu]  update speed table + JSON"
	@echo "make bench-images [AGENT=a,b] [DEVICE=cpu|cuda]  the same with cameras: 64 px x 1 and 84 px x 2"
	@echo "make bench-scaling [AGENT=cpql] [DEVICE=...]  updates/s against batch size and H"
	@echo "make bench-data                 chunk-index and sampler benchmarks"

install: $(STAMP)

# torch first (its build, CPU or CUDA, from TORCH), then everything else at the locked versions, checked.
$(STAMP): setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[all]"
	$(PY) scripts/lock.py check $(LOCK)
	$(PY) -c "import offline_chunk.rendering as gl; gl.report()"
	touch $(STAMP)

# The newest versions that setup.cfg allows, resolved in a scratch environment and written to LOCK.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(LOCK_VENV)/bin/python -m pip install --quiet ".[all]"
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | $(PYTHON) scripts/lock.py freeze > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK) && rm -rf $(LOCK_VENV)
	@echo "$(LOCK) written; \`make clean install\` installs it"

dataset: $(STAMP)
	$(PY) -m offline_chunk dataset "$(DATA)" $(if $(OUT),--out "$(OUT)") $(ARGS)

# Without DATASET (or RESUME), train on the default store, generating it first if it is missing.
# NPROC=N: one run over N data-parallel processes on this machine (torchrun; offline_chunk/distributed.py).
train: $(STAMP) $(if $(DATASET)$(RESUME),,$(DEFAULT_STORE))
	$(if $(NPROC),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY)) -m offline_chunk train --agent $(AGENT) --preset $(PRESET) $(if $(DATASET),--dataset "$(DATASET)") \
		$(if $(STEPS),--steps $(STEPS)) $(if $(RUN),--run "$(RUN)") $(if $(RESUME),--resume "$(RESUME)") \
		$(OVERRIDES) $(ARGS)

# Rollouts of a checkpoint in its store's simulator (ARGS: --render K, --candidates N, --max-steps T, --out DIR).
eval: $(STAMP)
	@test -n "$(CKPT)" || { echo "make eval needs CKPT=<checkpoint>, e.g. CKPT=runs/<run>/checkpoints/final.pt" >&2; exit 2; }
	$(PY) -m offline_chunk eval "$(CKPT)" $(if $(EPISODES),--episodes $(EPISODES)) \
		$(if $(EXECUTE),--execute $(EXECUTE)) $(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

# Continue a checkpoint's agent online in its store's simulator (ARGS: --warmup N, --online-fraction F, ...).
finetune: $(STAMP)
	@test -n "$(CKPT)$(RESUME)" || { echo "make finetune needs CKPT=<checkpoint> (or RESUME=<its checkpoint>)" >&2; exit 2; }
	$(PY) -m offline_chunk finetune "$(or $(RESUME),$(CKPT))" $(if $(RESUME),--resume) \
		$(if $(STEPS),--env-steps $(STEPS)) $(if $(UTD),--utd $(UTD)) $(if $(ENVS),--envs $(ENVS)) \
		$(if $(RUN),--run "$(RUN)") $(ARGS)

# An untrained agent (AGENT, default chunk_sac) learning online with the store in its replay: RLPD's batches
# (half online), uniform warm-up actions, STEPS environment steps (default 100,000). ARGS as finetune's.
online: $(STAMP) $(if $(DATASET),,$(DEFAULT_STORE))
	$(PY) -m offline_chunk online --agent $(if $(filter command line,$(origin AGENT)),$(AGENT),chunk_sac) \
		--preset $(PRESET) $(if $(DATASET),--dataset "$(DATASET)") $(if $(STEPS),--env-steps $(STEPS)) \
		$(if $(UTD),--utd $(UTD)) $(if $(ENVS),--envs $(ENVS)) $(if $(RUN),--run "$(RUN)") $(OVERRIDES) $(ARGS)

$(DEFAULT_STORE): | $(STAMP)
	$(PY) -m offline_chunk dataset ogbench:scene-play-singletask-task2-v0 --out $@

# Train and evaluate AGENT (comma-separated) on TASK for every seed, with the eta = 0 ablation; writes
# runs/benchmark/<task>/benchmark.md beside the Q-chunking paper's figures. LAUNCHER=ray: the runs as tasks on
# a Ray cluster (ARGS="--address HEAD:6379"; a local Ray without it), docs/benchmark.md.
benchmark: $(STAMP)
	$(PY) -m offline_chunk benchmark --task $(TASK) --agent $(AGENT) --seeds $(SEEDS) --preset $(BENCH) \
		--jobs $(JOBS) --launcher $(LAUNCHER) $(if $(STEPS),--steps $(STEPS)) $(if $(REWARD),--reward $(REWARD)) \
		--out runs/benchmark/$(TASK) $(OVERRIDES) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

# The default suite under each CPU kernel set (ATEN_CPU_CAPABILITY) and thread count: every numerical bound
# must hold whatever the kernels and reduction order. Each kernel set compiles into an inductor cache of its
# own: torch 2.13's cache does not key its C++ kernels on ATEN_CPU_CAPABILITY, and a kernel vectorized for
# one set, reused under another, computed garbage or failed to compile.
PORTABILITY := default,1 default,2 avx2,1 avx2,2
test-portability: $(STAMP)
	@for setting in $(PORTABILITY); do \
		echo "== ATEN_CPU_CAPABILITY=$${setting%,*} OMP_NUM_THREADS=$${setting#*,}"; \
		TORCHINDUCTOR_CACHE_DIR=$${TMPDIR:-/tmp}/offline_chunk-inductor-$${setting%,*} \
		ATEN_CPU_CAPABILITY=$${setting%,*} OMP_NUM_THREADS=$${setting#*,} $(PY) -m pytest -q -p no:cacheprovider || exit 1; \
	done

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" --benchmark-skip

# Update speed (offline_chunk/harness/speed.py): every agent unless AGENT is given on the command line.
DEVICE ?= auto
CONFIG ?= default,matched
bench: $(STAMP)
	$(PY) -m offline_chunk bench $(if $(filter command line,$(origin AGENT)),--agent $(AGENT)) --device $(DEVICE) \
		--config $(CONFIG) --out benchmarks/last_speed_$(DEVICE) $(OVERRIDES) $(ARGS)

bench-images: $(STAMP)
	$(PY) -m offline_chunk bench $(if $(filter command line,$(origin AGENT)),--agent $(AGENT)) --device $(DEVICE) \
		--config matched --cameras 64:1,84:2 --out benchmarks/last_speed_images_$(DEVICE) $(OVERRIDES) $(ARGS)

bench-scaling: $(STAMP)
	$(PY) -m offline_chunk bench --scaling --agent $(AGENT) --device $(DEVICE) \
		--out benchmarks/last_scaling_$(AGENT)_$(DEVICE) $(OVERRIDES) $(ARGS)

bench-data: $(STAMP)
	$(PY) -m pytest benchmarks/bench_data.py -q -m "" --benchmark-only --benchmark-columns=min,median,max,rounds \
		--benchmark-json=benchmarks/last_bench_data.json

lint: $(STAMP)
	$(PY) -m ruff check offline_chunk tests benchmarks scripts

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .hypothesis .benchmarks *.egg-info

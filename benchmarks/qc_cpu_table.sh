#!/usr/bin/env bash
# The `qc` recipe's table on 2 CPU cores (benchmarks/RESULTS.md, "QC on the CPU"): 20 to 25 core-hours. Run it
# from a checkout with `make install` done, e.g. in a clone of its own so that edits elsewhere do not reach
# the runs: `bash benchmarks/qc_cpu_table.sh`. Every step is idempotent: stores that exist are kept,
# finished runs are reused, and a run that stopped half-way resumes exactly from its last checkpoint, so
# the script continues where an earlier session stopped. Each report lands in runs/qc-cpu/<agent>/<name>/benchmark.md.
# AGENT=qc (default): QC's own flow-matching actor; AGENT=cpql or dql: the recipe with a U-Net generator.
# JOBS=1 (default) trains one run at a time: on the 2-core development machine two runs at once ran at 2.6
# (qc) and 1.1 (dql) updates/s where qc alone ran at 9.6 (benchmarks/RESULTS.md, 2026-12-02).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
store() {  # the benchmark's own store name for task $1, paper (sparse) reward, 1000 episodes
    local out="data/bench/$1-1000ep-sparse.zarr"
    [ -e "$out" ] || $PY -m offline_chunk dataset "ogbench:$1?episodes=1000&reward=sparse&workers=1" --out "$out" \
        --no-progress
}
mkdir -p runs/qc-cpu
store scene-play-singletask-task1-v0 > runs/qc-cpu/store-scene.log 2>&1 &
store puzzle-3x3-play-singletask-task1-v0 > runs/qc-cpu/store-puzzle.log 2>&1 &
wait
bench() { $PY -m offline_chunk benchmark --agent "${AGENT:-qc}" --preset qc-cpu --jobs "${JOBS:-1}" "$@"; }
SCENE=scene-play-singletask-task1-v0
# The runs after the first three checkpoint every 1,000 updates instead of the preset's 4,000 (a killed run
# loses less; nothing computed changes, and the BC-only column reads the evaluated checkpoints only).
OFTEN=checkpoint_every=1000
# (a) the recipe on both tasks, 3 seeds; the BC-only column from the same checkpoints with one candidate
bench --task $SCENE --seeds 0,1,2 --out runs/qc-cpu/${AGENT:-qc}/scene-task1
bench --task puzzle-3x3-play-singletask-task1-v0 --seeds 0,1,2 --out runs/qc-cpu/${AGENT:-qc}/puzzle-task1 $OFTEN
# (b) ablations on scene task 1, 2 seeds each
bench --task $SCENE --seeds 0,1 --no-ablation --out runs/qc-cpu/${AGENT:-qc}/scene-task1-unet-critic $OFTEN agent.critic.kind=unet
bench --task $SCENE --seeds 0,1 --no-ablation --out runs/qc-cpu/${AGENT:-qc}/scene-task1-h1 $OFTEN horizon=1
bench --task $SCENE --seeds 0,1 --no-ablation --out runs/qc-cpu/${AGENT:-qc}/scene-task1-mc-bound $OFTEN agent.target_lower_bound=monte_carlo

#!/usr/bin/env bash
# Issue 40's table: dql and cpql with U-Net chunk critics on the qc-cpu table's stores and budget (scene
# task 1 and puzzle-3x3 task 1, 1000 episodes, sparse reward; 20,000 updates, 50 evaluation episodes at
# 4k-20k, headline the mean of the last three; BC-only from the same checkpoints with one candidate).
# Run it from a checkout with `make install` done, in a clone of its own so that edits elsewhere do not
# reach the runs. Idempotent as qc_cpu_table.sh: existing stores are kept, finished runs reused, a run
# stopped half-way resumes exactly from its last checkpoint (every 1,000 updates).
#   STEP=published  (a) each agent as published (configs/train/published_cpu.yaml), scene task 1, 2 seeds
#   STEP=recipe     (b) the candidate recipes on scene task 1, seed 0 (RECIPE=name, below); TASK=puzzle runs
#                   the chosen one on puzzle-3x3 task 1 (its store is generated first when missing)
# AGENT=cpql|dql; SEEDS=0,1 by default. One run at a time with one thread (OMP_NUM_THREADS=1): on the 2-core
# development machine two such scripts side by side use both cores (benchmarks/RESULTS.md, issue 40).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
AGENT=${AGENT:-cpql}
SCENE=scene-play-singletask-task1-v0
PUZZLE=puzzle-3x3-play-singletask-task1-v0
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
bench() { $PY -m offline_chunk benchmark --agent "$AGENT" --jobs 1 "$@"; }
case "${STEP:-published}" in
published)
    bench --preset published-cpu --task $SCENE --seeds "${SEEDS:-0,1}" --out "runs/diffusion-cpu/$AGENT/published-scene-task1"
    ;;
recipe)
    # The qc-cpu recipe (best of N = 8 in the backups and in acting, eta = 0, Adam constant, no clipping)
    # with the U-Net critic and the agent's own generator; each RECIPE names what it adds:
    #   bon          dql's DDPM samples as they are; cpql's one-step samples (near copies of one chunk)
    #   ode<k>       cpql: candidates by k Euler steps of the probability-flow ODE (their spread)
    #   eta<x>       the Q term back at weight x (Diffusion-QL and CPQL tune it per domain)
    extra=(agent.critic.kind=unet checkpoint_every=1000)
    for part in ${RECIPE//+/ }; do
        case "$part" in
        bon) ;;
        ode*) extra+=("agent.policy.ode_steps=${part#ode}") ;;
        eta*) extra+=("agent.eta=${part#eta}") ;;
        *) echo "unknown recipe part: $part (bon, ode<k>, eta<x>, joined by +)" >&2; exit 2 ;;
        esac
    done
    case "${TASK:-scene}" in
    scene) task=$SCENE ;;
    puzzle) task=$PUZZLE ;;
    *) echo "TASK must be scene or puzzle" >&2; exit 2 ;;
    esac
    bench --preset qc-cpu --task $task --seeds "${SEEDS:-0}" --out "runs/diffusion-cpu/$AGENT/recipe-$RECIPE-${TASK:-scene}-task1" \
        "${extra[@]}"
    ;;
*) echo "STEP must be published or recipe" >&2; exit 2 ;;
esac

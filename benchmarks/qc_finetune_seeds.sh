#!/usr/bin/env bash
# Issue 16's measurement (benchmarks/RESULTS.md, "QC on the CPU"): fine-tune the `qc_cpu` recipe's scene
# task 1 checkpoints of benchmarks/qc_cpu_table.sh online, seed s from run seed s: 50,000 environment steps,
# utd 1, QC's 5,000-step warm-up, 50 evaluation episodes every 10,000 steps, THREADS intra-op threads (default
# 1, to run beside another job; THREADS=2 when it has this 2-core machine to itself). Run it from the
# checkout that ran the table (its runs/qc-cpu and data/bench). Idempotent: a run with checkpoints resumes
# exactly from its latest step checkpoint (given the THREADS it started with: another count rounds
# differently); a finished run (DONE) is skipped; a seed whose offline run has not finished is waited for; a
# failed run stops the script. AGENT (default qc) names the table's agent, as there.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
for s in ${SEEDS:-0 1 2}; do
  checkpoint=runs/qc-cpu/${AGENT:-qc}/scene-task1/${AGENT:-qc}-seed$s/checkpoints/final.pt
  out=runs/qc-cpu/finetune/${AGENT:-qc}-scene-task1-seed$s
  [ -e "$out/DONE" ] && continue
  while [ ! -e "$checkpoint" ]; do sleep 300; done
  latest=$(ls "$out"/checkpoints/step_*.pt 2>/dev/null | sort | tail -1)
  if [ -n "$latest" ]; then  # a resumed run keeps its settings; only its length may be given
    args=("$latest" --resume --env-steps 50000)
  else
    args=("$checkpoint" --env-steps 50000 --utd 1 --envs 1 --eval-every 10000 --eval-episodes 50
          --checkpoint-every 2500 --seed $((1000 * s)))
  fi
  .venv/bin/python -m offline_chunk finetune "${args[@]}" --run "$out" --no-progress && touch "$out/DONE" || exit 1
done

#!/usr/bin/env bash
# The side-by-side column of the QC table (benchmarks/RESULTS.md): the official QC code (github
# ColinQiyangLi/qc at 48283b4, unmodified) on our 1000-episode scene task 1 store, at the qc_cpu budget:
# best-of-N with QC's BC flow actor, N = 8, 4 x 256 critics and actor, H = 5, the sparse reward, 20,000
# updates, 50 evaluation episodes every 4,000.
#
#   QC=<checkout of ColinQiyangLi/qc at 48283b4> VENV=<venv> STORE=<our store> bash benchmarks/official_qc/run_scene.sh
#
# VENV: python -m venv, then pip install "jax[cpu]==0.6.0" flax==0.10.5 optax==0.2.4 distrax==0.1.5
# ml_collections==1.1.0 ogbench==1.1.2 mujoco==3.3.1 dm_control==1.0.28 tensorflow-probability==0.25.0
# gymnasium==1.1.1 numpy==2.2.5 absl-py tqdm h5py imageio (QC's requirements.txt pins, CPU jax).
# export_npz.py writes the store in OGBench's .npz layout with its qpos / qvel / button_states, so QC's
# loader relabels it with OGBench's own code, as our store was. shims/ stands in for robomimic (imported at
# module level, unused for OGBench) and wandb (needs an account and the network).
# resumable_offline.py drives main.py's offline steps with a state every 1,000 updates: rerunning the
# command continues from it. Extra arguments are passed on (e.g. --seed=1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${QC:?checkout of ColinQiyangLi/qc}" "${VENV:?its virtual environment}"
STORE=${STORE:-data/bench/scene-play-singletask-task1-v0-1000ep-sparse.zarr}
OUT=${OUT:-runs/official-qc}
data="$OUT/data/scene-play-v0.npz"
[ -e "$data" ] || PYTHONPATH=. .venv/bin/python "$here/export_npz.py" "$STORE" "$data"
data_dir=$(cd "$(dirname "$data")" && pwd) out=$(cd "$OUT" && pwd)
cd "$QC"
export PYTHONPATH="$here/shims:." MUJOCO_GL=${MUJOCO_GL:-egl} OMP_NUM_THREADS=1
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# --dataset_replace_interval: main.py reloads and relabels the files of --ogbench_dataset_dir in turn every
# that many steps; with one file that only costs time (the driver never reloads).
exec "$VENV/bin/python" "$here/resumable_offline.py" --run_group=scene-qc-cpu --env_name=scene-play-singletask-task1-v0 \
  --ogbench_dataset_dir="$data_dir" --sparse=True --horizon_length=5 \
  --agent.actor_type=best-of-n --agent.actor_num_samples=8 \
  --agent.value_hidden_dims="(256,256,256,256)" --agent.actor_hidden_dims="(256,256,256,256)" \
  --offline_steps=20000 --online_steps=0 --eval_interval=4000 --eval_episodes=50 --log_interval=1000 \
  --dataset_replace_interval=1000000 --save_dir="$out" "$@"

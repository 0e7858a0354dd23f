"""The official QC offline phase (main.py of github ColinQiyangLi/qc at 48283b4) driven so that a run can stop
and continue across sessions: main.py's calls in main.py's order (seeding, dataset loading and the --sparse
relabelling, agent creation, sample_sequence + agent.update per step, evaluate at i % eval_interval == 0 and
at i == offline_steps - 1), plus, every --save_every steps, a pickle of the step, the agent's state dict (as
utils/flax_utils.py save_agent writes it: parameters, optimizer state, its jax key) and numpy's and
Python's RNG states, from which a restart continues. Evaluation episodes reset OGBench's environment
unseeded, as QC's do. Run from the QC checkout with main.py's flags (run_scene.sh). Writes
<save_dir>/<run_group>/seed<seed>/{eval.csv, offline_agent.csv, state.pkl}."""

# ruff: noqa: NPY002  (QC samples its batches and evaluation keys from numpy's global RNG: its state is saved)

import csv
import os
import pickle
import random
import sys

import flax
import main  # noqa: F401  defines main.py's flags (app.run is guarded)
import numpy as np
import tqdm
from absl import app, flags
from agents import agents
from envs.ogbench_utils import make_ogbench_env_and_datasets
from evaluation import evaluate
from utils.datasets import Dataset

FLAGS = flags.FLAGS
flags.DEFINE_integer("save_every", 1000, "steps between resumable states")


def sparse(ds):
    """main.py process_train_dataset with --sparse: rewards (r != 0) * -1."""
    ds = Dataset.create(**ds)
    if FLAGS.sparse:
        ds = Dataset.create(**{**dict(ds), "rewards": (ds["rewards"] != 0.0) * -1.0})
    return ds


def append(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def run(_):
    out = os.path.join(FLAGS.save_dir, FLAGS.run_group, f"seed{FLAGS.seed}")
    os.makedirs(out, exist_ok=True)
    config = FLAGS.agent
    paths = sorted(p for p in os.listdir(FLAGS.ogbench_dataset_dir) if p.endswith(".npz") and "-val" not in p)
    env, eval_env, train_dataset, _ = make_ogbench_env_and_datasets(
        FLAGS.env_name, dataset_path=os.path.join(FLAGS.ogbench_dataset_dir, paths[0]), compact_dataset=False
    )
    random.seed(FLAGS.seed)
    np.random.seed(FLAGS.seed)
    config["horizon_length"] = FLAGS.horizon_length
    train_dataset = sparse(train_dataset)
    example_batch = train_dataset.sample(())
    agent = agents[config["agent_name"]].create(
        FLAGS.seed, example_batch["observations"], example_batch["actions"], config
    )
    state_path, start = os.path.join(out, "state.pkl"), 0
    if os.path.exists(state_path):
        with open(state_path, "rb") as f:
            saved = pickle.load(f)
        start = saved["step"]
        agent = flax.serialization.from_state_dict(
            agent, saved["agent"]
        )  # as utils/flax_utils.py restore_agent
        np.random.set_state(saved["numpy"])
        random.setstate(saved["python"])
        print(f"resumed at step {start}", flush=True)
    for i in tqdm.tqdm(range(start + 1, FLAGS.offline_steps + 1), initial=start, total=FLAGS.offline_steps):
        batch = train_dataset.sample_sequence(
            config["batch_size"], sequence_length=FLAGS.horizon_length, discount=FLAGS.discount
        )
        agent, info = agent.update(batch)
        if i % FLAGS.log_interval == 0:
            append(
                os.path.join(out, "offline_agent.csv"), {"step": i, **{k: float(v) for k, v in info.items()}}
            )
        if i == FLAGS.offline_steps - 1 or (FLAGS.eval_interval != 0 and i % FLAGS.eval_interval == 0):
            eval_info, _, _ = evaluate(
                agent=agent,
                env=eval_env,
                action_dim=example_batch["actions"].shape[-1],
                num_eval_episodes=FLAGS.eval_episodes,
                num_video_episodes=0,
            )
            append(
                os.path.join(out, "eval.csv"),
                {"step": i, "success": float(eval_info["success"]), "episodes": FLAGS.eval_episodes},
            )
        if i % FLAGS.save_every == 0 or i == FLAGS.offline_steps:
            with open(state_path + ".tmp", "wb") as f:
                pickle.dump(
                    {
                        "step": i,
                        "agent": flax.serialization.to_state_dict(agent),
                        "numpy": np.random.get_state(),
                        "python": random.getstate(),
                    },
                    f,
                )
            os.replace(state_path + ".tmp", state_path)


if __name__ == "__main__":
    sys.argv[0] = "main.py"
    app.run(run)

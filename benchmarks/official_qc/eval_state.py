"""Evaluate a resumable_offline.py state in scene task 1 with main.py's evaluate, at another
--agent.actor_num_samples (N = 1: QC's BC flow actor alone). Run from the QC checkout as run_scene.sh sets
up (PYTHONPATH=<shims>:.), with the run's --agent flags and --state=<state.pkl>."""

import pickle
import sys

import flax
import gymnasium
import main  # noqa: F401  defines main.py's flags (app.run is guarded)
import numpy as np
import ogbench  # noqa: F401  registers OGBench's environments with gymnasium
from absl import app, flags
from agents import agents
from evaluation import evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("state", None, "a resumable_offline.py state.pkl")
OBS_DIM, ACTION_DIM, ENV_ID = 40, 5, "scene-singletask-task1-v0"


def run(_):
    config = FLAGS.agent
    config["horizon_length"] = FLAGS.horizon_length
    np.random.seed(FLAGS.seed)  # noqa: NPY002  evaluate draws its jax key from numpy's global RNG
    shapes = np.zeros(OBS_DIM, np.float32), np.zeros(ACTION_DIM, np.float32)
    agent = agents[config["agent_name"]].create(FLAGS.seed, *shapes, config)
    with open(FLAGS.state, "rb") as f:
        saved = pickle.load(f)
    agent = flax.serialization.from_state_dict(agent, saved["agent"])
    info, _, _ = evaluate(
        agent=agent, env=gymnasium.make(ENV_ID), action_dim=ACTION_DIM,
        num_eval_episodes=FLAGS.eval_episodes, num_video_episodes=0,
    )  # fmt: skip
    print(f"step {saved['step']}, N = {config['actor_num_samples']}: success {info['success']}", flush=True)


if __name__ == "__main__":
    sys.argv[0] = "main.py"
    app.run(run)

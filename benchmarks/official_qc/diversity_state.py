"""QC's side of benchmarks/qc_candidate_diversity.py: at 256 rows of the exported .npz (--npz), N candidate
chunks from a resumable_offline.py state's BC flow actor (compute_flow_actions, as sample_actions draws
them), their std across the N beside the data's action std, and the spread max - min over the N of the
critics' mean Q. Run from the QC checkout as run_scene.sh sets up, with the run's --agent flags."""

import pickle
import sys

import flax
import jax
import jax.numpy as jnp
import main  # noqa: F401  defines main.py's flags (app.run is guarded)
import numpy as np
from absl import app, flags
from agents import agents

FLAGS = flags.FLAGS
flags.DEFINE_string("state", None, "a resumable_offline.py state.pkl")
flags.DEFINE_string("npz", None, "the exported store (export_npz.py)")
ROWS, ROW_SEED = 256, 3


def run(_):
    config = FLAGS.agent
    config["horizon_length"] = FLAGS.horizon_length
    data = np.load(FLAGS.npz)
    obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
    shapes = np.zeros(obs_dim, np.float32), np.zeros(action_dim, np.float32)
    agent = agents[config["agent_name"]].create(0, *shapes, config)
    with open(FLAGS.state, "rb") as f:
        agent = flax.serialization.from_state_dict(agent, pickle.load(f)["agent"])
    rows = np.random.default_rng(ROW_SEED).integers(0, len(data["observations"]), ROWS)
    n, chunk_dim = config["actor_num_samples"], action_dim * FLAGS.horizon_length
    obs = jnp.repeat(jnp.asarray(data["observations"][rows])[:, None, :], n, axis=1)
    noises = jax.random.normal(jax.random.PRNGKey(0), (ROWS, n, chunk_dim))
    candidates = jnp.clip(agent.compute_flow_actions(obs, noises), -1, 1)
    q = agent.network.select("critic")(obs, candidates).mean(axis=0)  # (B, N)
    q_spread = q.max(axis=1) - q.min(axis=1)
    median, top = float(jnp.median(q_spread)), float(jnp.quantile(q_spread, 0.9))
    print(
        f"store action std {float(data['actions'].std(0).mean()):.3f}; candidate std across N "
        f"{float(candidates.std(axis=1).mean()):.4f}; Q spread over N: median {median:.3f}, "
        f"90th percentile {top:.3f}"
    )


if __name__ == "__main__":
    sys.argv[0] = "main.py"
    app.run(run)

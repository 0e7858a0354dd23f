"""Updates/s of the official QC offline update (github ColinQiyangLi/qc at 48283b4, agents/acfql.py with
--agent.actor_type=best-of-n), timed as main.py runs it: `train_dataset.sample_sequence(batch_size,
sequence_length=horizon_length, discount)` then `agent.update(batch)` per step, after JIT warm-up, in timed
blocks ending with jax.block_until_ready on the agent. On a synthetic dataset of `make bench`'s shapes
(100,000 rows in episodes of 100, obs 40, action 5, sparse −1/0 rewards). Run from the QC checkout in its
virtual environment (qc_vs_official.sh does):

    cd $QC && PYTHONPATH=.:<this folder>/shims $VENV/bin/python <this folder>/bench_speed.py \\
        --samples 8 --hidden 256 [--blocks 5] [--block-updates 20]

Prints one JSON line: {"updates_per_s": median over blocks, "blocks": [...], ...}.
"""

# ruff: noqa: NPY002  (QC samples its batches from numpy's global RNG, as main.py)

import argparse
import json
import statistics
import time

import jax
import numpy as np
from agents.acfql import ACFQLAgent, get_config
from utils.datasets import Dataset

ROWS, EPISODE, OBS_DIM, ACTION_DIM = 100_000, 100, 40, 5


def synthetic_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(ROWS + 1, OBS_DIM)).astype(np.float32)
    terminals = np.zeros(ROWS, dtype=np.float32)
    terminals[EPISODE - 1 :: EPISODE] = 1.0  # episode ends, as OGBench's loader marks them
    return Dataset.create(
        observations=observations[:-1],
        next_observations=observations[1:],
        actions=rng.uniform(-1, 1, size=(ROWS, ACTION_DIM)).astype(np.float32),
        rewards=-(rng.random(ROWS) < 0.9).astype(np.float32),
        masks=np.ones(ROWS, dtype=np.float32),  # OGBench's offline data: no terminal states
        terminals=terminals,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8, help="--agent.actor_num_samples")
    parser.add_argument("--hidden", type=int, default=256, help="width of the 4-layer actor and critics")
    parser.add_argument("--horizon", type=int, default=5, help="--horizon_length")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-updates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    np.random.seed(0)
    config = get_config()
    config["actor_type"] = "best-of-n"
    config["actor_num_samples"] = args.samples
    config["actor_hidden_dims"] = (args.hidden,) * 4
    config["value_hidden_dims"] = (args.hidden,) * 4
    config["horizon_length"] = args.horizon
    dataset = synthetic_dataset()
    example = dataset.sample(())
    agent = ACFQLAgent.create(0, example["observations"], example["actions"], config)

    def step(agent):
        batch = dataset.sample_sequence(config["batch_size"], sequence_length=args.horizon, discount=0.99)
        agent, _ = agent.update(batch)
        return agent

    for _ in range(args.warmup):  # the first call compiles
        agent = step(agent)
    jax.block_until_ready(agent)
    rates = []
    for _ in range(args.blocks):
        start = time.perf_counter()
        for _ in range(args.block_updates):
            agent = step(agent)
        jax.block_until_ready(agent)
        rates.append(args.block_updates / (time.perf_counter() - start))
    print(
        json.dumps(
            {
                "updates_per_s": statistics.median(rates),
                "blocks": rates,
                "samples": args.samples,
                "hidden": args.hidden,
                "jax": jax.__version__,
                "device": str(jax.devices()[0]),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Samples/s of one training run over 1 and over N data-parallel processes (offline_chunk/distributed.py),
on synthetic stores with and without cameras, alternating the two in one window:

    python benchmarks/ddp_throughput.py [--processes 2] [--agent cpql] [--steps 60] [--rounds 2]

Each configuration trains `--steps` updates of the default preset (eager, fp32, the global batch 256) from
the same store with `torchrun --standalone --nproc_per_node=P`; the run's own summary gives its updates/s
(training time only, evaluations off), samples/s = updates/s x the global batch. One process gets all the
cores' threads (OMP_NUM_THREADS = cores), each of P processes cores / P: the same cores either way. The
first rounds' figures include the processes' warm-up; the report gives every round. On a GPU machine,
`--device cuda` runs one process per GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from offline_chunk.config import load_config
from offline_chunk.data.store import StepData, write_store

EPISODE = 500


def synthetic_store(path: Path, rows: int, cameras: int, side: int = 84) -> Path:
    """A store of `rows` random rows (40-D observations, 5-D actions, sparse −1/0 rewards), with `cameras`
    RGB cameras of side x side."""
    rng = np.random.default_rng(0)
    data = StepData(
        observations={"obs": rng.normal(size=(rows, 40)).astype(np.float32)},
        action=rng.uniform(-1, 1, size=(rows, 5)).astype(np.float32),
        reward=-(rng.random(rows) < 0.9).astype(np.float32),
        terminal=np.zeros(rows, dtype=bool),
        episode_ends=np.arange(EPISODE, rows + 1, EPISODE, dtype=np.int64),
        images={
            f"camera{i}": rng.integers(0, 256, (rows, side, side, 3), dtype=np.uint8) for i in range(cameras)
        },
        attrs={"action_low": [-1.0] * 5, "action_high": [1.0] * 5},
    )
    return write_store(data, path)


def updates_per_s(config: Path, processes: int, threads: int, steps: int, device: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    command = [*torchrun, "-m", "offline_chunk", "train", "--config", str(config), "--steps", str(steps)]
    return trained_updates_per_s([*command, f"device={device}"], env)


def trained_updates_per_s(command: list[str], env: dict[str, str]) -> float:
    """Run a `train` command; the updates/s of its summary (training time, evaluations excluded)."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"([0-9.]+) updates/s", done.stdout)
    if done.returncode or not found:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--agent", default="cpql")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ddp_throughput_"))
    stores = {
        "state (40-D)": synthetic_store(work / "state.zarr", 100_000, 0),
        "2 cameras 84 px": synthetic_store(work / "cameras.zarr", 4_000, 2),
    }
    batch = 256
    print("| store | agent | processes x threads | updates/s by round | samples/s (last round) |")
    print("|---|---|---|---|---|")
    for name, store in stores.items():
        named = [f"dataset={store}", f"run_dir={work / 'run'}", f"batch_size={batch}"]
        quiet = ["eval_every=0", "log_every=20", "checkpoint_every=100000"]
        cfg = load_config(args.agent, "default", [*named, *quiet])
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(cfg.model_dump()))
        shapes = [(1, args.cores), (args.processes, max(1, args.cores // args.processes))]
        rates = {shape: [] for shape in shapes}
        for _ in range(args.rounds):
            for processes, threads in shapes:
                subprocess.run(["rm", "-rf", str(work / "run")], check=True)
                rates[(processes, threads)].append(
                    updates_per_s(config, processes, threads, args.steps, args.device)
                )
        for (processes, threads), values in rates.items():
            listed = ", ".join(f"{v:.2f}" for v in values)
            print(
                f"| {name} | {args.agent} | {processes} x {threads} | {listed} | {values[-1] * batch:,.0f} |"
            )


if __name__ == "__main__":
    main()

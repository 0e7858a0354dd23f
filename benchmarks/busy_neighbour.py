"""Updates/s of one training run alone and beside busy single-threaded neighbours (issue 42, item 3), the
conditions alternating in one window:

    python benchmarks/busy_neighbour.py [--agent cpql] [--steps 200] [--neighbours 1] [--rounds 2]

Each condition trains `--steps` updates of the agent's default preset (eager, fp32, batch 256) on a synthetic
40-D state store (ddp_throughput.py's) with `python -m offline_chunk train`, and reads the updates/s of the
run's summary (training time), in an environment of its own:
  alone                  the defaults, nothing else running
  busy                   the defaults, beside `--neighbours` processes that spin on one core each
  busy, OMP_NUM_THREADS=c  one thread per core, fixed (what a run did before it followed the free cores)
  busy, OMP_NUM_THREADS=1  one thread, fixed
  alone / busy, OMP_NUM_THREADS=c, PASSIVE   one thread per core whose waiting threads sleep, not spin
Stop other work first: the figures are only as quiet as the machine. The report gives every round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

import yaml
from ddp_throughput import synthetic_store, trained_updates_per_s

from offline_chunk.config import load_config


def spinner() -> subprocess.Popen:
    """A busy single-threaded neighbour: a Python loop on one core."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def updates_per_s(config: Path, steps: int, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "offline_chunk", "train", "--config", str(config), "--steps", str(steps)]
    return trained_updates_per_s(command, env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agent", default="cpql")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--neighbours", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="busy_neighbour_"))
    store = synthetic_store(work / "state.zarr", 100_000, 0)
    overrides = [f"dataset={store}", f"run_dir={work / 'run'}", "eval_every=0", "log_every=10"]
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(load_config(args.agent, "default", overrides).model_dump()))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    n = args.neighbours
    passive = {**base, "OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"}
    conditions = {
        "alone": (base, 0),
        "busy": (base, n),
        f"busy, OMP_NUM_THREADS={cores}": ({**base, "OMP_NUM_THREADS": str(cores)}, n),
        "busy, OMP_NUM_THREADS=1": ({**base, "OMP_NUM_THREADS": "1"}, n),
        f"alone, OMP_NUM_THREADS={cores}, PASSIVE": (passive, 0),
        f"busy, OMP_NUM_THREADS={cores}, PASSIVE": (passive, n),
    }
    rates: dict[str, list[float]] = {name: [] for name in conditions}
    for round_index in range(args.rounds):
        for name, (env, neighbours) in conditions.items():
            subprocess.run(["rm", "-rf", str(work / "run")], check=True)
            spinners = [spinner() for _ in range(neighbours)]
            try:
                rates[name].append(updates_per_s(config, args.steps, env))
            finally:
                for process in spinners:
                    process.kill()
                    process.wait()
            print(f"round {round_index}: {name:>36}  {rates[name][-1]:6.2f} updates/s", flush=True)
    alone = median(rates["alone"])
    print(f"\n{args.agent} default, {args.steps} updates, {cores} cores, {n} busy neighbour(s)")
    print("| condition | updates/s (median of rounds) | rounds | vs alone |\n|---|---|---|---|")
    for name, values in rates.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {median(values):.2f} | {shown} | {median(values) / alone:.2f}x |")


if __name__ == "__main__":
    main()

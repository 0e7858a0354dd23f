"""The qc update beside the official QC update on the same CPU, one thread each, alternating in one window
(issue 42, item 1):

    QC=<checkout of ColinQiyangLi/qc at 48283b4> VENV=<its venv> .venv/bin/python \\
        benchmarks/official_qc/speed_side_by_side.py [--rounds 3] [--sizes qc_cpu,qc] [key=value ...]

Sizes: `qc_cpu` (N = 8 candidates, 4 x 256 flow actor and two 4 x 256 critics) and `qc` (QC's own: N = 32,
4 x 512); batch 256, H = 5, 10 flow steps, obs 40, action 5 for both. Ours: `python -m offline_chunk bench
--agent qc --config <size> compile=true` (compiled, as XLA compiles theirs; the preset's precision unless
key=value overrides it), batch sampling included. Theirs: bench_speed.py, main.py's sample_sequence +
agent.update. Each measurement is a fresh process with OMP_NUM_THREADS=1 and XLA's CPU client on one thread
(run_scene.sh's flags); the report gives every round and the ratio of the medians. VENV as run_scene.sh
says (jax[cpu] 0.6.0, flax 0.10.5, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
SIZES = {"qc_cpu": (8, 256), "qc": (32, 512)}  # our bench config -> QC's actor_num_samples, hidden width
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def ours(size: str, overrides: list[str], blocks: int, block_updates: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "bench"
        command = [sys.executable, "-m", "offline_chunk", "bench", "--agent", "qc", "--config", size]
        command += ["--device", "cpu", "--blocks", str(blocks), "--block-updates", str(block_updates)]
        command += ["--out", str(stem), "compile=true", *overrides]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, **ONE_THREAD})
        return json.loads(stem.with_suffix(".json").read_text())["results"][0]["updates_per_s"]


def official(qc: Path, venv: Path, size: str, blocks: int, block_updates: int) -> float:
    samples, hidden = SIZES[size]
    command = [str(venv / "bin" / "python"), str(HERE / "bench_speed.py"), "--samples", str(samples)]
    command += ["--hidden", str(hidden), "--blocks", str(blocks), "--block-updates", str(block_updates)]
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": f"{qc}:{HERE / 'shims'}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=qc, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])["updates_per_s"]


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="qc_cpu,qc")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-updates", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of our bench's config")
    args = parser.parse_args()
    qc, venv = Path(os.environ["QC"]), Path(os.environ["VENV"])
    sizes = args.sizes.split(",")
    rates = {(size, who): [] for size in sizes for who in ("ours", "official")}
    for round_index in range(args.rounds):
        for size in sizes:
            rates[size, "ours"].append(ours(size, args.overrides, args.blocks, args.block_updates))
            rates[size, "official"].append(official(qc, venv, size, args.blocks, args.block_updates))
            print(
                f"round {round_index} {size}: ours {rates[size, 'ours'][-1]:.2f}, "
                f"official {rates[size, 'official'][-1]:.2f} updates/s",
                flush=True,
            )
    overrides = " ".join(args.overrides) or "none"
    print(f"\nqc against the official QC, one thread each; our overrides: {overrides}")
    print("| size | ours updates/s (rounds) | official updates/s (rounds) | ours / official (medians) |")
    print("|---|---|---|---|")
    for size in sizes:
        mine, theirs = rates[size, "ours"], rates[size, "official"]
        listed = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
        print(
            f"| {size} (N = {SIZES[size][0]}, 4 x {SIZES[size][1]}) | {median(mine):.2f} ({listed(mine)}) | "
            f"{median(theirs):.2f} ({listed(theirs)}) | {median(mine) / median(theirs):.2f}x |"
        )


if __name__ == "__main__":
    main()

"""Q along the recorded demonstrations for the `qc` recipe's checkpoints (benchmarks/RESULTS.md): for each
run, Q of its latest checkpoint against the Monte-Carlo return, over the episodes that reach the goal and
over those that never do (q_analysis.summarize_by_outcome).

    .venv/bin/python benchmarks/qc_q_on_demos.py runs/qc-cpu/scene-task1/cpql-seed0 ... [--episodes 200]

The store is the one the checkpoint records (`store.path`); the table is printed as markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.harness.q_analysis import q_on_demos, summarize_by_outcome


def latest_checkpoint(run_dir: Path) -> Path:
    final = run_dir / "checkpoints" / "final.pt"
    steps = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    if not final.exists() and not steps:
        raise SystemExit(f"{run_dir}: no checkpoint")
    return final if final.exists() else steps[-1]


def rows(run_dir: Path, episodes: int) -> list[str]:
    checkpoint = latest_checkpoint(run_dir)
    payload = read_checkpoint(checkpoint)
    result = q_on_demos(checkpoint, payload["store"]["path"], episodes=episodes)
    lines = []
    for group, summary in summarize_by_outcome(result).items():
        episodes_in = sum(1 for e in summary.episodes if e["rows_used"])
        lines.append(
            f"| {run_dir} | {payload['step']:,} | {group} | {episodes_in} | {summary.rows_used:,} | "
            f"{summary.correlation:.3f} | {summary.bias:+.3g} | {summary.rmse:.3g} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=200, help="the store's first N episodes")
    args = parser.parse_args()
    print("| run | updates | episodes that | episodes | rows used | Pearson r | bias (Q - G) | RMSE |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in args.runs:
        print("\n".join(rows(run_dir, args.episodes)))


if __name__ == "__main__":
    main()

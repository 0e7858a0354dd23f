"""Q along the recorded demonstrations for the `qc` recipe's checkpoints (benchmarks/RESULTS.md): for each
run, Q of its latest checkpoint against the Monte-Carlo return, over the episodes that reach the goal and
over those that never do (q_analysis.summarize_by_outcome); then, on the rows before a goal, Q and G by the
steps left to it (q_analysis.q_by_steps_to_terminal): how far from the goal the critics see it.

    .venv/bin/python benchmarks/qc_q_on_demos.py runs/qc-cpu/qc/scene-task1/qc-seed0 ... [--episodes 200]

A path may also be a checkpoint file (Q at an earlier step of a run).

The store is the one the checkpoint records (`store.path`); the table is printed as markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.harness.q_analysis import q_by_steps_to_terminal, q_on_demos, summarize_by_outcome


def latest_checkpoint(run_dir: Path) -> Path:
    if run_dir.is_file():
        return run_dir
    final = run_dir / "checkpoints" / "final.pt"
    steps = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    if not final.exists() and not steps:
        raise SystemExit(f"{run_dir}: no checkpoint")
    return final if final.exists() else steps[-1]


def tables(run_dir: Path, episodes: int) -> tuple[list[str], list[str]]:
    """The run's rows of the outcome table and of the steps-to-goal table."""
    checkpoint = latest_checkpoint(run_dir)
    payload = read_checkpoint(checkpoint)
    result = q_on_demos(checkpoint, payload["store"]["path"], episodes=episodes)
    outcome = []
    for group, summary in summarize_by_outcome(result).items():
        episodes_in = sum(1 for e in summary.episodes if e["rows_used"])
        outcome.append(
            f"| {run_dir} | {payload['step']:,} | {group} | {episodes_in} | {summary.rows_used:,} | "
            f"{summary.correlation:.3f} | {summary.bias:+.3g} | {summary.rmse:.3g} |"
        )
    distance = [
        f"| {run_dir} | {payload['step']:,} | {row['steps']} | {row['rows']:,} | {row['mean_q']:.2f} | "
        f"{row['mean_return']:.2f} |"
        for row in q_by_steps_to_terminal(result)
    ]
    return outcome, distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=200, help="the store's first N episodes")
    args = parser.parse_args()
    made = [tables(run_dir, args.episodes) for run_dir in args.runs]
    print("| run | updates | episodes that | episodes | rows used | Pearson r | bias (Q - G) | RMSE |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(line for outcome, _ in made for line in outcome))
    print("\n| run | updates | steps to the goal | rows | mean Q | mean G |")
    print("|---|---|---|---|---|---|")
    print("\n".join(line for _, distance in made for line in distance))


if __name__ == "__main__":
    main()

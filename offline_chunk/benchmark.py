"""`make benchmark`: a task's store (generated if missing), training runs with evaluations at fixed step
counts for each agent, seed and the behaviour-cloning-only ablation (eta = 0), and a markdown and CSV
table of success against steps beside the Q-chunking paper's QC / FQL / BFN figures.

Protocol (benchmarks/reference/README.md): scene and puzzle tasks use QC's sparse reward, cube tasks
OGBench's reward; discount 0.99, batch 256, H = 5, chunks executed open loop. The headline of a run is
the mean of its last three evaluations, as FQL and QC report.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "qc_ogbench_offline.csv"
PAPER_METHODS = ("QC", "FQL", "BFN")
# The behaviour-cloning-only ablation of each agent: its Q-driven actor term switched off.
BC_ONLY = {
    "dql": "agent.eta=0",
    "cpql": "agent.eta=0",
    "chunk_sac": "agent.sac_weight=0",
    "td3bc": "agent.alpha=0",
}
TASK_PATTERN = re.compile(r"^(?P<env>(scene|puzzle-\dx\d|cube-\w+)-play)-singletask-(?P<task>task\d)-v0$")

# Presets: `paper` is the published protocol; `quick` fits a CPU hour on the easiest tasks.
PRESETS = {
    "quick": {"episodes": 100, "eval_every": 1000, "eval_episodes": 10, "train_preset": "default"},
    "paper": {"episodes": 1000, "eval_every": 100_000, "eval_episodes": 50, "train_preset": "gpu"},
}


def parse_task(task: str) -> tuple[str, str]:
    """'scene-play-singletask-task2-v0' -> ('scene-play-task2', reward mode)."""
    match = TASK_PATTERN.match(task)
    if not match:
        raise ValueError(
            f"unknown task {task!r}: expected e.g. scene-play-singletask-task2-v0, "
            "puzzle-3x3-play-singletask-task1-v0, cube-double-play-singletask-task1-v0"
        )
    reward = "ogbench" if match["env"].startswith("cube") else "sparse"  # QC's protocol
    return f"{match['env']}-{match['task']}", reward


def load_reference(path: Path = REFERENCE_CSV) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(task, method) -> [(offline steps in millions, mean success)] sorted by steps."""
    table: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["task"], row["method"])
            table.setdefault(key, []).append(
                (float(row["offline_steps_millions"]), float(row["success_mean"]))
            )
    return {key: sorted(points) for key, points in table.items()}


def paper_value(reference: dict, task: str, method: str, step: int) -> tuple[float, float] | None:
    """The paper's success at the reference step nearest `step`, and that step (millions)."""
    points = reference.get((task, method))
    if not points:
        return None
    at, value = min(points, key=lambda point: abs(point[0] * 1e6 - step))
    return value, at


@dataclass(frozen=True)
class Evaluation:
    label: str  # agent name, or "<agent> BC-only" for the eta = 0 ablation
    seed: int
    step: int
    wall_s: float
    success: float


def summarize(evaluations: list[Evaluation]) -> list[dict]:
    """One row per (label, step): success mean over seeds, seeds counted, mean wall time."""
    rows = []
    for label in sorted({e.label for e in evaluations}):
        for step in sorted({e.step for e in evaluations if e.label == label}):
            at_step = [e for e in evaluations if e.label == label and e.step == step]
            rows.append(
                {
                    "label": label,
                    "step": step,
                    "seeds": len(at_step),
                    "success": float(np.mean([e.success for e in at_step])),
                    "wall_s": float(np.mean([e.wall_s for e in at_step])),
                }
            )
    return rows


def headline(rows: list[dict], label: str) -> float:
    """Mean of the last three evaluations (over seeds), as FQL and QC report."""
    last = [r["success"] for r in rows if r["label"] == label][-3:]
    return float(np.mean(last)) if last else float("nan")


def markdown_table(rows: list[dict], task: str, reference: dict) -> str:
    """Success against steps for every label, with the paper's methods at the nearest reference step."""
    labels = sorted({r["label"] for r in rows})
    steps = sorted({r["step"] for r in rows})
    header = ["step", *[f"{label} (wall s)" for label in labels], *[f"paper {m}" for m in PAPER_METHODS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(r["label"], r["step"]): r for r in rows}
    for step in steps:
        cells = [f"{step:,}"]
        for label in labels:
            row = by_key.get((label, step))
            cells.append(f"{row['success']:.3f} ({row['wall_s']:.0f}) n={row['seeds']}" if row else "")
        for method in PAPER_METHODS:
            found = paper_value(reference, task, method, step)
            cells.append(f"{found[0]:.3f} @{found[1]:.1f}M" if found else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Headline (mean of the last three evaluations): "
        + ", ".join(f"{label} {headline(rows, label):.3f}" for label in labels),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


def ensure_store(task: str, episodes: int, reward: str) -> Path:
    """The task's generated store, made with OGBench's oracles if it is not there yet."""
    from offline_chunk.data.sources import convert

    path = Path("data") / "bench" / f"{task}-{episodes}ep-{reward}.zarr"
    if not path.exists():
        convert(f"ogbench:{task}?episodes={episodes}&reward={reward}", out=path)
    return path


def read_evaluations(run_dir: Path, label: str, seed: int) -> list[Evaluation]:
    with open(run_dir / "evaluations.csv", newline="") as f:
        return [
            Evaluation(label, seed, int(row["step"]), float(row["train_seconds"]), float(row["success_rate"]))
            for row in csv.DictReader(f)
        ]


def run_benchmark(
    task: str,
    agents: list[str],
    steps: int,
    seeds: list[int],
    preset: str,
    out_dir: Path,
    overrides: list[str] = (),
) -> Path:
    """Train and evaluate every (agent, seed), and its eta = 0 ablation; write benchmark.md and .csv."""
    from offline_chunk.config import load_config
    from offline_chunk.train import train

    settings = PRESETS[preset]
    reference_task, reward = parse_task(task)
    store = ensure_store(task, settings["episodes"], reward)
    evaluations = []
    for agent in agents:
        for label, extra in ((agent, []), (f"{agent} BC-only", [BC_ONLY[agent]])):
            for seed in seeds:
                run_dir = out_dir / f"{label.replace(' ', '-')}-seed{seed}"
                cfg = load_config(
                    agent,
                    settings["train_preset"],
                    [
                        f"dataset={store}",
                        f"steps={steps}",
                        f"seed={seed}",
                        f"run_dir={run_dir}",
                        f"eval_every={settings['eval_every']}",
                        f"eval_episodes={settings['eval_episodes']}",
                        *extra,
                        *overrides,
                    ],
                )
                train(cfg)
                evaluations += read_evaluations(run_dir, label, seed)
    return write_report(summarize(evaluations), reference_task, task, out_dir)


def write_report(rows: list[dict], reference_task: str, task: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "step", "seeds", "success", "wall_s"])
        writer.writeheader()
        writer.writerows(rows)
    report = out_dir / "benchmark.md"
    report.write_text(f"# {task}\n\n{markdown_table(rows, reference_task, load_reference())}\n")
    print(report.read_text())
    return report

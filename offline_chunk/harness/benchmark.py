"""`make benchmark`: a task's store (generated if missing), training runs with evaluations at fixed step
counts for each agent, seed and the behaviour-cloning-only ablation (eta = 0), and a markdown and CSV
table of success against steps beside the Q-chunking paper's QC / FQL / BFN figures.

Protocol (reference/README.md): scene and puzzle tasks use QC's sparse reward, cube tasks
OGBench's reward; discount 0.99, batch 256, H = 5, chunks executed open loop. The headline of a run is
the mean of its last three evaluations, as FQL and QC report. The quick preset trains on OGBench's reward
for every task (as OGBench and FQL do): see PRESETS.
"""

from __future__ import annotations

import csv
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from offline_chunk.atomic import append_row
from offline_chunk.config import CONFIG_DIR
from offline_chunk.errors import BenchmarkError
from offline_chunk.stopping import stop_requests

if TYPE_CHECKING:
    from offline_chunk.config import RunConfig

REFERENCE_CSV = Path(__file__).resolve().parent / "reference" / "qc_ogbench_offline.csv"  # package data
PAPER_METHODS = ("QC", "FQL", "BFN")
# The behaviour-cloning-only ablation of each agent: its Q-driven actor term switched off, and acting without
# the critic (one sampled chunk instead of the best of N under Q), so no number in its column uses Q. Its
# unused critic keeps the plain Bellman target, whatever target the agent's preset sets. An agent that
# already trains with eta = 0 (QC) has that actor: its ablation is its own checkpoints acting by one
# candidate (`evaluate_one_candidate`), not a second training run.
NO_Q = ["agent.eta=0", "agent.act.candidates=1", "agent.target_lower_bound=none"]
BC_ONLY = {
    "dql": NO_Q,
    "cpql": NO_Q,
    "qc": NO_Q,
    "chunk_sac": ["agent.sac_weight=0"],
    "td3bc": ["agent.alpha=0"],
}
TASK_PATTERN = re.compile(r"^(?P<env>(scene|puzzle-\dx\d|cube-\w+)-play)-singletask-(?P<task>task\d)-v0$")

# Presets, configs/benchmark/<name>.yaml: the dataset size, the train preset (configs/train/<name>.yaml:
# networks, steps, evaluation points) and the reward; each file says what it is for.
PRESETS = {
    path.stem: yaml.safe_load(path.read_text()) for path in sorted((CONFIG_DIR / "benchmark").glob("*.yaml"))
}
# `paper`: QC's reward for the task's family (parse_task); `sparse` and `ogbench` for every task.
REWARDS = ("paper", "sparse", "ogbench")
REWARD_NAMES = {
    "sparse": "QC's sparse reward (-1 until every subtask is solved, then 0)",
    "ogbench": "OGBench's reward (minus the subtasks unsolved)",
}


def parse_task(task: str) -> tuple[str, str]:
    """'scene-play-singletask-task2-v0' -> ('scene-play-task2', the paper's reward mode)."""
    match = TASK_PATTERN.match(task)
    if not match:
        raise ValueError(
            f"unknown task {task!r}: expected e.g. scene-play-singletask-task2-v0, "
            "puzzle-3x3-play-singletask-task1-v0, cube-double-play-singletask-task1-v0"
        )
    reward = "ogbench" if match["env"].startswith("cube") else "sparse"  # QC's protocol
    return f"{match['env']}-{match['task']}", reward


def training_reward(task: str, preset: str, reward: str | None = None) -> str:
    """The store's reward mode: `reward` if given, else the preset's; `paper` is QC's for the task."""
    choice = reward or PRESETS[preset]["reward"]
    if choice not in REWARDS:
        raise ValueError(f"unknown reward {choice!r}; choose one of {REWARDS}")
    return parse_task(task)[1] if choice == "paper" else choice


def reward_line(task: str, reward: str) -> str:
    """The report's statement of the training reward, and whether the paper's figures used the same."""
    paper = parse_task(task)[1]
    same = "as the paper's figures" if reward == paper else f"the paper's figures used {REWARD_NAMES[paper]}"
    return f"Trained on {REWARD_NAMES[reward]}; {same}."


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
    """The paper's success at the reference step nearest `step`, and that step (millions). For a trained
    step the untrained point 0 is passed over (every method scores 0 there): a short run is shown beside
    the paper's first point after it, 0.1M."""
    points = reference.get((task, method))
    if not points:
        return None
    trained = [point for point in points if point[0] > 0] if step > 0 else points
    at, value = min(trained or points, key=lambda point: abs(point[0] * 1e6 - step))
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
    """Success against steps for every label, with the paper's methods at the nearest trained reference
    step (paper_value)."""
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


def read_evaluations(run_dir: Path, label: str, seed: int, name: str = "evaluations.csv") -> list[Evaluation]:
    with open(run_dir / name, newline="") as f:
        return [
            Evaluation(label, seed, int(row["step"]), float(row["train_seconds"]), float(row["success_rate"]))
            for row in csv.DictReader(f)
        ]


@dataclass(frozen=True)
class PlannedRun:
    label: str
    seed: int
    run_dir: Path
    cfg: RunConfig
    bc_only_from_checkpoints: bool = False  # its BC-only ablation: its own checkpoints, one candidate

    def finished_config(self) -> dict | None:
        """The configuration of a run that finished here earlier (its final checkpoint and evaluations are
        kept), or None."""
        finished = (self.run_dir / "checkpoints" / "final.pt").exists()
        if not (finished and (self.run_dir / "evaluations.csv").exists()):
            return None
        return yaml.safe_load((self.run_dir / "config.yaml").read_text())

    def is_complete(self) -> bool:
        """Finished earlier with this very configuration."""
        return self.finished_config() == self.cfg.model_dump()


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested configurations."""
    changed = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed


def refuse_to_replace_finished_runs(runs: list[PlannedRun]) -> None:
    """A finished run is hours of training: one whose configuration differs from the requested one is
    not deleted to make room (another --out keeps both)."""
    clashes = [
        f"{run.run_dir} (differs in {', '.join(changed_keys(finished, run.cfg.model_dump()))})"
        for run in runs
        if (finished := run.finished_config()) is not None and finished != run.cfg.model_dump()
    ]
    if clashes:
        raise BenchmarkError(
            f"{len(clashes)} finished runs have another configuration than the one asked for: "
            f'{"; ".join(clashes)}. Pass another --out (make benchmark ARGS="--out DIR"), or delete them '
            "to train them again"
        )


def plan_runs(
    store: Path,
    agents: list[str],
    steps: int | None,
    seeds: list[int],
    preset: str,
    out_dir: Path,
    overrides,
    ablation: bool = True,
) -> list[PlannedRun]:
    """Every (agent or its BC-only ablation, seed) with its resolved configuration."""
    from offline_chunk.agents import AGENTS
    from offline_chunk.config import load_config

    def planned(agent: str, label: str, seed: int, extra: list[str]) -> PlannedRun:
        run_dir = out_dir / f"{label.replace(' ', '-')}-seed{seed}"
        named = [f"dataset={store}", f"seed={seed}", f"run_dir={run_dir}"]
        if steps is not None:
            named.append(f"steps={steps}")
        cfg = load_config(agent, PRESETS[preset]["train_preset"], [*named, *extra, *overrides])
        from_checkpoints = ablation and AGENTS[agent].acts_by_candidates and cfg.agent.eta == 0
        return PlannedRun(label, seed, run_dir, cfg, bool(from_checkpoints and label == agent))

    runs = []
    for agent in agents:
        trained = [planned(agent, agent, seed, []) for seed in seeds]
        runs += trained
        if ablation and not trained[0].bc_only_from_checkpoints:
            runs += [planned(agent, f"{agent} BC-only", seed, BC_ONLY[agent]) for seed in seeds]
    return runs


ONE_CANDIDATE_CSV = "evaluations_one_candidate.csv"


def evaluate_one_candidate(run: PlannedRun) -> list[Evaluation]:
    """The BC-only ablation of a run trained with eta = 0: each checkpoint it evaluated during training, now
    acting by one sampled chunk (no choice by Q), on the same evaluation episodes (same seed). Evaluations
    done before are kept in <run>/evaluations_one_candidate.csv and not repeated."""
    from offline_chunk.harness.evaluation import evaluate  # simulators are imported only when evaluating

    cfg, path = run.cfg, run.run_dir / ONE_CANDIDATE_CSV
    done = (
        {e.step for e in read_evaluations(run.run_dir, "", run.seed, ONE_CANDIDATE_CSV)}
        if path.exists()
        else set()
    )
    for trained in read_evaluations(run.run_dir, "", run.seed):
        if trained.step in done:
            continue
        report = evaluate(
            run.run_dir / "checkpoints" / f"step_{trained.step:08d}.pt",
            episodes=cfg.eval_episodes,
            workers=cfg.eval_workers,
            seed=cfg.seed,
            candidates=1,
            max_steps=cfg.eval_max_steps,
            out=run.run_dir / "one_candidate",
            progress=False,
        )
        append_row(
            path,
            "step,train_seconds,success_rate",
            f"{trained.step},{trained.wall_s},{report['success_rate']}",
        )
    return read_evaluations(run.run_dir, f"{run.label} BC-only", run.seed, ONE_CANDIDATE_CSV)


def resumable_checkpoint(run: PlannedRun) -> Path | None:
    """The last step checkpoint of an unfinished earlier attempt at this very run (same configuration)."""
    config = run.run_dir / "config.yaml"
    if not config.exists() or yaml.safe_load(config.read_text()) != run.cfg.model_dump():
        return None
    checkpoints = sorted((run.run_dir / "checkpoints").glob("step_*.pt"))
    return checkpoints[-1] if checkpoints else None


def keep_evaluations_until(run_dir: Path, step: int) -> None:
    """Drop the evaluations after `step` (the resumed run makes them again)."""
    path = run_dir / "evaluations.csv"
    if path.exists():
        header, *rows = path.read_text().splitlines()
        path.write_text(
            "\n".join([header, *[row for row in rows if int(row.split(",", 1)[0]) <= step]]) + "\n"
        )


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` that has the kernel SIGKILL the child when the process that starts it dies (Linux's
    PR_SET_PDEATHSIG): a Ray worker killed mid-run takes its run with it, so the retried task does not race
    a live orphan in the same run directory. Checkpoints are written atomically: the run loses at most the
    updates since its last one. libc is resolved here, in the parent, so the child only makes the call."""
    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the call: nothing would signal this child
            os._exit(1)

    return set_death_signal


def launch(run: PlannedRun, threads: int, quiet: bool, bound_to_parent: bool = False) -> subprocess.Popen:
    """`python -m offline_chunk train` on the run's resolved config, in its own process with `threads`
    intra-op threads; quiet runs write their output to <run>/train.log instead of the terminal. An
    unfinished earlier attempt with the same configuration resumes exactly from its last checkpoint (runs
    resume bit-identically); one with another configuration starts over. `bound_to_parent` (Ray tasks,
    Linux): the run dies with the process that launched it (die_with_parent)."""
    latest = resumable_checkpoint(run)
    if latest is not None:
        step = int(latest.stem.removeprefix("step_"))
        print(f"resuming     {run.label} seed {run.seed} from step {step:,} ({latest})")
        keep_evaluations_until(run.run_dir, step)
        command = [sys.executable, "-m", "offline_chunk", "train", "--resume", str(latest)]
    else:
        shutil.rmtree(run.run_dir, ignore_errors=True)
        run.run_dir.mkdir(parents=True)
        config = run.run_dir / "config.yaml"  # what `train` saves of a run, written here first as its input
        config.write_text(yaml.safe_dump(run.cfg.model_dump(), sort_keys=False))
        command = [sys.executable, "-m", "offline_chunk", "train", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # Each run in a session of its own: Ctrl-C reaches the benchmark alone, which passes it on once (run_all)
    options = {"start_new_session": True, "preexec_fn": die_with_parent() if bound_to_parent else None}
    if not quiet:
        return subprocess.Popen(command, env=env, **options)
    with open(run.run_dir / "train.log", "a") as log:  # a progress line every 30 s, not every update
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**env, "TQDM_MININTERVAL": "30"}, **options
        )


def run_threads(jobs: int) -> int:
    """Intra-op threads of each of `jobs` runs side by side: the user's OMP_NUM_THREADS when it is set (a
    user who runs other work beside the benchmark says so with it), else the cores this process may run on
    (its CPU affinity, which a batch scheduler sets) shared between the runs."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given:
        if not given.isdigit() or int(given) < 1:
            raise BenchmarkError(f"OMP_NUM_THREADS={given!r}: expected a positive whole number of threads")
        return int(given)
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def runs_to_train(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs not complete yet, in order; the complete ones are named as reused. Refuses to replace a
    finished run of another configuration (refuse_to_replace_finished_runs)."""
    refuse_to_replace_finished_runs(runs)
    pending = [run for run in runs if not run.is_complete()]
    for run in runs:
        if run not in pending:
            print(f"reusing      {run.run_dir} (complete, same config)")
    return pending


def report_end(run: PlannedRun, failure: str | None) -> None:
    """The line for a run that ended: done, or FAILED with why (an exit status, a lost worker)."""
    status = "done" if failure is None else f"FAILED ({failure})"
    print(f"{status:<12} {run.label} seed {run.seed} ({run.run_dir})")


def run_all(runs: list[PlannedRun], jobs: int) -> list[PlannedRun]:
    """Train the runs that are not complete yet, `jobs` at a time, the cores shared between them; returns
    the runs that failed."""
    pending = runs_to_train(runs)
    threads = run_threads(jobs)
    active: dict[subprocess.Popen, PlannedRun] = {}
    failed = []
    with stop_requests("the runs under way checkpoint after their current update; none starts") as stop:
        try:
            while pending or active:
                while pending and len(active) < jobs and not stop.requested:
                    run = pending.pop(0)
                    print(f"training     {run.label} seed {run.seed} -> {run.run_dir}")
                    active[launch(run, threads, quiet=jobs > 1)] = run
                while all(p.poll() is None for p in active) and not stop.requested:
                    time.sleep(1.0)
                for process in [p for p in active if p.poll() is not None]:
                    run = active.pop(process)
                    report_end(run, None if process.returncode == 0 else f"exit {process.returncode}")
                    if process.returncode != 0:
                        failed.append(run)
                if stop.requested:
                    wait_for_stopping(active, stop.signum)
                    raise stop.stopped("stopped; the same command resumes every run from its checkpoint")
        except KeyboardInterrupt:  # the second signal: the runs, which had the first, stop at once too
            for process in active:
                process.send_signal(signal.SIGINT)
            raise
    return failed


def wait_for_stopping(active: dict[subprocess.Popen, PlannedRun], signum: int) -> None:
    """Pass the stop on to every run under way and wait until each has written its checkpoint and exited."""
    for process in active:
        process.send_signal(signum)
    for process, run in active.items():
        process.wait()
        print(f"stopped      {run.label} seed {run.seed} ({run.run_dir}, exit {process.returncode})")


def run_benchmark(
    task: str,
    agents: list[str],
    steps: int | None,
    seeds: list[int],
    preset: str,
    out_dir: Path,
    overrides: list[str] = (),
    jobs: int = 1,
    ablation: bool = True,
    reward: str | None = None,
    train_runs: Callable[[list[PlannedRun]], list[PlannedRun]] | None = None,
) -> Path:
    """Train and evaluate every (agent, seed) and its BC-only ablation, reusing runs that completed earlier
    with the same configuration; write benchmark.md and .csv from the runs that finished (a failed run is
    named in the error raised after the report, its log kept). `train_runs` trains the planned runs and
    returns those that failed: local processes, `jobs` at a time (run_all, the default), or Ray tasks
    (sweep_ray.run_all_on_ray, which the command line passes for `--launcher ray`). The store is generated
    once, here."""
    reference_task = parse_task(task)[0]
    reward = training_reward(task, preset, reward)
    store = ensure_store(task, PRESETS[preset]["episodes"], reward)
    runs = plan_runs(store, agents, steps, seeds, preset, out_dir, overrides, ablation)
    failed = (train_runs or partial(run_all, jobs=jobs))(runs)
    finished = [run for run in runs if run not in failed]
    evaluations = [e for run in finished for e in read_evaluations(run.run_dir, run.label, run.seed)]
    evaluations += [
        e for run in finished if run.bc_only_from_checkpoints for e in evaluate_one_candidate(run)
    ]
    settings = f"{reward_line(task, reward)}\n\n{run_settings(finished)}"
    report = write_report(summarize(evaluations), reference_task, task, out_dir, settings)
    if failed:
        logs = [run.run_dir / "train.log" for run in failed]  # a quiet run's output
        where = [str(log if log.exists() else log.parent) for log in logs]
        raise BenchmarkError(
            f"{len(failed)} of {len(runs)} runs failed (see {', '.join(where)}); the report has the others"
        )
    return report


def acting(cfg: RunConfig) -> str:
    """How a run's policy picks the chunk it executes, for the report."""
    act = cfg.agent.act
    if act.candidates > 1:
        return f"best of {act.candidates} chunks under Q ({act.select})"
    if act.select in ("argmax", "softmax"):  # a selection rule over one candidate selects nothing
        return "one sampled chunk (no choice by Q)"
    return f"the actor's chunk ({act.select}; no choice by Q)"


def learning(cfg: RunConfig) -> str:
    """The actor's Q weight (diffusion agents) and the critic target, for the report."""
    agent = cfg.agent
    parts = [f"eta = {agent.eta:g}"] if hasattr(agent, "eta") else []
    bound = agent.target_lower_bound == "monte_carlo"
    parts.append("targets raised to the recorded return" if bound else "plain Bellman targets")
    return ", ".join(parts)


def run_settings(runs: list[PlannedRun]) -> str:
    """One line per label: preset, store, updates, seeds and how it acts, so a table says what it measured."""
    lines = []
    for label in dict.fromkeys(run.label for run in runs):
        mine = [run for run in runs if run.label == label]
        cfg = mine[0].cfg
        seeds = ",".join(str(run.seed) for run in mine)
        lines.append(
            f"- {label}: preset {cfg.preset}, {cfg.steps:,} updates, batch {cfg.batch_size}, "
            f"H = {cfg.horizon}, seeds {seeds}, store {cfg.dataset}, {cfg.eval_episodes} evaluation "
            f"episodes per point; {learning(cfg)}; acts by {acting(cfg)}"
        )
        if mine[0].bc_only_from_checkpoints:
            lines.append(
                f"- {label} BC-only: the {label} checkpoints above (their actor never saw Q: eta = 0), "
                "acting by one sampled chunk (no choice by Q), on the same evaluation episodes"
            )
    return "\n".join(lines)


def write_report(rows: list[dict], reference_task: str, task: str, out_dir: Path, settings: str = "") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "step", "seeds", "success", "wall_s"])
        writer.writeheader()
        writer.writerows(rows)
    report = out_dir / "benchmark.md"
    table = markdown_table(rows, reference_task, load_reference())
    report.write_text(f"# {task}\n\n{table}\n\n{settings}\n")
    print(report.read_text())
    return report

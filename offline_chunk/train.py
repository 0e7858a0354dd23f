"""The training loop: device-resident batches, agent updates, logging at intervals, atomic checkpoints,
exact resume, a divergence guard, and a checkpoint on Ctrl-C. Periodic evaluation in a simulator is the
harness's (offline_chunk.harness.evaluation.periodic_evaluator): the loop takes it as `evaluator`.

Inside the loop nothing leaves the device except at `log_every` intervals, where the metrics summed
on the device since the last log are read in one transfer.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from offline_chunk.agents import ChunkAgent, Dims, make_agent
from offline_chunk.agents.targets import batch_fields
from offline_chunk.checkpoint import (
    agent_from_payload,
    pick_device,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
    store_provenance,
)
from offline_chunk.config import RunConfig
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.normalize import Normalizer
from offline_chunk.data.store import frame_bytes
from offline_chunk.errors import ConfigError, DataError, DivergenceError
from offline_chunk.stopping import stop_requests


@dataclass
class Run:
    cfg: RunConfig
    run_dir: Path
    dataset: OfflineRLDataset
    agent: ChunkAgent
    sampler: object
    step: int
    q_bound: float
    last_metrics: dict[str, float] = field(default_factory=dict)  # the means of the last log interval
    train_seconds: float = 0.0  # wall time spent updating (evaluations excluded), over every resumed part
    evaluator: Callable[[Path], dict] | None = None  # checkpoint -> evaluation report (success rate, ...)

    def checkpoint(self, name: str | None = None) -> Path:
        path = self.run_dir / "checkpoints" / (name or f"step_{self.step:08d}.pt")
        store = store_provenance(self.cfg.dataset, self.dataset.data.attrs)
        stream = {"stream": self.sampler.state()} if hasattr(self.sampler, "state") else None
        return save_checkpoint(
            path, self.agent, self.cfg, self.step, self.sampler.generator, store, self.train_seconds, stream
        )


def q_bound(reward: np.ndarray, gamma: float, factor: float) -> float:
    """|Q| can never exceed max|r| / (1 − γ) (a geometric series of the largest reward); the guard stops at
    `factor` times that, with max|r| floored at 1 so that an all-zero reward does not trip it on noise."""
    largest = max(float(np.abs(reward).max()), 1.0)
    return float("inf") if gamma >= 1.0 else factor * largest / (1.0 - gamma)


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.agent.name}-{Path(cfg.dataset).stem}-{stamp}"


# What the networks' shapes and the chunk contract depend on: a resumed run cannot change them.
FROZEN_ON_RESUME = (
    "horizon",
    "obs_horizon",
    "gamma",
    "drop_partial",
    "agent.name",
    "agent.policy",
    "agent.critic",
)


def _at(cfg: RunConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump() if hasattr(value, "model_dump") else value


def check_resume(resume: dict, cfg: RunConfig) -> None:
    """Refuse to resume with a change the checkpoint's networks or chunk transitions cannot take, or into a
    run directory whose later checkpoints the resumed run would overwrite."""
    old = resume["config"]
    changed = [
        f"{key} ({_at(old, key)!r} -> {_at(cfg, key)!r})"
        for key in FROZEN_ON_RESUME
        if _at(old, key) != _at(cfg, key)
    ]
    if changed:
        raise ConfigError(
            f"resuming cannot change {', '.join(changed)}: the networks' shapes or the chunk transitions "
            "depend on it; train a new run instead"
        )
    later = later_checkpoints(Path(cfg.run_dir) / "checkpoints", resume["step"])
    if later:
        raise ConfigError(
            f"{cfg.run_dir} holds checkpoints after step {resume['step']:,} ({', '.join(later)}); "
            "resuming there would overwrite them. Fork into a new run directory: "
            "make train RESUME=... RUN=<new dir> (train --resume ... --run <new dir>)"
        )


def later_checkpoints(directory: Path, step: int) -> list[str]:
    """The checkpoints in `directory` from after update `step` that a run resumed there would write again:
    step_<N>.pt (a stop on request writes one too) and final.pt (by the step it holds); diverged ones keep
    their names."""
    later = []
    for path in sorted([*directory.glob("step_*.pt"), *directory.glob("final.pt")]):
        digits = path.stem.removeprefix("step_")
        saved_at = int(digits) if digits.isdigit() else read_checkpoint(path)["step"]
        if saved_at > step:
            later.append(f"{path.name} (step {saved_at:,})")
    return later


def image_shapes(dataset: OfflineRLDataset) -> dict[str, list[int]]:
    """Each camera's frame shape (H, W, C), in the store's order."""
    return {camera: list(frames.shape[1:]) for camera, frames in dataset.data.images.items()}


def check_shapes(store, dataset: OfflineRLDataset, dims: Dims) -> None:
    """A resumed or fine-tuned checkpoint's networks take the store's observation, action and frame shapes."""
    ours = (dataset.obs_dim, dataset.action_dim, image_shapes(dataset))
    theirs = (dims.obs_dim, dims.action_dim, {k: list(v) for k, v in dims.image_shapes.items()})
    if ours != theirs:
        raise ConfigError(
            f"{store}: observations {ours[0]} and actions {ours[1]} wide, cameras {ours[2]}; the "
            f"checkpoint's networks take {theirs[0]} and {theirs[1]}, cameras {theirs[2]}"
        )


def frame_budget_bytes(cfg: RunConfig, device: torch.device) -> float:
    """`frame_budget_mb`, or half the memory available now (of the host, and of the CUDA device)."""
    if cfg.frame_budget_mb is not None:
        return cfg.frame_budget_mb * 2**20
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if device.type == "cuda":
        available = min(available, torch.cuda.mem_get_info(device)[0])
    return available / 2


def build_sampler(cfg: RunConfig, device: torch.device, stream_state: dict | None = None):
    """The dataset and its batch sampler: frames in memory, or streamed when they exceed the budget (from
    `stream_state`, a resumed run's streaming sampler's)."""
    budget, frames = frame_budget_bytes(cfg, device), frame_bytes(cfg.dataset)
    stream = frames > budget
    dataset = OfflineRLDataset(
        cfg.dataset, cfg.horizon, cfg.obs_horizon, cfg.gamma, cfg.drop_partial, lazy_frames=stream
    )
    if len(dataset) == 0:  # drop_partial: every episode is shorter than H and ends in no terminal
        raise DataError(
            cfg.dataset,
            f"no chunk transitions at horizon={cfg.horizon}: every episode is shorter than the chunk and "
            f"none ends in a terminal; lower horizon, or set drop_partial=false to train on partial chunks",
        )
    fields = batch_fields(cfg.agent)
    if not stream:
        cameras = bool(dataset.data.images)
        return dataset, dataset.sampler(
            cfg.batch_size, device=device, seed=cfg.seed, images=cameras, **fields
        )
    sampler = dataset.streaming_sampler(
        budget, cfg.batch_size, device, cfg.seed, **fields, state=stream_state
    )
    print(
        f"streaming    {frames / 2**20:,.4g} MB of frames over a budget of {budget / 2**20:,.4g} MB: "
        f"{sampler.slots} blocks of {sampler.block_rows} rows resident, one swapped every "
        f"{sampler.swap_every} batches"
    )
    return dataset, sampler


def build_run(cfg: RunConfig, resume: dict | None = None) -> Run:
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    dataset, sampler = build_sampler(cfg, device, None if resume is None else resume.get("stream"))
    if resume is None:
        dims = Dims(dataset.obs_dim, cfg.obs_horizon, dataset.action_dim, cfg.horizon, image_shapes(dataset))
        normalizer = Normalizer.from_data(dataset.data)
        agent = make_agent(cfg.agent, dims, normalizer, cfg.steps).to(device)
        step = 0
    else:
        dims = Dims(**resume["dims"])
        check_shapes(cfg.dataset, dataset, dims)
        agent = agent_from_payload({**resume, "config": cfg}, device)
        restore_rng_state(resume["rng"], sampler.generator)
        step = resume["step"]
    train_seconds = resume.get("train_seconds", 0.0) if resume is not None else 0.0
    agent.configure_execution(cfg.compile, cfg.precision)
    return Run(
        cfg,
        Path(cfg.run_dir),
        dataset,
        agent,
        sampler,
        step,
        q_bound(dataset.data.reward, cfg.gamma, cfg.divergence_factor),
        train_seconds=train_seconds,
    )


class MetricLog:
    """Sums metrics on the device; `read` brings their means to the host in one transfer, each metric's
    over the updates that reported it (TD3+BC's actor reports on its delayed updates only)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # host counters: no device read

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] = self.counts.get(key, 0) + 1
        abs_max = metrics["critic/q_abs_max"]
        self.sums["guard/q_abs_max"] = torch.maximum(self.sums.get("guard/q_abs_max", abs_max), abs_max)

    def read(self) -> dict[str, float]:
        keys = list(self.sums)
        values = torch.stack([self.sums[k].float() for k in keys]).tolist()
        means = {k: v / self.counts[k] for k, v in zip(keys, values, strict=True) if k in self.counts}
        means["guard/q_abs_max"] = values[keys.index("guard/q_abs_max")]
        self.sums, self.counts = {}, {}
        return means


def check_divergence(run: Run, means: dict[str, float]) -> None:
    finite = all(np.isfinite(v) for v in means.values())
    if finite and means["guard/q_abs_max"] <= run.q_bound:
        return
    path = run.checkpoint(f"diverged_step_{run.step:08d}.pt")
    reason = (
        "a loss or Q value is not finite"
        if not finite
        else f"|Q| reached {means['guard/q_abs_max']:.4g}, beyond the bound {run.q_bound:.4g} "
        f"(divergence_factor × max|r| / (1 − γ))"
    )
    raise DivergenceError(
        f"training diverged by step {run.step}: {reason}. Checkpoint saved at {path}. "
        "Lower the learning rate or eta, or raise grad clipping."
    )


def log_interval(run: Run, writer: SummaryWriter, log: MetricLog, bar: tqdm, updates_per_s: float) -> None:
    means = log.read()
    check_divergence(run, means)
    run.last_metrics = means
    scalars = {**means, **run.agent.learning_rates(), "perf/updates_per_s": updates_per_s}
    for key, value in scalars.items():
        writer.add_scalar(key, value, run.step)
    bar.set_postfix(
        critic=f"{means['critic/loss']:.3g}", Q=f"{means['critic/q_mean']:.3g}", ups=f"{updates_per_s:.1f}"
    )


def evaluated_steps(run_dir: Path) -> set[int]:
    path = run_dir / "evaluations.csv"
    if not path.exists():
        return set()
    return {int(line.split(",", 1)[0]) for line in path.read_text().splitlines()[1:] if line}


def append_row(path: Path, header: str, row: str) -> None:
    """One line appended to a CSV file, its header line first when the file is new."""
    new_file = not path.exists()
    with open(path, "a") as f:
        f.write(f"{header}\n{row}\n" if new_file else f"{row}\n")


def evaluate_in_training(run: Run, writer: SummaryWriter, checkpoint: Path) -> None:
    """Evaluate this step's checkpoint (`run.evaluator`), log it to TensorBoard and append it to
    <run>/evaluations.csv (what `make benchmark` reads) with the training time so far."""
    report = run.evaluator(checkpoint)
    low, high = report["success_ci95"]
    for key, value in (
        ("success_rate", report["success_rate"]),
        ("success_ci95_low", low),
        ("success_ci95_high", high),
        ("return_mean", report["return_mean"]),
        ("final_reward_mean", report["final_reward_mean"]),
    ):
        writer.add_scalar(f"eval/{key}", value, run.step)
    append_row(
        run.run_dir / "evaluations.csv",
        "step,train_seconds,success_rate,success_ci95_low,success_ci95_high,return_mean",
        f"{run.step},{run.train_seconds:.1f},{report['success_rate']},{low},{high},{report['return_mean']}",
    )


def train_loop(run: Run) -> Path:
    cfg = run.cfg
    writer = SummaryWriter(run.run_dir / "tb")
    log = MetricLog()
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {cfg.agent.name}", unit="upd")
    evaluating = lambda: cfg.eval_every and run.step % cfg.eval_every == 0  # noqa: E731
    if run.step and evaluating() and run.step not in evaluated_steps(run.run_dir):
        evaluate_in_training(run, writer, run.checkpoint())  # resumed where an evaluation did not finish
    clock = rate_clock = time.perf_counter()  # start of the current stretch of updates; of the log interval
    rate_step, checkpointing = run.step, False  # checkpointing: the last update's step was saved
    with stop_requests("stopping after this update, with a checkpoint to resume from") as stop:
        try:
            while run.step < cfg.steps and not stop.requested:
                log.add(run.agent.update(run.sampler.sample()))
                run.step += 1
                bar.update(1)
                if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                    now = time.perf_counter()
                    log_interval(run, writer, log, bar, (run.step - rate_step) / (now - rate_clock))
                    rate_clock, rate_step = now, run.step
                checkpointing = run.step % cfg.checkpoint_every == 0
                if checkpointing or evaluating():
                    now = time.perf_counter()
                    run.train_seconds, clock = run.train_seconds + now - clock, now
                    saved = run.checkpoint() if checkpointing else None
                    if evaluating():
                        evaluate_in_training(run, writer, saved or run.checkpoint())
                        clock = rate_clock = time.perf_counter()  # the evaluation's time is not training time
                        rate_step = run.step
        except KeyboardInterrupt:
            message = f"stopped at once after step {run.step:,}: nothing saved since the last checkpoint"
            print(f"\n{message}", file=sys.stderr)
            raise
        finally:
            writer.close()
            bar.close()
    run.train_seconds += time.perf_counter() - clock
    if run.step < cfg.steps:  # stopped on request, between two updates
        path = saved if checkpointing else run.checkpoint()
        raise stop.stopped(f"stopped at step {run.step:,}; resume with --resume {path}", path)
    return run.checkpoint("final.pt")


def summary(run: Run, first_step: int, final: Path, seconds: float) -> str:
    """What a user reads when training ends: what was done, how it ended, where it is, what to run next."""
    updates = run.step - first_step
    means = run.last_metrics
    lines = [
        f"trained      {run.cfg.agent.name}: {updates:,} updates (step {first_step:,} to {run.step:,}) "
        f"in {seconds / 60:.1f} min, {updates / max(seconds, 1e-9):.1f} updates/s",
    ]
    if means:
        lines.append(
            f"final        critic loss {means['critic/loss']:.4g}   Q mean {means['critic/q_mean']:.4g}   "
            f"target {means['critic/target_q']:.4g}   (means over the last {run.cfg.log_every} updates)"
        )
    lines += [
        f"checkpoint   {final}",
        f"tensorboard  tensorboard --logdir {run.run_dir / 'tb'}",
        f"next         make eval CKPT={final}   (rollouts in the store's simulator, success rate)",
        "             notebooks/evaluate_q_on_demos.ipynb with CHECKPOINT set to it (Q on the demos)",
    ]
    return "\n".join(lines)


def train(
    cfg: RunConfig, resume: dict | None = None, evaluator: Callable[[Path], dict] | None = None
) -> Path:
    """Train a run, or continue one from a checkpoint payload (its config, with any new overrides, is `cfg`).
    With `eval_every`, `evaluator` evaluates a checkpoint (`python -m offline_chunk train` passes the
    simulator rollouts of offline_chunk.harness.evaluation). Returns the final checkpoint's path."""
    cfg = cfg.model_copy(update={"run_dir": str(cfg.run_dir or default_run_dir(cfg))})
    if cfg.eval_every and evaluator is None:
        raise ConfigError(
            f"eval_every={cfg.eval_every} needs an evaluator: train(cfg, evaluator="
            "offline_chunk.harness.evaluation.periodic_evaluator(cfg)), or eval_every=0"
        )
    if resume is not None:
        check_resume(resume, cfg)
    start = time.perf_counter()
    run = build_run(cfg, resume)
    run.evaluator = evaluator
    first_step = run.step
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    final = train_loop(run)
    print(summary(run, first_step, final, time.perf_counter() - start))
    return final

"""The training loop: device-resident batches, agent updates, logging at intervals, atomic checkpoints,
exact resume, a divergence guard, and a checkpoint on Ctrl-C.

Inside the loop nothing leaves the device except at `log_every` intervals, where the metrics summed
on the device since the last log are read in one transfer.
"""

from __future__ import annotations

import time
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
    restore_rng_state,
    save_checkpoint,
)
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.normalize import Normalizer
from offline_chunk.errors import DivergenceError


@dataclass
class Run:
    cfg: dict
    run_dir: Path
    dataset: OfflineRLDataset
    agent: ChunkAgent
    sampler: object
    step: int
    q_bound: float
    last_metrics: dict[str, float] = field(default_factory=dict)  # the means of the last log interval

    def checkpoint(self, name: str | None = None) -> Path:
        path = self.run_dir / "checkpoints" / (name or f"step_{self.step:08d}.pt")
        return save_checkpoint(path, self.agent, self.cfg, self.step, self.sampler.generator)


def q_bound(reward: np.ndarray, gamma: float, factor: float) -> float:
    """|Q| can never exceed max|r| / (1 − γ) (a geometric series of the largest reward); the guard stops at
    `factor` times that, with max|r| floored at 1 so that an all-zero reward does not trip it on noise."""
    largest = max(float(np.abs(reward).max()), 1.0)
    return float("inf") if gamma >= 1.0 else factor * largest / (1.0 - gamma)


def default_run_dir(cfg: dict) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['agent']['name']}-{Path(cfg['dataset']).stem}-{stamp}"


def build_run(cfg: dict, resume: dict | None = None) -> Run:
    device = pick_device(cfg["device"])
    torch.manual_seed(cfg["seed"])
    dataset = OfflineRLDataset(
        cfg["dataset"], cfg["horizon"], cfg["obs_horizon"], cfg["gamma"], cfg["drop_partial"]
    )
    sampler = dataset.sampler(
        cfg["batch_size"], device=device, seed=cfg["seed"], **batch_fields(cfg["agent"])
    )
    if resume is None:
        dims = Dims(dataset.obs_dim, cfg["obs_horizon"], dataset.action_dim, cfg["horizon"])
        normalizer = Normalizer.from_data(dataset.data)
        agent = make_agent(cfg["agent"]["name"], dims, cfg["agent"], normalizer, cfg["steps"]).to(device)
        step = 0
    else:
        agent = agent_from_payload({**resume, "config": cfg}, device)
        restore_rng_state(resume["rng"], sampler.generator)
        step = resume["step"]
    agent.configure_execution(cfg["compile"], cfg["precision"])
    run_dir = Path(cfg["run_dir"])
    return Run(
        cfg,
        run_dir,
        dataset,
        agent,
        sampler,
        step,
        q_bound(dataset.data.reward, cfg["gamma"], cfg["divergence_factor"]),
    )


class MetricLog:
    """Sums metrics on the device; `read` brings their means to the host in one transfer."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        abs_max = metrics["critic/q_abs_max"]
        self.sums["guard/q_abs_max"] = torch.maximum(self.sums.get("guard/q_abs_max", abs_max), abs_max)
        self.count += 1

    def read(self) -> dict[str, float]:
        keys = list(self.sums)
        values = torch.stack([self.sums[k].float() for k in keys]).tolist()
        means = {k: v / self.count for k, v in zip(keys, values, strict=True)}
        means["guard/q_abs_max"] = values[keys.index("guard/q_abs_max")]
        self.sums, self.count = {}, 0
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


def evaluate_in_training(run: Run, writer: SummaryWriter, checkpoint: Path, train_seconds: float) -> None:
    """Roll the policy of this step's checkpoint out for `eval_episodes` episodes, log it to TensorBoard
    and append it to <run>/evaluations.csv (what `make benchmark` reads)."""
    from offline_chunk.evaluate import evaluate  # simulators are imported only when a run evaluates

    cfg = run.cfg
    report = evaluate(
        checkpoint,
        episodes=cfg["eval_episodes"],
        workers=cfg["eval_workers"],
        seed=cfg["seed"],
        max_steps=cfg["eval_max_steps"],
        progress=False,
    )
    low, high = report["success_ci95"]
    for key, value in (
        ("success_rate", report["success_rate"]),
        ("success_ci95_low", low),
        ("success_ci95_high", high),
        ("return_mean", report["return_mean"]),
        ("final_reward_mean", report["final_reward_mean"]),
    ):
        writer.add_scalar(f"eval/{key}", value, run.step)
    path = run.run_dir / "evaluations.csv"
    new_file = not path.exists()
    with open(path, "a") as f:
        if new_file:
            f.write("step,train_seconds,success_rate,success_ci95_low,success_ci95_high,return_mean\n")
        f.write(
            f"{run.step},{train_seconds:.1f},{report['success_rate']},{low},{high},{report['return_mean']}\n"
        )


def train_loop(run: Run) -> Path:
    cfg = run.cfg
    writer = SummaryWriter(run.run_dir / "tb")
    log = MetricLog()
    bar = tqdm(total=cfg["steps"], initial=run.step, desc=f"train {cfg['agent']['name']}", unit="upd")
    tick, tick_step = time.perf_counter(), run.step
    train_seconds = 0.0  # wall time spent updating, evaluations excluded
    try:
        while run.step < cfg["steps"]:
            log.add(run.agent.update(run.sampler.sample()))
            run.step += 1
            bar.update(1)
            if run.step % cfg["log_every"] == 0 or run.step == cfg["steps"]:
                now = time.perf_counter()
                log_interval(run, writer, log, bar, (run.step - tick_step) / (now - tick))
                train_seconds += now - tick
                tick, tick_step = now, run.step
            saved = run.checkpoint() if run.step % cfg["checkpoint_every"] == 0 else None
            if cfg["eval_every"] and run.step % cfg["eval_every"] == 0:
                checkpoint = saved or run.checkpoint()
                evaluate_in_training(run, writer, checkpoint, train_seconds + time.perf_counter() - tick)
                tick, tick_step = time.perf_counter(), run.step
    except KeyboardInterrupt:
        path = run.checkpoint(f"interrupted_step_{run.step:08d}.pt")
        bar.close()
        print(f"\ninterrupted at step {run.step}: checkpoint saved at {path}")
        raise
    finally:
        writer.close()
        bar.close()
    return run.checkpoint("final.pt")


def summary(run: Run, first_step: int, final: Path, seconds: float) -> str:
    """What a user reads when training ends: what was done, how it ended, where it is, what to run next."""
    updates = run.step - first_step
    means = run.last_metrics
    lines = [
        f"trained      {run.cfg['agent']['name']}: {updates:,} updates (step {first_step:,} to {run.step:,}) "
        f"in {seconds / 60:.1f} min, {updates / max(seconds, 1e-9):.1f} updates/s",
    ]
    if means:
        lines.append(
            f"final        critic loss {means['critic/loss']:.4g}   Q mean {means['critic/q_mean']:.4g}   "
            f"target {means['critic/target_q']:.4g}   (means over the last {run.cfg['log_every']} updates)"
        )
    lines += [
        f"checkpoint   {final}",
        f"tensorboard  tensorboard --logdir {run.run_dir / 'tb'}",
        f"next         make eval CKPT={final}   (rollouts in the store's simulator, success rate)",
        "             notebooks/evaluate_q_on_demos.ipynb with CHECKPOINT set to it (Q on the demos)",
    ]
    return "\n".join(lines)


def train(cfg: dict, resume: dict | None = None) -> Path:
    """Train a run, or continue one from a checkpoint payload (its config, with any new overrides, is `cfg`).
    Returns the final checkpoint's path."""
    cfg = {**cfg, "run_dir": str(cfg["run_dir"] or default_run_dir(cfg))}
    start = time.perf_counter()
    run = build_run(cfg, resume)
    first_step = run.step
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    final = train_loop(run)
    print(summary(run, first_step, final, time.perf_counter() - start))
    return final

"""The training loop: device-resident batches, agent updates, logging at intervals, atomic checkpoints,
exact resume, a divergence guard, and a checkpoint on Ctrl-C. Periodic evaluation in a simulator is the
harness's (offline_chunk.harness.evaluation.periodic_evaluator): the loop takes it as `evaluator`.

Inside the loop nothing leaves the device except at `log_every` intervals, where the metrics summed
on the device since the last log are read in one transfer.

Under torchrun the same loop runs in every process of a data-parallel run (distributed.py): each samples
its share of the global batch, the agents average their gradients, and rank 0 alone writes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from offline_chunk.agents import ChunkAgent, Dims, make_agent
from offline_chunk.agents.targets import batch_fields
from offline_chunk.atomic import append_row
from offline_chunk.checkpoint import (
    agent_from_payload,
    read_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    store_provenance,
)
from offline_chunk.compute import FreeCoreThreads, compile_enabled, pick_device
from offline_chunk.config import RunConfig
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.normalize import Normalizer
from offline_chunk.data.store import frame_bytes
from offline_chunk.distributed import SINGLE, Group, join, leave
from offline_chunk.errors import ConfigError, DataError, DivergenceError
from offline_chunk.stopping import stop_requests


class Learner:
    """What offline training and fine-tuning share, so that both run the same update: the agent's updates on
    batches from `sampler`, their metrics summed on the device and read every `log_every` updates into
    TensorBoard, the divergence guard at each read, evaluations recorded, checkpoints. Only what happens
    between updates (collection, the evaluation schedule) is each phase's own (`train_loop` here,
    harness/finetune.py online). Steps are counted on the phase's axis: updates offline, environment steps
    online (`axis`)."""

    axis = "step"

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        agent: ChunkAgent,
        sampler,
        store: dict,
        q_bound: float,
        group: Group = SINGLE,
    ):
        self.cfg, self.run_dir, self.agent, self.sampler = cfg, Path(run_dir), agent, sampler
        self.group = group  # the processes of a data-parallel run; rank 0 writes (distributed.py)
        self.store = store  # what a checkpoint keeps of the training store (store_provenance)
        self.q_bound = q_bound
        self.log = MetricLog()
        self.last_metrics: dict[str, float] = {}  # the means of the last log interval
        self.last_interval = 0  # its updates
        self.train_seconds = 0.0  # wall time spent updating (evaluations excluded), over every resumed part
        self.writer: SummaryWriter | None = None  # <run>/tb, opened by the loop
        device = next(agent.parameters()).device
        self.threads = FreeCoreThreads(device, compile_enabled(cfg.compile, device))  # the free cores

    def open_writer(self) -> SummaryWriter | NullWriter:
        """<run>/tb's TensorBoard writer (rank 0's; the other ranks' writes go nowhere)."""
        self.writer = SummaryWriter(self.run_dir / "tb") if self.group.main else NullWriter()
        return self.writer

    def update(self) -> None:
        """One update of the agent on a sampled batch; its metrics stay on the device until `read_metrics`."""
        self.log.add(self.agent.update(self.sampler.sample()))

    def read_metrics(self, at: int, **scalars: float) -> dict[str, float]:
        """The metrics' means since the last read, in one transfer, checked by the divergence guard, then
        written to TensorBoard at step `at` with the learning rates, `scalars` and the CPU threads the next
        interval runs with (FreeCoreThreads)."""
        self.last_interval = self.log.counts.get("critic/loss", 0)  # updates the means are over
        means = self.group.mean(self.log.read(), maxima=("guard/q_abs_max",))  # over the ranks
        self.check_divergence(means, at)
        self.last_metrics = means
        scalars = {**scalars, "perf/threads": self.threads.follow()}
        for key, value in {**means, **self.agent.learning_rates(), **scalars}.items():
            self.writer.add_scalar(key, value, at)
        return means

    def check_divergence(self, means: dict[str, float], at: int) -> None:
        finite = all(np.isfinite(v) for v in means.values())
        if finite and means["guard/q_abs_max"] <= self.q_bound:
            return
        path = self.checkpoint(f"diverged_{self.axis.replace(' ', '_')}_{at:08d}.pt", self.agent.num_updates)
        reason = (
            "a loss or Q value is not finite"
            if not finite
            else f"|Q| reached {means['guard/q_abs_max']:.4g}, beyond the bound {self.q_bound:.4g} "
            f"(divergence_factor × max|r| / (1 − γ))"
        )
        raise DivergenceError(
            f"training diverged by {self.axis} {at:,}: {reason}. Checkpoint saved at {path}. "
            "Lower the learning rate or eta, or raise grad clipping."
        )

    def checkpoint(self, name: str, step: int, extra: dict | None = None) -> Path:
        """<run>/checkpoints/<name>: everything to resume from (checkpoint.py), with the streaming sampler's
        position and the `extra` records (a fine-tuning run's `online`). Every rank of a data-parallel run
        calls it; rank 0 writes it with every rank's random-number states and stream positions."""
        stream = {"stream": self.sampler.state()} if hasattr(self.sampler, "state") else {}
        path = self.run_dir / "checkpoints" / name
        if self.group.parallel:
            ranks = self.group.gather({"rng": rng_state(self.sampler.generator), **stream})
            extra = {**(extra or {}), "processes": self.group.size, "ranks": ranks}
        if not self.group.main:
            return path
        return save_checkpoint(
            path,
            self.agent,
            self.cfg,
            step,
            self.sampler.generator,
            self.store,
            self.train_seconds,
            {**stream, **(extra or {})},
        )

    def record_evaluation(self, report: dict, at: int, **columns) -> None:
        """An evaluation report into TensorBoard at step `at` and a row of <run>/evaluations.csv (what `make
        benchmark` reads): `columns` (the phase's counters) first, then the success rate with its 95%
        interval and the mean return. The evaluation's workers were this run's, not others' load on the cores
        (FreeCoreThreads)."""
        self.threads.restart()
        low, high = report["success_ci95"]
        scores = {
            "success_rate": report["success_rate"],
            "success_ci95_low": low,
            "success_ci95_high": high,
            "return_mean": report["return_mean"],
        }
        for key, value in {**scores, "final_reward_mean": report["final_reward_mean"]}.items():
            self.writer.add_scalar(f"eval/{key}", value, at)
        row = {**columns, **scores}
        append_row(self.run_dir / "evaluations.csv", ",".join(row), ",".join(str(v) for v in row.values()))


class Run(Learner):
    """An offline run: the learner, its dataset, the update count `step` and the evaluator (checkpoint ->
    evaluation report) of `eval_every`."""

    def __init__(
        self,
        cfg,
        run_dir,
        dataset: OfflineRLDataset,
        agent,
        sampler,
        step: int,
        q_bound: float,
        group: Group = SINGLE,
    ):
        store = store_provenance(cfg.dataset, dataset.data.attrs)
        super().__init__(cfg, run_dir, agent, sampler, store, q_bound, group)
        self.dataset, self.step = dataset, step
        self.evaluator: Callable[[Path], dict] | None = None

    def write_config(self) -> None:
        """<run>/config.yaml: the resolved config (`train --config` trains it again); rank 0's."""
        if not self.group.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.model_dump(), sort_keys=False))

    def save(self, name: str | None = None) -> Path:
        """This step's checkpoint, step_<N>.pt, or `name`."""
        return self.checkpoint(name or f"step_{self.step:08d}.pt", self.step)


def q_bound(reward: np.ndarray, gamma: float, factor: float) -> float:
    """|Q| can never exceed max|r| / (1 − γ) (a geometric series of the largest reward); the guard stops at
    `factor` times that, with max|r| floored at 1 so that an all-zero reward does not trip it on noise."""
    largest = max(float(np.abs(reward).max()), 1.0)
    return float("inf") if gamma >= 1.0 else factor * largest / (1.0 - gamma)


def with_run_dir(cfg: RunConfig) -> RunConfig:
    """`cfg` with its run directory: its own, or runs/<agent>-<store name>-<date-time>."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg.model_copy(
        update={"run_dir": cfg.run_dir or f"runs/{cfg.agent.name}-{Path(cfg.dataset).stem}-{stamp}"}
    )


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


# What a non-constant learning-rate schedule's shape depends on: a resumed run keeps it.
SCHEDULE_SHAPE = ("steps", "agent.lr_schedule", "agent.lr_warmup")


def _changes(old: RunConfig, cfg: RunConfig, keys: tuple[str, ...]) -> list[str]:
    return [
        f"{key} ({_at(old, key)!r} -> {_at(cfg, key)!r})" for key in keys if _at(old, key) != _at(cfg, key)
    ]


def check_resume(resume: dict, cfg: RunConfig, group: Group = SINGLE) -> None:
    """Refuse to resume with a change the checkpoint's networks, chunk transitions or learning-rate schedule
    cannot take, with another number of processes, or into a run directory whose later checkpoints the
    resumed run would overwrite."""
    old = resume["config"]
    processes = resume.get("processes", 1)
    if processes != group.size:
        raise ConfigError(
            f"the checkpoint was trained by {processes} process(es) and this run has {group.size}: each "
            f"process's batch stream resumes where it stood, so resume with torchrun --nproc_per_node="
            f"{processes}{' (or without torchrun)' if processes == 1 else ''}, or train a new run"
        )
    changed = _changes(old, cfg, FROZEN_ON_RESUME)
    if changed:
        raise ConfigError(
            f"resuming cannot change {', '.join(changed)}: the networks' shapes or the chunk transitions "
            "depend on it; train a new run instead"
        )
    reshaped = _changes(old, cfg, SCHEDULE_SHAPE)
    if old.agent.lr_schedule != "constant" and reshaped:
        raise ConfigError(
            f"resuming cannot change {', '.join(reshaped)}: the {old.agent.lr_schedule} learning-rate "
            f"schedule spans the run's {old.steps:,} updates and would jump to another point of another "
            f"curve. Resume with steps={old.steps}, or train a new run"
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


def check_shapes(store, dataset: OfflineRLDataset, dims: Dims) -> None:
    """A resumed or fine-tuned checkpoint's networks take the store's observation, action and frame shapes."""
    ours = (dataset.obs_dim, dataset.action_dim, dataset.image_shapes)
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


def build_sampler(
    cfg: RunConfig, device: torch.device, stream_state: dict | None = None, group: Group = SINGLE
):
    """The dataset and its batch sampler: frames in memory, or streamed when they exceed the budget (from
    `stream_state`, a resumed run's streaming sampler's); in a data-parallel run, this rank's share of the
    global batch from its own stream (and blocks)."""
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
    batch_size, seed = group.local_batch(cfg.batch_size), group.seed(cfg.seed)
    if not stream:
        cameras = bool(dataset.data.images)
        return dataset, dataset.sampler(batch_size, device=device, seed=seed, images=cameras, **fields)
    shard = (group.rank, group.size)
    sampler = dataset.streaming_sampler(
        budget, batch_size, device, seed, **fields, state=stream_state, shard=shard
    )
    print(
        f"streaming    {frames / 2**20:,.4g} MB of frames over a budget of {budget / 2**20:,.4g} MB: "
        f"{sampler.slots} blocks of {sampler.block_rows} rows resident, one swapped every "
        f"{sampler.swap_every} batches"
    )
    return dataset, sampler


def build_run(
    cfg: RunConfig, resume: dict | None = None, group: Group = SINGLE, device: torch.device | None = None
) -> Run:
    """The run of `cfg`, new or resumed; in a data-parallel run, this rank's (the same agent on every rank,
    built from the same seed; its own batch stream and, for rank r > 0, its own noise stream)."""
    device = device or pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    own = resume if resume is None or not group.parallel else {**resume, **resume["ranks"][group.rank]}
    dataset, sampler = build_sampler(cfg, device, None if own is None else own.get("stream"), group)
    if resume is None:
        dims = Dims(dataset.obs_dim, cfg.obs_horizon, dataset.action_dim, cfg.horizon, dataset.image_shapes)
        normalizer = Normalizer.from_data(dataset.data)
        agent = make_agent(cfg.agent, dims, normalizer, cfg.steps).to(device)
        if group.rank:  # the losses' noise: rank 0 goes on with the plain run's stream, the others their own
            torch.manual_seed(group.seed(cfg.seed))
        step = 0
    else:
        dims = Dims(**resume["dims"])
        check_shapes(cfg.dataset, dataset, dims)
        agent = agent_from_payload({**resume, "config": cfg}, device)
        restore_rng_state(own["rng"], sampler.generator)
        step = resume["step"]
    agent.group = group
    agent.configure_compute(cfg.compile, cfg.precision)
    run = Run(
        cfg,
        cfg.run_dir,
        dataset,
        agent,
        sampler,
        step,
        q_bound(dataset.data.reward, cfg.gamma, cfg.divergence_factor),
        group,
    )
    run.train_seconds = resume.get("train_seconds", 0.0) if resume is not None else 0.0
    return run


class NullWriter:
    """TensorBoard's SummaryWriter for the ranks that do not write (distributed.py)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


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


def evaluated_steps(run_dir: Path) -> set[int]:
    path = run_dir / "evaluations.csv"
    if not path.exists():
        return set()
    return {int(line.split(",", 1)[0]) for line in path.read_text().splitlines()[1:] if line}


def evaluate_in_training(run: Run, checkpoint: Path) -> None:
    """Evaluate this step's checkpoint (`run.evaluator`) with the training time so far (rank 0)."""
    if not run.group.main:
        return
    run.record_evaluation(
        run.evaluator(checkpoint), run.step, step=run.step, train_seconds=f"{run.train_seconds:.1f}"
    )


def train_loop(run: Run) -> Path:
    """Updates until `steps`, a log interval every `log_every`, a checkpoint every `checkpoint_every`, an
    evaluation every `eval_every` (its time is not training time), a checkpoint when a stop is requested."""
    cfg, group = run.cfg, run.group
    run.open_writer()
    bar = tqdm(
        total=cfg.steps, initial=run.step, desc=f"train {cfg.agent.name}", unit="upd", disable=not group.main
    )
    evaluating = lambda: cfg.eval_every and run.step % cfg.eval_every == 0  # noqa: E731
    unfinished = group.main and run.step not in evaluated_steps(run.run_dir)
    if run.step and evaluating() and group.any(unfinished):
        evaluate_in_training(run, run.save())  # resumed where an evaluation did not finish
    clock = rate_clock = time.perf_counter()  # start of the current stretch of updates; of the log interval
    rate_step, checkpointing = run.step, False  # checkpointing: the last update's step was saved
    with stop_requests("stopping after this update, with a checkpoint to resume from") as stop:
        try:
            while run.step < cfg.steps and not group.any(stop.requested):
                run.update()
                run.step += 1
                bar.update(1)
                if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                    now = time.perf_counter()
                    rate = (run.step - rate_step) / (now - rate_clock)
                    means = run.read_metrics(run.step, **{"perf/updates_per_s": rate})
                    bar.set_postfix(
                        critic=f"{means['critic/loss']:.3g}",
                        Q=f"{means['critic/q_mean']:.3g}",
                        ups=f"{rate:.1f}",
                    )
                    rate_clock, rate_step = now, run.step
                checkpointing = run.step % cfg.checkpoint_every == 0
                if checkpointing or evaluating():
                    now = time.perf_counter()
                    run.train_seconds, clock = run.train_seconds + now - clock, now
                    saved = run.save() if checkpointing else None
                    if evaluating():
                        evaluate_in_training(run, saved or run.save())
                        clock = rate_clock = time.perf_counter()  # the evaluation's time is not training time
                        rate_step = run.step
        except KeyboardInterrupt:
            message = f"stopped at once after step {run.step:,}: nothing saved since the last checkpoint"
            print(f"\n{message}", file=sys.stderr)
            raise
        finally:
            run.writer.close()
            bar.close()
    run.train_seconds += time.perf_counter() - clock
    if run.step < cfg.steps:  # stopped on request, between two updates
        path = saved if checkpointing else run.save()
        raise stop.stopped(f"stopped at step {run.step:,}; resume with --resume {path}", path)
    return run.save("final.pt")


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
            f"target {means['critic/target_q']:.4g}   (means over the last {run.last_interval} updates)"
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
    group, device = join(pick_device(cfg.device))
    # rank 0's run directory for every rank (a default name carries rank 0's clock)
    cfg = cfg.model_copy(update={"run_dir": group.gather(with_run_dir(cfg).run_dir)[0]})
    if cfg.eval_every and evaluator is None:
        raise ConfigError(
            f"eval_every={cfg.eval_every} needs an evaluator: train(cfg, evaluator="
            "offline_chunk.harness.evaluation.periodic_evaluator(cfg)), or eval_every=0"
        )
    if resume is not None:
        check_resume(resume, cfg, group)
    start = time.perf_counter()
    run = build_run(cfg, resume, group, device)
    run.evaluator = evaluator
    first_step = run.step
    if group.parallel and group.main:
        print(
            f"processes    {group.size} ({'NCCL' if device.type == 'cuda' else 'gloo'}): batch_size "
            f"{cfg.batch_size} is the global batch, {group.local_batch(cfg.batch_size)} per process"
        )
    run.write_config()
    try:
        final = train_loop(run)
    finally:
        leave()
    if group.main:
        print(summary(run, first_step, final, time.perf_counter() - start))
    return final

"""Offline-to-online fine-tuning, Q-chunking's headline protocol (Li, Zhou & Levine 2025; official main.py,
its online loop): a checkpoint's agent keeps learning in the simulator its store names, from a replay
that holds the offline store and the episodes it collects.

Schedule (one iteration = one step of every environment):
- collection: the environments run in worker processes (evaluation's vector env, autoreset disabled);
  each executes its chunks open loop, as QC's action queue does, and all environments that need a chunk
  are planned in one call. The diffusion agents act by their candidates as offline (best of N), chunk_sac
  samples its policy, td3bc adds N(0, noise²) to its chunk (`ChunkAgent.explore_chunk`);
- replay: an episode's rows, labelled as the offline store's (collect.py), join the replay when it ends,
  indexed by the chunk contract (data/replay.py); batches sample all data alike (QC) or a fixed share
  of online chunks (`online_fraction`, RLPD);
- updates: after `warmup` environment steps (QC's start_training, 5000), `utd` updates per environment
  step, in the main process between environment steps: the workers wait while the learner updates. They
  are offline training's (train.py `Learner`: the same update, metric logs, divergence guard and
  checkpoints), at the constant base learning rates (`ChunkAgent.hold_base_rates`);
- evaluation: at 0 environment steps (the starting agent) and every `eval_every` steps after (0: never),
  `eval_episodes` episodes acting as `make eval` does, on the initial states of the offline run's
  evaluations (episode i resets with the offline run's seed + i, `evaluation_seed`), so that
  <run>/evaluations.csv pairs the agent before and after fine-tuning on the same episodes; TensorBoard logs
  collection and evaluation returns and successes beside the losses;
- checkpoints: once `checkpoint_every` steps are due, no new episode starts; when the running ones have
  ended, the agent (with its optimizers and RNG states) is saved with the count of collected episodes,
  whose rows are in <run>/online_episodes.npz. Collection episode i resets with seed + 1,000,000 + i
  (seeds no evaluation uses), so a run resumed there (`finetune --resume`) replays nothing and goes on
  exactly as the uninterrupted one (tested on CPU).
  Ctrl-C or SIGTERM makes such a checkpoint due at once (stopping.py), then stops.

Deliberate differences from QC's loop: episodes enter the replay when they end (QC adds each transition
at once; a chunk's transition needs the rows after it); several environments can collect at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from offline_chunk.agents.targets import batch_fields
from offline_chunk.atomic import write_atomic
from offline_chunk.checkpoint import (
    agent_from_payload,
    read_checkpoint,
    restore_rng_state,
)
from offline_chunk.compute import pick_device
from offline_chunk.config import RunConfig, validated
from offline_chunk.data.replay import ChunkReplay
from offline_chunk.data.store import open_store
from offline_chunk.errors import CheckpointError
from offline_chunk.harness.collect import Collector, EpisodeRows, check_row_aligned
from offline_chunk.harness.envs.ogbench_env import env_id_from_store, make_env, time_limit
from offline_chunk.harness.evaluation import evaluate, evaluation_seed
from offline_chunk.harness.evaluation.rollouts import vector_env
from offline_chunk.harness.evaluation.settings import REWARD_TRANSFORMS, reward_convention
from offline_chunk.harness.evaluation.stats import Episode
from offline_chunk.sections import Section
from offline_chunk.stopping import StopRequest, stop_requests
from offline_chunk.train import Learner, build_run, q_bound, with_run_dir

COLLECT_SEED_OFFSET = 1_000_000  # collection episodes reset with seeds no evaluation episode uses


class FinetuneSettings(Section):
    """A fine-tuning run's schedule, checked as every config section is (sections.py)."""

    env_steps: int = Field(50_000, ge=1)
    """environment steps to collect (all environments together)"""
    utd: int = Field(1, ge=1)
    """updates per environment step (QC's utd_ratio)"""
    envs: int = Field(1, ge=1)
    """environments collecting at once (QC: 1)"""
    warmup: int = Field(5_000, ge=0)
    """environment steps collected before online updates start (QC's start_training)"""
    warmup_actions: Literal["policy", "uniform"] = "policy"
    """what acts during the warm-up: the agent (fine-tuning, QC) or actions drawn uniformly in the action
    bounds, one per step (RLPD and Q-chunking's main_online, for an untrained agent)"""
    online_fraction: float | None = Field(None, ge=0, le=1)
    """None: batches sample offline and online chunks alike (QC); a share of online chunks (RLPD: 0.5)"""
    noise: float = 0.1
    """exploration noise of a deterministic actor (td3bc), normalized units"""
    eval_every: int = Field(10_000, ge=0)
    """environment steps between evaluations, the first at 0 steps (the starting agent); 0: no evaluation"""
    eval_episodes: int = Field(50, ge=1)
    checkpoint_every: int = Field(10_000, ge=1)
    log_every: int = Field(1_000, ge=1)
    """updates between metric reads"""
    max_steps: int | None = None
    """episode time limit (None: the environment's own)"""
    seed: int = 0
    """seeds the sampler and the updates; collection episode i resets with seed + 1,000,000 + i"""


def run_seeds(online: dict | None, settings: FinetuneSettings, cfg) -> tuple[int, int]:
    """The reset seeds of collection episode 0 and evaluation episode 0 (episode i: seed + i). A run resumed
    goes on with the seeds of its `online` record; one recorded before the record held them, with the
    seeds it started with (collection settings.seed + i, evaluation settings.seed + 1,000,000 + i)."""
    if online is None:
        return settings.seed + COLLECT_SEED_OFFSET, evaluation_seed(cfg)
    return online.get("collect_seed", settings.seed), online.get("eval_seed", settings.seed + 1_000_000)


class OnlineRun(Learner):
    """The learner (train.py: the updates, metric logs, divergence guard and checkpoints of offline training)
    on a replay that holds the offline store and the collected episodes, the collection environments'
    settings and the run's outputs; from an offline checkpoint, or from a fine-tuning checkpoint to resume
    (its `online` record). Steps are environment steps."""

    axis = "environment step"

    def __init__(self, checkpoint: Path, settings: FinetuneSettings, run_dir: Path | None, payload: dict):
        cfg, store_attrs = payload["config"], payload.get("store") or {}
        store_path = store_attrs.get("path", cfg.dataset)
        if not Path(store_path).exists():
            raise CheckpointError(
                f"{checkpoint}: fine-tuning needs its offline store {store_path}, not found"
            )
        agent = agent_from_payload(payload, pick_device(cfg.device))
        agent.hold_base_rates()  # the offline schedule spanned the offline run (ChunkAgent)
        agent.configure_compute(cfg.compile, cfg.precision)
        data = open_store(store_path)
        self.replay = ChunkReplay(
            data,
            cfg.horizon,
            cfg.obs_horizon,
            cfg.gamma,
            cfg.drop_partial,
            capacity=data.num_rows + settings.env_steps + settings.envs * 1000,
            device=next(agent.parameters()).device,
        )
        sampler = self.replay.sampler(
            cfg.batch_size, settings.seed, settings.online_fraction, **batch_fields(cfg.agent)
        )
        online = payload.get("online")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = run_dir or (
            checkpoint.parent.parent if online else checkpoint.parent.parent / f"finetune-{stamp}"
        )
        bound = q_bound(data.reward, cfg.gamma, cfg.divergence_factor)  # online rewards follow the store's
        super().__init__(cfg, run_dir, agent, sampler, store_attrs, bound)
        self.settings, self.env_id = settings, env_id_from_store(store_path, store_attrs)
        self.source = online["source"] if online else str(checkpoint)
        self.collect_seed, self.eval_seed = run_seeds(online, settings, cfg)
        self.episodes: list[EpisodeRows] = []
        self.env_steps = 0
        if online:  # resume: the episodes collected up to the checkpoint, in order, and its RNG states
            for rows in load_episodes(self.run_dir / EPISODES_FILE, online["episodes"]):
                self.add(rows)
            self.env_steps = online["env_steps"]
            restore_rng_state(payload["rng"], self.sampler.generator)
        else:
            torch.manual_seed(settings.seed)

    def add(self, rows: EpisodeRows) -> None:
        self.replay.append_episode(rows.obs, rows.action, rows.reward, rows.terminal)
        self.episodes.append(rows)

    def save(self, name: str, env_steps: int, resumable: bool = True) -> Path:
        """The agent (as `make train` writes it: `make eval` reads it) and, for a checkpoint taken between
        episodes (`resumable`), the record `finetune --resume` reads and the collected episodes beside it
        (online_episodes.npz), each written atomically."""
        if not resumable:
            return self.checkpoint(name, self.agent.num_updates)
        self.save_episodes(env_steps)
        online = {
            "source": self.source,
            "settings": self.settings.model_dump(),
            "env_steps": env_steps,
            "episodes": len(self.episodes),
            "collect_seed": self.collect_seed,
            "eval_seed": self.eval_seed,
        }
        return self.checkpoint(name, self.agent.num_updates, {"online": online})

    def save_episodes(self, env_steps: int) -> None:
        """The collected episodes' rows, concatenated, with their ends and reset seeds."""
        dims, rows = self.agent.dims, self.episodes

        def joined(key: str, empty_shape: tuple) -> np.ndarray:
            return np.concatenate([getattr(e, key) for e in rows]) if rows else np.zeros(empty_shape)

        arrays = {
            "obs": joined("obs", (0, dims.obs_dim)),
            "action": joined("action", (0, dims.action_dim)),
            "reward": joined("reward", (0,)),
            "terminal": joined("terminal", (0,)).astype(bool),
            "episode_ends": np.cumsum([len(e.reward) for e in rows], dtype=np.int64),
            "env_steps": np.array(env_steps),
            **{f"episode_{key}": np.array([getattr(e.episode, key) for e in rows]) for key in EPISODE_FIELDS},
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        write_atomic(self.run_dir / EPISODES_FILE, write)


EPISODES_FILE = "online_episodes.npz"
EPISODE_FIELDS = ("episode", "seed", "success", "episode_return", "length", "final_reward")  # Episode's


def load_episodes(path: Path, count: int) -> list[EpisodeRows]:
    """The first `count` episodes of an online_episodes.npz (a later checkpoint may have written more)."""
    with np.load(path) as saved:
        arrays = {key: saved[key] for key in saved.files}
    ends = arrays["episode_ends"][:count]
    if len(ends) < count:
        raise CheckpointError(f"{path}: holds {len(ends)} episodes, the checkpoint counts {count}")
    begins = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [
        EpisodeRows(
            Episode(*(arrays[f"episode_{key}"][i].item() for key in EPISODE_FIELDS)),
            *(arrays[key][b:e] for key in ("obs", "action", "reward", "terminal")),
        )
        for i, (b, e) in enumerate(zip(begins, ends, strict=True))
    ]


def finetune(
    checkpoint, settings: FinetuneSettings | None = None, run_dir=None, progress=True, resume: bool = False
) -> Path:
    """Continue `checkpoint`'s agent online for `settings.env_steps` environment steps, or (`resume`) a
    fine-tuning run from one of its checkpoints, with its settings (`settings.env_steps` may extend it).
    Returns the final checkpoint (<run>/checkpoints/final.pt)."""
    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    online = payload.get("online")
    if resume and not online:
        raise CheckpointError(f"{checkpoint}: not a fine-tuning checkpoint taken between episodes")
    if not resume and online:
        raise CheckpointError(f"{checkpoint}: a fine-tuning checkpoint; continue it with --resume")
    saved = validated(online["settings"], str(checkpoint), FinetuneSettings) if resume else FinetuneSettings()
    settings = settings or saved
    if resume:  # only the length of the run may change
        settings = saved.model_copy(update={"env_steps": settings.env_steps})
    run = OnlineRun(checkpoint, settings, run_dir, payload)
    probe = make_env(run.env_id)
    check_row_aligned(probe)
    probe.close()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "finetune.json").write_text(
        json.dumps({"source": run.source, **settings.model_dump()}, indent=2) + "\n"
    )
    run.writer = SummaryWriter(run.run_dir / "tb")
    env_fn = partial(make_env, run.env_id, time_limit(run.env_id, settings.max_steps))
    reward_fn = REWARD_TRANSFORMS.get(reward_convention(run.store))

    def plan(histories: np.ndarray) -> np.ndarray:  # collector: bound below, before the first plan
        warming = settings.warmup_actions == "uniform" and collector.env_steps < settings.warmup
        return (_uniform_chunks if warming else _plan)(run.agent, settings.noise, histories)

    try:
        with vector_env(env_fn, settings.envs) as envs:
            collector = Collector(
                envs,
                plan,
                run.collect_seed,
                run.cfg.obs_horizon,
                run.cfg.horizon,
                reward_fn,
                first_episode=len(run.episodes),
            )
            collector.env_steps = run.env_steps
            final = _loop(run, collector, progress)
    finally:
        run.writer.close()
    return final


# `make online`'s settings: RLPD's (Ball et al. 2023) as Q-chunking's main_online runs RLPD-AC: half of each
# batch online, uniform actions for the warm-up, 100k environment steps at one update each.
ONLINE_DEFAULTS = {"env_steps": 100_000, "online_fraction": 0.5, "warmup_actions": "uniform"}


def train_online(cfg: RunConfig, settings: FinetuneSettings | None = None, progress: bool = True) -> Path:
    """`make online`: an untrained agent learning online with the store in its replay (RLPD; Q-chunking's
    RLPD-AC). The agent is built as `make train` builds it (presets, overrides, the store's normalizer),
    saved as <run>/checkpoints/untrained.pt, and the fine-tuning loop runs from it in the same run
    directory (`make finetune RESUME=<run>/checkpoints/step_N.pt` resumes it). Returns final.pt."""
    run = build_run(with_run_dir(cfg))
    run.write_config()
    untrained = run.save("untrained.pt")
    settings = settings or FinetuneSettings(**ONLINE_DEFAULTS, seed=cfg.seed)
    return finetune(untrained, settings, run.run_dir, progress)


def _plan(agent, noise: float, histories: np.ndarray) -> np.ndarray:
    device = next(agent.parameters()).device
    return agent.act(torch.as_tensor(histories, device=device), explore=noise).cpu().numpy()


def _uniform_chunks(agent, noise: float, histories: np.ndarray) -> np.ndarray:
    """Chunks of actions drawn uniformly in the action bounds, independently per step (the global torch
    generator, which a checkpoint saves: a resumed run draws the same)."""
    dims = agent.dims
    uniform = torch.rand(len(histories), dims.horizon, dims.action_dim) * 2 - 1  # normalized units
    return agent.normalizer.unnormalize_action(uniform.to(next(agent.parameters()).device)).cpu().numpy()


@dataclass
class Throughput:
    """What this process did (a resumed run's rates count only its own work): seconds collecting and
    updating, environment steps collected, updates made."""

    collect_s: float = 0.0
    update_s: float = 0.0
    collected: int = 0
    updates: int = 0

    @property
    def env_steps_per_s(self) -> float:
        return self.collected / max(self.collect_s, 1e-9)

    @property
    def updates_per_s(self) -> float:
        return self.updates / max(self.update_s, 1e-9)


def _loop(run: OnlineRun, collector: Collector, progress: bool) -> Path:
    settings, done = run.settings, Throughput()
    bar = tqdm(
        total=settings.env_steps,
        initial=collector.env_steps,
        desc=f"finetune {run.agent.name}",
        unit="step",
        disable=not progress,
    )
    next_eval = _next_multiple(collector.env_steps, settings.eval_every)
    # Episodes stop starting when a checkpoint or the end is due; it is taken once they have all ended.
    collector.stop_at = min(
        _next_multiple(collector.env_steps, settings.checkpoint_every), settings.env_steps
    )
    with stop_requests("the episodes under way finish, then a checkpoint to resume from") as stop:
        try:
            if settings.eval_every and collector.env_steps == 0:  # the starting agent, fine-tuning's "before"
                _evaluate(run, 0)
            while True:
                if stop.requested:  # no episode starts any more; the checkpoint comes when they have ended
                    collector.stop_at = min(collector.stop_at, collector.env_steps)
                if collector.idle() and (path := _checkpoint_between_episodes(run, collector, stop)):
                    break
                stepped = _collect(run, collector, done)
                bar.update(stepped)
                if collector.env_steps >= settings.warmup:
                    _update(run, settings.utd * stepped, collector.env_steps, done)
                if settings.eval_every and collector.env_steps >= next_eval:
                    _evaluate(run, collector.env_steps)
                    next_eval = _next_multiple(collector.env_steps, settings.eval_every)
        finally:
            bar.close()
    _write_speed(run, collector.env_steps, done)
    return path


def _checkpoint_between_episodes(run: OnlineRun, collector: Collector, stop: StopRequest) -> Path | None:
    """Every episode has ended: the checkpoint that was due. Returns final.pt when the run is done; raises
    RunStopped when a stop was requested; otherwise lets episodes start until the next checkpoint."""
    settings, env_steps = run.settings, collector.env_steps
    finishing = env_steps >= settings.env_steps
    path = run.save("final.pt" if finishing else f"step_{env_steps:08d}.pt", env_steps)
    if finishing:
        return path
    if stop.requested:
        raise stop.stopped(f"stopped at {env_steps:,} environment steps; resume with --resume {path}", path)
    collector.restart(min(_next_multiple(env_steps, settings.checkpoint_every), settings.env_steps))
    return None


def _collect(run: OnlineRun, collector: Collector, done: Throughput) -> int:
    """One step of every running environment; the episodes that ended join the replay. Returns the
    environment steps taken."""
    start, before = time.perf_counter(), collector.env_steps
    for rows in collector.advance():
        run.add(rows)
        run.writer.add_scalar("collect/return", rows.episode.episode_return, collector.env_steps)
        run.writer.add_scalar("collect/success", float(rows.episode.success), collector.env_steps)
    stepped = collector.env_steps - before
    done.collect_s += time.perf_counter() - start
    done.collected += stepped
    return stepped


def _update(run: OnlineRun, updates: int, env_steps: int, done: Throughput) -> None:
    start = time.perf_counter()
    for _ in range(updates):
        run.update()
        done.updates += 1
        if done.updates % run.settings.log_every == 0:
            scalars = {
                "perf/env_steps_per_s": done.env_steps_per_s,
                "perf/updates_per_s": done.updates_per_s,
                "replay/online_chunks": run.replay.online_chunks,
            }
            run.read_metrics(env_steps, **scalars)
    done.update_s += time.perf_counter() - start


def _next_multiple(steps: int, every: int) -> int:
    """The first multiple of `every` after `steps` (never, for every = 0)."""
    return (steps // every + 1) * every if every else np.iinfo(np.int64).max


def _evaluate(run: OnlineRun, env_steps: int) -> None:
    """The agent as it is (saved as latest.pt), evaluated on the run's evaluation episodes, into TensorBoard
    and a row of <run>/evaluations.csv."""
    s = run.settings
    report = evaluate(
        run.save("latest.pt", env_steps, resumable=False),
        episodes=s.eval_episodes,
        workers=s.envs,
        max_steps=s.max_steps,
        seed=run.eval_seed,
        out=run.run_dir / "evaluations",
        progress=False,
    )
    run.record_evaluation(report, env_steps, env_steps=env_steps, updates=run.agent.num_updates)


def _write_speed(run: OnlineRun, env_steps: int, done: Throughput) -> None:
    """The loop's throughput in this process: environment steps per second of collection, updates per second
    of updating (after a resume, over what the resumed process did)."""
    speed = {
        "env_steps": env_steps,
        "env_steps_collected": done.collected,
        "online_updates": done.updates,
        "collect_s": done.collect_s,
        "update_s": done.update_s,
        "env_steps_per_s": done.env_steps_per_s,
        "updates_per_s": done.updates_per_s,
        "episodes": len(run.episodes),
        "successes": sum(e.episode.success for e in run.episodes),
    }
    (run.run_dir / "speed.json").write_text(json.dumps(speed, indent=2) + "\n")
    print(
        f"finetuned    {run.agent.name}: {env_steps:,} environment steps ({done.collected:,} here), "
        f"{done.updates:,} updates, "
        f"{speed['episodes']} episodes ({speed['successes']} reached the goal)\n"
        f"speed        {done.env_steps_per_s:.1f} env steps/s collecting, {done.updates_per_s:.1f} "
        f"updates/s updating\noutputs      {run.run_dir}"
    )

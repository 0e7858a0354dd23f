"""Evaluation in the task's simulator: rollouts of a checkpoint's agent with chunk execution, the success
rate with a Wilson interval, returns and episode lengths; a JSON summary, a CSV row per episode, GIFs.

Protocol (Q-chunking, Li, Zhou & Levine 2025, on OGBench): 50 episodes, each chunk executed open loop
(all H actions, `execute` to change it), success = OGBench's `info["success"]` at the episode's end (the
single-task environments terminate at the goal; the time limit truncates). Beside it, the simulator's own
reward at the last step (`final_reward`): in OGBench's manipulation tasks, minus the number of subtasks
(objects, buttons, lights) left unsolved, so partial progress shows where success is still 0.

Episodes run in `workers` processes (gymnasium's AsyncVectorEnv, one environment each), stepped in lockstep.
Each environment has a ChunkExecutor; all environments that need a chunk at the same step are planned in
ONE `agent.act` call. Autoreset is DISABLED: gymnasium 1.x's default, NEXT_STEP, resets a finished
environment inside the following `step` call, ignoring that call's action and without a seed. Here a
finished environment is reset at once, alone (`reset_mask`), with its next episode's seed; an environment
with no episode left idles (stepped with zero actions whose results are ignored) until the others finish.

Reproducibility: the same checkpoint, seed, worker count and device give the same episodes. Episode i
resets with seed + i; the policy's noise is one torch stream seeded with `seed` and shared by the batched
planning calls, so the worker count (which episodes share a call) changes the draws.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from tqdm import tqdm

from offline_chunk.agents import AGENTS
from offline_chunk.atomic import write_atomic
from offline_chunk.checkpoint import agent_from_payload, pick_device, read_checkpoint
from offline_chunk.data.sources.ogbench_npz import sparse_reward
from offline_chunk.envs.chunks import ChunkExecutor
from offline_chunk.envs.ogbench_env import (
    env_id_from_store,
    find_gl_backend,
    make_env,
    store_attributes,
    time_limit,
)
from offline_chunk.errors import ConfigError

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...: the two-sided 95% normal quantile
RENDER_EVERY = 3  # steps between GIF frames (OGBench's video_frame_skip)
GIF_FRAME_MS = 150  # RENDER_EVERY control steps of 0.05 s (OGBench manipspace): real time


@dataclass
class Episode:
    episode: int
    seed: int
    success: bool
    episode_return: float
    length: int
    final_reward: float  # the simulator's own reward at the last step (OGBench: −subtasks unsolved)


# --------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (E. B. Wilson, "Probable inference, the law of
    succession, and statistical inference", JASA 22(158):209-212, 1927; recommended over the normal
    interval by Brown, Cai & DasGupta, Statistical Science 16(2):101-133, 2001):

        (p + z²/2n ± z √(p(1 - p)/n + z²/4n²)) / (1 + z²/n),   p = successes / n.

    It stays inside [0, 1] and is not empty at p = 0 or 1, where the normal interval collapses."""
    p, q = successes / n, 1 - successes / n
    half_width = z * np.sqrt(p * q / n + z**2 / (4 * n**2))
    # Since (p + z²/2n)² - half_width² = p² (1 + z²/n), the lower bound is p² / (p + z²/2n + half_width),
    # and the upper bound 1 - q² / (q + z²/2n + half_width) by symmetry: the same values without the
    # cancellation of the textbook form, so they are exactly 0 and 1 at p = 0 and p = 1.
    low = p**2 / (p + z**2 / (2 * n) + half_width)
    high = 1 - q**2 / (q + z**2 / (2 * n) + half_width)
    return float(low), float(high)


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float | None, float | None]:
    """Normal-approximation interval for a mean: mean ± z s/√n with the sample standard deviation s
    (ddof = 1). None for fewer than 2 values."""
    if len(values) < 2:
        return None, None
    half_width = z * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half_width), float(values.mean() + half_width)


def summarize(episodes: list[Episode]) -> dict:
    successes = sum(e.success for e in episodes)
    returns = np.array([e.episode_return for e in episodes])
    final_rewards = np.array([e.final_reward for e in episodes])
    lengths = np.array([e.length for e in episodes])
    return {
        "success_rate": successes / len(episodes),
        "success_ci95": wilson_interval(successes, len(episodes)),
        "success_ci_method": "Wilson score interval",
        "return_mean": float(returns.mean()),
        "return_ci95": mean_interval(returns),
        "return_ci_method": "normal approximation: mean ± 1.96 s/sqrt(n)",
        "final_reward_mean": float(final_rewards.mean()),
        "final_reward_ci95": mean_interval(final_rewards),
        "length_mean": float(lengths.mean()),
        "length_min": int(lengths.min()),
        "length_max": int(lengths.max()),
    }


# --------------------------------------------------------------------------- rollouts


class Rollouts:
    """Episodes 0..episodes-1 run over the environments of a vector env in lockstep (module docstring).

    envs: a gymnasium VectorEnv with autoreset DISABLED. plan: (B, To, D) observation histories -> (B, H, A)
    chunks, one batched call. reward_fn: per-step rewards -> the store's reward convention (None: as is).
    render: episodes 0..render-1 are rendered into `frames`."""

    def __init__(self, envs, plan, episodes, seed, obs_horizon, execute, reward_fn=None, render=0):
        self.envs, self.plan, self.reward_fn = envs, plan, reward_fn
        self.episodes, self.seed, self.render = episodes, seed, render
        n = envs.num_envs
        self.executors = [ChunkExecutor(obs_horizon, execute) for _ in range(n)]
        self.episode_of = np.full(n, -1)  # the episode each environment runs; -1: idle
        self.returns, self.lengths = np.zeros(n), np.zeros(n, np.int64)
        self.env_reward = np.zeros(n)  # the simulator's own reward at the latest step
        self.next_episode = 0
        space = envs.single_action_space
        self.idle_action = np.zeros(space.shape, space.dtype)
        self.info: dict = {}
        self.finished: list[Episode] = []
        self.frames: dict[int, list[np.ndarray]] = {}

    def run(self, bar=None) -> list[Episode]:
        self.start_episodes(np.ones(self.envs.num_envs, bool))
        while (self.episode_of >= 0).any():
            self.plan_chunks()
            done = self.step()
            for k in np.flatnonzero(done):
                self.finished.append(self.finish(k))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(success=f"{sum(e.success for e in self.finished)}/{len(self.finished)}")
            if done.any():
                self.start_episodes(done)
        return sorted(self.finished, key=lambda e: e.episode)

    def start_episodes(self, free: np.ndarray) -> None:
        """Give the next episodes to the free environments and reset those (alone, seeded); the rest idle."""
        starting = np.zeros_like(free)
        for k in np.flatnonzero(free):
            has_episode = self.next_episode < self.episodes
            self.episode_of[k] = self.next_episode if has_episode else -1
            self.next_episode += has_episode
            starting[k] = has_episode
        if not starting.any():
            return
        seeds = [int(self.seed + i) if go else None for i, go in zip(self.episode_of, starting, strict=True)]
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": starting})
        for k in np.flatnonzero(starting):
            self.executors[k].reset(obs[k])
            self.returns[k], self.lengths[k] = 0.0, 0
        self.record_frames(starting)

    def plan_chunks(self) -> None:
        """One `plan` call for every running environment whose queue is empty."""
        waiting = [k for k in np.flatnonzero(self.episode_of >= 0) if self.executors[k].needs_plan()]
        if waiting:
            chunks = self.plan(np.stack([self.executors[k].history for k in waiting]))
            for k, chunk in zip(waiting, chunks, strict=True):
                self.executors[k].push(chunk)

    def step(self) -> np.ndarray:
        """One step of every environment; returns which running episodes ended."""
        running = self.episode_of >= 0
        actions = np.stack(
            [
                ex.next_action() if run else self.idle_action
                for ex, run in zip(self.executors, running, strict=True)
            ]
        )
        obs, self.env_reward, terminated, truncated, self.info = self.envs.step(actions)
        reward = self.env_reward if self.reward_fn is None else self.reward_fn(self.env_reward)
        self.returns[running] += reward[running]
        self.lengths[running] += 1
        done = running & (terminated | truncated)
        for k in np.flatnonzero(running & ~done):
            self.executors[k].observe(obs[k])
        self.record_frames(running & ((self.lengths % RENDER_EVERY == 0) | done))
        return done

    def finish(self, k: int) -> Episode:
        episode = int(self.episode_of[k])
        success = bool(self.info["success"][k])
        return Episode(
            episode,
            self.seed + episode,
            success,
            float(self.returns[k]),
            int(self.lengths[k]),
            float(self.env_reward[k]),
        )

    def record_frames(self, candidates: np.ndarray) -> None:
        wanted = candidates & (self.episode_of >= 0) & (self.episode_of < self.render)
        if wanted.any():
            frames = self.envs.call("render")
            for k in np.flatnonzero(wanted):
                self.frames.setdefault(int(self.episode_of[k]), []).append(frames[k])


def worker_context(fresh: bool) -> str:
    """fork on Linux (workers start at once; a script without a __main__ guard still works); spawn where
    the workers must import MuJoCo afresh, after setting MUJOCO_GL for rendering, and off Linux."""
    return "fork" if not fresh and sys.platform == "linux" else "spawn"


@contextmanager
def vector_env(env_fn, num_envs: int, fresh: bool = False):
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode

    envs = AsyncVectorEnv(
        [env_fn] * num_envs, context=worker_context(fresh), autoreset_mode=AutoresetMode.DISABLED
    )
    try:
        yield envs
    except BaseException:
        envs.close(terminate=True)
        raise
    envs.close()


@contextmanager
def planning_threads(device: torch.device, workers: int):
    """On the CPU, plan with the cores the environment workers leave free (at least one), then restore the
    caller's setting: intra-op threads competing with busy workers or other processes for the same cores
    slow planning down many times (on the shared 2-core machine, a tiny CPQL act call took 161 ms with 2
    threads and 11 ms with 1)."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(previous, (os.cpu_count() or 1) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def planner(agent):
    device = next(agent.parameters()).device

    def plan(histories: np.ndarray) -> np.ndarray:
        return agent.act(torch.as_tensor(histories, device=device)).cpu().numpy()

    return plan


def training_store_attributes(payload: dict) -> dict:
    """What a checkpoint recorded of its training store (env id, reward convention, ...); a checkpoint from
    before that record reads them from the store its config names."""
    return payload.get("store") or store_attributes(payload["config"]["dataset"])


def reward_convention(store_attrs: dict) -> str:
    """The training store's reward convention, which the reported returns follow so that they compare with
    the critic's values: OGBench's single-task reward ('ogbench'), or the Q-chunking paper's (r != 0) * -1
    ('sparse'); 'environment' (the simulator's own reward) for stores that do not say."""
    return store_attrs.get("reward_mode", "environment")


REWARD_TRANSFORMS = {"sparse": sparse_reward}  # per-step environment reward -> the store's convention


# --------------------------------------------------------------------------- the entry point


def check_settings(episodes, workers, execute, horizon, candidates, max_steps) -> None:
    for name, value, least in (
        ("episodes", episodes, 1),
        ("workers", workers, 1),
        ("candidates", candidates, 1),
        ("max_steps", max_steps, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{name}={value}: must be at least {least}")
    if execute is not None and not 1 <= execute <= horizon:
        raise ConfigError(f"execute={execute}: must be between 1 and the chunk horizon H={horizon}")


def gl_backend_for(render: int) -> str | None:
    if render == 0:
        return None
    backend, why = find_gl_backend()
    if backend is None:
        print(f"render: skipped, {why}; evaluating without GIFs", file=sys.stderr)
    return backend


def eval_settings(payload, checkpoint, episodes, execute, workers, seed, candidates, max_steps) -> dict:
    """What the report records about the run, resolved from the checkpoint, its store and the overrides."""
    horizon, store = payload["dims"]["horizon"], payload["config"]["dataset"]
    check_settings(episodes, workers, execute, horizon, candidates, max_steps)
    act = payload["config"]["agent"].get("act", {})
    by_candidates = AGENTS[payload["agent"]].acts_by_candidates  # chooses among sampled chunks by Q
    if candidates is not None and not by_candidates:
        raise ConfigError(
            f"candidates={candidates}: agent {payload['agent']!r} does not act by candidate chunks "
            "(it executes its actor's chunk)"
        )
    store_attrs = training_store_attributes(payload)
    env_id = env_id_from_store(store, store_attrs)
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_step": payload["step"],
        "agent": payload["agent"],
        "env_id": env_id,
        "store": str(store),
        "episodes": episodes,
        "seed": seed,
        "workers": min(workers, episodes),
        "execute": execute or horizon,
        "horizon": horizon,
        "obs_horizon": payload["dims"]["obs_horizon"],
        "candidates": (candidates or act.get("candidates")) if by_candidates else None,
        "select": act.get("select"),
        "actor": act.get("actor"),
        "time_limit": time_limit(env_id, max_steps),
        "reward_convention": reward_convention(store_attrs),
        "device": str(pick_device(None)),
    }


def roll_out(payload: dict, settings: dict, render: int, progress: bool) -> tuple[list[Episode], dict, dict]:
    """The episodes, the rendered frames, and the timing."""
    backend = gl_backend_for(render)
    env_fn = partial(make_env, settings["env_id"], settings["time_limit"], backend)
    started = time.perf_counter()
    device = pick_device(None)
    cuda_rng = [device] if device.type == "cuda" else []
    with (
        vector_env(env_fn, settings["workers"], fresh=backend is not None) as envs,
        planning_threads(device, settings["workers"]),
        torch.random.fork_rng(devices=cuda_rng),  # seeded here; the caller's RNG states are restored
    ):
        agent = agent_from_payload(payload, device).eval()
        if settings["candidates"] is not None:
            agent.cfg["act"] = {**agent.cfg["act"], "candidates": settings["candidates"]}
        torch.manual_seed(settings["seed"])
        rollouts = Rollouts(
            envs,
            planner(agent),
            settings["episodes"],
            settings["seed"],
            settings["obs_horizon"],
            settings["execute"],
            REWARD_TRANSFORMS.get(settings["reward_convention"]),
            render if backend else 0,
        )
        rollout_start = time.perf_counter()
        bar = tqdm(
            total=settings["episodes"],
            desc=f"eval {settings['env_id']}",
            unit="episode",
            disable=not progress,
        )
        with bar:
            results = rollouts.run(bar)
        wall = time.perf_counter() - rollout_start
    env_steps = sum(e.length for e in results)
    timing = {
        "env_steps": env_steps,
        "wall_time_s": wall,
        "startup_s": rollout_start - started,
        "env_steps_per_s": env_steps / wall,
    }
    return results, rollouts.frames, timing


def evaluate(
    checkpoint,
    episodes: int = 50,
    execute: int | None = None,
    workers: int = 2,
    seed: int = 0,
    candidates: int | None = None,
    max_steps: int | None = None,
    render: int = 0,
    out=None,
    progress: bool = True,
) -> dict:
    """Roll a checkpoint's agent out in its store's simulator; write `<stem>_eval.json` (the returned summary)
    and `<stem>_eval.csv` (episode, seed, success, return, length, final reward) next to the checkpoint or in
    `out`.

    execute: actions of each chunk run before re-planning (default H, open loop; k < H: receding horizon).
    candidates: overrides the agent's `act.candidates` (1: no best-of-N selection by Q).
    max_steps: overrides the environment's time limit. render: GIFs of the first `render` episodes."""
    if render < 0:
        raise ConfigError(f"render={render}: must be at least 0")
    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    settings = eval_settings(payload, checkpoint, episodes, execute, workers, seed, candidates, max_steps)
    results, frames, timing = roll_out(payload, settings, render, progress)
    return write_outputs({**settings, **summarize(results), **timing}, results, frames, checkpoint, out)


# --------------------------------------------------------------------------- outputs


def write_csv(path: Path, episodes: list[Episode]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "seed", "success", "return", "length", "final_reward"])
        for e in episodes:
            row = [e.episode, e.seed, int(e.success), repr(e.episode_return), e.length, repr(e.final_reward)]
            writer.writerow(row)


def write_gif(path: Path, frames: list[np.ndarray]) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)


def write_outputs(report: dict, episodes: list[Episode], frames: dict, checkpoint: Path, out) -> dict:
    """The GIFs, the CSV, then the JSON summary (which lists them), each written atomically."""
    directory = Path(out) if out is not None else checkpoint.parent
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{checkpoint.stem}_eval"
    gifs = [
        str(write_atomic(Path(f"{stem}_episode{i:03d}.gif"), partial(write_gif, frames=frames[i])))
        for i in sorted(frames)
    ]
    report = {**report, "outputs": {"json": f"{stem}.json", "csv": f"{stem}.csv", "gifs": gifs}}
    write_atomic(Path(report["outputs"]["csv"]), partial(write_csv, episodes=episodes))
    text = json.dumps(report, indent=2) + "\n"
    write_atomic(Path(report["outputs"]["json"]), lambda tmp: tmp.write_text(text))
    return report


def interval(bounds: tuple[float | None, float | None]) -> str:
    low, high = bounds
    return f" [{low:.4g}, {high:.4g}] (95% normal approx.)" if low is not None else ""


def format_summary(report: dict) -> str:
    low, high, episodes = *report["success_ci95"], report["episodes"]
    return_ci, final_ci = (interval(report[key]) for key in ("return_ci95", "final_reward_ci95"))
    choice = f", candidates {report['candidates']} ({report['select']})" if report["candidates"] else ""
    lines = [
        f"eval {Path(report['checkpoint']).name} (step {report['checkpoint_step']}) on {report['env_id']}: "
        f"execute {report['execute']} of H={report['horizon']}{choice}, seed {report['seed']}",
        f"success {report['success_rate']:.2f} [{low:.2f}, {high:.2f}] (95% Wilson, {episodes} episodes)",
        f"return {report['return_mean']:.4g}{return_ci}",
        f"final reward {report['final_reward_mean']:.4g}{final_ci} (the simulator's own, at the last step)",
        f"length mean {report['length_mean']:.1f}, min {report['length_min']}, max {report['length_max']}",
        f"speed {report['env_steps']} env steps in {report['wall_time_s']:.1f} s "
        f"({report['env_steps_per_s']:.1f} steps/s, {report['workers']} workers)",
        f"wrote {report['outputs']['json']}, {report['outputs']['csv']}",
    ]
    lines += [f"gif {path}" for path in report["outputs"]["gifs"]]
    return "\n".join(lines)

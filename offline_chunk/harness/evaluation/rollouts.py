"""The rollout engine: episodes of a chunk planner over a vector of simulators, stepped in lockstep.

Episodes run in `workers` processes (gymnasium's AsyncVectorEnv, one environment each), stepped in lockstep.
Each environment has a ChunkExecutor; all environments that need a chunk at the same step are planned in
ONE `plan` call. Autoreset is DISABLED: gymnasium 1.x's default, NEXT_STEP, resets a finished
environment inside the following `step` call, ignoring that call's action and without a seed. Here a
finished environment is reset at once, alone (`reset_mask`), with its next episode's seed; an environment
with no episode left idles (stepped with zero actions whose results are ignored) until the others finish.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

from offline_chunk.harness.envs.executor import ChunkExecutor
from offline_chunk.harness.evaluation.stats import Episode

RENDER_EVERY = 3  # steps between GIF frames (OGBench's video_frame_skip)


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
            for episode in self.advance():
                self.finished.append(episode)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(success=f"{sum(e.success for e in self.finished)}/{len(self.finished)}")
        return sorted(self.finished, key=lambda e: e.episode)

    def advance(self) -> list[Episode]:
        """One step of every running environment (planning first where a queue is empty); the episodes
        that ended, whose environments start their next ones."""
        self.plan_chunks()
        done = self.step()
        ended = [self.finish(k) for k in np.flatnonzero(done)]
        if done.any():
            self.start_episodes(done)
        return ended

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
        current = [ex.history[-1] if ex.history is not None else None for ex in self.executors]
        obs, self.env_reward, terminated, truncated, self.info = self.envs.step(actions)
        reward = self.env_reward if self.reward_fn is None else self.reward_fn(self.env_reward)
        self.on_step(running, current, actions, reward, terminated, obs)
        self.returns[running] += reward[running]
        self.lengths[running] += 1
        done = running & (terminated | truncated)
        for k in np.flatnonzero(running & ~done):
            self.executors[k].observe(obs[k])
        self.record_frames(running & ((self.lengths % RENDER_EVERY == 0) | done))
        return done

    def on_step(self, running, observations, actions, reward, terminated, next_observations) -> None:
        """After each step: the running environments' observations before it, actions, rewards (in the
        store's convention), terminations and the observations it reached (a hook for collectors)."""

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


def _ignoring_ctrl_c(env_fn):
    """In a worker: Ctrl-C in a terminal reaches every process of its group, and a worker that took it
    would die and break its vector env; the main process decides (stopping.py), and closes the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return env_fn()


@contextmanager
def vector_env(env_fn, num_envs: int, fresh: bool = False):
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode

    worker_fn = partial(_ignoring_ctrl_c, env_fn)
    envs = AsyncVectorEnv(
        [worker_fn] * num_envs, context=worker_context(fresh), autoreset_mode=AutoresetMode.DISABLED
    )
    try:
        yield envs
    except BaseException:
        envs.close(terminate=True)
        raise
    envs.close()


@contextmanager
def planning_threads(device: torch.device, workers: int):
    """On the CPU, plan with the cores of the affinity mask that the environment workers leave free (at least
    one, never more than the caller's threads), then restore the caller's setting: intra-op threads
    competing with busy workers or other processes for the same cores slow planning down many times (on the
    shared 2-core machine, a tiny CPQL act call took 161 ms with 2 threads and 11 ms with 1)."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(previous, len(os.sched_getaffinity(0)) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def planner(agent):
    """histories -> chunks by one `agent.act` call. A camera agent's environment observes its one camera's
    frames (OGBench's visual environments): the histories (B, To, H, W, C) uint8 are that camera's, with no
    state vector (eval_settings checks this)."""
    device = next(agent.parameters()).device

    def plan(histories: np.ndarray) -> np.ndarray:
        histories = torch.as_tensor(histories, device=device)
        if agent.encoder is None:
            return agent.act(histories).cpu().numpy()
        no_state = histories.new_zeros((*histories.shape[:2], 0), dtype=torch.float32)
        return agent.act(no_state, images={agent.encoder.cameras[0]: histories}).cpu().numpy()

    return plan

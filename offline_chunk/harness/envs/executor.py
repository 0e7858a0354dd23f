"""Executing action chunks in one environment: the observation history the agent plans from and the queue
of planned actions still to run.

A chunk of H actions is run open loop for `execute` steps: `execute = H` is the Q-chunking paper's protocol
(Li, Zhou, Levine 2025: all H actions, then re-plan); `execute = k < H` is receding-horizon control (run the
first k actions, drop the rest, re-plan). Both the queue and the history start afresh with each episode.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def as_observation(obs) -> np.ndarray:
    """A state vector as float32; camera frames (uint8) stay as they are."""
    obs = np.asarray(obs)
    return obs if obs.dtype == np.uint8 else obs.astype(np.float32)


class ChunkExecutor:
    """One environment's last `obs_horizon` observations and its queue of planned actions."""

    def __init__(self, obs_horizon: int, execute: int):
        if obs_horizon < 1 or execute < 1:
            raise ValueError(f"obs_horizon ({obs_horizon}) and execute ({execute}) must be at least 1")
        self.obs_horizon, self.execute = obs_horizon, execute
        self.history: np.ndarray | None = None  # (To, D) states or (To, H, W, C) uint8 frames, oldest first
        self.queue: deque[np.ndarray] = deque()

    def reset(self, obs: np.ndarray) -> None:
        """A new episode: the history is the first observation repeated To times, as the dataset pads an
        episode's first rows (docs/chunk_transitions.md: rows max(t - To + 1 + k, b)), and nothing is
        planned."""
        self.history = np.repeat(as_observation(obs)[None], self.obs_horizon, axis=0)
        self.queue.clear()

    def observe(self, obs: np.ndarray) -> None:
        """The observation after a step: it becomes the newest entry of the history."""
        self.history = np.concatenate([self.history[1:], as_observation(obs)[None]])

    def needs_plan(self) -> bool:
        return not self.queue

    def push(self, chunk: np.ndarray) -> None:
        """Plan the next `execute` steps with the first `execute` actions of an (H, A) chunk."""
        if self.queue:
            raise RuntimeError(f"push while {len(self.queue)} planned actions are still queued")
        if len(chunk) < self.execute:
            raise ValueError(f"a chunk of {len(chunk)} actions cannot run {self.execute} steps")
        self.queue.extend(np.asarray(chunk)[: self.execute])

    def next_action(self) -> np.ndarray:
        return self.queue.popleft()

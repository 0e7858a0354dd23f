"""Collecting episodes online: the rollout engine of evaluation, recording each episode's rows as the
store labels its rows, so that collected and offline transitions are indexed by one rule.

Row t of a store holds s_t, the action a_t taken there, and the reward and terminal of s_t: OGBench's
relabelling scores the simulator state recorded before each step (`info["prev_qpos"]`, ogbench
relabel_utils.relabel_dataset). OGBench's manipulation environments are registered with
`success_timing="pre"`: `step(a_t)` computes success, termination and reward from s_t, before the action
(ogbench/manipspace/envs/manipspace_env.py, `step`), so the reward `step(a_t)` returns is row t's, with
no shift. An episode that reaches the goal ends on its terminal row. One cut by the time limit after T steps
ends with one more row, s_T, as a recorded truncated episode ends on its last observation: every executed
action and its reward enter the replay (the chunk that ends at the limit bootstraps from s_T). That row
had no step: its action repeats a_{T-1} (the padding the store uses past an episode's end), its reward is
0 and it is not terminal; the chunk contract reads neither its action (beyond padding) nor its reward.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from offline_chunk.harness.envs.executor import as_observation
from offline_chunk.harness.evaluation.rollouts import Rollouts
from offline_chunk.harness.evaluation.stats import Episode


@dataclass
class EpisodeRows:
    """One collected episode's rows, in environment units and the store's reward convention: for an episode
    of T = episode.length steps, T rows if it ended on a terminal, T + 1 if the time limit cut it (the last
    row s_T, module docstring)."""

    episode: Episode
    obs: np.ndarray  # (rows, D) s_t
    action: np.ndarray  # (rows, A) a_t (s_T's: a_{T-1} repeated)
    reward: np.ndarray  # (rows,) the reward of s_t (s_T's: 0)
    terminal: np.ndarray  # (rows,) bool: s_t reached the goal (only the last row can)
    info: dict[str, np.ndarray] = field(default_factory=dict)  # (T, ...) step(a_t)'s, per recorded info key


def check_row_aligned(env) -> None:
    """Refuse an environment whose `step(a_t)` does not score s_t (see the module docstring)."""
    timing = getattr(env.unwrapped, "_success_timing", None)
    if timing != "pre":
        raise ValueError(
            f"{env.spec.id if env.spec else env}: rewards are computed with success_timing={timing!r}; "
            "collection labels row t with step(a_t)'s reward: that needs 'pre' (OGBench's manipulation tasks)"
        )


class Collector(Rollouts):
    """Episodes without end over the environments of a vector env: `advance()` runs one step of each and
    returns the episodes that ended, with their rows (`finish`). `info_keys` (e.g. prev_qpos) are recorded
    per step."""

    def __init__(self, envs, plan, seed, obs_horizon, execute, reward_fn=None, info_keys=(), first_episode=0):
        super().__init__(envs, plan, sys.maxsize, seed, obs_horizon, execute, reward_fn)
        self.info_keys = tuple(info_keys)
        self.rows: list[dict[str, list]] = [self._empty() for _ in range(envs.num_envs)]
        self.next_observations = None  # what the latest step reached, per environment
        self.env_steps = 0
        self.stop_at = sys.maxsize  # no episode starts once env_steps reaches it (a checkpoint is due)
        self.next_episode = first_episode  # episode i resets with seed + i, so a resumed run goes on alike
        self.start_episodes(np.ones(envs.num_envs, bool))

    def start_episodes(self, free: np.ndarray) -> None:
        """The next episodes, or (at `stop_at`) none: the free environments idle."""
        if self.env_steps >= self.stop_at:
            self.episode_of[free] = -1
            return
        super().start_episodes(free)

    def idle(self) -> bool:
        return bool((self.episode_of < 0).all())

    def restart(self, stop_at: int) -> None:
        """After every episode ended at a stop: every environment starts its next one, until `stop_at`."""
        self.stop_at = stop_at
        self.start_episodes(np.ones(self.envs.num_envs, bool))

    def _empty(self) -> dict[str, list]:
        return {key: [] for key in ("obs", "action", "reward", "terminal", *self.info_keys)}

    def on_step(self, running, observations, actions, reward, terminated, next_observations) -> None:
        self.next_observations = next_observations
        for k in np.flatnonzero(running):
            rows = self.rows[k]
            rows["obs"].append(observations[k])
            rows["action"].append(actions[k])
            rows["reward"].append(reward[k])
            rows["terminal"].append(bool(terminated[k]))
            for key in self.info_keys:
                rows[key].append(self.info[key][k])
        self.env_steps += int(running.sum())

    def finish(self, k: int) -> EpisodeRows:
        """Environment k's episode ended: its summary and its rows (its next episode starts empty); cut by
        the time limit, it ends on the observation its last step reached."""
        rows, self.rows[k] = self.rows[k], self._empty()
        if not rows["terminal"][-1]:
            rows["obs"].append(as_observation(self.next_observations[k]))
            rows["action"].append(rows["action"][-1])
            rows["reward"].append(0.0)
            rows["terminal"].append(False)
        return EpisodeRows(
            super().finish(k),
            np.asarray(rows["obs"], np.float32),
            np.asarray(rows["action"], np.float32),
            np.asarray(rows["reward"], np.float32),
            np.asarray(rows["terminal"], bool),
            {key: np.asarray(rows[key]) for key in self.info_keys},
        )

"""Helpers the test modules share: tiny stores and configs, hand-made critic values, a tree digest."""

import hashlib
from pathlib import Path

import gymnasium
import numpy as np
import torch

from offline_chunk.agents import AGENTS
from offline_chunk.config import load_config
from offline_chunk.data.store import StepData, write_store

TINY_UNET_CRITIC = [
    "agent.critic.feature_dim=16",
    "agent.critic.down_dims=[8, 16]",
    "agent.critic.head_hidden=32",
]
TINY_ACTORS = {  # each actor family's own knobs
    "unet": ["agent.policy.feature_dim=16", "agent.policy.down_dims=[8, 16]", "agent.act.candidates=4"],
    "transformer": [
        "agent.policy.feature_dim=16",
        "agent.policy.num_heads=2",
        "agent.policy.feedforward_dim=32",
        "agent.policy.encoder_layers=1",
        "agent.policy.decoder_layers=1",
    ],
    "flow": [  # with QC's MLP critics
        "agent.policy.hidden_dims=[32, 32]",
        "agent.critic.hidden_dims=[32, 32]",
        "agent.act.candidates=4",
        "agent.backup_candidates=4",
    ],
}
ACTOR_FAMILY = {
    "cpql": "unet",
    "dql": "unet",
    "qc": "flow",
    "chunk_sac": "transformer",
    "td3bc": "transformer",
}


def tiny_nets(agent: str) -> list[str]:
    """Overrides that shrink an agent's networks to test size."""
    return TINY_UNET_CRITIC + TINY_ACTORS[ACTOR_FAMILY[agent]]


TINY_NETS = tiny_nets("cpql")

# The registry's agents by how they act: by Q over sampled candidate chunks, or by their actor's one chunk.
BY_CANDIDATES = [name for name, agent in AGENTS.items() if agent.acts_by_candidates]
BY_ACTOR = [name for name, agent in AGENTS.items() if not agent.acts_by_candidates]

# K = 2 critics, B = 3 states, N = 2 candidate next chunks.
TARGET_Q = torch.tensor([[[4.0, 6.0], [1.0, 1.0], [10.0, -2.0]], [[5.0, 3.0], [7.0, 0.0], [8.0, 0.0]]])
ONLINE_Q = torch.tensor([[[0.0, 9.0], [1.0, 1.0], [0.0, 9.0]], [[0.0, 9.0], [1.0, 1.0], [5.0, 0.0]]])


def chain_store(path, episodes=4, length=8, reward_scale=1.0):
    """A deterministic chain: row t of each episode observes one-hot(t), reward c (t + 1) / length with
    c = reward_scale, terminal at the last row. Actions are a fixed function of t."""
    t = np.tile(np.arange(length), episodes)
    data = StepData(
        observations={"obs": np.eye(length, dtype=np.float32)[t]},
        action=np.stack([np.sin(t), np.cos(t)], axis=1).astype(np.float32) * 0.5,
        reward=(reward_scale * (t + 1) / length).astype(np.float32),
        terminal=t == length - 1,
        episode_ends=np.arange(length, length * episodes + 1, length),
        attrs={"action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]},
    )
    return write_store(data, path)


def monte_carlo_values(length: int, gamma: float) -> np.ndarray:
    """G_t = Σ_{i>=0} γ^i r_{t+i} up to the terminal, with r_t = (t + 1) / length."""
    rewards = (np.arange(length) + 1) / length
    return np.array([sum(gamma**i * r for i, r in enumerate(rewards[t:])) for t in range(length)])


def tiny_config(agent, store, run_dir, *extra):
    overrides = [
        f"dataset={store}",
        f"run_dir={run_dir}",
        "batch_size=32",
        "horizon=2",
        "gamma=0.9",
        "log_every=10",
        "checkpoint_every=1000",
        *tiny_nets(agent),
        *extra,
    ]
    return load_config(agent, "default", overrides)


def tiny_scene_checkpoint(directory: Path, *overrides: str) -> Path:
    """A CPQL checkpoint with the tiny networks on a one-episode, 20-step scene task 2 store (seconds)."""
    from offline_chunk.data.sources import convert
    from offline_chunk.train import train

    store = convert(
        "ogbench:scene-play-singletask-task2-v0?episodes=1&steps=20&workers=1",
        out=directory / "s.zarr",
        progress=False,
    )
    named = [f"dataset={store}", f"run_dir={directory / 'run'}", "batch_size=8"]
    return train(load_config("cpql", "default", [*named, *overrides, *TINY_NETS]))


def tree_digest(path: Path) -> str:
    """A digest of every file under `path` (names and contents): equal digests, an untouched tree."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


class CountingEnv(gymnasium.Env):
    """An episode reset with seed s lasts 3 + s % 5 steps and ends terminated (success) for even s, truncated
    for odd s. The observation is (s, t); the reward of step t (from 1) is t. A running episode checks that
    each action it receives is the one planned for it, (s, t): an action lost to an autoreset, or meant for
    another episode, fails the step.
    Stepping a finished episode (an idle worker) is allowed and changes nothing."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float64)

    def reset(self, *, seed=None, options=None):
        if seed is None:
            raise AssertionError("unseeded reset")
        super().reset(seed=seed)
        self.episode_seed, self.t = seed, 0
        return self.obs(), {}

    def length(self) -> int:
        return 3 + self.episode_seed % 5

    def obs(self) -> np.ndarray:
        return np.array([self.episode_seed, self.t], np.float64)

    def step(self, action):
        if self.t >= self.length():
            return self.obs(), 0.0, True, False, {"success": False}
        if not np.array_equal(action, self.obs()):
            raise AssertionError(f"episode {self.episode_seed} step {self.t} received action {action}")
        self.t += 1
        ended = self.t == self.length()
        success = ended and self.episode_seed % 2 == 0
        return self.obs(), float(self.t), success, ended and not success, {"success": success}

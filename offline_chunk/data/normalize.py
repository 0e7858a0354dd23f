"""Normalization between environment units and network units.

Observations are standardized with the store's per-dimension mean and std; actions are mapped to
[-1, 1] with the declared action bounds (store attributes `action_low` / `action_high`) or, when the
store declares none, the per-dimension range of the recorded actions. The statistics are buffers, so
they travel with the agent's state dict into every checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from offline_chunk.data.store import StepData

MIN_STD = 1e-6  # a constant observation dimension is centred, not blown up
MIN_RANGE = 1e-6


class Normalizer(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int):
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_low", -torch.ones(action_dim))
        self.register_buffer("action_high", torch.ones(action_dim))

    @classmethod
    def from_data(cls, data: StepData) -> Normalizer:
        obs, action = data.obs, data.action
        normalizer = cls(obs.shape[1], action.shape[1])
        normalizer.obs_mean.copy_(torch.from_numpy(obs.mean(axis=0, dtype=np.float64)))
        normalizer.obs_std.copy_(torch.from_numpy(obs.std(axis=0, dtype=np.float64)).clamp_min(MIN_STD))
        low = np.broadcast_to(
            np.asarray(data.attrs.get("action_low", action.min(axis=0)), np.float64), action.shape[1:]
        )
        high = np.broadcast_to(
            np.asarray(data.attrs.get("action_high", action.max(axis=0)), np.float64), action.shape[1:]
        )
        normalizer.action_low.copy_(torch.tensor(low))
        normalizer.action_high.copy_(torch.tensor(np.maximum(high, low + MIN_RANGE)))
        return normalizer

    def obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def action(self, action: torch.Tensor) -> torch.Tensor:
        """Environment units -> [-1, 1]."""
        return 2 * (action - self.action_low) / (self.action_high - self.action_low) - 1

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> environment units."""
        return self.action_low + (action + 1) * (self.action_high - self.action_low) / 2

"""Chunk critics: Q(observation history, action chunk), single and as a vectorized ensemble.

Shapes: obs (B, To, D); chunk (B, H, A) -> (B,), or N candidate chunks per state (B, N, H, A) -> (B, N).
The ensemble adds a leading member axis: (K, B) or (K, B, N).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from einops import rearrange, repeat
from torch import nn

from offline_chunk.nets.ensemble import Ensemble
from offline_chunk.nets.unet1d import ChunkQNet, ObsEncoder


class ChunkCritic(nn.Module):
    """ObsEncoder feature as the FiLM condition of a ChunkQNet over the chunk."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        feature_dim: int = 256,
        down_dims: Sequence[int] = (64, 128),
        kernel_size: int = 5,
        n_groups: int = 8,
        head_hidden: int = 256,
        encoder_hidden: int = 256,
    ):
        super().__init__()
        self.encoder = ObsEncoder(obs_dim, obs_horizon, feature_dim, encoder_hidden)
        self.q = ChunkQNet(action_dim, feature_dim, down_dims, kernel_size, n_groups, head_hidden)

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        feature = self.encoder(obs)
        if chunk.dim() == 3:
            return self.q(chunk, feature)
        if chunk.dim() != 4:
            raise ValueError(f"chunk must be (B, H, A) or (B, N, H, A), got shape {tuple(chunk.shape)}")
        # N candidates per state: encode each state once, score all B * N (state, candidate) pairs together.
        n_candidates = chunk.shape[1]
        values = self.q(
            rearrange(chunk, "b n h a -> (b n) h a"), repeat(feature, "b f -> (b n) f", n=n_candidates)
        )
        return rearrange(values, "(b n) -> b n", n=n_candidates)


class ChunkCriticEnsemble(Ensemble):
    """`size` independently initialised ChunkCritics (sized by ChunkCritic's keyword arguments);
    forward(obs, chunk) -> (K, B) or (K, B, N)."""

    def __init__(self, obs_dim: int, obs_horizon: int, action_dim: int, size: int = 2, **critic_kwargs):
        member = functools.partial(ChunkCritic, obs_dim, obs_horizon, action_dim, **critic_kwargs)
        super().__init__(member, size)

"""Chunk critics: Q(observation history, action chunk), single and as a vectorized ensemble.

Shapes: obs (B, To, D); chunk (B, H, A) -> (B,), or N candidate chunks per state (B, N, H, A) -> (B, N).
The ensemble adds a leading member axis: (K, B) or (K, B, N).

Two kinds (`critic.kind`), with the same ensemble and target machinery:
- `unet` (ChunkCritic): an observation encoder's feature as the FiLM condition of a 1D U-Net over the chunk.
- `mlp` (MLPChunkCritic): Q-chunking's critic, an MLP on [flattened observation history, flattened chunk].
Each takes its own size knobs from the critic config (`CRITIC_KINDS`); the other kind's are not used.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange, repeat
from pydantic import Field
from torch import nn

from offline_chunk.nets.ensemble import Ensemble
from offline_chunk.nets.mlp import SplitInputMLP, xavier_dense
from offline_chunk.nets.unet1d import ChunkQNet, ObsEncoder
from offline_chunk.sections import Section


class CriticConfig(Section):
    """The agent's critic ensemble: its kind and each kind's sizes (the other kind's are not used)."""

    kind: Literal["unet", "mlp"] = "unet"
    """unet: U-Net over the chunk | mlp: Q-chunking's MLP critic"""
    ensemble: int = Field(2, ge=1)
    """K critics (2: clipped double Q)"""
    feature_dim: int = 256
    """unet only: observation feature width"""
    down_dims: list[int] = [64, 128]
    """unet only: channels of the U-Net's levels"""
    head_hidden: int = 256
    """unet only: width of the value head"""
    hidden_dims: list[int] = [512, 512, 512, 512]
    """mlp only (QC: 4 x 512, GELU, LayerNorm)"""
    layer_norm: bool = True
    """mlp only"""
    mlp_style: Literal["qc", "rlpd"] = "qc"
    """mlp only: qc: Dense -> GELU -> LayerNorm (QC's critic) | rlpd: Dense -> LayerNorm -> ReLU (RLPD-AC's,
    Q-chunking's rlpd_networks/mlp.py)"""


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


class MLPChunkCritic(nn.Module):
    """Q-chunking's critic (github ColinQiyangLi/qc, utils/networks.py `Value`): QC's MLP (nets/mlp.py) on
    the observation concatenated with the flattened chunk, then a Dense(1) value. The observation's share
    of the first Dense is computed once per state for N candidate chunks."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        hidden_dims: Sequence[int] = (512, 512, 512, 512),
        layer_norm: bool = True,
        mlp_style: str = "qc",
    ):
        super().__init__()
        self.trunk = SplitInputMLP(
            [obs_dim * obs_horizon, action_dim * horizon], hidden_dims, layer_norm, style=mlp_style
        )
        self.value = xavier_dense(hidden_dims[-1], 1)

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        if chunk.dim() not in (3, 4):
            raise ValueError(f"chunk must be (B, H, A) or (B, N, H, A), got shape {tuple(chunk.shape)}")
        candidates = chunk.dim() == 4
        obs_part = self.trunk.project(0, rearrange(obs, "b t d -> b (t d)"))  # once per state
        chunk_part = self.trunk.project(1, rearrange(chunk, "... h a -> ... (h a)"))
        x = self.trunk(chunk_part + (obs_part[:, None] if candidates else obs_part))
        # The value layer in its parameters' precision under autocast, as ChunkQNet's (compute.py).
        with torch.autocast(x.device.type, enabled=False):
            return self.value(x.to(self.value.weight.dtype)).squeeze(-1)


CRITIC_KINDS = {"unet": ChunkCritic, "mlp": MLPChunkCritic}


def critic_sizes(kind: str, critic_cfg: dict) -> dict:
    """The size knobs of the critic config that critic `kind` takes (the other kind's are not its own)."""
    if kind not in CRITIC_KINDS:
        raise ValueError(f"critic.kind must be one of {sorted(CRITIC_KINDS)}, got {kind!r}")
    own = inspect.signature(CRITIC_KINDS[kind]).parameters
    return {key: value for key, value in critic_cfg.items() if key in own}


class ChunkCriticEnsemble(Ensemble):
    """`size` independently initialised chunk critics of `kind` (sized by that critic's keyword
    arguments); forward(obs, chunk) -> (K, B) or (K, B, N)."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        size: int = 2,
        kind: str = "unet",
        horizon: int | None = None,
        **critic_kwargs,
    ):
        sizes = critic_sizes(kind, critic_kwargs)
        shape = {"obs_dim": obs_dim, "obs_horizon": obs_horizon, "action_dim": action_dim}
        if kind == "mlp":
            shape["horizon"] = horizon  # the MLP's input width depends on H
        member = functools.partial(CRITIC_KINDS[kind], **shape, **sizes)
        super().__init__(member, size)

"""RLPD-AC's chunk actor (Q-chunking, github ColinQiyangLi/qc, agents/acrlpd.py with rlpd_networks/mlp.py and
rlpd_distributions/tanh_normal.py): an MLP on the flattened observation history (Dense -> ReLU per hidden
layer, no LayerNorm: acrlpd builds its actor MLP without `use_layer_norm`), then two Dense heads, the mean
and the log-std of one diagonal Gaussian over the flattened chunk (H x A), the log-std clipped to
[log_std_min, log_std_max], squashed by tanh. Kernels Xavier-uniform, biases 0.

A diagonal Gaussian over H x A factorises over the chunk's steps, so the joint log-probability is the sum
of the per-step terms that the ACT actor's `tanh_gaussian_log_prob` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field

from offline_chunk.nets.mlp import SplitInputMLP, xavier_dense
from offline_chunk.policies.act import tanh_gaussian_log_prob
from offline_chunk.sections import Section


class GaussianMLPConfig(Section):
    """chunk_sac's actor as RLPD-AC's: acrlpd get_config actor_hidden_dims, TanhNormal's log-std bounds."""

    kind: Literal["mlp_gaussian"] = "mlp_gaussian"
    hidden_dims: list[int] = Field([512, 512, 512, 512], min_length=1)
    """acrlpd: 4 x 512, ReLU"""
    log_std_min: float = -20.0
    """clip of the log-std (rlpd_distributions/tanh_normal.py: -20)"""
    log_std_max: float = 2.0


class TanhGaussianMLPPolicy(torch.nn.Module):
    """π(a_1..a_H | s): one tanh-squashed diagonal Gaussian over the flattened chunk."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        *,
        hidden_dims: Sequence[int] = (512, 512, 512, 512),
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.horizon, self.log_std_min, self.log_std_max = horizon, log_std_min, log_std_max
        self.trunk = SplitInputMLP([obs_dim * obs_horizon], hidden_dims, layer_norm=False, style="rlpd")
        self.mean_head = xavier_dense(hidden_dims[-1], horizon * action_dim)
        self.log_std_head = xavier_dense(hidden_dims[-1], horizon * action_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, To, D) -> a reparameterised chunk (B, H, A), its joint log p(a_1..a_H | s) (B,) and the mean
        chunk tanh(μ) (B, H, A)."""
        hidden = self.trunk(self.trunk.project(0, rearrange(obs, "b t d -> b (t d)")))
        per_step = lambda flat: rearrange(flat, "b (h a) -> b h a", h=self.horizon)  # noqa: E731
        mean = per_step(self.mean_head(hidden))
        log_std = per_step(self.log_std_head(hidden)).clamp(self.log_std_min, self.log_std_max)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        log_prob = tanh_gaussian_log_prob(pre_tanh, mean, log_std).sum(dim=-1)
        return torch.tanh(pre_tanh), log_prob, torch.tanh(mean)

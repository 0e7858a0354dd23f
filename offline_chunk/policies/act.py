"""ACT-style chunk actors: a transformer encoder over the observation history and a decoder over H learned
query tokens, one output token per chunk step (Zhao et al. 2023, "Learning Fine-Grained Bimanual
Manipulation with Low-Cost Hardware", without the CVAE latent).

- `TanhGaussianChunkPolicy` (SAC): each step is a tanh-squashed diagonal Gaussian, sampled by
  reparameterisation, ε ~ N(0, I), ã = μ + σ ⊙ ε, a = tanh(ã), with the chunk's joint log-probability.
- `DeterministicChunkPolicy` (TD3+BC): the same transformer with a tanh output per step.

Decoding is parallel by default (all H queries attend to each other at once); `autoregressive` feeds each
step's decoder output into the next step's query under a causal mask. Everything is in normalized units:
observations (B, To, D) standardized, chunks (B, H, A) in [-1, 1].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from offline_chunk.sections import Section

DECODINGS = ("parallel", "autoregressive")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class TransformerConfig(Section):
    """The ACT-style transformer's sizes (ChunkTransformer)."""

    feature_dim: int = 256
    """transformer width (the train presets set it: 128 on CPU)"""
    num_heads: int = Field(4, ge=1)
    encoder_layers: int = Field(2, ge=1)
    """over the To observation tokens"""
    decoder_layers: int = Field(2, ge=1)
    """over the H learned query tokens"""
    feedforward_dim: int = 512
    decoding: Literal["parallel", "autoregressive"] = "parallel"
    """autoregressive: each step's output feeds the next step's query"""


class GaussianTransformerConfig(TransformerConfig):
    """chunk_sac's actor: a tanh-Gaussian per chunk step."""

    kind: Literal["act_gaussian"] = "act_gaussian"
    log_std_min: float = -5.0
    """clamp of the per-step log-std"""
    log_std_max: float = 2.0


class DeterministicTransformerConfig(TransformerConfig):
    """td3bc's actor: a tanh output per chunk step."""

    kind: Literal["act_deterministic"] = "act_deterministic"


def tanh_gaussian_log_prob(pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log p(a_t | s) per chunk step, (B, H, A) -> (B, H), for a = tanh(ã), ã ~ N(μ, σ²):

        log p(a_t) = Σ_i [log N(ã_{t,i}; μ_{t,i}, σ_{t,i}) − log(1 − a_{t,i}²)]

    (the change of variables of SAC, Haarnoja et al. 2018, appendix C), with the identity
    log(1 − tanh(x)²) = 2 (log 2 − x − softplus(−2x)), which stays exact and finite for saturated actions
    where 1 − a² rounds to 0."""
    standardized = (pre_tanh - mean) * torch.exp(-log_std)
    gaussian = -0.5 * standardized.pow(2) - log_std - LOG_SQRT_2PI
    log_abs_det_jacobian = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (gaussian - log_abs_det_jacobian).sum(dim=-1)


class ChunkTransformer(nn.Module):
    """(B, To, D) observation history -> (B, H, feature_dim), one decoder output token per chunk step."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        horizon: int,
        feature_dim: int,
        num_heads: int,
        encoder_layers: int,
        decoder_layers: int,
        feedforward_dim: int,
        decoding: str,
    ):
        super().__init__()
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        self.decoding = decoding
        self.obs_embedding = nn.Linear(obs_dim, feature_dim)
        self.obs_position = nn.Parameter(0.02 * torch.randn(obs_horizon, feature_dim))
        self.queries = nn.Parameter(0.02 * torch.randn(horizon, feature_dim))
        # Pre-LayerNorm layers, no dropout (the actor of an RL agent; dropout would make Q targets noisy).
        layer_args = dict(
            d_model=feature_dim,
            nhead=num_heads,
            dim_feedforward=feedforward_dim,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer_args),
            encoder_layers,
            norm=nn.LayerNorm(feature_dim),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer_args), decoder_layers, norm=nn.LayerNorm(feature_dim)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        memory = self.encoder(self.obs_embedding(obs) + self.obs_position)
        queries = self.queries.expand(obs.shape[0], -1, -1)
        if self.decoding == "parallel":
            return self.decoder(queries, memory)
        return self._decode_autoregressive(queries, memory)

    def _decode_autoregressive(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Step t's input is query_t plus the decoder output of step t − 1; a causal mask keeps each step
        from seeing later ones, so the last pass's outputs at steps < t equal the earlier passes'."""
        inputs = queries[:, :1]
        outputs = self.decoder(inputs, memory)
        for step in range(1, queries.shape[1]):
            inputs = torch.cat([inputs, queries[:, step : step + 1] + outputs[:, -1:]], dim=1)
            mask = nn.Transformer.generate_square_subsequent_mask(step + 1, device=queries.device)
            outputs = self.decoder(inputs, memory, tgt_mask=mask, tgt_is_causal=True)
        return outputs


class ACTChunkPolicy(nn.Module):
    """The transformer and a linear head with `outputs_per_step` values per chunk step."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        outputs_per_step: int,
        feature_dim: int = 256,
        num_heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        feedforward_dim: int = 512,
        decoding: str = "parallel",
    ):
        super().__init__()
        self.action_dim, self.horizon = action_dim, horizon
        self.transformer = ChunkTransformer(
            obs_dim,
            obs_horizon,
            horizon,
            feature_dim,
            num_heads,
            encoder_layers,
            decoder_layers,
            feedforward_dim,
            decoding,
        )
        self.head = nn.Linear(feature_dim, outputs_per_step)


class TanhGaussianChunkPolicy(ACTChunkPolicy):
    """π(a_1..a_H | s): per step a tanh-squashed diagonal Gaussian with a clamped log-std."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        **transformer_kwargs,
    ):
        super().__init__(obs_dim, obs_horizon, action_dim, horizon, 2 * action_dim, **transformer_kwargs)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(
        self, obs: torch.Tensor, return_sequence: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reparameterised sample, its log-probability and the mean action tanh(μ):

        return_sequence=True:  chunk (B, H, A), joint log p(a_1..a_H | s) (B,), mean chunk (B, H, A)
        return_sequence=False: first action (B, A), log p(a_1 | s) (B,), its mean (B, A)
        """
        mean, log_std = self.head(self.transformer(obs)).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        step_log_prob = tanh_gaussian_log_prob(pre_tanh, mean, log_std)  # (B, H)
        if return_sequence:
            return torch.tanh(pre_tanh), step_log_prob.sum(dim=-1), torch.tanh(mean)
        return torch.tanh(pre_tanh[:, 0]), step_log_prob[:, 0], torch.tanh(mean[:, 0])


class DeterministicChunkPolicy(ACTChunkPolicy):
    """μ(s) = (a_1..a_H) in [-1, 1]: the same transformer with a tanh output per step."""

    def __init__(self, obs_dim: int, obs_horizon: int, action_dim: int, horizon: int, **transformer_kwargs):
        super().__init__(obs_dim, obs_horizon, action_dim, horizon, action_dim, **transformer_kwargs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, To, D) -> (B, H, A)."""
        return torch.tanh(self.head(self.transformer(obs)))

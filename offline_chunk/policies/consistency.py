"""Consistency chunk policy as in CPQL (Chen et al. 2024, "Boosting Continuous Control with Consistency
Policy"): consistency training in the Karras parametrisation (Song et al. 2023, "Consistency Models").

The Karras sigma levels and the boundary-condition scalings c_skip, c_out come from diffusers'
`CMStochasticIterativeScheduler`. Written here: c_in and c_noise in torch (its `sigma_to_t` is numpy-only,
and `scale_model_input` depends on its step counter), the loss weighting, and the sampling loop (its `step`
is stateful and looks the step index up with `.item()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from diffusers import CMStochasticIterativeScheduler
from pydantic import Field

from offline_chunk.policies.base import (
    ChunkGenerator,
    UNetPolicySizes,
    per_sample,
    per_sample_mean,
    standard_normal,
    uniform_indices,
)

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
RHO = 7.0
LOSS_KINDS = ("recon", "consistency")


class ConsistencyConfig(UNetPolicySizes):
    """CPQL's consistency policy (official agents/karras_diffusion.py)."""

    kind: Literal["consistency"] = "consistency"
    sigma_max: float = 80.0
    """Karras schedule top level (sigma_min 0.002, sigma_data 0.5, rho 7)"""
    num_scales: int = Field(40, ge=2)
    """N Karras levels"""
    sample_steps: list[int] = []
    """levels to re-noise to after the first step: [] one-step sampling (official "onestep"); AntMaze:
    multistep, e.g. [20, 39]"""
    ode_steps: int = Field(0, ge=0, le=200)
    """0: consistency sampling (sample_steps); k > 0: k Euler steps of the probability-flow ODE with the
    network as the denoiser (what bc_loss=recon trains), whose one-step sample is about E[a | s]: the
    spread best of N needs (benchmarks/RESULTS.md, QC section)"""


def karras_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """Loss weight w(sigma) = SNR + 1 / sigma_data^2 = 1 / sigma^2 + 1 / sigma_data^2 (the "karras" weighting
    of the consistency models code, EDM's lambda(sigma) up to the constant)."""
    return sigma**-2 + sigma_data**-2


class ConsistencyChunkPolicy(ChunkGenerator):
    """D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)), clipped to [-1, 1].

    num_scales: N Karras levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min (rho = 7).
    sample_steps: Karras level indices (increasing, in 1..N-1) to re-noise to after the first one-step
    sample D(sigma_max z, sigma_max); empty (default) means one-step sampling.
    ode_steps: k > 0 samples by k Euler steps of the probability-flow ODE over k + 1 Karras levels instead
    (evenly spaced indices from 0 to N-1); exclusive with sample_steps.
    """

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        *,
        sigma_max: float = 80.0,
        num_scales: int = 40,
        sample_steps: Sequence[int] = (),
        ode_steps: int = 0,
        **net_kwargs,
    ):
        super().__init__(obs_dim, obs_horizon, action_dim, horizon, **net_kwargs)
        self.karras = CMStochasticIterativeScheduler(
            num_train_timesteps=num_scales,
            sigma_min=SIGMA_MIN,
            sigma_max=sigma_max,
            sigma_data=SIGMA_DATA,
            rho=RHO,
        )
        self.register_buffer("sigmas", self.karras.sigmas.to(torch.float32), persistent=False)
        self.num_scales = num_scales
        self.sample_steps = self._checked_sample_steps(sample_steps)
        self.register_buffer("ode_sigmas", self.sigmas[:0], persistent=False)
        self.use_ode(ode_steps)

    def use_ode(self, steps: int) -> None:
        """Sample by `steps` Euler steps of the probability-flow ODE over steps + 1 Karras levels, evenly
        spaced indices from 0 to N-1 (0: consistency sampling, by `sample_steps`)."""
        if steps and self.sample_steps:
            raise ValueError("ode_steps and sample_steps are two samplers: set one of them")
        if not 0 <= steps < self.num_scales:
            raise ValueError(f"ode_steps must be in 0..{self.num_scales - 1}, got {steps}")
        levels = torch.linspace(0, self.num_scales - 1, steps + 1).round().long() if steps else []
        self.ode_sigmas = self.sigmas[levels]

    def _checked_sample_steps(self, sample_steps: Sequence[int]) -> tuple[int, ...]:
        steps = tuple(sample_steps)
        increasing = all(a < b for a, b in zip(steps, steps[1:], strict=False))
        if not increasing or any(not 1 <= i < self.num_scales for i in steps):
            raise ValueError(
                f"sample_steps must be increasing level indices in 1..{self.num_scales - 1}, got {steps}"
            )
        return steps

    def denoise(self, chunk: torch.Tensor, sigma: torch.Tensor, obs_feature: torch.Tensor) -> torch.Tensor:
        """D(x, sigma) for (B, H, A) chunks at (B,) noise levels; D(x, sigma_min) = x (boundary condition)."""
        c_skip, c_out = self.karras.get_scalings_for_boundary_condition(sigma)
        c_in = (sigma**2 + SIGMA_DATA**2) ** -0.5
        c_noise = 250.0 * torch.log(sigma)  # 1000 * 0.25 ln(sigma), Song et al. 2023, App. C
        raw = self.network(per_sample(c_in) * chunk, c_noise, obs_feature)
        return (per_sample(c_skip) * chunk + per_sample(c_out) * raw).clamp(-1.0, 1.0)

    def consistency_losses(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        target: ConsistencyChunkPolicy | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample (B,) losses from one draw of levels and noise: 'recon', and 'consistency' when a target
        network is given (consistency training, Song et al. 2023, Alg. 3, with the Euler solver)."""
        batch = actions.shape[0]
        level = uniform_indices(self.num_scales - 1, batch, actions.device, generator)
        sigma, sigma_next = self.sigmas[level], self.sigmas[level + 1]
        noise = standard_normal(actions.shape, actions, generator)
        noisy = actions + per_sample(sigma) * noise
        denoised = self.denoise(noisy, sigma, self.obs_encoder(obs))
        weight = karras_weight(sigma)
        losses = {"recon": weight * per_sample_mean((denoised - actions) ** 2, action_mask)}
        if target is not None:
            # Euler step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from sigma_n to
            # sigma_{n+1} with the data chunk as D; it lands on actions + sigma_{n+1} * noise.
            noisy_next = noisy + per_sample((sigma_next - sigma) / sigma) * (noisy - actions)
            with torch.no_grad():
                target_denoised = target.denoise(noisy_next, sigma_next, target.obs_encoder(obs))
            losses["consistency"] = weight * per_sample_mean((denoised - target_denoised) ** 2, action_mask)
        return losses

    def bc_loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        kind: str = "recon",
        target: ConsistencyChunkPolicy | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B,) loss of the given kind. CPQL's official code computes both the recon and the consistency
        loss but back-propagates only the recon one (the consistency one is logged); kind='recon' is that
        choice, kind='consistency' needs the target network (e.g. an EMA copy of this policy)."""
        if kind not in LOSS_KINDS:
            raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
        if kind == "consistency" and target is None:
            raise ValueError("kind='consistency' needs target= (a ConsistencyChunkPolicy, e.g. an EMA copy)")
        used_target = target if kind == "consistency" else None
        return self.consistency_losses(obs, actions, action_mask, used_target, generator)[kind]

    def _sample(self, obs_feature: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if len(self.ode_sigmas):
            return self._ode_sample(obs_feature, generator)
        batch = obs_feature.shape[0]
        shape = (batch, self.horizon, self.action_dim)
        sigma_max = self.sigmas[0].expand(batch)
        pure_noise = per_sample(sigma_max) * standard_normal(shape, obs_feature, generator)
        chunk = self.denoise(pure_noise, sigma_max, obs_feature)
        for level in self.sample_steps:
            # multistep consistency sampling (Song et al. 2023, Alg. 1): re-noise to sigma_i, denoise again
            sigma = self.sigmas[level].expand(batch)
            renoise_std = (sigma**2 - SIGMA_MIN**2).clamp(min=0.0).sqrt()
            chunk = self.denoise(
                chunk + per_sample(renoise_std) * standard_normal(shape, chunk, generator),
                sigma,
                obs_feature,
            )
        return chunk

    def _ode_sample(self, obs_feature: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Euler steps of the probability-flow ODE dx/dσ = (x − D(x, σ)) / σ from x = σ_max z down the
        levels of `ode_sigmas` (Karras et al. 2022, Alg. 1 without Heun's correction)."""
        batch = obs_feature.shape[0]
        x = self.ode_sigmas[0] * standard_normal(
            (batch, self.horizon, self.action_dim), obs_feature, generator
        )
        for high, low in zip(self.ode_sigmas[:-1], self.ode_sigmas[1:], strict=True):
            x = x + (low - high) * (x - self.denoise(x, high.expand(batch), obs_feature)) / high
        return x.clamp(-1.0, 1.0)

"""DDPM chunk policy as in Diffusion-QL (Wang et al. 2023): few diffusion steps, VP beta schedule,
epsilon prediction, x0 clipped to [-1, 1].

diffusers' schedulers define the noise schedule (betas, alphas_cumprod, the sampler's timesteps). Their
`step` compares tensor timesteps on the host and looks coefficients up at every call; for a T = 5 chain
run twice per update that overhead (and a host read per step) is not wanted, so the reverse step is
written here as one affine map per step whose coefficients are computed once from the scheduler
(`ReverseStep`); the tests check it against diffusers' `step` to float precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from pydantic import Field

from offline_chunk.policies.base import (
    ChunkGenerator,
    UNetPolicySizes,
    per_sample,
    per_sample_mean,
    standard_normal,
    uniform_indices,
)

BETA_SCHEDULES = ("vp", "linear", "squaredcos_cap_v2")
SAMPLERS = ("ddpm", "ddim")


class DDPMConfig(UNetPolicySizes):
    """Diffusion-QL's DDPM policy (official agents/diffusion.py)."""

    kind: Literal["ddpm"] = "ddpm"
    num_diffusion_steps: int = Field(5, ge=1)
    """T = 5 with the VP schedule (paper Sec. 4, official main.py)"""
    beta_schedule: Literal["vp", "linear", "squaredcos_cap_v2"] = "vp"
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    """ddim: faster sampling (deterministic)"""


def vp_betas(num_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """(T,) float64 betas of the variance-preserving SDE discretised into T steps (Diffusion-QL, after
    Song et al. 2021): alpha_t = exp(-beta_min / T - (beta_max - beta_min) (2t - 1) / (2 T^2)), t = 1..T,
    beta_t = 1 - alpha_t.
    """
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    alphas = torch.exp(-beta_min / num_steps - (beta_max - beta_min) * (2 * t - 1) / (2 * num_steps**2))
    return 1 - alphas


def _schedule_config(num_steps: int, beta_schedule: str) -> dict:
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    config = dict(
        num_train_timesteps=num_steps, clip_sample=True, clip_sample_range=1.0, prediction_type="epsilon"
    )
    if beta_schedule == "vp":
        return config | dict(trained_betas=vp_betas(num_steps).tolist())
    return config | dict(beta_schedule=beta_schedule)


@dataclass(frozen=True)
class ReverseStep:
    """x_prev = x0_coef · x̂0 + sample_coef · x_t + eps_coef · ε̂ + noise_std · z, z ~ N(0, I), where
    x̂0 = clip((x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, −1, 1) is the clipped data estimate."""

    timestep: int
    sqrt_alpha_cumprod: float
    sqrt_one_minus_alpha_cumprod: float
    x0_coef: float
    sample_coef: float
    eps_coef: float
    noise_std: float


def reverse_steps(scheduler: DDPMScheduler | DDIMScheduler) -> list[ReverseStep]:
    """The reverse chain of a diffusers scheduler (after `set_timesteps` for DDIM) as affine steps.

    DDPM, posterior q(x_{t'} | x_t, x̂0) with 'fixed_small' variance (Ho et al. 2020, eqs. 6-7):
        x0_coef = √ᾱ_{t'} β / (1 − ᾱ_t),  sample_coef = √(ᾱ_t / ᾱ_{t'}) (1 − ᾱ_{t'}) / (1 − ᾱ_t),
        noise_std² = β (1 − ᾱ_{t'}) / (1 − ᾱ_t) at t > 0, with β = 1 − ᾱ_t / ᾱ_{t'};
    DDIM with η = 0 (Song et al. 2021, eq. 12): x_{t'} = √ᾱ_{t'} x̂0 + √(1 − ᾱ_{t'}) ε̂.
    t' is the next timestep of the chain, ᾱ = 1 past its end (diffusers' `one` / set_alpha_to_one)."""
    alphas_cumprod = scheduler.alphas_cumprod.double().tolist()
    timesteps = [int(t) for t in scheduler.timesteps]
    steps = []
    for t, t_prev in zip(timesteps, [*timesteps[1:], -1], strict=True):
        a_t, a_prev = alphas_cumprod[t], alphas_cumprod[t_prev] if t_prev >= 0 else 1.0
        if isinstance(scheduler, DDIMScheduler):
            coefs = dict(x0_coef=math.sqrt(a_prev), sample_coef=0.0, eps_coef=math.sqrt(1 - a_prev))
            noise_std = 0.0
        else:
            beta = 1 - a_t / a_prev
            coefs = dict(
                x0_coef=math.sqrt(a_prev) * beta / (1 - a_t),
                sample_coef=math.sqrt(a_t / a_prev) * (1 - a_prev) / (1 - a_t),
                eps_coef=0.0,
            )
            noise_std = math.sqrt(max(beta * (1 - a_prev) / (1 - a_t), 1e-20)) if t > 0 else 0.0
        steps.append(ReverseStep(t, math.sqrt(a_t), math.sqrt(1 - a_t), **coefs, noise_std=noise_std))
    return steps


class DDPMChunkPolicy(ChunkGenerator):
    """Epsilon-prediction diffusion over chunks.

    beta_schedule: 'vp' (Diffusion-QL's), or 'linear' / 'squaredcos_cap_v2' passed through to diffusers
    ('linear' uses diffusers' beta range 1e-4..0.02, meant for hundreds of steps, not T = 5).
    sampler: 'ddpm' (all T ancestral steps, posterior variance 'fixed_small') or 'ddim' (deterministic,
    eta = 0, `inference_steps` steps, which must divide T; 'trailing' spacing so the chain starts at t = T).
    """

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        *,
        num_diffusion_steps: int = 5,
        beta_schedule: str = "vp",
        sampler: str = "ddpm",
        inference_steps: int | None = None,
        **net_kwargs,
    ):
        super().__init__(obs_dim, obs_horizon, action_dim, horizon, **net_kwargs)
        config = _schedule_config(num_diffusion_steps, beta_schedule)
        self.num_diffusion_steps = num_diffusion_steps
        self.noise_scheduler = DDPMScheduler(**config, variance_type="fixed_small")
        self.sampler = self._make_sampler(sampler, inference_steps, config)
        self.steps = reverse_steps(self.sampler)
        alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(torch.float32)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt(), persistent=False)

    def _make_sampler(self, sampler: str, inference_steps: int | None, config: dict):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "ddpm":
            if inference_steps not in (None, self.num_diffusion_steps):
                raise ValueError("sampler='ddpm' runs all num_diffusion_steps; use sampler='ddim' for fewer")
            return self.noise_scheduler
        steps, total = inference_steps or self.num_diffusion_steps, self.num_diffusion_steps
        if steps < 1 or total % steps:
            raise ValueError(f"inference_steps={steps} must divide num_diffusion_steps={total}")
        ddim = DDIMScheduler(**config, timestep_spacing="trailing", set_alpha_to_one=True)
        ddim.set_timesteps(steps)
        return ddim

    def bc_loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B,) MSE between predicted and true noise at a uniformly drawn step t (Ho et al. 2020, eq. 14)."""
        noise = standard_normal(actions.shape, actions, generator)
        t = uniform_indices(self.num_diffusion_steps, actions.shape[0], actions.device, generator)
        # q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I): diffusers' add_noise, with the schedule held on the device
        noisy = (
            per_sample(self.sqrt_alphas_cumprod[t]) * actions
            + per_sample(self.sqrt_one_minus_alphas_cumprod[t]) * noise
        )
        predicted_noise = self.network(noisy, t.to(actions.dtype), self.obs_encoder(obs))
        return per_sample_mean((predicted_noise - noise) ** 2, action_mask)

    def _sample(self, obs_feature: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch = obs_feature.shape[0]
        chunk = standard_normal((batch, self.horizon, self.action_dim), obs_feature, generator)
        for step in self.steps:
            noise_level = obs_feature.new_full((batch,), float(step.timestep))
            eps = self.network(chunk, noise_level, obs_feature)
            x0 = ((chunk - step.sqrt_one_minus_alpha_cumprod * eps) / step.sqrt_alpha_cumprod).clamp(
                -1.0, 1.0
            )
            chunk = step.x0_coef * x0 + step.sample_coef * chunk + step.eps_coef * eps
            if step.noise_std > 0:
                chunk = chunk + step.noise_std * standard_normal(chunk.shape, chunk, generator)
        return chunk  # the last step returns the clipped x0 estimate, so it lies in [-1, 1]

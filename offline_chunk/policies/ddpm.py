"""DDPM chunk policy as in Diffusion-QL (Wang et al. 2023): few diffusion steps, VP beta schedule,
epsilon prediction, x0 clipped to [-1, 1]. diffusers' schedulers do the forward noising and reverse steps;
their `step` is plain differentiable tensor arithmetic, so the graph survives the chain when keep_graph=True.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from offline_chunk.policies.base import ChunkGenerator, per_sample_mean, standard_normal, uniform_indices

BETA_SCHEDULES = ("vp", "linear", "squaredcos_cap_v2")
SAMPLERS = ("ddpm", "ddim")


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
        noisy = self.noise_scheduler.add_noise(actions, noise, t)
        predicted_noise = self.network(noisy, t.to(actions.dtype), self.obs_encoder(obs))
        return per_sample_mean((predicted_noise - noise) ** 2, action_mask)

    def _sample(self, obs_feature: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch = obs_feature.shape[0]
        chunk = standard_normal((batch, self.horizon, self.action_dim), obs_feature, generator)
        for t in self.sampler.timesteps:
            noise_level = t.to(obs_feature).expand(batch)
            predicted_noise = self.network(chunk, noise_level, obs_feature)
            chunk = self.sampler.step(predicted_noise, t, chunk, generator=generator).prev_sample
        return chunk  # the last step returns the clipped x0 estimate, so it lies in [-1, 1]

"""The denoiser shared by the diffusion-family chunk policies, and their common API.

Everything is in normalized units: observations (B, To, D) standardized, chunks (B, H, A) in [-1, 1].
Randomness comes from torch's global RNG unless a `torch.Generator` is passed, so a run is reproducible
from `torch.manual_seed` and resumable from the saved RNG state.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from diffusers.models.embeddings import Timesteps
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange, repeat
from torch import nn

from offline_chunk.nets.unet1d import ChunkUNet, ObsEncoder
from offline_chunk.sections import Section


class UNetPolicySizes(Section):
    """The sizes of the diffusion policies' U-Net (ChunkGenerator)."""

    feature_dim: int = 256
    """observation feature width (the train presets set it: 128 on CPU)"""
    down_dims: list[int] = [64, 128, 256]
    """channels of the U-Net's levels over the chunk"""
    kernel_size: int = 5
    """temporal convolution kernel"""


def standard_normal(
    shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N(0, I) noise of `shape` on `like`'s device and dtype (a CPU generator also serves a GPU tensor)."""
    return randn_tensor(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)


def uniform_indices(
    high: int, batch: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(batch,) int64 drawn uniformly from {0, ..., high - 1}."""
    rng_device = generator.device if generator is not None else device
    return torch.randint(high, (batch,), generator=generator, device=rng_device).to(device)


def per_sample(scale: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1), to scale (B, H, A) chunks one factor per sample."""
    return scale.view(-1, 1, 1)


def per_sample_mean(squared_error: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, A) -> (B,): mean over the chunk, over recorded steps only when a (B, H) bool mask is given."""
    if action_mask is None:
        return squared_error.mean(dim=(1, 2))
    step_weight = action_mask.to(squared_error.dtype).unsqueeze(-1)
    recorded_entries = step_weight.sum(dim=(1, 2)).clamp(min=1.0) * squared_error.shape[-1]
    return (squared_error * step_weight).sum(dim=(1, 2)) / recorded_entries


class ChunkGenerator(nn.Module, abc.ABC):
    """Observation encoder + U-Net over the chunk, conditioned on [obs feature, noise-level embedding].

    The noise level is whatever scalar the subclass feeds the net (a DDPM timestep index, the consistency
    model's c_noise(sigma)); it is embedded sinusoidally (Vaswani et al. 2017, via diffusers' `Timesteps`)
    and passed through a small MLP, as in diffusion_policy's ConditionalUnet1D.
    """

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        feature_dim: int = 256,
        noise_emb_dim: int = 64,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
    ):
        super().__init__()
        self.obs_dim, self.obs_horizon = obs_dim, obs_horizon
        self.action_dim, self.horizon = action_dim, horizon
        self.obs_encoder = ObsEncoder(obs_dim, obs_horizon, feature_dim)
        self.noise_embedding = nn.Sequential(
            Timesteps(noise_emb_dim, flip_sin_to_cos=True, downscale_freq_shift=0),
            nn.Linear(noise_emb_dim, 4 * noise_emb_dim),
            nn.Mish(),
            nn.Linear(4 * noise_emb_dim, noise_emb_dim),
        )
        self.unet = ChunkUNet(action_dim, feature_dim + noise_emb_dim, down_dims, kernel_size, n_groups)

    def network(
        self, noisy_chunk: torch.Tensor, noise_level: torch.Tensor, obs_feature: torch.Tensor
    ) -> torch.Tensor:
        """Raw net output for a (B, H, A) chunk, (B,) float noise levels and (B, feature_dim) obs features."""
        cond = torch.cat([obs_feature, self.noise_embedding(noise_level)], dim=-1)
        return self.unet(noisy_chunk, cond)

    def sample(
        self, obs: torch.Tensor, keep_graph: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, To, D) observations -> (B, H, A) chunks in [-1, 1].

        keep_graph=False samples under no_grad; True keeps the graph through the whole sampling chain (for
        policy improvement that back-propagates Q through the sampler, as Diffusion-QL and CPQL do).
        """
        return self.sample_candidates(obs, 1, keep_graph, generator)[:, 0]

    def sample_candidates(
        self, obs: torch.Tensor, n: int, keep_graph: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, To, D) -> (B, n, H, A): n chunks per observation, drawn in one batched call (each observation
        encoded once)."""
        with torch.enable_grad() if keep_graph else torch.no_grad():
            feature = repeat(self.obs_encoder(obs), "b f -> (b n) f", n=n)
            return rearrange(self._sample(feature, generator), "(b n) h a -> b n h a", n=n)

    @abc.abstractmethod
    def bc_loss(
        self, obs: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """Per-sample (B,) behaviour-cloning loss of (B, H, A) chunks; action_mask (B, H) excludes padding."""

    @abc.abstractmethod
    def _sample(self, obs_feature: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, feature_dim) -> (B, H, A) chunks; gradient mode is set by `sample`."""

"""1D U-Net blocks over action sequences with FiLM conditioning (after diffusion_policy's ConditionalUnet1D).

Tensors are channel-first inside the nets: (B, C, H). The public modules take and return chunks as
(B, H, A), the layout of the data layer.

- `ChunkUNet`: sequence -> sequence (the denoiser of the chunk policies); H is padded up to a multiple
  of 2^(levels - 1) so every down-sampling stage halves an even length, and cropped back.
- `ChunkQNet`: sequence -> scalar (the critic head); down path with strided convolutions (any H >= 1
  works: each stage maps L to ceil(L / 2)), mean over time, MLP on [pooled, condition].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _groups(channels: int, n_groups: int) -> int:
    """The largest group count <= n_groups that divides `channels` (GroupNorm needs a divisor)."""
    return next(g for g in range(min(n_groups, channels), 0, -1) if channels % g == 0)


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(_groups(out_channels, n_groups), out_channels),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the condition sets a per-channel scale and bias between them (FiLM, Perez et al.
    2018)."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.first = ConvBlock(in_channels, out_channels, kernel_size, n_groups)
        self.second = ConvBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = rearrange(self.film(cond), "b (two c) -> two b c 1", two=2)
        h = self.first(x) * scale + bias
        return self.second(h) + self.skip(x)


class ChunkUNet(nn.Module):
    """Denoiser over a chunk: (B, H, A) noisy chunk and (B, cond_dim) condition -> (B, H, A)."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
    ):
        super().__init__()
        dims = [action_dim, *down_dims]
        block = lambda i, o: FiLMResidualBlock(i, o, cond_dim, kernel_size, n_groups)  # noqa: E731
        self.levels = len(down_dims)
        downsample = lambda k, o: nn.Conv1d(o, o, 3, 2, 1) if k < self.levels - 1 else nn.Identity()  # noqa: E731
        self.down = nn.ModuleList(
            nn.ModuleList([block(i, o), block(o, o), downsample(k, o)])
            for k, (i, o) in enumerate(zip(dims[:-1], dims[1:], strict=True))
        )
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        self.up = nn.ModuleList(
            nn.ModuleList([block(2 * o, i), block(i, i), nn.ConvTranspose1d(i, i, 4, 2, 1)])
            for i, o in reversed(list(zip(down_dims[:-1], down_dims[1:], strict=True)))
        )
        self.out = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, chunk: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        horizon = chunk.shape[1]
        multiple = 2 ** (self.levels - 1)
        x = rearrange(chunk, "b h a -> b a h")
        x = F.pad(x, (0, -horizon % multiple))  # zero-pad the tail to a length every stage can halve
        skips = []
        for first, second, downsample in self.down:
            x = second(first(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for (first, second, upsample), skip in zip(self.up, reversed(skips[1:]), strict=True):
            x = second(first(torch.cat([x, skip], dim=1), cond), cond)
            x = upsample(x)
        return rearrange(self.out(x)[..., :horizon], "b a h -> b h a")


class ChunkQNet(nn.Module):
    """Critic over a chunk: (B, H, A) chunk and (B, cond_dim) condition -> (B,) value."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (64, 128),
        kernel_size: int = 5,
        n_groups: int = 8,
        head_hidden: int = 256,
    ):
        super().__init__()
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList(
            nn.ModuleList(
                [FiLMResidualBlock(i, o, cond_dim, kernel_size, n_groups), nn.Conv1d(o, o, 3, 2, 1)]
            )
            for i, o in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = nn.Sequential(
            nn.Linear(down_dims[-1] + cond_dim, head_hidden),
            nn.Mish(),
            nn.Linear(head_hidden, head_hidden),
            nn.Mish(),
            nn.Linear(head_hidden, 1),
        )

    def forward(self, chunk: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = rearrange(chunk, "b h a -> b a h")
        for block, downsample in self.down:
            x = downsample(block(x, cond))
        pooled = x.mean(dim=-1)
        hidden = self.head[:-1](torch.cat([pooled, cond], dim=-1))
        # The value layer runs in its parameters' precision under autocast (compute.py): Q is a regression
        # target, and bf16 would round a Q of -80 to a multiple of 0.5.
        value_layer = self.head[-1]
        with torch.autocast(hidden.device.type, enabled=False):
            return value_layer(hidden.to(value_layer.weight.dtype)).squeeze(-1)


class ObsEncoder(nn.Module):
    """History of To observations (B, To, D) -> feature (B, feature_dim), an MLP on the flattened history."""

    def __init__(self, obs_dim: int, obs_horizon: int, feature_dim: int = 256, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim * obs_horizon, hidden),
            nn.Mish(),
            nn.Linear(hidden, feature_dim),
            nn.Mish(),
        )
        self.feature_dim = feature_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(rearrange(obs, "b t d -> b (t d)"))

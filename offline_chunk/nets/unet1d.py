"""1D U-Net blocks over action sequences with FiLM conditioning (after diffusion_policy's ConditionalUnet1D).

The public modules take and return chunks as (B, H, A), the layout of the data layer, and hold their
activations the same way, steps then channels: (B, L, C). The parameters are diffusion_policy's (Conv1d,
GroupNorm, Mish), computed for the few steps of a chunk as matrix products over the flattened sequence
(`ChunkConv1d`), with the channels innermost so that the element-wise work (GroupNorm, FiLM, Mish) runs
over contiguous channel vectors: library convolutions are built for long sequences, and at length 5 with
channels first a compiled kernel meets an innermost axis of 5 (benchmarks/RESULTS.md, issue 42).

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


class ChunkConv1d(nn.Conv1d):
    """nn.Conv1d's parameters and result (up to float rounding) on a steps-last sequence: `forward` takes
    (B, L, C_in) and returns (B, L_out, C_out).

    - kernel size 1: a Linear over the channels at every step;
    - a sequence of length L <= 2 x kernel size: one Linear over the flattened (L, C_in) input, whose
      (L_out C_out, L C_in) matrix holds w[o, c, i - j s + p] at row (j, o) and column (i, c) where that
      index lies in the kernel, 0 elsewhere (zero padding). At L = kernel size it multiplies as many terms
      as the convolution. The matrix is built from the weight at every call, so gradients reach the
      weight as the convolution's do;
    - longer sequences: the library convolution.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1,) or self.padding_mode != "zeros":
            raise ValueError("ChunkConv1d: groups 1, dilation 1 and zero padding only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kernel,), (stride,), (padding,) = self.kernel_size, self.stride, self.padding
        length = x.shape[-2]
        if kernel == 1 and stride == 1 and padding == 0:
            return F.linear(x, self.weight[..., 0], self.bias)
        if length > 2 * kernel:
            return super().forward(x.transpose(-1, -2)).transpose(-1, -2)
        out_length = (length + 2 * padding - kernel) // stride + 1
        # tap[j, i]: the kernel index that input step i meets at output step j
        steps = torch.arange(length, device=x.device)
        tap = steps[None, :] - stride * torch.arange(out_length, device=x.device)[:, None] + padding
        inside = (tap >= 0) & (tap < kernel)
        taps = torch.index_select(self.weight, -1, tap.clamp(0, kernel - 1).flatten())
        taps = torch.where(inside, taps.unflatten(-1, (out_length, length)), 0.0)  # (C_out, C_in, L_out, L)
        matrix = rearrange(taps, "o c j i -> (j o) (i c)")
        bias = None if self.bias is None else self.bias.repeat(out_length)
        return F.linear(x.flatten(-2), matrix, bias).unflatten(-1, (out_length, self.out_channels))


def group_norm_steps(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Group normalisation of a steps-last sequence (B, L, C), written out: each group of C / G channels is
    normalised over its channels and all L steps, then scaled and shifted per channel."""
    grouped = x.unflatten(-1, (num_groups, -1))  # (B, L, G, C / G)
    # two means rather than torch.var_mean, whose eager kernel over two strided axes ran 2.5x slower here
    centered = grouped - grouped.mean(dim=(-3, -1), keepdim=True)
    var = centered.square().mean(dim=(-3, -1), keepdim=True)
    return (centered * torch.rsqrt(var + eps)).flatten(-2) * weight + bias


class StepGroupNorm(nn.GroupNorm):
    """nn.GroupNorm's parameters and result on a steps-last sequence (B, L, C), written out
    (`group_norm_steps`) so that, compiled, inductor fuses it with the FiLM and Mish around it. One form
    for eager and compiled runs: both compute the same update."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_steps(x, self.num_groups, self.weight, self.bias, self.eps)


def _groups(channels: int, n_groups: int) -> int:
    """The largest group count <= n_groups that divides `channels` (GroupNorm needs a divisor)."""
    return next(g for g in range(min(n_groups, channels), 0, -1) if channels % g == 0)


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, steps last."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__(
            ChunkConv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            StepGroupNorm(_groups(out_channels, n_groups), out_channels),
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
        self.skip = (
            ChunkConv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, L, C_in), cond (B, cond_dim) -> (B, L, C_out)."""
        scale, bias = rearrange(self.film(cond), "b (two c) -> two b 1 c", two=2)
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
        downsample = lambda k, o: ChunkConv1d(o, o, 3, 2, 1) if k < self.levels - 1 else nn.Identity()  # noqa: E731
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
            ChunkConv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, chunk: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        horizon = chunk.shape[1]
        multiple = 2 ** (self.levels - 1)
        x = F.pad(
            chunk, (0, 0, 0, -horizon % multiple)
        )  # zero-pad the tail to a length every stage can halve
        skips = []
        for first, second, downsample in self.down:
            x = second(first(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for (first, second, upsample), skip in zip(self.up, reversed(skips[1:]), strict=True):
            x = second(first(torch.cat([x, skip], dim=-1), cond), cond)
            x = upsample(x.transpose(-1, -2)).transpose(-1, -2)
        return self.out(x)[:, :horizon]


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
                [FiLMResidualBlock(i, o, cond_dim, kernel_size, n_groups), ChunkConv1d(o, o, 3, 2, 1)]
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
        x = chunk
        for block, downsample in self.down:
            x = downsample(block(x, cond))
        pooled = x.mean(dim=-2)
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

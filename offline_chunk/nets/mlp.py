"""Q-chunking's MLPs (github ColinQiyangLi/qc), the trunks of its critics and actors, in two styles:

- `qc` (utils/networks.py `MLP`: QC's critic `Value` and flow actor `ActorVectorField`): each hidden layer
  Dense -> GELU (tanh approximation, flax's default) [-> LayerNorm];
- `rlpd` (rlpd_networks/mlp.py `MLP`: RLPD-AC's critic ensemble and tanh-Gaussian actor, agents/acrlpd.py):
  each hidden layer Dense [-> LayerNorm] -> ReLU.

LayerNorm eps 1e-6 as flax's; kernels Xavier-uniform (flax variance_scaling(1, fan_avg, uniform)), biases 0.

The input is a concatenation of parts, e.g. [observation, chunk] or [observation, noisy chunk, time]. The
first Dense is split into one Dense per part, W [x_1; x_2] = W_1 x_1 + W_2 x_2, so that a part shared by
many rows (the state of N candidate chunks, or of every step of a sampling chain) is projected once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SQRT_8_OVER_PI = math.sqrt(8.0 / math.pi)  # 2 √(2/π)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (flax's nn.gelu default), 0.5 x (1 + tanh z), z = √(2/π)(x + 0.044715 x³),
    written as x σ(2z): the same function (0.5 (1 + tanh z) = σ(2z)), which inductor's CPU code evaluates at
    about twice the speed of its tanh (benchmarks/RESULTS.md, issue 42)."""
    return x * torch.sigmoid(SQRT_8_OVER_PI * (x + 0.044715 * x * x * x))


def xavier_dense(width_in: int, width_out: int) -> nn.Linear:
    """A Dense layer as flax's default_init: Xavier-uniform kernel, zero bias."""
    layer = nn.Linear(width_in, width_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class SplitInputMLP(nn.Module):
    """The hidden layers of QC's MLP on the concatenation of `part_widths` inputs; the caller adds the
    output Dense (`xavier_dense`). `project(i, x)` is the first Dense's share of part i (part 0 carries
    the bias); `forward(first)` runs the hidden layers from the summed shares."""

    def __init__(
        self,
        part_widths: Sequence[int],
        hidden_dims: Sequence[int],
        layer_norm: bool,
        style: Literal["qc", "rlpd"] = "qc",
    ):
        super().__init__()
        if style not in ("qc", "rlpd"):
            raise ValueError(f"MLP style must be qc or rlpd, got {style!r}")
        self.style = style
        self.parts = nn.ModuleList(
            nn.Linear(width, hidden_dims[0], bias=index == 0) for index, width in enumerate(part_widths)
        )
        self.hidden = nn.ModuleList(
            xavier_dense(width_in, width_out)
            for width_in, width_out in zip(hidden_dims[:-1], hidden_dims[1:], strict=True)
        )
        norm = functools.partial(nn.LayerNorm, eps=1e-6) if layer_norm else lambda width: nn.Identity()
        self.norms = nn.ModuleList(norm(width) for width in hidden_dims)
        self._init_first_layer(sum(part_widths), hidden_dims[0])

    @torch.no_grad()
    def _init_first_layer(self, fan_in: int, fan_out: int) -> None:
        """Xavier-uniform over the whole concatenated input: one bound for every part's columns."""
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        for layer in self.parts:
            layer.weight.uniform_(-bound, bound)
        nn.init.zeros_(self.parts[0].bias)

    def project(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.parts[index](x)

    def activate(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        if self.style == "qc":
            return norm(gelu_tanh(x))
        return F.relu(norm(x))

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        x = self.activate(first, self.norms[0])
        for layer, norm in zip(self.hidden, self.norms[1:], strict=True):
            x = self.activate(layer(x), norm)
        return x

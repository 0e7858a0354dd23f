"""Flow-matching chunk policy: Q-chunking's behaviour-cloning actor (Li, Zhou & Levine 2025; github
ColinQiyangLi/qc, agents/acfql.py `actor_loss`'s BC flow loss and `compute_flow_actions`, utils/networks.py
`ActorVectorField`).

Flow matching on the linear path (Lipman et al. 2023; Liu et al. 2023, rectified flow): noise x_0 ~ N(0, I)
and the recorded chunk x_1 give x_t = (1 − t) x_0 + t x_1 with t ~ U[0, 1], and the velocity field
v_θ(s, x_t, t), QC's MLP on [observation, flattened x_t, t], regresses x_1 − x_0:

    L_bc = ‖v_θ(s, x_t, t) − (x_1 − x_0)‖²  (mean over the chunk's recorded entries)

Sampling integrates dx/dt = v_θ from t = 0 to 1 by K Euler steps, x_{k+1} = x_k + v_θ(s, x_k, k / K) / K,
and clips the chunk to [−1, 1]. The observation's share of the first layer is computed once per state for
all N candidates and all K steps (nets/mlp.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange, repeat
from pydantic import Field
from torch import nn

from offline_chunk.nets.mlp import SplitInputMLP, xavier_dense
from offline_chunk.policies.base import per_sample_mean, standard_normal
from offline_chunk.sections import Section


class FlowConfig(Section):
    """QC's BC flow actor (acfql get_config): actor_hidden_dims, flow_steps, actor_layer_norm."""

    kind: Literal["flow"] = "flow"
    hidden_dims: list[int] = [512, 512, 512, 512]
    """the velocity MLP's hidden layers (GELU)"""
    flow_steps: int = Field(10, ge=1)
    """K Euler steps from noise to a chunk"""
    layer_norm: bool = False
    """LayerNorm after each hidden layer (QC's actor: off)"""


class FlowChunkPolicy(nn.Module):
    """v_θ(s, x_t, t) on (B, To, D) observations, (B, H, A) chunks in [-1, 1] and (B, 1) times."""

    def __init__(
        self,
        obs_dim: int,
        obs_horizon: int,
        action_dim: int,
        horizon: int,
        *,
        hidden_dims: Sequence[int] = (512, 512, 512, 512),
        flow_steps: int = 10,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.horizon, self.action_dim, self.flow_steps = horizon, action_dim, flow_steps
        self.trunk = SplitInputMLP([obs_dim * obs_horizon, action_dim * horizon, 1], hidden_dims, layer_norm)
        self.velocity_out = xavier_dense(hidden_dims[-1], action_dim * horizon)

    def observation_part(self, obs: torch.Tensor) -> torch.Tensor:
        """The observations' (B, To, D) share of the first layer, (B, hidden)."""
        return self.trunk.project(0, rearrange(obs, "b t d -> b (t d)"))

    def velocity(self, obs_part: torch.Tensor, chunk: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """v_θ (B, H, A) at (B, H, A) chunks and (B, 1) times, from `observation_part` rows (B, hidden)."""
        first = (
            obs_part
            + self.trunk.project(1, rearrange(chunk, "b h a -> b (h a)"))
            + self.trunk.project(2, time)
        )
        return rearrange(self.velocity_out(self.trunk(first)), "b (h a) -> b h a", h=self.horizon)

    def bc_loss(
        self, obs: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) flow-matching loss of (B, H, A) recorded chunks at one draw of noise and time each."""
        noise = standard_normal(actions.shape, actions)
        time = torch.rand(actions.shape[0], 1, device=actions.device, dtype=actions.dtype)
        noisy = (1 - time[:, :, None]) * noise + time[:, :, None] * actions
        predicted = self.velocity(self.observation_part(obs), noisy, time)
        return per_sample_mean((predicted - (actions - noise)) ** 2, action_mask)

    def sample(
        self, obs: torch.Tensor, keep_graph: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, To, D) -> (B, H, A) chunks in [-1, 1]; keep_graph keeps the graph through the K steps."""
        return self.sample_candidates(obs, 1, keep_graph, generator)[:, 0]

    def sample_candidates(
        self, obs: torch.Tensor, n: int, keep_graph: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, To, D) -> (B, n, H, A): n chunks per state from n noise draws, in one batched chain."""
        with torch.enable_grad() if keep_graph else torch.no_grad():
            obs_part = repeat(self.observation_part(obs), "b f -> (b n) f", n=n)
            chunk = standard_normal((obs_part.shape[0], self.horizon, self.action_dim), obs_part, generator)
            for step in range(self.flow_steps):
                time = obs_part.new_full((obs_part.shape[0], 1), step / self.flow_steps)
                chunk = chunk + self.velocity(obs_part, chunk, time) / self.flow_steps
            return rearrange(chunk.clamp(-1.0, 1.0), "(b n) h a -> b n h a", n=n)

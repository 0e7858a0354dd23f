"""TD3BCAgent: TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS
2021) on action chunks; with H = 1 it is the published algorithm.

critic   Σ_k mean (Q_k(s, a) − y)²,  y = R^(τ) + (1 − d) γ^τ min_k Q_k^targ(s′, ã′)   (targets.py)
         ã′ = clip(π′(s′) + clip(ε, −c, c), −1, 1),  ε ~ N(0, σ² I)   target policy smoothing (TD3)
actor    every `policy_delay` updates:  L = −λ Q_1(s, π(s)) + ‖π(s) − a_data‖²  (padding masked),
         λ = α / mean|Q_1(s, π(s))| (detached)
targets  Polyak τ for the critics and the target actor π′, right after each actor update (TD3)

The actor is the ACT-style transformer of ChunkSACAgent with a deterministic tanh head rather than the
paper's MLP: it reads the observation history and emits one token per chunk step, and with one
architecture for both agents a comparison between them isolates the objective.

Each update (ChunkAgent.update) takes a critic step on `critic_objective`, on delayed updates an actor step
on `actor_objective` (both through torch.compile with `compile`; `update_actor`), and then
`update_targets`, all below.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field

from offline_chunk.agents.base import AgentConfig, ChunkAgent, Dims, SingleChunkActConfig
from offline_chunk.agents.losses import float32
from offline_chunk.agents.targets import LowerBound, backup_value, bellman_loss, lerp_parameters_
from offline_chunk.data.normalize import Normalizer
from offline_chunk.policies import DeterministicTransformerConfig
from offline_chunk.policies.base import per_sample_mean


class TD3BCActConfig(SingleChunkActConfig):
    select: Literal["deterministic"] = "deterministic"
    """the actor's chunk pi(s)"""


class TD3BCConfig(AgentConfig):
    """Defaults from the paper and its official code (github: sfujim/TD3_BC): alpha 2.5, policy noise 0.2,
    noise clip 0.5, policy delay 2, tau 0.005, Adam 3e-4, two critics with the min backup, no clipping."""

    name: Literal["td3bc"] = "td3bc"
    policy: DeterministicTransformerConfig = DeterministicTransformerConfig()
    target_lower_bound: LowerBound = "none"
    """monte_carlo: y = max(y, recorded return from t) (MCAC, Wilcox et al. 2022)"""
    alpha: float = Field(2.5, ge=0)
    """lambda = alpha / mean|Q| in the actor loss -lambda Q + BC"""
    policy_noise: float = Field(0.2, ge=0)
    """target policy smoothing, in normalized action units [-1, 1]"""
    noise_clip: float = Field(0.5, ge=0)
    policy_delay: int = Field(2, ge=1)
    """actor and target updates every 2nd critic update"""
    tau: float = Field(0.005, gt=0, le=1)
    """Polyak rate of the critic and actor targets"""
    act: TD3BCActConfig = TD3BCActConfig()


class TD3BCAgent(ChunkAgent):
    name = "td3bc"
    Config = TD3BCConfig  # one smoothed next chunk per state: the min or mean backup
    deterministic_actor = True

    def __init__(self, dims: Dims, cfg: TD3BCConfig | dict, normalizer: Normalizer, total_steps: int):
        super().__init__(dims, cfg, normalizer, total_steps)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)

    @torch.no_grad()
    def next_state_value(self, next_obs: torch.Tensor, batch: dict) -> torch.Tensor:
        """min_k Q_k^targ(s′, ã′) with the target actor's next chunk smoothed by clipped noise."""
        next_chunk = self.actor_target(next_obs)
        clip = self.cfg.noise_clip
        noise = (torch.randn_like(next_chunk) * self.cfg.policy_noise).clamp(-clip, clip)
        target_q = self.critic_target(next_obs, (next_chunk + noise).clamp(-1.0, 1.0)[:, None])  # (K, B, 1)
        return backup_value(self.cfg.backup, target_q)

    def critic_objective(self, obs, actions, next_obs, batch):
        """Σ_k mean [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ V(s′) with the smoothed value above."""
        with self.autocast():
            next_value = self.next_state_value(next_obs, batch).float()
            q = self.critic(obs, actions).float()  # (K, B)
        return bellman_loss(q, next_value, batch, self.cfg.target_lower_bound)

    def delayed_update(self, update_index: int) -> bool:
        """TD3's delayed policy updates: the actor and the targets move on updates 0, d, 2d, ... (a host
        counter, no device sync)."""
        return update_index % self.cfg.policy_delay == 0

    def update_actor(self, obs, actions, action_mask) -> dict[str, torch.Tensor]:
        """The actor step on delayed updates only (no metrics in between: the log averages each metric over
        the updates that report it)."""
        return (
            super().update_actor(obs, actions, action_mask) if self.delayed_update(self.num_updates) else {}
        )

    def actor_objective(self, obs, actions, action_mask):
        """−λ Q_1(s, π(s)) + ‖π(s) − a_data‖², λ = α / mean|Q_1| (detached; over a data-parallel run's
        union batch)."""
        with self.autocast():
            chunk = self.actor(obs)
            q = self.critic(obs, chunk, detach_params=True)[0]  # Q_1 (the paper's code); no grads to critics
            lam = self.cfg.alpha / self.group.batch_mean(q.abs().mean()).detach()
            q_loss = -q.mean()
            bc_loss = per_sample_mean((chunk - actions).pow(2), action_mask).mean()
            return float32(
                lam * q_loss + bc_loss,
                {"actor/q_loss": q_loss.detach(), "actor/bc_loss": bc_loss.detach(), "actor/lambda": lam},
            )

    def update_targets(self) -> None:
        """Polyak critic and actor targets after each actor update (update num_updates − 1 just ran)."""
        if self.delayed_update(self.num_updates - 1):
            lerp_parameters_(self.critic_target, self.critic, self.cfg.tau)
            lerp_parameters_(self.actor_target, self.actor, self.cfg.tau)

    def choose_chunk(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

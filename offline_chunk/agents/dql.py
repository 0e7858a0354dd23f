"""DiffusionDoubleQAgent: Diffusion-QL (Wang, Hunt & Zhou, ICLR 2023) on action chunks.

critic:  Σ_k mean [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ min_k Q_k^targ(s′, a′),
         a′ sampled from the EMA actor at s′ (targets.py; other backups by config)
actor:   L = L_bc + η · (−Q_k(s, â) / mean|Q_j(s, â)|),  â ~ π_θ(· | s) through the reverse chain
         L_bc = E_{t, ε} ‖ε − ε_θ(√ᾱ_t a + √(1 − ᾱ_t) ε, s, t)‖²   (DDPM, T = 5, VP schedule)
targets: Polyak τ = 0.005 every update; EMA actor, decay 0.995 every 5 updates from update 1000

Each update (ChunkAgent.update) takes a critic step on `critic_objective`, an actor step on
`actor_objective` (both through torch.compile with `compile`) and then `update_targets`, all below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from offline_chunk.agents.base import LrSchedule, WhichActor
from offline_chunk.agents.candidates import CandidateAgentConfig, CandidateChunkAgent
from offline_chunk.agents.losses import bc_and_q_loss
from offline_chunk.agents.targets import bellman_loss, lerp_parameters_, on_schedule
from offline_chunk.policies import DDPMConfig


class DQLConfig(CandidateAgentConfig):
    """Published defaults from the official implementation (github: Zhendong-Wang/Diffusion-Policies-for-
    Offline-RL, main.py's D4RL hyperparameter table, agents/ql_diffusion.py, agents/diffusion.py)."""

    name: Literal["dql"] = "dql"
    policy: DDPMConfig = DDPMConfig()
    target_actor: WhichActor = "ema"
    """the actor that samples the critic target's next chunks; official: the EMA actor"""
    eta: float = Field(1.0, ge=0)
    """the Q term's weight; official per-task table 0.005-3.5, 1.0 for halfcheetah/hopper-medium"""
    critic_lr: float | None = Field(3.0e-4, gt=0)
    """official: the critics' Adam at 3e-4 whatever the actor's per-task lr (3e-5 to 1e-3)"""
    lr_schedule: LrSchedule = "constant"
    """official (README: --lr_decay): CosineAnnealingLR(T_max=num_epochs) stepped once per train() call of
    eval_freq = 50 epochs, so after num_epochs / 50 steps the rate ends at (1 + cos(π/50)) / 2 = 0.9990 of
    its base; constant here (within 0.1% of it throughout)"""


class DiffusionDoubleQAgent(CandidateChunkAgent):
    name = "dql"
    Config = DQLConfig

    def critic_objective(self, obs, actions, next_obs, batch):
        """Σ_k mean [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ V(s′), V the `backup` of next chunks sampled
        from the `target_actor` (CandidateChunkAgent.next_state_value)."""
        with self.autocast():
            next_value = self.next_state_value(next_obs, batch).float()
            q = self.critic(obs, actions).float()  # (K, B)
        return bellman_loss(q, next_value, batch, self.cfg.target_lower_bound)

    def actor_objective(self, obs, actions, action_mask):
        """L_bc + η · L_q: the DDPM noise-prediction loss, and the normalised Q of a chunk sampled through
        the whole reverse chain with gradients."""
        with self.autocast():
            bc_loss = self.actor.bc_loss(obs, actions, action_mask).mean()
            q_loss = self.sampled_q_loss(obs)
            return bc_and_q_loss(bc_loss, q_loss, self.cfg.bc_weight, self.cfg.eta)

    def update_targets(self) -> None:
        """Polyak critic targets and the EMA actor, each on its schedule."""
        cfg, step = self.cfg, self.num_updates
        if on_schedule(step, cfg.target_start, cfg.target_every):
            lerp_parameters_(self.critic_target, self.critic, cfg.tau)
        if on_schedule(step, cfg.ema_start, cfg.ema_every):
            lerp_parameters_(self.actor_ema, self.actor, 1.0 - cfg.ema_decay)

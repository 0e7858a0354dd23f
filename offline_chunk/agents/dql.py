"""DiffusionDoubleQAgent: Diffusion-QL (Wang, Hunt & Zhou, ICLR 2023) on action chunks.

critic:  min over K critics of [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ min_k Q_k^targ(s′, a′),
         a′ sampled from the EMA actor at s′ (targets.py; other backups by config)
actor:   L = L_bc + η · (−Q_k(s, â) / mean|Q_j(s, â)|),  â ~ π_θ(· | s) through the reverse chain
         L_bc = E_{t, ε} ‖ε − ε_θ(√ᾱ_t a + √(1 − ᾱ_t) ε, s, t)‖²   (DDPM, T = 5, VP schedule)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from offline_chunk.agents.base import DiffusionAgentConfig, DiffusionChunkAgent, LrSchedule, WhichActor
from offline_chunk.policies import DDPMConfig


class DQLConfig(DiffusionAgentConfig):
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


class DiffusionDoubleQAgent(DiffusionChunkAgent):
    name = "dql"
    Config = DQLConfig

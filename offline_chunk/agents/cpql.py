"""CPQLAgent: CPQL (Chen et al., "Boosting Continuous Control with Consistency Policy", AAMAS 2024) on chunks.

critic:  as Diffusion-QL (targets.py), with the next chunk a′ from the online actor (official code)
actor:   L = α · L_bc + η · (−Q_k(s, â) / mean|Q_j(s, â)|),  â = f_θ(σ_max z, σ_max, s) in one step
         L_bc = λ(σ_n) ‖f_θ(a + σ_n z, σ_n, s) − a‖²                       (`recon`, what the official
                code back-propagates), or
                λ(σ_n) ‖f_θ(a + σ_n z, σ_n, s) − f_θ⁻(x̂_{σ_{n+1}}, σ_{n+1}, s)‖²  (`consistency`,
                consistency training against the EMA actor θ⁻; Song et al. 2023)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from offline_chunk.agents.base import DiffusionAgentConfig, DiffusionChunkAgent, WhichActor
from offline_chunk.policies import ConsistencyConfig


class CPQLConfig(DiffusionAgentConfig):
    """Published defaults from the official implementation (github: cccedric/cpql, main.py's offline table,
    agents/ql_cm.py, agents/karras_diffusion.py)."""

    name: Literal["cpql"] = "cpql"
    policy: ConsistencyConfig = ConsistencyConfig()
    bc_loss: Literal["recon", "consistency"] = "recon"
    """The official code computes the consistency loss but back-propagates the SNR-weighted reconstruction
    loss of the consistency-parametrised denoiser (distance to the recorded chunk): `recon`. `consistency`:
    against the EMA actor, the consistency-training loss."""
    target_actor: WhichActor = "online"
    """the actor that samples the critic target's next chunks; official: the online actor"""
    eta: float = Field(1.0, ge=0)
    """the Q term's weight; official per-task table 0.1-4.5, 1.0 for most locomotion tasks"""
    target_every: int = Field(5, ge=1)
    """updates between target moves; official: every 5 (EMA 0.995, tau 0.005) from update 1000"""
    target_start: int = Field(1000, ge=0)


class CPQLAgent(DiffusionChunkAgent):
    name = "cpql"
    Config = CPQLConfig

    def bc_loss(self, obs, actions, action_mask):
        kind = self.cfg.bc_loss
        target = self.actor_ema if kind == "consistency" else None
        return self.actor.bc_loss(obs, actions, action_mask, kind=kind, target=target).mean()

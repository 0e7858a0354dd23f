"""CPQLAgent: CPQL (Chen et al., "Boosting Continuous Control with Consistency Policy", AAMAS 2024) on chunks.

critic:  as Diffusion-QL (targets.py), with the next chunk a′ from the online actor (official code)
actor:   L = α · L_bc + η · (−Q_k(s, â) / mean|Q_j(s, â)|),  â = f_θ(σ_max z, σ_max, s) in one step
         L_bc = λ(σ_n) ‖f_θ(a + σ_n z, σ_n, s) − a‖²                       (`recon`, what the official
                code back-propagates), or
                λ(σ_n) ‖f_θ(a + σ_n z, σ_n, s) − f_θ⁻(x̂_{σ_{n+1}}, σ_{n+1}, s)‖²  (`consistency`,
                consistency training against the EMA actor θ⁻; Song et al. 2023)
targets: Polyak τ = 0.005 and EMA actor, decay 0.995, every 5 updates from update 1000

Each update (ChunkAgent.update) takes a critic step on `critic_objective`, an actor step on
`actor_objective` (both through torch.compile with `compile`) and then `update_targets`, all below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from offline_chunk.agents.base import WhichActor
from offline_chunk.agents.candidates import CandidateAgentConfig, CandidateChunkAgent
from offline_chunk.agents.losses import bc_and_q_loss
from offline_chunk.agents.targets import bellman_loss, lerp_parameters_, on_schedule
from offline_chunk.policies import ConsistencyConfig


class CPQLConfig(CandidateAgentConfig):
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


class CPQLAgent(CandidateChunkAgent):
    name = "cpql"
    Config = CPQLConfig

    def critic_objective(self, obs, actions, next_obs, batch):
        """Σ_k mean [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ V(s′), V the `backup` of next chunks sampled
        from the `target_actor` (CandidateChunkAgent.next_state_value)."""
        with self.autocast():
            next_value = self.next_state_value(next_obs, batch).float()
            q = self.critic(obs, actions).float()  # (K, B)
        return bellman_loss(q, next_value, batch, self.cfg.target_lower_bound)

    def actor_objective(self, obs, actions, action_mask):
        """bc_weight · L_bc + η · L_q: L_bc by `bc_loss` (`consistency`: against the EMA actor), L_q the
        normalised Q of the one-step sample, with gradients."""
        kind = self.cfg.bc_loss
        with self.autocast():
            target = self.actor_ema if kind == "consistency" else None
            bc_loss = self.actor.bc_loss(obs, actions, action_mask, kind=kind, target=target).mean()
            q_loss = self.sampled_q_loss(obs)
            return bc_and_q_loss(bc_loss, q_loss, self.cfg.bc_weight, self.cfg.eta)

    def update_targets(self) -> None:
        """Polyak critic targets and the EMA actor, each on its schedule."""
        cfg, step = self.cfg, self.num_updates
        if on_schedule(step, cfg.target_start, cfg.target_every):
            lerp_parameters_(self.critic_target, self.critic, cfg.tau)
        if on_schedule(step, cfg.ema_start, cfg.ema_every):
            lerp_parameters_(self.actor_ema, self.actor, 1.0 - cfg.ema_decay)

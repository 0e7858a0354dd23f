"""CPQLAgent: CPQL (Chen et al., "Boosting Continuous Control with Consistency Policy", AAMAS 2024) on chunks.

critic:  as Diffusion-QL (targets.py), with the next chunk a′ from the online actor (official code)
actor:   L = α · L_bc + η · (−Q_k(s, â) / mean|Q_j(s, â)|),  â = f_θ(σ_max z, σ_max, s) in one step
         L_bc = λ(σ_n) ‖f_θ(a + σ_n z, σ_n, s) − a‖²                       (`recon`, what the official
                code back-propagates), or
                λ(σ_n) ‖f_θ(a + σ_n z, σ_n, s) − f_θ⁻(x̂_{σ_{n+1}}, σ_{n+1}, s)‖²  (`consistency`,
                consistency training against the EMA actor θ⁻; Song et al. 2023)
"""

from __future__ import annotations

from offline_chunk.agents.base import DiffusionChunkAgent


class CPQLAgent(DiffusionChunkAgent):
    name = "cpql"

    def actor_loss(self, obs, actions, action_mask):
        kind = self.cfg["bc_loss"]
        target = self.actor_ema if kind == "consistency" else None
        bc_loss = self.actor.bc_loss(obs, actions, action_mask, kind=kind, target=target).mean()
        q_loss = self.actor_q_loss(obs, lambda: self.actor.sample(obs, keep_graph=True))
        return self.weighted_actor_loss(bc_loss, q_loss)

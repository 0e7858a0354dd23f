"""DiffusionDoubleQAgent: Diffusion-QL (Wang, Hunt & Zhou, ICLR 2023) on action chunks.

critic:  min over K critics of [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ min_k Q_k^targ(s′, a′),
         a′ sampled from the EMA actor at s′ (targets.py; other backups by config)
actor:   L = L_bc + η · (−Q_k(s, â) / mean|Q_j(s, â)|),  â ~ π_θ(· | s) through the reverse chain
         L_bc = E_{t, ε} ‖ε − ε_θ(√ᾱ_t a + √(1 − ᾱ_t) ε, s, t)‖²   (DDPM, T = 5, VP schedule)
"""

from __future__ import annotations

from offline_chunk.agents.base import DiffusionChunkAgent


class DiffusionDoubleQAgent(DiffusionChunkAgent):
    name = "dql"

    def actor_loss(self, obs, actions, action_mask):
        bc_loss = self.actor.bc_loss(obs, actions, action_mask).mean()
        # â through all T denoising steps, with gradients
        q_loss = self.actor_q_loss(obs, lambda: self.actor.sample(obs, keep_graph=True))
        return self.weighted_actor_loss(bc_loss, q_loss)

"""QCAgent: Q-chunking's QC (Li, Zhou & Levine, "Reinforcement Learning with Action Chunking", 2025), the
best-of-N variant of its official code (github ColinQiyangLi/qc, agents/acfql.py with
--agent.actor_type=best-of-n).

critic:  Σ_k [Q_k(s, a) − y]²,  y = R^(τ) + (1 − d) γ^τ mean_k Q_k^targ(s′, a*),
         a* = argmax_{a′_1..a′_N ~ π_bc(· | s′)} mean_k Q_k(s′, a′_i)          (best_of_n, targets.py)
actor:   L = L_bc = ‖v_θ(s, x_t, t) − (a − x_0)‖²  (flow matching, policies/flow.py); no Q term (η = 0)
targets: Polyak τ = 0.005 after every update (and the EMA actor that `act.actor: ema` would act with)
acting:  the best of N chunks sampled from π_bc under the online critics' mean

Each update (ChunkAgent.update) takes a critic step on `critic_objective`, an actor step on
`actor_objective` (both through torch.compile with `compile`) and then `update_targets`, all below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from offline_chunk.agents.candidates import CandidateActConfig, CandidateAgentConfig, CandidateChunkAgent
from offline_chunk.agents.losses import bc_and_q_loss
from offline_chunk.agents.targets import Backup, QAggregation, bellman_loss, lerp_parameters_, on_schedule
from offline_chunk.nets.critic import CriticConfig
from offline_chunk.policies.flow import FlowConfig

QC_CRITIC = CriticConfig(kind="mlp", ensemble=2, hidden_dims=[512, 512, 512, 512], layer_norm=True)
QC_ACT = CandidateActConfig(actor="online", candidates=32, select="argmax", critic="online", q_agg="mean")


class QCConfig(CandidateAgentConfig):
    """Defaults as acfql.py's get_config with actor_type=best-of-n and main.py's flags."""

    name: Literal["qc"] = "qc"
    policy: FlowConfig = FlowConfig()
    critic: CriticConfig = QC_CRITIC
    """Value: 2 MLPs (num_qs) of 4 x 512 with LayerNorm"""
    backup: Backup = "best_of_n"
    """critic_loss: next chunk = sample_actions(s′), valued by the target critics"""
    backup_candidates: int = Field(32, ge=1)
    """actor_num_samples"""
    q_agg: QAggregation = "mean"
    """q_agg, choosing and valuing"""
    target_actor: Literal["online"] = "online"
    """sample_actions draws from the online actor_bc_flow parameters"""
    eta: float = Field(0.0, ge=0)
    """best-of-n trains the BC flow alone; η > 0 adds the normalised Q term through the K Euler steps"""
    grad_norm: float = Field(float("inf"), gt=0)
    """optax.adam without clipping"""
    target_every: int = Field(1, ge=1)
    """target_update after every update, Polyak tau 0.005"""
    act: CandidateActConfig = QC_ACT


class QCAgent(CandidateChunkAgent):
    name = "qc"
    Config = QCConfig

    def critic_objective(self, obs, actions, next_obs, batch):
        """Σ_k mean [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ V(s′), V the `backup` of N next chunks from
        π_bc: best_of_n (CandidateChunkAgent.next_state_value)."""
        with self.autocast():
            next_value = self.next_state_value(next_obs, batch).float()
            q = self.critic(obs, actions).float()  # (K, B)
        return bellman_loss(q, next_value, batch, self.cfg.target_lower_bound)

    def actor_objective(self, obs, actions, action_mask):
        """bc_weight · L_bc + η · L_q: L_bc the flow-matching loss; L_q (η > 0 only) the normalised Q of a
        chunk sampled through the K Euler steps with gradients."""
        with self.autocast():
            bc_loss = self.actor.bc_loss(obs, actions, action_mask).mean()
            q_loss = self.sampled_q_loss(obs)
            return bc_and_q_loss(bc_loss, q_loss, self.cfg.bc_weight, self.cfg.eta)

    def update_targets(self) -> None:
        """Polyak critic targets, and the EMA actor, each on its schedule."""
        cfg, step = self.cfg, self.num_updates
        if on_schedule(step, cfg.target_start, cfg.target_every):
            lerp_parameters_(self.critic_target, self.critic, cfg.tau)
        if on_schedule(step, cfg.ema_start, cfg.ema_every):
            lerp_parameters_(self.actor_ema, self.actor, 1.0 - cfg.ema_decay)

"""ChunkSACAgent: soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications":
the v2 algorithm, with a learned temperature) over action chunks, with the chunked critic of Q-chunking
(Li, Zhou & Levine 2025) and a behaviour-cloning regulariser for the offline setting.

critic   `critic_input: chunk`: Q(s, a_1..a_H), the chunk critics of Q-chunking, with the soft chunk target
             y = R^(τ) + (1 − d) γ^τ (min_k Q_k^targ(s′, a′) − α log π(a′ | s′)),   a′ ~ π(· | s′)
         log π(a′ | s′) the next chunk's joint log-probability (targets.py: the backup over the ensemble);
         `backup_entropy: false` drops the − α log π term (RLPD-AC's target, Q-chunking's acrlpd.py).
         `critic_input: first_action`: Q(s, a_1), the same ensemble on chunks of length 1, trained on the
         same chunk transitions, i.e. n-step returns with n = H: y as above with Q^targ(s′, a′_1).
actor    L = sac_weight · E[α log π(a | s) − Q̂(s, a)] + bc_weight · L_bc,  a ~ π(· | s) reparameterised,
         Q̂ the `actor_q_agg` (min or mean) over the ensemble of Q(s, a_1..a_H) for `chunk`; for
         `first_action` by `actor_strategy`:
             standard            Q(s, a_1)
             conservative        min_t Q(s, a_t)
             temporal_weighted   Σ_t w_t Q(s, a_t),  w_t ∝ temporal_decay^t,  Σ_t w_t = 1
         L_bc = ‖tanh(μ(s)) − a_data‖², the chunk of means against the recorded chunk (padding masked).
alpha    J(α) = −log α · (log π(a | s) + H_target), log π detached: the log α form of SAC v2's
         temperature loss; H_target = −m · A · scale(H), scale = H (linear), √H (sqrt) or 1 (none), m the
         `target_entropy_multiplier` (SAC: 1; RLPD-AC: 0.5).
targets  Polyak τ = 0.005 every update

Each update (ChunkAgent.update) takes a critic step on `critic_objective`, an actor step on
`actor_objective` (both through torch.compile with `compile`) followed by the temperature step
(`update_actor`), and then `update_targets`, all below.

`conservative` and `temporal_weighted` score a_t for t > 1 against the current state s, although a_t is
executed at a later state: Q(s, a_t) is not the value of a_t. This is a heuristic of this project's
specification, not an estimator from a paper; `standard` is the first-action SAC of the literature.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from offline_chunk.agents.base import (
    AgentConfig,
    ChunkAgent,
    Dims,
    SingleChunkActConfig,
    TargetSchedule,
    adam,
)
from offline_chunk.agents.losses import float32
from offline_chunk.agents.targets import aggregate, backup_value, bellman_loss, lerp_parameters_, on_schedule
from offline_chunk.data.normalize import Normalizer
from offline_chunk.policies import GaussianMLPConfig, GaussianTransformerConfig
from offline_chunk.policies.base import per_sample_mean

ENTROPY_SCALINGS = {"linear": lambda horizon: float(horizon), "sqrt": math.sqrt, "none": lambda horizon: 1.0}


class SACActConfig(SingleChunkActConfig):
    select: Literal["mean", "sample"] = "mean"
    """mean: the chunk of tanh(mu) | sample: one reparameterised sample"""


class ChunkSACConfig(TargetSchedule, AgentConfig):
    """SAC v2 defaults: Adam 3e-4 for actor, critics and temperature, two critics with the min backup, Polyak
    tau 0.005 every update, initial temperature 1, target entropy -dim(action), no gradient clipping."""

    name: Literal["chunk_sac"] = "chunk_sac"
    policy: GaussianTransformerConfig | GaussianMLPConfig = Field(
        GaussianTransformerConfig(), discriminator="kind"
    )
    """act_gaussian: the ACT-style transformer, a tanh-Gaussian per step | mlp_gaussian: RLPD-AC's MLP, one
    tanh-Gaussian over the flattened chunk"""
    critic_input: Literal["chunk", "first_action"] = "chunk"
    """chunk: Q(s, a_1..a_H) (Q-chunking) | first_action: Q(s, a_1), n-step returns"""
    actor_strategy: Literal["standard", "conservative", "temporal_weighted"] = "standard"
    """first_action only: how the actor scores a chunk (the last two are heuristics)"""
    temporal_decay: float = 0.9
    """temporal_weighted: w_t proportional to decay^t"""
    entropy_scaling: Literal["linear", "sqrt", "none"] = "linear"
    """target entropy -m * A * scale(H): linear (H) | sqrt | none (1)"""
    target_entropy_multiplier: float = Field(1.0, gt=0)
    """m above: SAC's 1; RLPD-AC's 0.5 (acrlpd.py target_entropy_multiplier)"""
    backup_entropy: bool = True
    """the − α log π(a′ | s′) term of the critic target (SAC); RLPD-AC has none"""
    actor_q_agg: Literal["min", "mean"] = "min"
    """Q̂ of the actor loss over the ensemble: min (SAC's clipped double Q) | mean (RLPD-AC over its 10)"""
    init_alpha: float = Field(1.0, gt=0)
    alpha_lr: float = Field(3.0e-4, gt=0)
    sac_weight: float = 1.0
    """actor loss = sac_weight * SAC loss + bc_weight * BC loss"""
    bc_weight: float = 1.0
    """the offline regulariser (not from SAC): task-dependent, tune per dataset"""
    act: SACActConfig = SACActConfig()


def target_entropy(action_dim: int, horizon: int, scaling: str, multiplier: float = 1.0) -> float:
    """H_target = −m · A · scale(H): SAC's −dim(action) heuristic (m = 1), for a chunk of H actions."""
    return -multiplier * action_dim * ENTROPY_SCALINGS[scaling](horizon)


def score_steps(q_steps: torch.Tensor, strategy: str, decay: float) -> torch.Tensor:
    """(B, H) values Q(s, a_t) of each chunk step (B, 1 for `standard`) -> (B,) the actor's objective."""
    if strategy == "standard":
        return q_steps[:, 0]
    if strategy == "conservative":
        return q_steps.min(dim=-1).values
    weights = decay ** torch.arange(q_steps.shape[-1], device=q_steps.device, dtype=q_steps.dtype)
    return q_steps @ (weights / weights.sum())


class ChunkSACAgent(ChunkAgent):
    name = "chunk_sac"
    Config = ChunkSACConfig  # one sampled next chunk per state (min or mean); no lower bound: a soft Q adds
    # entropy bonuses that the recorded return does not bound
    optimizers = (*ChunkAgent.optimizers, "alpha_opt")

    def __init__(self, dims: Dims, cfg: ChunkSACConfig | dict, normalizer: Normalizer, total_steps: int):
        super().__init__(dims, cfg, normalizer, total_steps)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.cfg.init_alpha)))
        self.alpha_opt = adam([self.log_alpha], self.cfg.alpha_lr)
        cfg = self.cfg
        self.target_entropy = target_entropy(
            dims.action_dim, dims.horizon, cfg.entropy_scaling, cfg.target_entropy_multiplier
        )

    def alpha(self) -> torch.Tensor:
        """α = exp(log α), detached: the critic and actor losses do not move the temperature."""
        return self.log_alpha.detach().exp()

    def critic_view(self, chunk: torch.Tensor) -> torch.Tensor:
        """Q(s, a_1..a_H) (`chunk`), or Q(s, a_1) (`first_action`)."""
        return chunk[..., :1, :] if self.cfg.critic_input == "first_action" else chunk

    # ------------------------------------------------------------------ critic

    @torch.no_grad()
    def next_state_value(self, next_obs: torch.Tensor, batch: dict) -> torch.Tensor:
        """Soft value V(s′) = backup_k Q_k^targ(s′, a′) − α log π(a′ | s′), a′ ~ π(· | s′): `backup` min or
        mean over the ensemble of the one sampled chunk (targets.py); without the entropy term when
        `backup_entropy` is off."""
        next_chunk, log_prob, _ = self.actor(next_obs)
        target_q = self.critic_target(next_obs, self.critic_view(next_chunk)[:, None])  # (K, B, 1)
        value = backup_value(self.cfg.backup, target_q)
        return value - self.alpha() * log_prob if self.cfg.backup_entropy else value

    def critic_objective(self, obs, actions, next_obs, batch):
        """Σ_k mean [Q_k(s, a) − y]², y = R^(τ) + (1 − d) γ^τ V(s′) with the soft value above."""
        with self.autocast():
            next_value = self.next_state_value(next_obs, batch).float()
            q = self.critic(obs, self.critic_view(actions)).float()  # (K, B)
        return bellman_loss(q, next_value, batch, self.cfg.target_lower_bound)

    # ------------------------------------------------------------------ actor and temperature

    def policy_value(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """Q̂(s, a) (B,) that the actor maximises: `actor_q_agg` over the ensemble, then the chunk or step
        strategy. Gradients reach the chunk, not the critics' weights."""
        if self.cfg.critic_input == "chunk":
            return aggregate(self.critic(obs, chunk, detach_params=True), self.cfg.actor_q_agg)
        strategy = self.cfg.actor_strategy
        steps = chunk[:, :1] if strategy == "standard" else chunk
        # Each action a_t as a length-1 candidate chunk at s: (B, H, 1, A), all steps in one critic call.
        q_steps = aggregate(self.critic(obs, steps[:, :, None, :], detach_params=True), self.cfg.actor_q_agg)
        return score_steps(q_steps, strategy, self.cfg.temporal_decay)

    def actor_objective(self, obs, actions, action_mask):
        """sac_weight · E[α log π(a | s) − Q̂(s, a)] + bc_weight · L_bc, a ~ π(· | s) reparameterised."""
        with self.autocast():
            chunk, log_prob, mean_chunk = self.actor(obs)
            q = self.policy_value(obs, chunk)
            sac_loss = (self.alpha() * log_prob - q).mean()
            bc_loss = per_sample_mean((mean_chunk - actions).pow(2), action_mask).mean()
            sac_term, bc_term = self.cfg.sac_weight * sac_loss, self.cfg.bc_weight * bc_loss
            return float32(
                sac_term + bc_term,
                {
                    "actor/sac_loss": sac_loss.detach(),
                    "actor/bc_loss": bc_loss.detach(),
                    "actor/sac_term": sac_term.detach(),
                    "actor/bc_term": bc_term.detach(),
                    "actor/q": q.detach().mean(),
                    "q_chunking/joint_log_prob": log_prob.detach().mean(),
                    "q_chunking/chunk_size": torch.full((), float(actions.shape[1]), device=obs.device),
                },
            )

    def update_actor(self, obs, actions, action_mask) -> dict[str, torch.Tensor]:
        """The actor step (ChunkAgent.update_actor), then the temperature's."""
        metrics = super().update_actor(obs, actions, action_mask)
        return {**metrics, **self.update_temperature(metrics["q_chunking/joint_log_prob"])}

    def update_temperature(self, log_prob: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on J(α) = −log α · (log π + H_target) with the batch's mean joint log-probability
        (detached): α falls while the entropy −log π is above H_target and rises while below."""
        alpha = self.alpha()
        loss = -self.log_alpha * (log_prob.detach() + self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.share_gradients([self.log_alpha])
        self.alpha_opt.step()
        return {
            "alpha": alpha,
            "alpha/loss": loss.detach(),
            "q_chunking/adjusted_entropy": torch.full((), self.target_entropy, device=alpha.device),
        }

    def update_targets(self) -> None:
        """Polyak critic targets on their schedule."""
        cfg = self.cfg
        if on_schedule(self.num_updates, cfg.target_start, cfg.target_every):
            lerp_parameters_(self.critic_target, self.critic, cfg.tau)

    # ------------------------------------------------------------------ acting

    def choose_chunk(self, obs: torch.Tensor) -> torch.Tensor:
        """The chunk of means tanh(μ) (`act.select: mean`) or one reparameterised sample (`sample`)."""
        chunk, _, mean_chunk = self.actor(obs)
        return mean_chunk if self.cfg.act.select == "mean" else chunk

    def explore_chunk(self, obs: torch.Tensor, noise: float) -> torch.Tensor:
        """A sample of the policy, as SAC collects (the noise scale is for deterministic actors)."""
        return self.actor(obs)[0]

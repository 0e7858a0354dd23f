"""What Diffusion-QL, CPQL and Q-chunking's QC share: a generative chunk actor (DDPM, consistency or flow:
`sample_candidates`, `sample`, `bc_loss`) with an EMA copy; the critic target's backup over N next chunks
sampled from it (targets.py); the normalised Q term of a chunk sampled with gradients (losses.py); acting
by Q over N sampled candidates. Each agent's file states its own update with these.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field

from offline_chunk.agents.base import AgentConfig, ChunkAgent, Dims, TargetSchedule, WhichActor
from offline_chunk.agents.losses import normalized_q_loss
from offline_chunk.agents.targets import (
    Backup,
    LowerBound,
    QAggregation,
    aggregate,
    best_candidate,
    candidate_backup,
    candidates_for,
)
from offline_chunk.data.normalize import Normalizer
from offline_chunk.sections import Section


class CandidateActConfig(Section):
    """Acting by Q over sampled candidate chunks (Diffusion-QL's and CPQL's sample_action; Q-chunking's
    best of N with `select: argmax`)."""

    actor: WhichActor = "online"
    """the actor that samples the candidates; official sample_action: the online actor"""
    candidates: int = Field(50, ge=1)
    """chunks sampled per state; official: 50, scored by the target critics' min"""
    select: Literal["softmax", "argmax"] = "softmax"
    """softmax: sample by softmax(Q) (official) | argmax: the best (Q-chunking's best of N)"""
    critic: Literal["target", "online"] = "target"
    """which critics score the candidates"""
    q_agg: QAggregation = "min"
    """over the ensemble"""


class CandidateAgentConfig(TargetSchedule, AgentConfig):
    """Diffusion-QL, CPQL and QC: a generative actor, backups over sampled candidates, the Q term."""

    backup: Backup = "min"
    """the critic target's value of s' (targets.py); official: min over the 2 critics (max_of_n with 10
    candidates on AntMaze)"""
    backup_candidates: int = Field(10, ge=1)
    """N next chunks for max_of_n and best_of_n"""
    q_agg: QAggregation = "min"
    """best_of_n: ensemble aggregation choosing and valuing (QC: mean)"""
    target_lower_bound: LowerBound = "none"
    """monte_carlo: y = max(y, recorded return from t) (MCAC, Wilcox et al. 2022)"""
    target_actor: WhichActor = "online"
    """the actor that samples the critic target's next chunks"""
    bc_weight: float = 1.0
    """actor loss = bc_weight · L_bc + eta · L_q"""
    eta: float = Field(1.0, ge=0)
    """the Q term's weight (0: the behaviour-cloning generator alone, Q-chunking's QC)"""
    grad_norm: float = Field(1.0, gt=0)
    """gradient clipping norm (.inf: none); official default 1.0 (per-task table 1-10)"""
    ema_decay: float = Field(0.995, ge=0, le=1)
    """actor EMA: decay 0.995 every 5 updates, from update 1000"""
    ema_every: int = Field(5, ge=1)
    ema_start: int = Field(1000, ge=0)
    act: CandidateActConfig = CandidateActConfig()


class CandidateChunkAgent(ChunkAgent):
    """A generative chunk actor with its EMA copy (`actor_ema`), the pieces of its update that Diffusion-QL,
    CPQL and QC share (`next_state_value`, `sampled_q_loss`), and acting by Q over sampled candidates."""

    acts_by_candidates = True

    def __init__(
        self, dims: Dims, cfg: CandidateAgentConfig | dict, normalizer: Normalizer, total_steps: int
    ):
        super().__init__(dims, cfg, normalizer, total_steps)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)

    @torch.no_grad()
    def next_state_value(self, next_obs: torch.Tensor, batch: dict) -> torch.Tensor:
        """V(s′) (B,): the `backup` of the target critics over N next chunks sampled from `target_actor`
        (the online or the EMA actor), or over the data's own next chunk (`sarsa`); targets.py."""
        cfg = self.cfg
        n = candidates_for(cfg.backup, cfg.backup_candidates)
        if n == 0:  # sarsa: the data's own next chunk
            next_chunks = self.normalizer.action(batch["next_actions"])[:, None]
        else:
            policy = self.actor_ema if cfg.target_actor == "ema" else self.actor
            next_chunks = policy.sample_candidates(next_obs, n)
        return candidate_backup(cfg.backup, next_obs, next_chunks, self.critic_target, self.critic, cfg.q_agg)

    def sampled_q_loss(self, obs: torch.Tensor) -> torch.Tensor:
        """L_q = −Q_k(s, â) / mean|Q_j(s, â)| (losses.py) of a chunk â the online actor samples with gradients
        through its whole sampler; 0, sampling nothing, with η = 0 (the behaviour-cloning generator alone,
        Q-chunking's QC). Gradients reach the chunk only: the critics' weights are not the actor's to
        change."""
        if self.cfg.eta == 0:
            return torch.zeros((), device=obs.device)
        chunk = self.actor.sample(obs, keep_graph=True)
        return normalized_q_loss(self.critic(obs, chunk, detach_params=True), self.group)  # q: (K, B)

    def choose_chunk(self, obs: torch.Tensor) -> torch.Tensor:
        """N candidate chunks are sampled and one is chosen by Q: `act.critic` (online or target critics),
        `act.q_agg` over the ensemble (min or mean), and the argmax (best of N, as Q-chunking) or a softmax
        sample (Diffusion-QL, CPQL)."""
        act = self.cfg.act
        policy = self.actor_ema if act.actor == "ema" else self.actor
        candidates = policy.sample_candidates(obs, act.candidates)  # (B, N, H, A)
        critic = self.critic if act.critic == "online" else self.critic_target
        q = critic(obs, candidates)  # (K, B, N)
        if act.select == "argmax":
            choice = best_candidate(q, act.q_agg)
        else:
            choice = torch.multinomial(torch.softmax(aggregate(q, act.q_agg), dim=-1), 1).squeeze(-1)
        return candidates[torch.arange(len(choice), device=choice.device), choice]

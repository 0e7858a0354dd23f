"""Chunk Bellman targets and target-network updates: the critic machinery every agent shares, as pure
functions that each agent's `critic_objective` and `update_targets` call.

Chunk (semi-Markov) target, docs/chunk_transitions.md:   y = R^(τ) + (1 − d^(τ)) γ^τ V(s_{t+τ})
with V the backup of the target critics at the next state over candidate next chunks a′ (K critics,
N candidates a′_1..a′_N sampled from the policy at s′; agg is `q_agg`, mean or min over the K critics):

    min        min_k Q_k^targ(s′, a′), 1 candidate           clipped double Q (Fujimoto et al. 2018)
    mean       mean_k Q_k^targ(s′, a′), 1 candidate
    max_of_n   min_k max_j Q_k^targ(s′, a′_j)                Diffusion-QL's and CPQL's max-Q backup: per
                                                             critic the best of N, then the min over critics
                                                             (agents/ql_diffusion.py, agents/ql_cm.py)
    best_of_n  agg_k Q_k^targ(s′, a′_j*),                    Q-chunking's QC (agents/acfql.py, best-of-n):
               j* = argmax_j agg_k Q_k(s′, a′_j)             chosen by the online critics, valued by the
                                                             targets; with agg = min, Double DQN's rule
    sarsa      min_k Q_k^targ(s′, a′_data)                   the data's own next chunk: policy evaluation

Acting by best of N (`best_candidate`) applies the same choice at s.

`target_lower_bound: monte_carlo` raises the target to the recorded return from t (MCAC, Wilcox et al. 2022;
data/returns.py): y ← max(y, L_t).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

# The choices, as the config types that check them and as tuples for these functions' own checks.
Backup = Literal["min", "mean", "max_of_n", "best_of_n", "sarsa"]
QAggregation = Literal["min", "mean"]
LowerBound = Literal["none", "monte_carlo"]
BACKUPS, Q_AGGREGATIONS = get_args(Backup), get_args(QAggregation)


def batch_fields(agent_cfg) -> dict[str, bool]:
    """The optional batch fields (ChunkSampler's switches) an agent's critic target reads."""
    return {
        "next_actions": agent_cfg.backup == "sarsa",
        "return_bounds": agent_cfg.target_lower_bound == "monte_carlo",
    }


def candidates_for(backup: str, n: int) -> int:
    """How many next chunks per state a backup needs sampled from the policy (0: taken from the data)."""
    if backup not in BACKUPS:
        raise ValueError(f"unknown backup {backup!r}; choose one of {BACKUPS}")
    return {"max_of_n": n, "best_of_n": n, "sarsa": 0}.get(backup, 1)


def aggregate(q: torch.Tensor, agg: str) -> torch.Tensor:
    """The ensemble's mean or min over its leading critic axis: (K, ...) -> (...)."""
    if agg not in Q_AGGREGATIONS:
        raise ValueError(f"unknown ensemble aggregation {agg!r}; choose one of {Q_AGGREGATIONS}")
    return q.mean(dim=0) if agg == "mean" else q.min(dim=0).values


def best_candidate(q: torch.Tensor, agg: str) -> torch.Tensor:
    """j* = argmax_j agg_k Q_k(s, a_j): the index (B,) of the best of N candidates under q (K, B, N)."""
    return aggregate(q, agg).argmax(dim=-1)


def backup_value(backup: str, target_q: torch.Tensor) -> torch.Tensor:
    """V(s′) (B,) from target-critic values (K, B, N) over N candidate chunks (`best_of_n`: in
    candidate_backup)."""
    if backup == "mean":
        return target_q.mean(dim=0).mean(dim=-1)  # N = 1
    if backup in ("min", "sarsa"):
        return target_q.min(dim=0).values.mean(dim=-1)  # N = 1
    if backup == "max_of_n":
        return target_q.max(dim=-1).values.min(dim=0).values
    raise ValueError(f"unknown backup {backup!r}; choose one of {BACKUPS}")


def chunk_target(batch: dict, next_value: torch.Tensor) -> torch.Tensor:
    """y = R^(τ) + (1 − d) γ^τ V(s_{t+τ}), all (B,)."""
    return batch["cumulative_reward"] + (1.0 - batch["chunk_done"]) * batch["discount_factor"] * next_value


def lower_bounded(target: torch.Tensor, batch: dict, lower_bound: str) -> torch.Tensor:
    """The target raised to the recorded return, max(y, L_t), with `monte_carlo`; unchanged with `none`."""
    return torch.maximum(target, batch["return_lower_bound"]) if lower_bound == "monte_carlo" else target


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each critic (K, B) against the shared target (B,), summed over critics."""
    return (q - target).pow(2).mean(dim=-1).sum()


def candidate_backup(
    backup: str, next_obs: torch.Tensor, next_chunks: torch.Tensor, critic_target, critic, agg: str
) -> torch.Tensor:
    """V(s′) (B,) of N candidate next chunks (B, N, H, A). `best_of_n`: the online critics choose one and
    the target critics value that chunk alone (as acfql.py's critic_loss: sample_actions, then
    target_critic on its one chunk per state); the others: the target critics' values of all N
    (`backup_value`)."""
    if backup == "best_of_n":
        chosen = best_candidate(critic(next_obs, next_chunks), agg)  # (B,)
        index = chosen[:, None, None, None].expand(-1, 1, *next_chunks.shape[2:])
        chosen_q = critic_target(next_obs, next_chunks.gather(1, index))  # (K, B, 1)
        return aggregate(chosen_q, agg)[:, 0]
    return backup_value(backup, critic_target(next_obs, next_chunks))  # (K, B, N)


def bellman_loss(
    q: torch.Tensor, next_value: torch.Tensor, batch: dict, lower_bound: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critics' loss Σ_k mean_b (Q_k(s, a) − y)² against y = R^(τ) + (1 − d) γ^τ V(s′), raised to the
    recorded return with `monte_carlo`, from q (K, B) and V(s′) (B,) in float32; and its metrics."""
    bellman = chunk_target(batch, next_value)
    target = lower_bounded(bellman, batch, lower_bound)
    loss = critic_loss(q, target)
    return loss, {
        "critic/loss": loss.detach(),
        "critic/q_mean": q.detach().mean(),
        "critic/q_min": q.detach().min(),
        "critic/q_max": q.detach().max(),
        "critic/q_abs_max": q.detach().abs().max(),
        "critic/target_q": target.mean(),
        "critic/chunk_reward": batch["cumulative_reward"].mean(),  # R^(τ): the n-step return, n = τ
        "critic/target_raised": (target > bellman).float().mean(),  # share lifted by the lower bound
    }


def on_schedule(step: int, start: int, every: int) -> bool:
    """Whether a target network moves after update `step`: every `every` updates from update `start` (a host
    counter: no device synchronisation)."""
    return step >= start and step % every == 0


@torch.no_grad()
def lerp_parameters_(target: torch.nn.Module, online: torch.nn.Module, weight: float) -> None:
    """target ← target + weight · (online − target) for every parameter, in one fused foreach call.

    Polyak averaging with weight τ, or an EMA with decay β as weight 1 − β."""
    target_params = [p for p in target.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(target_params, online_params, weight)

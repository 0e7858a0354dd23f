"""Chunk Bellman targets and target-network updates: the critic machinery every agent shares.

Chunk (semi-Markov) target, DESIGN.md:   y = R^(τ) + (1 − d^(τ)) γ^τ V(s_{t+τ})
with V the backup of the target critics at the next state over candidate next chunks a′:

    min       min_k Q_k^targ(s′, a′), 1 candidate            clipped double Q (Fujimoto et al. 2018)
    mean      mean_k Q_k^targ(s′, a′), 1 candidate
    max_of_n  max_j min_k Q_k^targ(s′, a′_j)                 Diffusion-QL's max-Q backup over N chunks
    double    min_k Q_k^targ(s′, a′_j*),                     Double DQN (van Hasselt et al. 2016):
              j* = argmax_j min_k Q_k(s′, a′_j)              chosen online, valued by the targets
    sarsa     min_k Q_k^targ(s′, a′_data)                    the data's own next chunk: policy evaluation

`target_lower_bound: monte_carlo` raises the target to the recorded return from t (MCAC, Wilcox et al. 2022;
data/returns.py): y ← max(y, L_t).
"""

from __future__ import annotations

import torch

BACKUPS = ("min", "mean", "max_of_n", "double", "sarsa")
LOWER_BOUNDS = ("none", "monte_carlo")


def batch_fields(agent_cfg: dict) -> dict[str, bool]:
    """The optional batch fields (ChunkSampler's switches) an agent's critic target reads."""
    return {
        "next_actions": agent_cfg["backup"] == "sarsa",
        "return_bounds": agent_cfg["target_lower_bound"] == "monte_carlo",
    }


def candidates_for(backup: str, n: int) -> int:
    """How many next chunks per state a backup needs sampled from the policy (0: taken from the data)."""
    if backup not in BACKUPS:
        raise ValueError(f"unknown backup {backup!r}; choose one of {BACKUPS}")
    return {"max_of_n": n, "double": n, "sarsa": 0}.get(backup, 1)


def backup_value(backup: str, target_q: torch.Tensor, online_q: torch.Tensor | None = None) -> torch.Tensor:
    """V(s′) from target-critic values (K, B, N) over N candidate chunks (and online values for `double`)."""
    if backup == "mean":
        return target_q.mean(dim=0).mean(dim=-1)
    pessimistic = target_q.min(dim=0).values  # (B, N)
    if backup in ("min", "sarsa"):
        return pessimistic.mean(dim=-1)  # N = 1
    if backup == "max_of_n":
        return pessimistic.max(dim=-1).values
    if backup == "double":
        chosen = online_q.min(dim=0).values.argmax(dim=-1, keepdim=True)  # (B, 1)
        return pessimistic.gather(-1, chosen).squeeze(-1)
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


@torch.no_grad()
def lerp_parameters_(target: torch.nn.Module, online: torch.nn.Module, weight: float) -> None:
    """target ← target + weight · (online − target) for every parameter, in one fused foreach call.

    Polyak averaging with weight τ, or an EMA with decay β as weight 1 − β."""
    target_params = [p for p in target.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(target_params, online_params, weight)

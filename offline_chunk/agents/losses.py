"""Actor-loss terms that several agents share, as pure functions of the values they are given.

normalized_q_loss   −Q_k(s, â) / mean|Q_j(s, â)|          Diffusion-QL's and CPQL's Q term (official code)
bc_and_q_loss       bc_weight · L_bc + η · L_q            the candidate agents' actor loss, with its terms
"""

from __future__ import annotations

import torch

from offline_chunk.distributed import SINGLE, Group


def normalized_q_loss(q: torch.Tensor, group: Group = SINGLE) -> torch.Tensor:
    """−Q_k(s, â) / mean|Q_j(s, â)| from the critics' values q (K, B) of the actor's chunks: k drawn at
    random, j the next member, the normaliser detached (Diffusion-QL and CPQL official code) and taken over
    the union of a data-parallel run's batches (`group`). Indexing by device tensors: no host
    synchronisation."""
    k = torch.randint(q.shape[0], (1,), device=q.device)
    other = (k + 1) % q.shape[0]
    return -q.index_select(0, k).mean() / group.batch_mean(q.index_select(0, other).abs().mean()).detach()


def bc_and_q_loss(
    bc_loss: torch.Tensor, q_loss: torch.Tensor, bc_weight: float, eta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """bc_weight · L_bc + η · L_q and each term as a metric, in float32. With η = 0 the loss is the BC term
    alone: torch 2.13's inductor returned `x + 0` without its gradient when `x.detach()` was returned beside
    it (a CPU compile of the QC recipe failed in backward)."""
    bc_term, q_term = bc_weight * bc_loss, eta * q_loss
    loss = bc_term if eta == 0 else bc_term + q_term
    return float32(
        loss,
        {
            "actor/bc_loss": bc_loss.detach(),
            "actor/q_loss": q_loss.detach(),
            "actor/bc_term": bc_term.detach(),
            "actor/q_term": q_term.detach(),
        },
    )


def float32(
    loss: torch.Tensor, terms: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A loss and its metrics in float32, whatever precision autocast computed them in."""
    return loss.float(), {key: value.float() for key, value in terms.items()}

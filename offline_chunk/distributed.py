"""Data-parallel training over processes: `torchrun --nproc_per_node=N -m offline_chunk train ...`
(`make train NPROC=N`), gloo on CPU and NCCL on CUDA.

- Batches: `batch_size` is the global batch; each of the N processes (ranks) samples batch_size / N chunk
  transitions per update from its own seeded stream (rank 0 the plain run's, rank r > 0 seed + r · 2^32),
  and the streaming sampler of rank r reads only blocks r, r + N, r + 2N, ... of the store.
- Gradients: before every optimizer step the ranks' gradients are averaged by one all-reduce of their
  flattened concatenation (`average_gradients`). Not DistributedDataParallel: an update steps several
  optimizers (critics, actor, temperature), the critics are vmapped ensembles called through
  torch.func.functional_call, and the actor's loss back-propagates through critics it must not train,
  where DDP's reducer expects one forward and one backward of each wrapped module. With equal per-rank
  batches, the average of the ranks' mean-loss gradients is the gradient of the mean loss over the union
  of their batches, so every rank takes the same step from the same state: parameters, targets, optimizer
  states and the normalizer stay identical without being broadcast (the agents are built from the same
  seed on every rank). The batch statistics in the losses, the normaliser mean|Q| of TD3+BC's weight λ and
  of the Diffusion-QL/CPQL Q term, are means over the union of the ranks' batches (`Group.batch_mean`, an
  all-reduce inside the compiled objective), so one update of N processes is one update on their union.
  What stays each rank's own are the random draws inside the losses: per row (noise levels, target policy
  noise), as a larger batch would draw them, and the one critic the Q term reads, drawn per rank.
- Outputs: rank 0 alone writes checkpoints (with every rank's random-number state), TensorBoard,
  config.yaml and evaluations; the metrics it logs are the means over the ranks. A run resumes with the
  number of processes it was trained with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

RANK_SEED_STRIDE = 2**32  # rank r samples with seed + r · 2^32: apart from every plain run's seed


@dataclass(frozen=True)
class Group:
    """This process's place among the run's processes: `rank` of `size` (a plain run: 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes the run's outputs."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def seed(self, seed: int) -> int:
        """This rank's sampling seed."""
        return seed + self.rank * RANK_SEED_STRIDE

    def local_batch(self, batch_size: int) -> int:
        """The batch each rank samples for a global `batch_size`."""
        if batch_size % self.size:
            raise ValueError(
                f"batch_size={batch_size} is the global batch and must divide among the {self.size} "
                f"processes; choose a multiple of {self.size}"
            )
        return batch_size // self.size

    def mean(self, values: dict[str, float], maxima: tuple[str, ...] = ()) -> dict[str, float]:
        """`values` averaged over the ranks (the keys in `maxima`: their maximum), in one all-reduce each."""
        if not self.parallel:
            return values
        keys = [key for key in values if key not in maxima]
        summed = torch.tensor([values[key] for key in keys], dtype=torch.float64)
        largest = torch.tensor([values[key] for key in maxima], dtype=torch.float64)
        dist.all_reduce(summed)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        means = dict(zip(keys, (summed / self.size).tolist(), strict=True))
        return {**means, **dict(zip(maxima, largest.tolist(), strict=True))}

    def batch_mean(self, value: torch.Tensor) -> torch.Tensor:
        """A mean over this rank's batch -> the mean over the union of the ranks' (equal) batches: the mean
        of the ranks' values, by an all-reduce that torch.compile traces (functional collectives), without
        gradient (the normalisers that use it are detached)."""
        if not self.parallel:
            return value
        return funcol.all_reduce(value.detach(), "sum", dist.group.WORLD) / self.size

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (a stop requested on one stops all at the same update)."""
        if not self.parallel:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value) -> list:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if not self.parallel:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values


SINGLE = Group()  # a plain run: one process


def join(device: torch.device) -> tuple[Group, torch.device]:
    """The process group that torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), joined: gloo on CPU, NCCL on CUDA with each process on the GPU of its
    LOCAL_RANK. Without torchrun (or with one process): a plain run, `Group()`. Returns the group and the
    device this process trains on."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # evaluations run on rank 0 while the others wait at their next all-reduce: allow them the time
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=3))
    return Group(dist.get_rank(), dist.get_world_size()), device


def average_gradients(parameters: list[torch.Tensor], group: Group) -> None:
    """Each parameter's .grad replaced by its mean over the ranks: one all-reduce of the flattened
    gradients (every rank holds gradients for the same parameters: the same code ran on each)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= group.size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def leave() -> None:
    """Leave the process group at the end of a run (torchrun's processes exit cleanly)."""
    if dist.is_initialized():
        dist.destroy_process_group()

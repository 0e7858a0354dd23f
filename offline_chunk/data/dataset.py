"""The dataset of a step-level store: `OfflineRLDataset`, its chunk transitions for inspection
(`dataset[i]`, one item dict in environment units) and the samplers that training uses (`sampler`: the
device-resident `ChunkSampler`; `streaming_sampler`: frames streamed from disk, data/streaming.py).

Items and batches are gathered by data/batches.py, whose docstring lists their fields
(docs/chunk_transitions.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from offline_chunk.data.batches import ChunkSampler, ChunkTensors, gather_chunks
from offline_chunk.data.chunks import build_chunk_index
from offline_chunk.data.store import StepData, open_store
from offline_chunk.data.streaming import StreamingSampler


def _first(value):
    """Row 0 of a batch field (a tensor, or a dict of camera tensors)."""
    return {camera: frames[0] for camera, frames in value.items()} if isinstance(value, dict) else value[0]


class OfflineRLDataset(Dataset):
    """Action-chunk transitions of a step-level store (docs/chunk_transitions.md), in environment units.

    `dataset[i]` returns one item dict (for inspection, notebooks and tests); training uses
    `dataset.sampler(...)`, which keeps everything on the device and batches by gathers.
    """

    def __init__(
        self,
        store: str | Path | StepData,
        horizon: int,
        obs_horizon: int = 1,
        gamma: float = 0.99,
        drop_partial: bool = True,
        lazy_frames: bool = False,
    ):
        """`lazy_frames`: the cameras stay on disk (zarr arrays): items read their frames from there, and
        training streams them (`streaming_sampler`)."""
        if obs_horizon < 1:
            raise ValueError(f"obs_horizon must be >= 1, got {obs_horizon}")
        self.data = store if isinstance(store, StepData) else open_store(store, lazy_frames=lazy_frames)
        self.lazy_frames = lazy_frames
        self.horizon, self.obs_horizon, self.gamma = int(horizon), int(obs_horizon), float(gamma)
        self.index = build_chunk_index(
            self.data.reward, self.data.terminal, self.data.episode_ends, horizon, gamma, drop_partial
        )
        self.tensors = ChunkTensors.build(self.data.obs, self.data.action, self.index, self.data.images)

    @property
    def obs_dim(self) -> int:
        return self.tensors.obs.shape[1]

    @property
    def action_dim(self) -> int:
        return self.tensors.action.shape[1]

    @property
    def image_shapes(self) -> dict[str, list[int]]:
        """Each camera's frame shape (H, W, C), in the store's order."""
        return {camera: list(frames.shape[1:]) for camera, frames in self.data.images.items()}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"chunk index {i} out of range for {len(self)} chunk transitions")
        ids = torch.tensor([i % len(self)])
        batch = gather_chunks(
            self.tensors, ids, self.horizon, self.obs_horizon, images=bool(self.tensors.images)
        )
        return {key: _first(value) for key, value in batch.items()}

    def sampler(
        self,
        batch_size: int,
        device="cpu",
        generator: torch.Generator | None = None,
        seed: int = 0,
        next_actions: bool = False,
        return_bounds: bool = False,
        images: bool = False,
    ) -> ChunkSampler:
        """A device-resident batch sampler (what training uses); `images`: with the cameras' frames."""
        if self.lazy_frames and images:
            raise ValueError("the frames are on disk (lazy_frames=True): use streaming_sampler")
        return ChunkSampler(
            self.tensors,
            batch_size,
            self.horizon,
            self.obs_horizon,
            device,
            generator,
            seed,
            next_actions,
            return_bounds,
            images,
        )

    def streaming_sampler(
        self,
        budget_bytes: float,
        batch_size: int,
        device="cpu",
        seed: int = 0,
        next_actions: bool = False,
        return_bounds: bool = False,
        state: dict | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> StreamingSampler:
        """Batches as `sampler(images=True)`, the frames streamed from disk through a device buffer of
        `budget_bytes` at most (data/streaming.py); `state`: a checkpointed sampler's, to resume from; `shard`
        (rank, ranks): one data-parallel process's share of the blocks."""
        if not self.lazy_frames:
            raise ValueError(
                "streaming_sampler reads frames from disk: open the dataset with lazy_frames=True"
            )
        return StreamingSampler(
            self.tensors,
            self.data.images,
            budget_bytes,
            batch_size,
            self.horizon,
            self.obs_horizon,
            device,
            seed,
            next_actions,
            return_bounds,
            state=state,
            shard=shard,
        )

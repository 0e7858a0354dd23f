"""Batches of chunk transitions: the device tensors a gather reads (`ChunkTensors`), the gather itself
(`gather_chunks`) and the device-resident uniform sampler (`ChunkSampler`).

Every item and batch is built by `gather_chunks`, so an item from `dataset[i]` (data/dataset.py) and row k
of a batch from `ChunkSampler`, the streaming sampler (data/streaming.py) or the replay's sampler
(data/replay.py) are computed by one piece of code. Fields follow the table of docs/chunk_transitions.md:

    observations       (To, D)  rows max(t - To + 1 + k, b), k = 0..To-1
    next_observations  (To, D)  the same history ending at n = min(t + τ, e - 1)
    actions            (H, A)   rows min(t + i, e - 1), i = 0..H-1
    action_mask        (H,)     t + i < e
    cumulative_reward  ()       Σ_{i<τ} γ^i r[t+i]
    chunk_done         ()       d
    effective_length   () int64 τ
    discount_factor    ()       γ^τ

and, from a store with cameras, with `images=True`:

    images             {camera: (To, C, H, W) uint8}  the frames of the rows of `observations`
    next_images        {camera: (To, C, H, W) uint8}  the frames of the rows of `next_observations`

Frames stay uint8 on the device (a quarter of float32's memory); the networks convert them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from offline_chunk.data.chunks import ChunkIndex

ITEM_KEYS = (
    "observations",
    "next_observations",
    "actions",
    "action_mask",
    "cumulative_reward",
    "chunk_done",
    "effective_length",
    "discount_factor",
)


@dataclass
class ChunkTensors:
    """Step arrays and the chunk index as tensors on one device: everything a gather needs."""

    obs: torch.Tensor  # (N, D) float32
    action: torch.Tensor  # (N, A) float32
    start: torch.Tensor  # (M,) int64
    episode_begin: torch.Tensor
    episode_end: torch.Tensor
    next_row: torch.Tensor
    effective_length: torch.Tensor  # (M,) int64
    chunk_done: torch.Tensor  # (M,) float32
    cumulative_reward: torch.Tensor  # (M,) float32
    discount_factor: torch.Tensor  # (M,) float32
    return_lower_bound: torch.Tensor  # (M,) float32
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # camera -> (N, C, H, W) uint8

    @classmethod
    def build(cls, obs: np.ndarray, action: np.ndarray, index: ChunkIndex, images=None) -> ChunkTensors:
        """The tensors of a store's rows and index; camera frames (N, H, W, C) become (N, C, H, W), and
        frames left on disk (zarr arrays) are read by row when gathered (`DiskFrames`)."""
        frames = {
            camera: torch.as_tensor(f).permute(0, 3, 1, 2).contiguous()
            if isinstance(f, np.ndarray)
            else DiskFrames(f)
            for camera, f in (images or {}).items()
        }
        return cls(
            obs=torch.as_tensor(obs, dtype=torch.float32),
            action=torch.as_tensor(action, dtype=torch.float32),
            start=torch.as_tensor(index.start),
            episode_begin=torch.as_tensor(index.episode_begin),
            episode_end=torch.as_tensor(index.episode_end),
            next_row=torch.as_tensor(index.next_row),
            effective_length=torch.as_tensor(index.effective_length),
            chunk_done=torch.as_tensor(index.chunk_done, dtype=torch.float32),
            cumulative_reward=torch.as_tensor(index.cumulative_reward),
            discount_factor=torch.as_tensor(index.discount_factor),
            return_lower_bound=torch.as_tensor(index.return_lower_bound),
            images=frames,
        )

    def to(self, device) -> ChunkTensors:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "images"}
        return ChunkTensors(**moved, images={camera: f.to(device) for camera, f in self.images.items()})


class DiskFrames:
    """One camera's frames left on disk (a zarr (N, H, W, C) array), indexed by row tensors like the
    in-memory (N, C, H, W) tensor: `frames[rows]` reads those rows (an item's, for inspection; training
    streams them instead, data/streaming.py)."""

    def __init__(self, array):
        self.array = array

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        read = torch.from_numpy(self.array.oindex[rows.flatten().cpu().numpy()])
        return read.permute(0, 3, 1, 2).reshape(*rows.shape, *read.shape[3:], *read.shape[1:3])

    def to(self, device) -> DiskFrames:
        return self  # read to the host; `frames[rows]` is moved by whoever uses it


def _history_rows(last: torch.Tensor, first: torch.Tensor, obs_horizon: int) -> torch.Tensor:
    """(B, To) rows last - To + 1 .. last, clamped below to the episode's first row."""
    offsets = torch.arange(1 - obs_horizon, 1, device=last.device)
    return torch.maximum(last[:, None] + offsets, first[:, None])


def _chunk_rows(first: torch.Tensor, end: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H) rows first + i clamped to the episode's last row, and whether each is a recorded action."""
    rows = first[:, None] + torch.arange(horizon, device=first.device)
    return torch.minimum(rows, end[:, None] - 1), rows < end[:, None]


def gather_chunks(
    tensors: ChunkTensors,
    ids: torch.Tensor,
    horizon: int,
    obs_horizon: int,
    next_actions: bool = False,
    return_bounds: bool = False,
    images: bool = False,
) -> dict:
    """The batch of chunk transitions `ids` (B,) by gathers only: no Python loop, no host sync.

    `next_actions=True` adds the recorded chunk that starts at the next row (rows min(n + i, e - 1)),
    for SARSA-style backups that evaluate the data's own behaviour; `return_bounds=True` adds
    `return_lower_bound`, the recorded return from t as a lower bound on the chunk's value (returns.py);
    `images=True` adds the cameras' frames of the same history rows (`images`, `next_images`)."""
    start, begin, end = tensors.start[ids], tensors.episode_begin[ids], tensors.episode_end[ids]
    action_rows, action_mask = _chunk_rows(start, end, horizon)
    history = _history_rows(start, begin, obs_horizon)
    next_history = _history_rows(tensors.next_row[ids], begin, obs_horizon)
    batch = {
        "observations": tensors.obs[history],
        "next_observations": tensors.obs[next_history],
        "actions": tensors.action[action_rows],
        "action_mask": action_mask,
        "cumulative_reward": tensors.cumulative_reward[ids],
        "chunk_done": tensors.chunk_done[ids],
        "effective_length": tensors.effective_length[ids],
        "discount_factor": tensors.discount_factor[ids],
    }
    if next_actions:
        batch["next_actions"] = tensors.action[_chunk_rows(tensors.next_row[ids], end, horizon)[0]]
    if return_bounds:
        batch["return_lower_bound"] = tensors.return_lower_bound[ids]
    if images:
        batch["images"] = {camera: frames[history] for camera, frames in tensors.images.items()}
        batch["next_images"] = {camera: frames[next_history] for camera, frames in tensors.images.items()}
    return batch


class ChunkSampler:
    """Uniform batches of chunk transitions, built on `device` from device-resident tensors.

    `sample()` draws indices with a device generator and gathers: nothing crosses to the host."""

    def __init__(
        self,
        tensors: ChunkTensors,
        batch_size: int,
        horizon: int,
        obs_horizon: int,
        device,
        generator: torch.Generator | None = None,
        seed: int = 0,
        next_actions: bool = False,
        return_bounds: bool = False,
        images: bool = False,
    ):
        self.device = torch.device(device)
        self.next_actions, self.return_bounds, self.images = next_actions, return_bounds, images
        self.tensors = tensors.to(self.device)
        self.batch_size, self.horizon, self.obs_horizon = int(batch_size), int(horizon), int(obs_horizon)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        self.generator = generator
        self.num_chunks = len(self.tensors.start)

    def draw_ids(self) -> torch.Tensor:
        """(B,) chunk indices, uniform over the transitions."""
        return torch.randint(
            self.num_chunks, (self.batch_size,), device=self.device, generator=self.generator
        )

    def sample(self) -> dict:
        return gather_chunks(
            self.tensors,
            self.draw_ids(),
            self.horizon,
            self.obs_horizon,
            self.next_actions,
            self.return_bounds,
            self.images,
        )

    def __iter__(self):
        while True:
            yield self.sample()

"""A replay that grows by whole episodes: the offline store's rows and chunk index on the device, then the
episodes an agent collects online, appended without copying what is there (offline-to-online fine-tuning).

The chunk rules of docs/chunk_transitions.md look at one episode's rows only, so an appended episode is
indexed on its own (with its row offset) and its entries are written after the others: the index equals
the one built from scratch on the concatenated rows. The exception is the return bound's unseen tail, which
values a truncated end by the worst reward in the store (returns.py); an episode with a reward below every
earlier one re-computes the bounds of all entries (on the host, once).

Rows and index entries live in preallocated device tensors of `capacity` rows, doubled (one copy) when an
append would overflow them. Samplers made by `sampler` draw from the current entries: uniformly over all
of them, or a fixed fraction from the online ones (RLPD's symmetric sampling, Ball et al. 2023).
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import torch

from offline_chunk.data.batches import ChunkSampler, ChunkTensors
from offline_chunk.data.chunks import ChunkIndex, build_chunk_index
from offline_chunk.data.returns import return_lower_bounds
from offline_chunk.data.store import StepData

ROW_POINTERS = ("start", "episode_begin", "episode_end", "next_row")  # index fields that hold rows
INDEX_FIELDS = (
    *ROW_POINTERS,
    "effective_length",
    "chunk_done",
    "cumulative_reward",
    "discount_factor",
    "return_lower_bound",
)


class ChunkReplay:
    """The offline store's chunk transitions, then collected episodes (`append_episode`), on `device`."""

    def __init__(
        self,
        data: StepData,
        horizon: int,
        obs_horizon: int,
        gamma: float,
        drop_partial: bool = True,
        capacity: int | None = None,
        device="cpu",
    ):
        if data.images:
            raise ValueError(
                "a replay of camera frames is not supported yet: fine-tune on low-dimensional stores"
            )
        self.horizon, self.obs_horizon, self.gamma = horizon, obs_horizon, gamma
        self.drop_partial = drop_partial
        self.device = torch.device(device)
        # Host copies of what the chunk rules read (small: three numbers per row).
        self.reward, self.terminal = np.asarray(data.reward, np.float64), np.asarray(data.terminal, bool)
        self.episode_ends = np.asarray(data.episode_ends, np.int64)
        self.worst_reward = float(self.reward.min())
        index = build_chunk_index(self.reward, self.terminal, self.episode_ends, horizon, gamma, drop_partial)
        rows = max(capacity or 0, data.num_rows)
        self.tensors = _allocate(rows, data.obs.shape[1], data.action.shape[1], self.device)
        self.num_rows, self.num_chunks = 0, 0
        self._write(np.asarray(data.obs, np.float32), np.asarray(data.action, np.float32), index)
        self.offline_chunks = self.num_chunks
        self.samplers: list[ReplaySampler] = []

    @property
    def online_chunks(self) -> int:
        return self.num_chunks - self.offline_chunks

    def append_episode(self, obs, action, reward, terminal) -> None:
        """One collected episode's rows (T, D), (T, A), (T,), (T,) in environment units, labelled as the
        store's rows are (row t: the reward and terminal of s_t and a_t); its chunks become sampleable."""
        reward, terminal = np.asarray(reward, np.float64), np.asarray(terminal, bool)
        offset = self.num_rows
        index = build_chunk_index(
            reward,
            terminal,
            np.array([len(reward)]),
            self.horizon,
            self.gamma,
            self.drop_partial,
            worst_reward=min(self.worst_reward, float(reward.min())),
        )
        self.reward, self.terminal = (
            np.concatenate([self.reward, reward]),
            np.concatenate([self.terminal, terminal]),
        )
        self.episode_ends = np.append(self.episode_ends, offset + len(reward))
        shifted = {name: getattr(index, name) + offset for name in ROW_POINTERS}
        self._write(np.asarray(obs, np.float32), np.asarray(action, np.float32), replace(index, **shifted))
        if reward.min() < self.worst_reward:  # the unseen tails of every truncated episode are worth less now
            self.worst_reward = float(reward.min())
            self._rebound()
        for sampler in self.samplers:
            sampler.num_chunks, sampler.offline_chunks = self.num_chunks, self.offline_chunks

    def _write(self, obs: np.ndarray, action: np.ndarray, index: ChunkIndex) -> None:
        """Rows and index entries after the current ones (growing the storage first if needed)."""
        rows, chunks = len(obs), len(index)
        self._reserve(self.num_rows + rows)
        t = self.tensors
        t.obs[self.num_rows : self.num_rows + rows] = torch.as_tensor(obs, device=self.device)
        t.action[self.num_rows : self.num_rows + rows] = torch.as_tensor(action, device=self.device)
        for name in INDEX_FIELDS:
            getattr(t, name)[self.num_chunks : self.num_chunks + chunks] = torch.as_tensor(
                getattr(index, name), device=self.device
            ).to(getattr(t, name).dtype)
        self.num_rows += rows
        self.num_chunks += chunks

    def _reserve(self, rows: int) -> None:
        capacity = len(self.tensors.obs)
        if rows <= capacity:
            return
        grown = _allocate(
            max(rows, 2 * capacity), self.tensors.obs.shape[1], self.tensors.action.shape[1], self.device
        )
        for f in fields(ChunkTensors):
            if f.name != "images":  # a replay holds no frames (checked above)
                getattr(grown, f.name)[:capacity] = getattr(self.tensors, f.name)
        self.tensors = grown
        for sampler in self.samplers:
            sampler.tensors = grown

    def _rebound(self) -> None:
        bounds = return_lower_bounds(
            self.reward, self.terminal, self.episode_ends, self.gamma, self.worst_reward
        )
        starts = self.tensors.start[: self.num_chunks].cpu().numpy()
        self.tensors.return_lower_bound[: self.num_chunks] = torch.as_tensor(
            bounds[starts], dtype=torch.float32, device=self.device
        )

    def sampler(
        self, batch_size: int, seed: int = 0, online_fraction: float | None = None, **fields_
    ) -> ReplaySampler:
        """Batches over the current entries: uniformly (online_fraction None: QC's protocol, all data
        alike), or `online_fraction` of each batch from the collected episodes once there are any."""
        sampler = ReplaySampler(self, batch_size, seed, online_fraction, **fields_)
        self.samplers.append(sampler)
        return sampler


class ReplaySampler(ChunkSampler):
    """A ChunkSampler over a ChunkReplay's storage; the replay keeps its counts current."""

    def __init__(self, replay: ChunkReplay, batch_size, seed, online_fraction, **fields_):
        super().__init__(
            replay.tensors,
            batch_size,
            replay.horizon,
            replay.obs_horizon,
            replay.device,
            seed=seed,
            **fields_,
        )
        self.num_chunks, self.offline_chunks = replay.num_chunks, replay.offline_chunks
        if online_fraction is not None and not 0.0 <= online_fraction <= 1.0:
            raise ValueError(f"online_fraction must be in [0, 1], got {online_fraction}")
        self.online_fraction = online_fraction

    def draw_ids(self) -> torch.Tensor:
        online = self.num_chunks - self.offline_chunks
        if self.online_fraction is None or online == 0:
            return super().draw_ids()
        k = round(self.online_fraction * self.batch_size)  # host arithmetic: no device read
        offline_ids = torch.randint(
            self.offline_chunks, (self.batch_size - k,), device=self.device, generator=self.generator
        )
        online_ids = (
            torch.randint(online, (k,), device=self.device, generator=self.generator) + self.offline_chunks
        )
        return torch.cat([offline_ids, online_ids])


def _allocate(rows: int, obs_dim: int, action_dim: int, device) -> ChunkTensors:
    """Storage for `rows` rows and as many index entries (a start row has at most one)."""
    zeros = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
    entries = {name: zeros(rows, dtype=torch.int64) for name in (*ROW_POINTERS, "effective_length")}
    return ChunkTensors(
        obs=zeros(rows, obs_dim),
        action=zeros(rows, action_dim),
        chunk_done=zeros(rows),
        cumulative_reward=zeros(rows),
        discount_factor=zeros(rows),
        return_lower_bound=zeros(rows),
        **entries,
    )

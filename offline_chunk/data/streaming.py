"""Camera frames streamed from a store larger than the memory budget: a shuffle buffer of blocks of rows on
the device, refilled by a background reader, behind the same batch contract as `ChunkSampler`.

The low-dimensional arrays and the chunk index stay whole in memory (they are small); only the frames
stream. The store's rows are cut into blocks of `block_rows` (a multiple of the store's 256-frame zarr
chunks, so that a block reads whole chunks). A chunk transition belongs to the block of its start row t,
and block j's window holds the frames of rows [j·R − (To − 1), (j + 1)·R − 1 + H]: every row that the
history of t and of its next row n ≤ t + H can name, so a transition is served whole from its block.

The buffer holds `slots` windows (as many as the budget allows). Blocks enter in a seeded random order,
epoch after epoch (a permutation per epoch); after every `swap_every` batches the oldest block leaves and
the next in the order takes its slot. Batches are drawn uniformly from the transitions of the resident
blocks, so each block is resident for slots × swap_every batches of each pass, as a shuffle buffer
(tf.data, webdataset) does. A thread reads the coming blocks from zarr into host memory ahead of their
turn; the swap copies one into its slot. Which frames are resident is a function of the seed and the
batch count alone, so a resumed run samples exactly what the uninterrupted one would (`state` / `restore`).
"""

from __future__ import annotations

import math
import queue
import threading

import numpy as np
import torch

from offline_chunk.data.batches import ChunkSampler, ChunkTensors
from offline_chunk.data.store import FRAMES_PER_CHUNK
from offline_chunk.errors import ConfigError

BLOCK_ROWS = 4 * FRAMES_PER_CHUNK
PREFETCH_BLOCKS = 2


class ResidentFrames:
    """One camera's resident frames, indexed by global row like the in-memory (N, C, H, W) tensor:
    `frames[rows]` looks each row's slot and position up in the sampler's row maps."""

    def __init__(self, buffer: torch.Tensor, row_slot: torch.Tensor, row_position: torch.Tensor):
        self.buffer, self.row_slot, self.row_position = buffer, row_slot, row_position

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.buffer[self.row_slot[rows], self.row_position[rows]]

    def to(self, device) -> ResidentFrames:
        return self  # built on its device


def window_rows(block_rows: int, obs_horizon: int, horizon: int) -> int:
    """The longest window: the block's rows, the To − 1 before them and the H after them."""
    return block_rows + obs_horizon - 1 + horizon


def window_bytes(frames: dict, block_rows: int, obs_horizon: int, horizon: int) -> int:
    """The bytes of one block's window over every camera."""
    return window_rows(block_rows, obs_horizon, horizon) * sum(
        int(np.prod(f.shape[1:])) for f in frames.values()
    )


class StreamingSampler(ChunkSampler):
    """`ChunkSampler`'s batches with frames from a device buffer of `budget_bytes` at most; `frames` are
    the store's lazy (N, H, W, C) zarr arrays, `tensors` the in-memory rest (their `images` are replaced by
    the resident ones). `state`: where a checkpointed sampler stood (`state()`); `shard` (rank, ranks): the
    blocks of one process of a data-parallel run (distributed.py), disjoint from the other processes'."""

    def __init__(
        self,
        tensors: ChunkTensors,
        frames: dict,
        budget_bytes: float,
        batch_size: int,
        horizon: int,
        obs_horizon: int,
        device,
        seed: int = 0,
        next_actions: bool = False,
        return_bounds: bool = False,
        block_rows: int = BLOCK_ROWS,
        state: dict | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        device = torch.device(device)
        self.frames, self.seed, self.block_rows = frames, int(seed), int(block_rows)
        rows = len(tensors.obs)
        self.num_blocks = math.ceil(rows / block_rows)
        start_block = tensors.start.cpu().numpy() // block_rows
        order = np.argsort(start_block, kind="stable")
        self.ids_by_block = torch.as_tensor(order, device=device)
        self.block_offsets = np.searchsorted(start_block[order], np.arange(self.num_blocks + 1))
        # only blocks where transitions start enter the buffer (rows of episodes shorter than a chunk, with
        # drop_partial, start none): a resident set of such blocks alone would have nothing to draw
        self.blocks = np.flatnonzero(np.diff(self.block_offsets) > 0)
        rank, ranks = shard  # a data-parallel run's process `rank` of `ranks` reads every ranks-th block
        self.blocks = self.blocks[rank::ranks]
        if len(self.blocks) == 0:
            raise ConfigError(
                f"process {rank} of {ranks} has no block of {block_rows} rows to stream: the store has "
                f"fewer blocks than processes; train with fewer processes"
            )
        self.window_rows = window_rows(block_rows, obs_horizon, horizon)
        needed = window_bytes(frames, block_rows, obs_horizon, horizon)
        fits = int(budget_bytes // needed)
        if fits < 2:
            raise ConfigError(
                f"frame_budget_mb={budget_bytes / 2**20:.3g}: streaming needs room for 2 blocks of "
                f"{block_rows} rows, {2 * needed / 2**20:.3g} MB"
            )
        self.slots = min(fits, len(self.blocks))
        self.swap_every = max(1, block_rows // batch_size)
        self.row_slot = torch.zeros(rows, dtype=torch.int64, device=device)
        self.row_position = torch.zeros(rows, dtype=torch.int64, device=device)
        resident = {}
        for camera, array in frames.items():
            height, width, channels = array.shape[1:]
            buffer = torch.zeros((self.slots, self.window_rows, channels, height, width), dtype=torch.uint8,
                                 device=device)  # fmt: skip
            resident[camera] = ResidentFrames(buffer, self.row_slot, self.row_position)
        with_frames = ChunkTensors(**{**tensors.__dict__, "images": resident})
        super().__init__(with_frames, batch_size, horizon, obs_horizon, device, None, seed, next_actions,
                         return_bounds, images=True)  # fmt: skip
        self.reader: BlockReader | None = None
        self.restore(state or {"batches": 0})  # a resumed run's `state()`: its resident blocks, read once

    # ------------------------------------------------------------------ the block order

    def block_at(self, position: int) -> int:
        """The block entering at `position` of the order: a seeded permutation per epoch of the blocks that
        start transitions."""
        epoch, within = divmod(position, len(self.blocks))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(self.blocks[torch.randperm(len(self.blocks), generator=generator)[within]])

    def window(self, block: int) -> tuple[int, int]:
        """Rows [low, high) of block `block`'s window: from j·R − (To − 1) to (j + 1)·R − 1 + H."""
        low = max(0, block * self.block_rows - (self.obs_horizon - 1))
        return low, min(len(self.row_slot), (block + 1) * self.block_rows + self.horizon)

    def read(self, position: int) -> tuple[int, dict[str, np.ndarray]]:
        """Host copies of the window frames of the block at `position` (what the reader thread runs)."""
        low, high = self.window(self.block_at(position))
        return position, {camera: np.asarray(array[low:high]) for camera, array in self.frames.items()}

    # ------------------------------------------------------------------ the buffer

    def point_rows(self, slot: int) -> None:
        """The rows of `slot`'s window look their frames up there."""
        low, high = self.window(self.resident[slot])
        self.row_slot[low:high] = slot
        self.row_position[low:high] = torch.arange(high - low, device=self.row_slot.device)

    def install(self, position: int, frames: dict[str, np.ndarray]) -> None:
        """Copy the window of the block at `position` into its slot, position mod slots."""
        slot = position % self.slots
        self.resident[slot] = self.block_at(position)
        for camera, window in frames.items():
            buffer = self.tensors.images[camera].buffer
            buffer[slot, : len(window)].copy_(torch.from_numpy(window).permute(0, 3, 1, 2), non_blocking=True)
        self.point_rows(slot)

    def refresh_ids(self) -> None:
        """The transitions the batches draw from: those of the resident blocks, in slot order (a function of
        the resident set alone, so that a restored sampler draws the same ids)."""
        blocks = [self.resident[slot] for slot in sorted(self.resident)]
        offsets = self.block_offsets
        self.loaded_ids = torch.cat([self.ids_by_block[offsets[b] : offsets[b + 1]] for b in blocks])
        self.num_chunks = len(self.loaded_ids)  # a host count, known at the swap: no device read

    def draw_ids(self) -> torch.Tensor:
        return self.loaded_ids[super().draw_ids()]

    def sample(self) -> dict:
        if self.batches and self.batches % self.swap_every == 0:
            self.swap()
        self.batches += 1
        return super().sample()

    def swap(self) -> None:
        """The oldest block leaves; the next in the order (read ahead by the thread) takes its slot. The
        rows its window shared with a resident neighbour's (To − 1 + H at each edge) need no repair: the
        leaving block is the oldest resident, so every neighbour was installed after it and those rows
        already point at the neighbour's copy."""
        self.install(*self.reader.next())
        self.refresh_ids()

    # ------------------------------------------------------------------ resuming

    def state(self) -> dict:
        return {"batches": self.batches}

    def restore(self, state: dict) -> None:
        """Resident blocks as after `state["batches"]` batches, read synchronously; the reader restarts.
        After b batches, floor((b − 1) / swap_every) swaps have run: positions [swaps, swaps + slots) are
        resident."""
        if self.reader is not None:
            self.reader.stop()
        self.batches = int(state["batches"])
        swaps = (self.batches - 1) // self.swap_every if self.batches else 0
        self.resident = {}
        for position in range(swaps, swaps + self.slots):
            self.install(*self.read(position))
        self.refresh_ids()
        self.reader = BlockReader(self.read, swaps + self.slots)


class BlockReader:
    """A daemon thread reading blocks at positions first, first + 1, ... ahead into a bounded queue."""

    def __init__(self, read, first: int):
        self.queue: queue.Queue = queue.Queue(maxsize=PREFETCH_BLOCKS)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(read, first), daemon=True)
        self.thread.start()

    def run(self, read, position: int) -> None:
        while not self.stopping.is_set():
            item = read(position)
            while not self.stopping.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            position += 1

    def next(self):
        return self.queue.get()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()

"""The streaming sampler (data/streaming.py): a store whose frames exceed the budget trains through a
device buffer of blocks, with the item contract of the in-memory sampler. Frames encode their own row
(pixel 0: row mod 256, pixel 1: row // 256) and so do the observations, so every batch can be checked row by
row against the rows its observations came from, without the sampler's help."""

import numpy as np
import pytest
import torch

from offline_chunk.data.batches import gather_chunks
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.store import StepData, frame_bytes, write_store
from offline_chunk.data.streaming import StreamingSampler, window_bytes
from offline_chunk.errors import ConfigError

ROWS, SIDE = 3000, 4


def row_coded_store(path, lengths=(700, 900, 400, 1000), side=SIDE):
    rows = np.arange(ROWS)
    frames = np.zeros((ROWS, side, side, 3), np.uint8)
    frames[:, 0, 0, 0], frames[:, 0, 1, 0] = rows % 256, rows // 256
    data = StepData(
        observations={"row": rows[:, None].astype(np.float32)},
        action=np.zeros((ROWS, 1), np.float32),
        reward=np.zeros(ROWS, np.float32),
        terminal=np.zeros(ROWS, bool),
        episode_ends=np.cumsum(lengths),
        images={"cam": frames},
    )
    return write_store(data, path)


def rows_of(frames: torch.Tensor) -> torch.Tensor:
    """(B, To, C, H, W) row-coded frames -> (B, To) rows."""
    return frames[:, :, 0, 0, 0].long() + 256 * frames[:, :, 0, 0, 1].long()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return row_coded_store(tmp_path_factory.mktemp("stream") / "rows.zarr")


def streaming(store, budget_blocks=3, seed=0, horizon=3, obs_horizon=2, block_rows=256, shard=(0, 1)):
    dataset = OfflineRLDataset(store, horizon, obs_horizon, gamma=0.9, lazy_frames=True)
    per_block = window_bytes(dataset.data.images, block_rows, obs_horizon, horizon)
    sampler = StreamingSampler(
        dataset.tensors, dataset.data.images, budget_blocks * per_block, 64, horizon, obs_horizon, "cpu",
        seed=seed, block_rows=block_rows, shard=shard,
    )  # fmt: skip
    return dataset, sampler


def test_the_store_is_larger_than_the_budget(store):
    _, sampler = streaming(store)
    assert frame_bytes(store) == ROWS * SIDE * SIDE * 3
    assert sampler.slots == 3 and sampler.num_blocks == 12  # 3 of 12 blocks resident


def test_every_batch_carries_the_frames_of_its_observation_rows(store):
    """Over a whole pass of the block order (blocks swapped in and out), each item's images are the frames
    of the rows its observations are, history and next history alike."""
    _, sampler = streaming(store)
    batches = sampler.num_blocks * sampler.swap_every + 5
    for _ in range(batches):
        batch = sampler.sample()
        assert batch["images"]["cam"].dtype == torch.uint8 and batch["images"]["cam"].shape[1:] == (
            2,
            3,
            4,
            4,
        )
        assert torch.equal(rows_of(batch["images"]["cam"]), batch["observations"][..., 0].long())
        assert torch.equal(rows_of(batch["next_images"]["cam"]), batch["next_observations"][..., 0].long())


def test_every_resident_row_looks_up_its_own_frame_after_each_swap(store):
    """The row maps: after each swap, every row of every resident window finds its own frame (adjacent
    windows share rows; a leaving window's shared rows must point at the neighbour that stays)."""
    _, sampler = streaming(store, budget_blocks=6)
    frames = sampler.tensors.images["cam"]
    for _ in range(2 * sampler.num_blocks):
        for block in sampler.resident.values():
            rows = torch.arange(*sampler.window(block))
            assert torch.equal(rows_of(frames[rows[:, None]]), rows[:, None]), block
        for _ in range(sampler.swap_every):
            sampler.sample()


def test_the_batches_match_the_in_memory_items_field_by_field(store):
    """The same transition, from the streaming sampler and from the in-memory dataset: equal fields."""
    dataset, sampler = streaming(store)
    memory = OfflineRLDataset(store, 3, 2, gamma=0.9)
    ids = sampler.draw_ids()
    streamed = gather_chunks(sampler.tensors, ids, 3, 2, images=True)
    reference = gather_chunks(memory.tensors, ids, 3, 2, images=True)
    for key, value in reference.items():
        if isinstance(value, dict):
            assert torch.equal(streamed[key]["cam"], value["cam"]), key
        else:
            assert torch.equal(streamed[key], value), key


def test_items_of_a_dataset_left_on_disk_read_their_frames_from_there(store):
    """dataset[i] with lazy frames: the same item as from the in-memory dataset, field by field."""
    lazy = OfflineRLDataset(store, 3, 2, gamma=0.9, lazy_frames=True)
    memory = OfflineRLDataset(store, 3, 2, gamma=0.9)
    for i in (0, 1, 699, 700, len(memory) - 1):
        got, want = lazy[i], memory[i]
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, dict):
                assert torch.equal(got[key]["cam"], value["cam"]), (i, key)
            else:
                assert torch.equal(got[key], value), (i, key)


def test_a_pass_reaches_every_block_and_draws_only_resident_ones(store):
    _, sampler = streaming(store)
    block_rows, seen = sampler.block_rows, set()
    for _ in range(sampler.num_blocks * sampler.swap_every):
        resident = set(sampler.resident.values())
        batch = sampler.sample()
        starts = batch["observations"][:, -1, 0].long() // block_rows  # the start row's block
        if sampler.batches % sampler.swap_every != 1 or sampler.batches == 1:
            assert set(starts.tolist()) <= resident
        seen |= set(starts.tolist())
    assert seen == set(range(sampler.num_blocks))


def test_the_processes_of_a_data_parallel_run_stream_disjoint_blocks_that_cover_the_store(store):
    """Rank r of 2 draws only from its own blocks (r, r + 2, ...), and the two together reach every block."""
    seen = []
    for rank in (0, 1):
        _, sampler = streaming(store, seed=rank, shard=(rank, 2))
        starts = set()
        for _ in range(sampler.num_blocks * sampler.swap_every):
            batch = sampler.sample()
            starts |= set((batch["observations"][:, -1, 0].long() // sampler.block_rows).tolist())
        assert starts and all(block % 2 == rank for block in starts)
        seen.append(starts)
    assert seen[0] | seen[1] == set(range(sampler.num_blocks))


def test_a_restored_sampler_continues_exactly(store):
    _, first = streaming(store, seed=3)
    for _ in range(17):
        first.sample()
    state, generator = first.state(), first.generator.get_state()
    expected = [first.sample() for _ in range(9)]
    _, second = streaming(store, seed=3)
    second.generator.set_state(generator)
    second.restore(state)
    for want in expected:
        got = second.sample()
        assert torch.equal(got["observations"], want["observations"])
        assert torch.equal(got["images"]["cam"], want["images"]["cam"])


def test_blocks_where_no_transition_starts_never_take_a_slot(tmp_path):
    """Rows 700..1299 are 300 two-step episodes, shorter than the chunk (H = 3, drop_partial): no transition
    starts there, so blocks 3 (rows 768..1023) and 4 (1024..1279) hold none. Were they to enter the buffer
    together (two slots), the batch would have nothing to draw; they stay out of the order instead, and a
    pass still reaches every block that starts transitions."""
    short = row_coded_store(tmp_path / "short.zarr", lengths=(700,) + (2,) * 300 + (1700,))
    starting = set(range(12)) - {3, 4}
    for seed in range(4):
        _, sampler = streaming(short, budget_blocks=2, seed=seed)
        seen = set()
        for _ in range(2 * len(starting) * sampler.swap_every):
            assert set(sampler.resident.values()) <= starting
            batch = sampler.sample()
            seen |= set((batch["observations"][:, -1, 0].long() // sampler.block_rows).tolist())
        assert seen == starting, seed


def test_a_budget_below_two_blocks_is_refused(store):
    with pytest.raises(ConfigError, match="streaming needs room for 2 blocks of 256 rows"):
        streaming(store, budget_blocks=1)


def test_training_streams_a_store_over_its_budget_and_resumes_exactly(tmp_path, capsys):
    """40 updates straight, or resumed from update 25 (before the first swap, at batch 32): the same
    weights. 16 px frames (the drq encoder's least is 15): 2.2 MB in 3 blocks of 1024 rows, 0.79 MB a
    window, so a budget of 1.8 MB holds 2 of them."""
    from helpers import tiny_config

    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.train import build_run, train

    store = row_coded_store(tmp_path / "s.zarr", side=16)
    extra = ["frame_budget_mb=1.8", "agent.vision.feature_dim=4", "steps=40", "checkpoint_every=25"]
    straight = train(tiny_config("td3bc", store, tmp_path / "a", *extra))
    assert "streaming    2.197 MB of frames over a budget of 1.8 MB: 2 blocks" in capsys.readouterr().out
    payload = read_checkpoint(tmp_path / "a" / "checkpoints" / "step_00000025.pt")
    assert payload["stream"] == {"batches": 25}
    cfg = payload["config"].model_copy(update={"run_dir": str(tmp_path / "b")})
    resumed = train(cfg, payload)
    a, b = read_checkpoint(straight)["weights"], read_checkpoint(resumed)["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert isinstance(build_run(cfg).sampler, StreamingSampler)

"""The chunk index, `__getitem__` and the device sampler against a plain reading of the rules of
docs/chunk_transitions.md."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from offline_chunk.data.batches import ITEM_KEYS
from offline_chunk.data.chunks import build_chunk_index
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.store import StepData, write_store


def reference_items(data: StepData, H: int, To: int, gamma: float, drop_partial: bool) -> dict[int, dict]:
    """docs/chunk_transitions.md, "Chunk transitions", one start row at a time. Keyed by start row t."""
    obs, action, reward, terminal = data.obs, data.action, data.reward, data.terminal
    items = {}
    b = 0
    for e in data.episode_ends:
        for t in range(b, e):
            j = next((row for row in range(t, min(t + H, e)) if terminal[row]), None)
            if j is not None:
                tau, d = j - t + 1, 1
            elif t + H <= e - 1:
                tau, d = H, 0
            else:
                tau, d = e - 1 - t, 0
            if tau == 0 or (drop_partial and not (tau == H or d == 1)):
                continue
            n = min(t + tau, e - 1)
            items[t] = {
                "observations": np.stack([obs[max(t - To + 1 + k, b)] for k in range(To)]),
                "next_observations": np.stack([obs[max(n - To + 1 + k, b)] for k in range(To)]),
                "actions": np.stack([action[min(t + i, e - 1)] for i in range(H)]),
                "next_actions": np.stack([action[min(n + i, e - 1)] for i in range(H)]),
                "action_mask": np.array([t + i < e for i in range(H)]),
                "cumulative_reward": sum(gamma**i * float(reward[t + i]) for i in range(tau)),
                "chunk_done": float(d),
                "effective_length": tau,
                "discount_factor": gamma**tau,
            }
        b = e
    return items


@st.composite
def stores(draw):
    H = draw(st.integers(1, 8))
    lengths = draw(st.lists(st.integers(1, 3 * H), min_size=1, max_size=6))
    n = sum(lengths)
    p_terminal = draw(st.sampled_from([0.0, 0.1, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    terminal = rng.random(n) < p_terminal
    ends = np.cumsum(lengths)
    if draw(st.booleans()):  # make sure some episodes end in a terminal
        terminal[ends - 1] |= rng.random(len(ends)) < 0.5
    rows = np.arange(n, dtype=np.float32)
    data = StepData(
        # Every row's observation and action are distinct, so a wrong gather cannot go unnoticed.
        observations={"obs": np.stack([rows, rows + 0.5], axis=1)},
        action=np.stack([-rows, rows * 2, rows + 0.25], axis=1),
        reward=rng.normal(size=n).astype(np.float32),
        terminal=terminal,
        episode_ends=ends.astype(np.int64),
    )
    To = draw(st.integers(1, 3))
    gamma = draw(st.floats(0.0, 1.0))
    drop_partial = draw(st.booleans())
    return data, H, To, gamma, drop_partial


def assert_item_equal(item: dict, expected: dict):
    assert set(item) == set(ITEM_KEYS) | ({"next_actions"} & set(item))
    gathered = ("observations", "next_observations", "actions") + (
        ("next_actions",) if "next_actions" in item else ()
    )
    for key in gathered:
        np.testing.assert_array_equal(item[key].numpy(), expected[key], err_msg=key)
    np.testing.assert_array_equal(item["action_mask"].numpy(), expected["action_mask"])
    assert item["action_mask"].dtype == torch.bool
    assert item["effective_length"].dtype == torch.int64
    assert int(item["effective_length"]) == expected["effective_length"]
    assert float(item["chunk_done"]) == expected["chunk_done"]
    for key in ("cumulative_reward", "chunk_done", "discount_factor", "observations", "actions"):
        assert item[key].dtype == torch.float32, key
    np.testing.assert_allclose(
        float(item["cumulative_reward"]), expected["cumulative_reward"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        float(item["discount_factor"]), expected["discount_factor"], rtol=1e-6, atol=1e-30
    )


@settings(max_examples=150, deadline=None)
@given(stores())
def test_index_and_items_match_reference(case):
    data, H, To, gamma, drop_partial = case
    expected = reference_items(data, H, To, gamma, drop_partial)
    dataset = OfflineRLDataset(data, horizon=H, obs_horizon=To, gamma=gamma, drop_partial=drop_partial)

    index = dataset.index
    assert list(index.start) == sorted(expected)
    for k, t in enumerate(index.start):
        assert index.effective_length[k] == expected[t]["effective_length"]
        assert index.chunk_done[k] == bool(expected[t]["chunk_done"])
    assert len(dataset) == len(expected)
    for k, t in enumerate(index.start):
        assert_item_equal(dataset[k], expected[t])


@settings(max_examples=60, deadline=None)
@given(stores())
def test_sampler_batches_match_reference(case):
    data, H, To, gamma, drop_partial = case
    expected = reference_items(data, H, To, gamma, drop_partial)
    dataset = OfflineRLDataset(data, horizon=H, obs_horizon=To, gamma=gamma, drop_partial=drop_partial)
    if not expected:
        assert len(dataset) == 0
        return
    batch = dataset.sampler(batch_size=32, seed=1, next_actions=True).sample()
    assert set(batch) == set(ITEM_KEYS) | {"next_actions"}
    assert batch["observations"].shape == (32, To, 2)
    assert batch["actions"].shape == (32, H, 3)
    for k in range(32):
        t = int(batch["observations"][k, -1, 0])  # observation k's last history row is its start row
        assert_item_equal({key: value[k] for key, value in batch.items()}, expected[t])


def test_hand_computed_episode():
    """One episode of 5 rows, terminal at row 3, H = 2, γ = 0.5, by hand."""
    reward = np.array([1.0, 2.0, 4.0, 8.0, 16.0], np.float32)
    terminal = np.array([False, False, False, True, False])
    index = build_chunk_index(reward, terminal, np.array([5]), horizon=2, gamma=0.5, drop_partial=False)
    # t=0: rows 0,1, full chunk, next row 2.  R = 1 + 0.5*2 = 2
    # t=1: rows 1,2, full chunk, next row 3.  R = 2 + 0.5*4 = 4
    # t=2: terminal at 3 inside [2, 3]: τ=2, d=1. R = 4 + 0.5*8 = 8
    # t=3: terminal at 3: τ=1, d=1. R = 8
    # t=4: last row of a truncated episode, τ = 0: not a transition.
    np.testing.assert_array_equal(index.start, [0, 1, 2, 3])
    np.testing.assert_array_equal(index.effective_length, [2, 2, 2, 1])
    np.testing.assert_array_equal(index.chunk_done, [False, False, True, True])
    np.testing.assert_array_equal(index.next_row, [2, 3, 4, 4])
    np.testing.assert_allclose(index.cumulative_reward, [2.0, 4.0, 8.0, 8.0])
    np.testing.assert_allclose(index.discount_factor, [0.25, 0.25, 0.25, 0.5])


def test_truncated_tail_kept_only_without_drop_partial():
    reward = np.ones(4, np.float32)
    terminal = np.zeros(4, bool)
    kept = build_chunk_index(reward, terminal, np.array([4]), horizon=3, gamma=0.9, drop_partial=False)
    # t=0: t+H = 3 <= e-1 = 3, full. t=1: τ = e-1-t = 2. t=2: τ = 1. t=3: τ = 0, dropped.
    np.testing.assert_array_equal(kept.start, [0, 1, 2])
    np.testing.assert_array_equal(kept.effective_length, [3, 2, 1])
    np.testing.assert_allclose(kept.cumulative_reward, [1 + 0.9 + 0.81, 1.9, 1.0], rtol=1e-6)
    dropped = build_chunk_index(reward, terminal, np.array([4]), horizon=3, gamma=0.9, drop_partial=True)
    np.testing.assert_array_equal(dropped.start, [0])


def test_horizon_one_is_one_step_transitions():
    reward = np.array([1.0, 2.0, 3.0], np.float32)
    terminal = np.array([False, False, True])
    index = build_chunk_index(reward, terminal, np.array([3]), horizon=1, gamma=0.99)
    np.testing.assert_array_equal(index.start, [0, 1, 2])
    np.testing.assert_array_equal(index.next_row, [1, 2, 2])
    np.testing.assert_array_equal(index.chunk_done, [False, False, True])
    np.testing.assert_allclose(index.cumulative_reward, reward)
    np.testing.assert_allclose(index.discount_factor, [0.99] * 3)


def test_dataset_reads_store_from_disk(tmp_path):
    rows = np.arange(6, dtype=np.float32)
    data = StepData(
        observations={"obs": rows[:, None]},
        action=np.stack([rows, -rows], axis=1) / 10,
        reward=rows.copy(),
        terminal=np.zeros(6, bool),
        episode_ends=np.array([3, 6]),
    )
    path = write_store(data, tmp_path / "s.zarr")
    dataset = OfflineRLDataset(path, horizon=2, obs_horizon=2, gamma=1.0)
    # Each 3-row truncated episode has one full chunk (t = b): rows b, b+1, next row b+2.
    assert len(dataset) == 2
    item = dataset[1]
    np.testing.assert_array_equal(item["observations"].numpy()[:, 0], [3, 3])
    np.testing.assert_array_equal(item["next_observations"].numpy()[:, 0], [4, 5])
    assert float(item["cumulative_reward"]) == 3 + 4
    with pytest.raises(IndexError):
        dataset[2]
    assert float(dataset[-1]["cumulative_reward"]) == 7

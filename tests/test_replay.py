"""The growing replay of offline-to-online fine-tuning: appended episodes are indexed by the same contract,
so the replay equals the dataset built from scratch on the concatenated rows."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from offline_chunk.data.batches import gather_chunks
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.replay import INDEX_FIELDS, ChunkReplay
from offline_chunk.data.store import StepData


def random_episodes(rng, count, obs_dim=3, action_dim=2):
    """(obs, action, reward, terminal) per episode: lengths 1..12, terminals anywhere (goal rows inside an
    episode, as OGBench's single-task relabelling marks them), rewards in [-2, 1]."""
    episodes = []
    for _ in range(count):
        length = int(rng.integers(1, 13))
        episodes.append(
            (
                rng.normal(size=(length, obs_dim)).astype(np.float32),
                rng.uniform(-1, 1, size=(length, action_dim)).astype(np.float32),
                rng.uniform(-2, 1, size=length).astype(np.float32),
                rng.random(length) < 0.15,
            )
        )
    return episodes


def step_data(episodes) -> StepData:
    obs, action, reward, terminal = (np.concatenate([e[k] for e in episodes]) for k in range(4))
    return StepData(
        observations={"obs": obs},
        action=action,
        reward=reward,
        terminal=terminal,
        episode_ends=np.cumsum([len(e[2]) for e in episodes]),
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    offline=st.integers(1, 5),
    online=st.integers(1, 6),
    horizon=st.integers(1, 5),
    obs_horizon=st.integers(1, 3),
    drop_partial=st.booleans(),
    capacity=st.sampled_from([None, 8, 1000]),
)
def test_the_incremental_index_equals_the_index_built_from_scratch(
    seed, offline, online, horizon, obs_horizon, drop_partial, capacity
):
    """Whatever the episodes, the order of appends and the storage growth: every index field and every
    gathered item field of the replay equals the from-scratch dataset's (bounds included, where a later
    episode's lower reward re-values the truncated tails of the earlier ones)."""
    rng = np.random.default_rng(seed)
    episodes = random_episodes(rng, offline + online)
    replay = ChunkReplay(step_data(episodes[:offline]), horizon, obs_horizon, 0.9, drop_partial, capacity)
    for episode in episodes[offline:]:
        replay.append_episode(*episode)
    scratch = OfflineRLDataset(step_data(episodes), horizon, obs_horizon, 0.9, drop_partial)

    assert replay.num_chunks == len(scratch) and replay.num_rows == len(scratch.data.reward)
    for name in INDEX_FIELDS:
        mine = getattr(replay.tensors, name)[: replay.num_chunks]
        torch.testing.assert_close(mine, getattr(scratch.tensors, name).to(mine.dtype), rtol=1e-6, atol=1e-6)
    ids = torch.arange(len(scratch))
    mine = gather_chunks(replay.tensors, ids, horizon, obs_horizon, next_actions=True, return_bounds=True)
    theirs = gather_chunks(scratch.tensors, ids, horizon, obs_horizon, next_actions=True, return_bounds=True)
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value.to(mine[key].dtype), rtol=1e-6, atol=1e-6)


def test_samplers_see_appended_episodes_and_mix_by_the_online_fraction():
    rng = np.random.default_rng(0)
    episodes = random_episodes(rng, 6)
    replay = ChunkReplay(step_data(episodes[:4]), 2, 1, 0.9, drop_partial=False, capacity=10)
    uniform, mixed = replay.sampler(64, seed=0), replay.sampler(64, seed=0, online_fraction=0.25)
    assert (mixed.draw_ids() < replay.offline_chunks).all()  # no online data yet: all offline
    for episode in episodes[4:]:
        replay.append_episode(*episode)
    assert uniform.num_chunks == replay.num_chunks and uniform.tensors is replay.tensors  # grown past 10 rows
    ids = mixed.draw_ids()
    assert int((ids >= replay.offline_chunks).sum()) == 16 and (ids < replay.num_chunks).all()
    assert uniform.sample()["observations"].shape == (64, 1, 3)
    with pytest.raises(ValueError, match="online_fraction"):
        replay.sampler(8, online_fraction=1.5)

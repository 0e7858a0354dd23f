"""Data-layer benchmarks (`make bench-data`): chunk index build and batch sampling.

Store shape as in the Q-chunking OGBench protocol: 1,000 episodes x 1,000 rows = 1,000,000 rows,
obs 40, action 5, H = 5; terminals on 2% of rows (OGBench single-task relabelling marks goal rows).
"""

import numpy as np
import pytest
import torch

from offline_chunk.data.chunks import build_chunk_index
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.store import StepData

ROWS, EPISODE, OBS, ACT, H = 1_000_000, 1_000, 40, 5, 5


@pytest.fixture(scope="module")
def store() -> StepData:
    rng = np.random.default_rng(0)
    return StepData(
        observations={"obs": rng.normal(size=(ROWS, OBS)).astype(np.float32)},
        action=rng.uniform(-1, 1, size=(ROWS, ACT)).astype(np.float32),
        reward=rng.normal(size=ROWS).astype(np.float32),
        terminal=rng.random(ROWS) < 0.02,
        episode_ends=np.arange(EPISODE, ROWS + 1, EPISODE, dtype=np.int64),
    )


def test_chunk_index_1m_rows(benchmark, store):
    index = benchmark(build_chunk_index, store.reward, store.terminal, store.episode_ends, H, 0.99)
    assert len(index) > 0.9 * ROWS


@pytest.mark.parametrize("obs_horizon", [1, 2])
def test_sample_batch_256_cpu(benchmark, store, obs_horizon):
    torch.set_num_threads(2)
    sampler = OfflineRLDataset(store, horizon=H, obs_horizon=obs_horizon).sampler(256, device="cpu", seed=0)
    batch = benchmark(sampler.sample)
    assert batch["actions"].shape == (256, H, ACT)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_batch_256_cuda(benchmark, store):
    sampler = OfflineRLDataset(store, horizon=H).sampler(256, device="cuda", seed=0)

    def sample_synced():
        batch = sampler.sample()
        torch.cuda.synchronize()
        return batch

    batch = benchmark(sample_synced)
    assert batch["actions"].is_cuda

"""Data-layer benchmarks (`make bench-data`): chunk index build and batch sampling.

Store shape as in the Q-chunking OGBench protocol: 1,000 episodes x 1,000 rows = 1,000,000 rows,
obs 40, action 5, H = 5; terminals on 2% of rows (OGBench single-task relabelling marks goal rows).
Camera sampling: a store of 20,000 rows with one 84 x 84 RGB camera (423 MB of frames), batches of 256
with frames, in memory and streamed through a buffer of a quarter of the frames (data/streaming.py; the
streamed figure includes its block swaps, one every 4 batches).
"""

import numpy as np
import pytest
import torch

from offline_chunk.data.chunks import build_chunk_index
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.store import StepData, write_store

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


CAMERA_ROWS, SIDE = 20_000, 84


@pytest.fixture(scope="module")
def camera_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = StepData(
        observations={"obs": rng.normal(size=(CAMERA_ROWS, OBS)).astype(np.float32)},
        action=rng.uniform(-1, 1, size=(CAMERA_ROWS, ACT)).astype(np.float32),
        reward=rng.normal(size=CAMERA_ROWS).astype(np.float32),
        terminal=rng.random(CAMERA_ROWS) < 0.02,
        episode_ends=np.arange(EPISODE, CAMERA_ROWS + 1, EPISODE, dtype=np.int64),
        images={"cam": rng.integers(0, 256, (CAMERA_ROWS, SIDE, SIDE, 3), dtype=np.uint8)},
    )
    return write_store(data, tmp_path_factory.mktemp("cams") / "cams.zarr")


@pytest.mark.parametrize("where", ["memory", "streamed"])
def test_sample_batch_256_with_84px_frames_cpu(benchmark, camera_store, where):
    torch.set_num_threads(2)
    if where == "memory":
        sampler = OfflineRLDataset(camera_store, horizon=H).sampler(256, device="cpu", seed=0, images=True)
    else:
        dataset = OfflineRLDataset(camera_store, horizon=H, lazy_frames=True)
        sampler = dataset.streaming_sampler(CAMERA_ROWS * SIDE * SIDE * 3 / 4, 256, "cpu", seed=0)
    batch = benchmark(sampler.sample)
    assert batch["images"]["cam"].shape == (256, 1, 3, SIDE, SIDE)

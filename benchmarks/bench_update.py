"""One agent update (`make bench-update`): batch sampling, critic step, actor step and target updates,
at the default CPU configuration on a synthetic store of the Q-chunking OGBench shapes
(obs 40, action 5, H = 5, batch 256). updates/s = 1 / time per update.
"""

import numpy as np
import pytest
import torch

from offline_chunk.agents import Dims, make_agent
from offline_chunk.config import load_config
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.normalize import Normalizer
from offline_chunk.data.store import StepData

ROWS, EPISODE, OBS, ACT = 100_000, 1_000, 40, 5


@pytest.fixture(scope="module")
def dataset() -> OfflineRLDataset:
    rng = np.random.default_rng(0)
    data = StepData(
        observations={"obs": rng.normal(size=(ROWS, OBS)).astype(np.float32)},
        action=rng.uniform(-1, 1, size=(ROWS, ACT)).astype(np.float32),
        reward=-rng.integers(0, 6, size=ROWS).astype(np.float32),
        terminal=rng.random(ROWS) < 0.001,
        episode_ends=np.arange(EPISODE, ROWS + 1, EPISODE, dtype=np.int64),
    )
    return OfflineRLDataset(data, horizon=5, obs_horizon=1, gamma=0.99)


@pytest.mark.parametrize("agent_name", ["cpql", "dql"])
def test_update(benchmark, dataset, agent_name):
    torch.manual_seed(0)
    cfg = load_config(agent_name, "default")
    dims = Dims(OBS, 1, ACT, 5)
    agent = make_agent(agent_name, dims, cfg["agent"], Normalizer.from_data(dataset.data), cfg["steps"])
    sampler = dataset.sampler(cfg["batch_size"], device="cpu", seed=0)
    for _ in range(3):  # warm-up
        agent.update(sampler.sample())
    metrics = benchmark.pedantic(lambda: agent.update(sampler.sample()), rounds=15, iterations=1)
    assert torch.isfinite(metrics["critic/loss"])

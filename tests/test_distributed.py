"""Data-parallel training over processes (distributed.py), on the CPU with gloo and 2 processes: one update
of the 2 processes equals one update of a single process on the union of their batches; `torchrun ... -m
offline_chunk train` writes one set of outputs, resumes exactly and refuses another process count."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import chain_store, tiny_config

from offline_chunk import load_agent
from offline_chunk.agents import Dims, make_agent
from offline_chunk.agents.losses import normalized_q_loss
from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.config import load_config
from offline_chunk.data.normalize import Normalizer
from offline_chunk.distributed import Group
from offline_chunk.errors import ConfigError
from offline_chunk.train import check_resume

OBS_DIM, ACTION_DIM, HORIZON, BATCH = 5, 2, 3, 8
# TD3+BC without target policy noise: an update draws no random numbers, so two computations of it differ
# by float rounding alone.
DETERMINISTIC = ["agent.policy_noise=0.0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_agent():
    torch.manual_seed(0)
    cfg = load_config(
        "td3bc",
        "default",
        [f"horizon={HORIZON}", "agent.policy.feature_dim=16", "agent.policy.feedforward_dim=32",
         "agent.critic.feature_dim=16", "agent.critic.down_dims=[8,16]", "agent.critic.head_hidden=16",
         *DETERMINISTIC],
    )  # fmt: skip
    dims = Dims(OBS_DIM, 1, ACTION_DIM, HORIZON)
    return make_agent(cfg.agent, dims, Normalizer(OBS_DIM, ACTION_DIM), 10).double()


def batch_of(rows: int, seed: int) -> dict:
    """A batch in float64, as the agents of these tests run (see the first test)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda draw_fn, *shape: draw_fn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return {
        "observations": draw(torch.randn, rows, 1, OBS_DIM),
        "actions": draw(torch.rand, rows, HORIZON, ACTION_DIM) * 2 - 1,
        "next_observations": draw(torch.randn, rows, 1, OBS_DIM),
        "cumulative_reward": -draw(torch.rand, rows),
        "chunk_done": (draw(torch.rand, rows) < 0.2).double(),
        "discount_factor": torch.full((rows,), 0.99**HORIZON, dtype=torch.float64),
        "action_mask": torch.ones(rows, HORIZON, dtype=torch.bool),
    }


def q_values(rank: int) -> torch.Tensor:
    """Two equal critic rows (K = 2, B = 4) of rank `rank`: the Q term reads the same values whichever
    member it draws."""
    rows = [[-1.0, -3.0, 2.0, -4.0], [2.0, -2.0, -1.0, -7.0]]
    return torch.tensor(rows[rank], dtype=torch.float64).expand(2, 4)


def two_process_update(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    agent = fresh_agent()
    agent.group = Group(rank, 2)
    agent.update(batch_of(BATCH, seed=rank))  # each rank its own half
    q_loss = normalized_q_loss(q_values(rank), Group(rank, 2))
    summed = q_loss.clone()
    dist.all_reduce(summed)
    if rank == 0:
        torch.save({"agent": agent.state_dict(), "q_loss": summed / 2}, out)
    dist.destroy_process_group()


def test_two_processes_update_as_one_process_on_the_union_of_their_batches(tmp_path):
    out = tmp_path / "parallel.pt"
    mp.spawn(two_process_update, args=(free_port(), str(out)), nprocs=2)
    single = fresh_agent()
    halves = [batch_of(BATCH, seed=rank) for rank in (0, 1)]
    single.update({key: torch.cat([h[key] for h in halves]) for key in halves[0]})
    saved = torch.load(out)
    parallel = saved["agent"]
    # The critics' loss is a mean over the batch's rows, so the mean of the two processes' gradients is the
    # union's gradient; the actor's loss too, once its TD3+BC weight λ = α / mean|Q| is taken over the
    # union (Group.batch_mean). In float64 the two gradients differ by ~1e-16 of their summed magnitudes;
    # Adam's first step, lr g / (|g| + ε), turns a gradient difference δ into a step difference of at most
    # lr δ / ε = 3e-4 δ / 1e-8, so every network and target agrees within 1e-9 wherever the gradients'
    # terms stay below ~1e3 (these nets' are O(1)); had the processes not averaged their gradients, or
    # each used its own λ, rank 0 would have followed its own half, about lr away.
    for name, value in single.state_dict().items():
        torch.testing.assert_close(parallel[name], value, rtol=0, atol=1e-9, msg=name)
    differs = fresh_agent()
    differs.update(batch_of(BATCH, seed=0))
    for part in ("critic.", "actor."):
        names = [name for name in parallel if name.startswith(part)]
        assert any((differs.state_dict()[name] - parallel[name]).abs().max() > 1e-5 for name in names)
    # The Q term's normaliser, by hand: the ranks' rows have means −1.5 and −2 and mean magnitudes 2.5 and
    # 3, so mean|Q| over the union is 2.75 and the ranks' losses 1.5/2.75 and 2/2.75 average to 1.75/2.75,
    # the union batch's loss (each rank normalising alone: (0.6 + 2/3)/2, 0.003 away).
    union = torch.cat([q_values(0), q_values(1)], dim=1)
    by_hand = 1.75 / 2.75
    torch.testing.assert_close(normalized_q_loss(union).item(), by_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(saved["q_loss"].item(), by_hand, rtol=0, atol=1e-12)


def torchrun_train(tmp_path: Path, run: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    store = tmp_path / "chain.zarr"
    if not store.exists():
        chain_store(store, episodes=6, length=12)
    cfg = tiny_config("td3bc", store, run, "log_every=2", "checkpoint_every=2", "seed=3")
    config = tmp_path / "config.yaml"
    config.write_text(__import__("yaml").safe_dump(cfg.model_dump()))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*torchrun, "-m", "offline_chunk", "train", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_trains_writes_one_set_of_outputs_and_resumes_exactly(tmp_path):
    straight = torchrun_train(tmp_path, tmp_path / "straight", "--steps", "6")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "batch_size 32 is the global batch, 16 per process" in straight.stdout
    assert straight.stdout.count("trained      td3bc") == 1  # rank 0's summary alone
    run = tmp_path / "straight"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "final.pt", "step_00000002.pt", "step_00000004.pt", "step_00000006.pt",
    ]  # fmt: skip
    assert len(list((run / "tb").iterdir())) == 1  # one TensorBoard event file
    final = read_checkpoint(run / "checkpoints" / "final.pt")
    assert final["processes"] == 2 and len(final["ranks"]) == 2
    assert load_agent(run / "checkpoints" / "final.pt").num_updates == 6  # loads in one process
    # the two ranks sampled from different streams
    assert not torch.equal(final["ranks"][0]["rng"]["sampler"], final["ranks"][1]["rng"]["sampler"])

    first = torchrun_train(tmp_path, tmp_path / "resumed", "--steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step_00000002.pt"
    resumed = torchrun_train(tmp_path, tmp_path / "resumed", "--steps", "6", "--resume", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt")
    for name, value in final["weights"].items():
        assert torch.equal(again["weights"][name], value), name


def test_a_run_resumes_only_with_its_process_count(tmp_path):
    store = tmp_path / "chain.zarr"
    chain_store(store)
    cfg = tiny_config("td3bc", store, tmp_path / "run")
    resume = {"config": cfg, "step": 0, "processes": 2}
    with pytest.raises(ConfigError, match="trained by 2 process"):
        check_resume(resume, cfg)
    with pytest.raises(ConfigError, match="trained by 1 process"):
        check_resume({**resume, "processes": 1}, cfg, Group(0, 2))


def test_the_global_batch_must_divide_among_the_processes():
    assert Group(1, 4).local_batch(256) == 64
    with pytest.raises(ValueError, match="multiple of 3"):
        Group(0, 3).local_batch(256)


def test_a_plain_run_keeps_its_random_stream_and_rank_1_draws_its_own(tmp_path):
    """Only ranks r > 0 reseed after building the agent: a plain run's losses draw on from where the
    agent's initialisation left the seeded stream, as before data-parallel runs existed."""
    from offline_chunk.train import build_run

    store = chain_store(tmp_path / "chain.zarr")
    cfg = tiny_config("td3bc", store, tmp_path / "run", "seed=5")
    build_run(cfg)
    plain = torch.get_rng_state()
    torch.manual_seed(5)
    assert not torch.equal(plain, torch.get_rng_state())  # initialisation drew from it; nothing reseeded
    build_run(cfg, group=Group(1, 2))
    rank_1 = torch.get_rng_state()
    torch.manual_seed(5 + 2**32)
    assert torch.equal(rank_1, torch.get_rng_state())

"""Checkpoints that stand alone: evaluation without the training store, resuming that refuses what the
networks or the chunk contract cannot take and never overwrites later checkpoints, numpy in and out."""

import shutil

import numpy as np
import pytest
import torch
from helpers import TINY_NETS, chain_store, tiny_config

from offline_chunk import load_agent
from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.harness.cli import main
from offline_chunk.train import train


@pytest.fixture
def finished_run(tmp_path):
    """A 4-update CPQL run with checkpoints at steps 2 and 4 (final.pt)."""
    store = chain_store(tmp_path / "chain.zarr")
    final = train(tiny_config("cpql", store, tmp_path / "run", "steps=4", "checkpoint_every=2"))
    return tmp_path, final


def test_resuming_refuses_a_change_of_the_chunk_contract_naming_the_keys(finished_run, capsys):
    tmp_path, final = finished_run
    args = ["train", "--resume", str(final), "--steps", "6", "--run", str(tmp_path / "fork")]
    assert main([*args, "horizon=3", "agent.critic.head_hidden=8"]) == 2
    err = capsys.readouterr().err
    assert "resuming cannot change horizon (2 -> 3), agent.critic" in err and "train a new run" in err
    assert not (tmp_path / "fork").exists()


def test_resuming_from_an_earlier_checkpoint_refuses_to_overwrite_later_ones(finished_run, capsys):
    tmp_path, final = finished_run
    earlier = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    before = final.read_bytes()
    assert main(["train", "--resume", str(earlier), "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints after step 2 (final.pt (step 4), step_00000004.pt (step 4))" in err
    assert "RUN=<new dir>" in err
    assert final.read_bytes() == before  # the 4-update run is untouched
    # a fork into a new run directory is fine, and leaves the original as it was
    assert main(["train", "--resume", str(earlier), "--steps", "3", "--run", str(tmp_path / "fork")]) == 0
    assert read_checkpoint(tmp_path / "fork" / "checkpoints" / "final.pt")["step"] == 3
    assert final.read_bytes() == before


def test_act_and_q_value_take_numpy_and_give_numpy(finished_run):
    agent = load_agent(finished_run[1])
    obs = np.random.default_rng(0).normal(size=(3, 1, 8)).astype(np.float32)
    chunks = np.random.default_rng(1).uniform(-1, 1, size=(3, 2, 2)).astype(np.float32)
    q = agent.q_value(obs, chunks, reduce="none")
    assert isinstance(q, np.ndarray) and q.shape == (2, 3)
    np.testing.assert_array_equal(q, agent.q_value(torch.from_numpy(obs), torch.from_numpy(chunks), "none"))
    torch.manual_seed(0)
    chunk = agent.act(obs[0])
    torch.manual_seed(0)
    assert isinstance(chunk, np.ndarray) and chunk.shape == (2, 2)
    np.testing.assert_array_equal(chunk, agent.act(torch.from_numpy(obs[0])).numpy())


def test_a_checkpoint_evaluates_with_its_store_gone(tmp_path):
    pytest.importorskip("ogbench")
    from offline_chunk.config import load_config
    from offline_chunk.data.sources import convert
    from offline_chunk.harness.evaluation import evaluate
    from offline_chunk.harness.q_analysis import q_on_demos

    store = convert(
        "ogbench:scene-play-singletask-task2-v0?episodes=1&steps=20&workers=1", out=tmp_path / "s.zarr"
    )
    overrides = [f"dataset={store}", f"run_dir={tmp_path / 'run'}", "steps=2", "horizon=5", "batch_size=8"]
    final = train(load_config("cpql", "default", overrides + TINY_NETS))
    moved = tmp_path / "elsewhere" / "final.pt"
    moved.parent.mkdir()
    shutil.copy(final, moved)
    shutil.rmtree(tmp_path / "run")
    demos = shutil.copytree(store, tmp_path / "elsewhere" / "demos.zarr")  # recordings to analyse there
    shutil.rmtree(store)  # the machine the checkpoint was copied to has no training store
    report = evaluate(moved, episodes=1, workers=1, max_steps=6, progress=False)
    assert (report["env_id"], report["reward_convention"]) == ("scene-singletask-task2-v0", "ogbench")
    assert report["episodes"] == 1 and (moved.parent / "final_eval.json").is_file()
    result = q_on_demos(moved, demos)
    assert result.gamma == 0.99 and np.isfinite(result.q).all() and len(result.q) == 19  # 20 rows, 19 starts


def test_training_time_carries_over_a_resumed_run(finished_run):
    tmp_path, final = finished_run
    earlier = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.pt")
    assert 0 < earlier["train_seconds"] <= read_checkpoint(final)["train_seconds"]
    forked = train(
        earlier["config"].model_copy(update={"run_dir": str(tmp_path / "fork"), "steps": 3}), earlier
    )
    assert read_checkpoint(forked)["train_seconds"] > earlier["train_seconds"]

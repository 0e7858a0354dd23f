"""Learning rates: dql's as Diffusion-QL runs them, a schedule that keeps its length when a run resumes, and
the online phase at the base rates whatever schedule the offline run followed."""

import math

import pytest
from helpers import TINY_NETS, chain_store, tiny_config

from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.config import load_config
from offline_chunk.harness.cli import main
from offline_chunk.train import build_run, train


def rates(payload: dict) -> tuple[float, float]:
    """The actor's and the critics' Adam rates a checkpoint's next update uses."""
    training = payload["training"]
    return training["actor_opt"]["param_groups"][0]["lr"], training["critic_opt"]["param_groups"][0]["lr"]


def diffusion_ql_rate(base: float, fraction: float, num_epochs: int, eval_freq: int = 50) -> float:
    """Diffusion-QL's rate after `fraction` of its run, as its main.py runs it with --lr_decay:
    CosineAnnealingLR(T_max=num_epochs, eta_min=0) stepped once per train() call of eval_freq epochs."""
    calls = math.floor(fraction * num_epochs / eval_freq)
    return base * (1 + math.cos(math.pi * calls / num_epochs)) / 2


@pytest.mark.parametrize("num_epochs", [2000, 1000, 250])  # main.py's table: locomotion, AntMaze, kitchen
def test_dql_rates_stay_within_a_thousandth_of_diffusion_qls_over_the_whole_run(tmp_path, num_epochs):
    """The actor's rate follows `lr` (main.py's per-task table, 1e-3 here as antmaze-medium-play), the
    critics' stays 3e-4 (ql_diffusion.py's critic Adam), both within 0.1% of the official rates at every
    point of the run: their cosine ends at (1 + cos(π / 50)) / 2 = 0.99901 of the base."""
    store = chain_store(tmp_path / "chain.zarr")
    run = build_run(tiny_config("dql", store, tmp_path / "run", "steps=8", "agent.lr=0.001"))
    for step in range(run.cfg.steps + 1):
        actor_lr = run.agent.actor_opt.param_groups[0]["lr"]
        critic_lr = run.agent.critic_opt.param_groups[0]["lr"]
        fraction = step / run.cfg.steps
        assert actor_lr == pytest.approx(diffusion_ql_rate(1e-3, fraction, num_epochs), rel=1e-3)
        assert critic_lr == pytest.approx(diffusion_ql_rate(3e-4, fraction, num_epochs), rel=1e-3)
        if step < run.cfg.steps:
            run.agent.update(run.sampler.sample())


def test_resuming_a_cosine_run_with_another_length_is_refused_and_with_its_own_is_exact(tmp_path, capsys):
    """Another `steps` would stretch the cosine over another length: the rate would jump. With its own length
    the resumed run goes on at the rates of the uninterrupted one: 0.5 (1 + cos(π u / 4)) · 3e-4."""
    store = chain_store(tmp_path / "chain.zarr")
    cfg = tiny_config(
        "dql", store, tmp_path / "run", "steps=4", "checkpoint_every=2", "agent.lr_schedule=cosine"
    )
    final = train(cfg)
    middle = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    assert rates(read_checkpoint(middle)) == pytest.approx((1.5e-4, 1.5e-4), rel=1e-6)  # cos(π/2) = 0
    assert rates(read_checkpoint(final)) == pytest.approx((0.0, 0.0), abs=1e-12)  # cos(π) = −1
    args = ["train", "--resume", str(middle), "--run", str(tmp_path / "fork")]
    assert main([*args, "--steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "resuming cannot change steps (4 -> 6)" in err and "cosine learning-rate schedule spans" in err
    assert not (tmp_path / "fork").exists()
    assert main([*args, "--steps", "4", "agent.lr_schedule=constant"]) == 2
    assert "agent.lr_schedule ('cosine' -> 'constant')" in capsys.readouterr().err
    assert main(args) == 0
    resumed = read_checkpoint(tmp_path / "fork" / "checkpoints" / "final.pt")
    assert resumed["step"] == 4 and rates(resumed) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_a_constant_rate_run_may_be_extended(tmp_path):
    store = chain_store(tmp_path / "chain.zarr")
    final = train(tiny_config("cpql", store, tmp_path / "run", "steps=2"))
    assert main(["train", "--resume", str(final), "--steps", "4", "--run", str(tmp_path / "more")]) == 0
    extended = read_checkpoint(tmp_path / "more" / "checkpoints" / "final.pt")
    assert extended["step"] == 4 and rates(extended) == (3e-4, 3e-4)


def test_fine_tuning_after_a_cosine_offline_run_updates_at_the_base_rates(tmp_path):
    """An offline dql run whose cosine schedule ended at 0; fine-tuned, its online updates use the base rates
    (actor `lr` 2e-4, critics `critic_lr` 3e-4). The schedule continued past its end would give
    0.5 (1 + cos(π (20 + u) / 20)) of them after u online updates: 0 to 0.85."""
    pytest.importorskip("ogbench")
    from offline_chunk.data.sources import convert
    from offline_chunk.harness.finetune import FinetuneSettings, finetune

    store = convert(
        "ogbench:scene-play-singletask-task2-v0?episodes=1&steps=20&workers=1",
        out=tmp_path / "s.zarr",
        progress=False,
    )
    overrides = [f"dataset={store}", f"run_dir={tmp_path / 'run'}", "batch_size=8", "steps=20"]
    tiny = [*TINY_NETS, "agent.act.candidates=2", "agent.lr_schedule=cosine", "agent.lr=0.0002"]
    offline = train(load_config("dql", "default", [*overrides, *tiny]))
    assert rates(read_checkpoint(offline)) == pytest.approx((0.0, 0.0), abs=1e-12)
    settings = FinetuneSettings(env_steps=15, warmup=5, max_steps=15, eval_every=0, log_every=5)
    tuned = read_checkpoint(finetune(offline, settings, tmp_path / "tune", progress=False))
    assert tuned["step"] == 20 + 11  # an update after each environment step from the 5th to the 15th
    assert rates(tuned) == (2e-4, 3e-4)

"""Evaluation: chunk execution semantics, the Wilson interval by hand, the lockstep rollouts over worker
processes (seeded resets, no lost actions, batched planning), and an end-to-end evaluation of an untrained
agent in OGBench, through the Python API and the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_NETS, CountingEnv, tiny_scene_checkpoint

from offline_chunk.errors import ConfigError, DataError
from offline_chunk.harness.envs import ChunkExecutor
from offline_chunk.harness.evaluation import format_summary
from offline_chunk.harness.evaluation.rollouts import Rollouts, vector_env
from offline_chunk.harness.evaluation.stats import mean_interval, wilson_interval

gymnasium = pytest.importorskip("gymnasium")

# --------------------------------------------------------------------------- chunk execution


def run_fake_episode(executor: ChunkExecutor, length: int, horizon: int):
    """Drive one episode of `length` steps whose observation is the step count. Chunk p holds actions
    (p, 0), (p, 1), ..., (p, H-1). Returns the action taken at each step and the history at each plan."""
    executor.reset(np.array([0.0]))
    taken, plans = [], []
    for t in range(length):
        if executor.needs_plan():
            plans.append(executor.history[:, 0].tolist())
            executor.push(np.array([[len(plans) - 1, i] for i in range(horizon)]))
        taken.append(tuple(executor.next_action()))
        executor.observe(np.array([t + 1.0]))
    return taken, plans


def test_open_loop_runs_every_chunk_for_h_steps_unless_the_episode_ends():
    taken, plans = run_fake_episode(ChunkExecutor(obs_horizon=1, execute=5), length=12, horizon=5)
    # Chunks 0 and 1 run all 5 actions; chunk 2 is cut after 2 by the episode's end.
    assert taken == [(p, i) for p in range(2) for i in range(5)] + [(2, 0), (2, 1)]
    assert plans == [[0.0], [5.0], [10.0]]  # planned from the observation where each chunk starts


def test_receding_horizon_replans_after_k_actions():
    taken, plans = run_fake_episode(ChunkExecutor(obs_horizon=1, execute=2), length=7, horizon=5)
    assert taken == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]  # actions 2..4 dropped
    assert plans == [[0.0], [2.0], [4.0], [6.0]]


def test_history_is_padded_with_the_first_observation_and_slides():
    taken, plans = run_fake_episode(ChunkExecutor(obs_horizon=3, execute=1), length=4, horizon=2)
    # docs/chunk_transitions.md: history rows max(t - To + 1 + k, b), i.e. the episode's first row repeated.
    assert plans == [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]


def test_reset_clears_the_queue_and_the_history():
    executor = ChunkExecutor(obs_horizon=2, execute=3)
    executor.reset(np.array([1.0, 1.0]))
    executor.push(np.zeros((3, 2)))
    executor.next_action()
    executor.observe(np.array([2.0, 2.0]))
    assert not executor.needs_plan()
    executor.reset(np.array([7.0, 8.0]))
    assert executor.needs_plan()
    np.testing.assert_array_equal(executor.history, [[7.0, 8.0], [7.0, 8.0]])


def test_push_refuses_a_busy_queue_and_a_short_chunk():
    executor = ChunkExecutor(obs_horizon=1, execute=3)
    executor.reset(np.zeros(1))
    with pytest.raises(ValueError, match="cannot run 3 steps"):
        executor.push(np.zeros((2, 1)))
    executor.push(np.zeros((3, 1)))
    with pytest.raises(RuntimeError, match="still queued"):
        executor.push(np.zeros((3, 1)))


# --------------------------------------------------------------------------- statistics


def wilson_by_formula(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The textbook Wilson score interval, (p + z²/2n ∓ z √(p(1 − p)/n + z²/4n²)) / (1 + z²/n): a reference
    written apart from stats.py (which rearranges it to avoid cancellation)."""
    p = successes / n
    centre, scale = p + z**2 / (2 * n), 1 + z**2 / n
    half_width = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (centre - half_width) / scale, (centre + half_width) / scale


def test_wilson_interval_by_hand():
    # 21 of 50, z = 1.959964: p = 0.42, z² = 3.841459, z²/2n = 0.0384146, z²/4n² = 0.000384146,
    # half-width z √(0.42·0.58/50 + 0.000384146) = z √0.005256146 = 0.142096, scale 1 + z²/n = 1.0768292:
    # ((0.42 + 0.0384146) ∓ 0.142096) / 1.0768292 = [0.293750, 0.557666].
    low, high = wilson_interval(21, 50)
    assert low == pytest.approx(0.293750, abs=2e-6) and high == pytest.approx(0.557666, abs=2e-6)
    # 0 of 10: the lower end is 0 and the upper end (z²/n) / (1 + z²/n) = 0.384146 / 1.384146.
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.384146 / 1.384146, abs=1e-6)  # exactly 0, no round-off
    assert wilson_interval(10, 10)[1] == 1.0
    # 0 of 50: [0, (z²/n) / (1 + z²/n)] = [0, 0.0768292 / 1.0768292] = [0, 0.0713476]; 50 of 50 mirrors it.
    assert wilson_interval(0, 50) == (0.0, pytest.approx(0.0713476, abs=1e-6))
    assert wilson_interval(50, 50) == (pytest.approx(0.9286524, abs=1e-6), 1.0)
    # 25 of 50: centre 0.5, half-width z √(0.25/50 + 0.000384146) / 1.0768292 = z · 0.0733767 / 1.0768292
    # = 0.133555: [0.366445, 0.633555].
    assert wilson_interval(25, 50) == pytest.approx((0.366445, 0.633555), abs=1e-6)
    for successes, n in [(0, 50), (50, 50), (25, 50), (21, 50), (0, 10), (1, 2), (0, 2), (2, 2)]:
        assert wilson_interval(successes, n) == pytest.approx(wilson_by_formula(successes, n), abs=1e-6)


def test_mean_interval_is_normal_approximation():
    values = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, s = √(5/3)
    low, high = mean_interval(values)
    half = 1.959964 * math.sqrt(5 / 3) / 2
    assert (low, high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert mean_interval(np.array([1.0])) == (None, None)


# --------------------------------------------------------------------------- lockstep rollouts


@pytest.mark.parametrize("execute", [5, 2])
def test_rollouts_seed_every_episode_lose_no_action_and_batch_planning(execute):
    horizon, episodes, seed = 5, 7, 10
    batch_sizes = []

    def plan(histories):
        """(B, 2, 2) histories of (s, t) -> chunks whose action i is (s, t + i)."""
        batch_sizes.append(len(histories))
        previous, latest = histories[:, 0], histories[:, 1]
        padded = latest[:, 1] == 0  # at an episode's first step the history is the first observation twice
        expected_previous = np.where(padded[:, None], latest, latest - [0, 1])
        np.testing.assert_array_equal(previous, expected_previous)
        return latest[:, None, :] + np.stack([np.zeros(horizon), np.arange(horizon)], axis=1)

    with vector_env(CountingEnv, num_envs=2) as envs:
        assert envs.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.DISABLED
        results = Rollouts(envs, plan, episodes, seed, obs_horizon=2, execute=execute).run()

    lengths = [3 + s % 5 for s in range(seed, seed + episodes)]  # 3, 4, 5, 6, 7, 3, 4
    assert [r.episode for r in results] == list(range(episodes))
    assert [r.seed for r in results] == list(range(seed, seed + episodes))
    assert [r.length for r in results] == lengths
    assert [r.episode_return for r in results] == [n * (n + 1) / 2 for n in lengths]  # 1 + 2 + ... + L
    # the last step's reward, not one of an idle worker's steps after the end
    assert [r.final_reward for r in results] == [float(n) for n in lengths]
    assert [r.success for r in results] == [s % 2 == 0 for s in range(seed, seed + episodes)]
    # Each chunk runs `execute` steps unless the episode ends first: ceil(L / execute) plans per episode.
    assert sum(batch_sizes) == sum(-(-n // execute) for n in lengths)
    assert batch_sizes[0] == 2  # both workers planned in one call


# --------------------------------------------------------------------------- end to end in OGBench


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory):
    """A 2-update CPQL checkpoint on a one-episode, 20-step scene store."""
    pytest.importorskip("ogbench")
    return tiny_scene_checkpoint(tmp_path_factory.mktemp("eval"), "steps=2", "horizon=5")


def check_outputs(report: dict, episodes: int, max_steps: int) -> None:
    summary = json.loads(Path(report["outputs"]["json"]).read_text())
    assert summary["episodes"] == episodes and summary["env_id"] == "scene-singletask-task2-v0"
    with open(report["outputs"]["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    successes = sum(row["success"] == "1" for row in rows)
    assert summary["success_rate"] == successes / episodes
    assert tuple(summary["success_ci95"]) == pytest.approx(wilson_by_formula(successes, episodes), abs=1e-6)
    assert len(rows) == episodes
    assert all(row["success"] in ("0", "1") and 1 <= int(row["length"]) <= max_steps for row in rows)
    assert [int(row["seed"]) for row in rows] == [summary["seed"] + i for i in range(episodes)]
    assert summary["env_steps"] == sum(int(row["length"]) for row in rows)
    # Scene's own reward: minus the subtasks (1 cube, 2 buttons, drawer, window) unsolved; 0 on success.
    final = [float(row["final_reward"]) for row in rows]
    assert all(-5 <= r <= 0 for r in final)
    assert all(r == 0 for r, row in zip(final, rows, strict=True) if row["success"] == "1")
    assert summary["final_reward_mean"] == pytest.approx(np.mean(final))


def test_evaluate_untrained_agent_end_to_end(untrained_checkpoint, tmp_path):
    from offline_chunk.harness.evaluation import evaluate

    rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
    report = evaluate(untrained_checkpoint, episodes=2, workers=2, max_steps=30, out=tmp_path, progress=False)
    # A training run that evaluates periodically goes on with its own random stream and thread count.
    assert torch.equal(torch.get_rng_state(), rng_state) and torch.get_num_threads() == threads
    check_outputs(report, episodes=2, max_steps=30)
    assert report["outputs"]["json"] == str(tmp_path / "final_eval.json")
    assert (report["execute"], report["candidates"], report["select"]) == (5, 4, "softmax")
    assert report["checkpoint_step"] == 2 and report["time_limit"] == 30
    assert "(95% Wilson, 2 episodes)" in format_summary(report)


def test_eval_cli_with_overrides_and_rendering(untrained_checkpoint, capsys):
    from offline_chunk.harness.cli import main

    code = main(
        ["eval", str(untrained_checkpoint), "--episodes", "1", "--execute", "2"]
        + ["--candidates", "1", "--max-steps", "6", "--render", "1", "--no-progress"]
    )
    assert code == 0
    captured = capsys.readouterr()
    report = json.loads((untrained_checkpoint.parent / "final_eval.json").read_text())
    check_outputs(report, episodes=1, max_steps=6)
    assert (report["execute"], report["candidates"], report["workers"]) == (2, 1, 1)
    # A GIF when a MuJoCo GL backend renders here, else one line saying why not.
    assert len(report["outputs"]["gifs"]) == 1 or "render: skipped" in captured.err


def test_rendering_without_a_gl_backend_is_skipped_with_one_line(monkeypatch, capsys):
    import offline_chunk.harness.evaluation.settings as evaluate_module

    monkeypatch.setattr(
        evaluate_module, "find_gl_backend", lambda: (None, "no MuJoCo GL backend renders here")
    )
    assert evaluate_module.gl_backend_for(2) is None
    assert capsys.readouterr().err == (
        "render: skipped, no MuJoCo GL backend renders here; evaluating without GIFs\n"
    )
    assert evaluate_module.gl_backend_for(0) is None  # no rendering asked: nothing probed


def test_bad_settings_and_stores_are_refused(untrained_checkpoint, tmp_path, capsys):
    from offline_chunk.data.store import StepData, write_store
    from offline_chunk.harness.cli import main
    from offline_chunk.harness.envs.ogbench_env import env_id_from_store
    from offline_chunk.harness.evaluation import evaluate

    with pytest.raises(ConfigError, match="execute=6: must be between 1 and the chunk horizon H=5"):
        evaluate(untrained_checkpoint, execute=6)
    with pytest.raises(ConfigError, match="candidates=0"):
        evaluate(untrained_checkpoint, candidates=0)
    assert main(["eval", str(untrained_checkpoint), "--workers", "0"]) == 2  # one line, exit status 2
    assert capsys.readouterr().err == "error: workers=0: must be at least 1\n"

    def store_with(attrs, name):
        data = StepData(
            {"obs": np.zeros((2, 3), np.float32)},
            np.zeros((2, 1), np.float32),
            np.zeros(2, np.float32),
            np.zeros(2, bool),
            np.array([2]),
            attrs,
        )
        return write_store(data, tmp_path / name)

    with pytest.raises(DataError, match="has no 'env_id' attribute"):
        env_id_from_store(store_with({}, "plain.zarr"))
    with pytest.raises(DataError, match="'no-such-env-v0' is not a registered"):
        env_id_from_store(store_with({"env_id": "no-such-env-v0"}, "unknown.zarr"))


def test_periodic_evaluation_during_training(tmp_path):
    """eval_every=K evaluates from that step's checkpoint and appends to <run>/evaluations.csv."""
    from offline_chunk.config import load_config
    from offline_chunk.data.sources import convert
    from offline_chunk.harness.evaluation import periodic_evaluator
    from offline_chunk.train import train

    store = convert(
        "ogbench:scene-play-singletask-task2-v0?episodes=1&steps=20&workers=1",
        out=tmp_path / "s.zarr",
        progress=False,
    )
    run_dir = tmp_path / "run"
    overrides = [
        f"dataset={store}",
        f"run_dir={run_dir}",
        "steps=4",
        "batch_size=8",
        "log_every=2",
        "checkpoint_every=4",
        "eval_every=2",
        "eval_episodes=2",
        "eval_workers=1",
        "eval_max_steps=10",
    ]
    cfg = load_config("cpql", "default", overrides + TINY_NETS)
    with pytest.raises(ConfigError, match="eval_every=2 needs an evaluator"):
        train(cfg)  # the library's loop does not import the simulators on its own
    train(cfg, evaluator=periodic_evaluator(cfg))
    with open(run_dir / "evaluations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [2, 4]
    for row in rows:
        assert float(row["success_rate"]) in (0.0, 0.5, 1.0)  # two episodes
        interval = float(row["success_ci95_low"]), float(row["success_ci95_high"])
        successes = round(2 * float(row["success_rate"]))
        assert interval == pytest.approx(wilson_by_formula(successes, 2), abs=1e-6)
        assert float(row["return_mean"]) <= 0.0  # OGBench single-task rewards are never positive
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == [
        "final.pt",
        "step_00000002.pt",
        "step_00000004.pt",
    ]
    assert (
        checkpoints / "step_00000002_eval.json"
    ).is_file()  # each evaluation's report beside its checkpoint

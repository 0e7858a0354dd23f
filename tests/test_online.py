"""Online collection: episodes recorded as the store labels its rows, checked on a fake environment and
against OGBench's own relabelling of the same simulator states."""

import json

import numpy as np
import pytest
import torch
from helpers import CountingEnv, tiny_nets, tiny_scene_checkpoint

from offline_chunk.data.replay import ChunkReplay
from offline_chunk.data.store import StepData
from offline_chunk.errors import CheckpointError
from offline_chunk.harness.collect import Collector
from offline_chunk.harness.evaluation.rollouts import vector_env


def chunk_planner(horizon):
    def plan(histories):
        """Chunks whose action i is (s, t + i): what CountingEnv expects at each step."""
        latest = histories[:, -1]
        return latest[:, None, :] + np.stack([np.zeros(horizon), np.arange(horizon)], axis=1)

    return plan


@pytest.mark.parametrize("execute", [3, 1])
def test_collected_rows_are_the_states_actions_and_rewards_of_each_step(execute):
    """Row t < T (an episode of T steps): the observation (s, t) before the step, the action taken there,
    step(a_t)'s reward (t + 1 in CountingEnv) and its termination: the goal on an even-seeded episode's last
    row, else none. An odd-seeded episode, cut by the time limit, has one more row: s_T = (s, T), with the
    last action repeated, reward 0 and no terminal; it counts no step."""
    with vector_env(CountingEnv, num_envs=2) as envs:
        collector = Collector(envs, chunk_planner(3), seed=10, obs_horizon=1, execute=execute)
        collected = []
        while len(collected) < 6:
            collected += collector.advance()
    assert sorted(e.episode.seed for e in collected)[:4] == [10, 11, 12, 13]
    for rows in collected:
        seed, steps = rows.episode.seed, 3 + rows.episode.seed % 5
        success = seed % 2 == 0
        t = np.arange(steps + (not success))  # the rows
        np.testing.assert_array_equal(rows.obs, np.stack([np.full(len(t), seed), t], axis=1))
        planned = np.stack([np.full(len(t), seed), np.minimum(t, steps - 1)], axis=1)  # (s, t), then a_{T-1}
        np.testing.assert_array_equal(rows.action, planned)  # CountingEnv fails a step on any other
        np.testing.assert_array_equal(rows.reward, np.where(t < steps, t + 1, 0))
        np.testing.assert_array_equal(rows.terminal, (t == steps - 1) & success)
        assert rows.episode.length == steps and rows.episode.success == success
    assert collector.env_steps >= sum(rows.episode.length for rows in collected)


def test_collected_episodes_extend_the_replay():
    data = StepData(
        observations={"obs": np.zeros((6, 2), np.float32)},
        action=np.zeros((6, 2), np.float32),
        reward=np.zeros(6, np.float32),
        terminal=np.zeros(6, bool),
        episode_ends=np.array([6]),
    )
    replay = ChunkReplay(data, horizon=2, obs_horizon=1, gamma=0.9)
    with vector_env(CountingEnv, num_envs=1) as envs:
        collector = Collector(envs, chunk_planner(2), seed=0, obs_horizon=1, execute=2)
        (rows,) = [r for _ in range(3) for r in collector.advance()]  # seed 0: 3 steps, the goal at the last
    replay.append_episode(rows.obs, rows.action, rows.reward, rows.terminal)
    # offline: starts 0..3 (full chunks of the 6-row truncated episode); online: starts 0, 1 (full), 2 (goal)
    assert len(rows.obs) == 3  # ended on its terminal row: no row after it
    assert (replay.offline_chunks, replay.online_chunks) == (4, 3)
    assert replay.tensors.cumulative_reward[4:7].tolist() == pytest.approx([1 + 0.9 * 2, 2 + 0.9 * 3, 3])


def test_the_chunk_that_ends_at_the_time_limit_enters_the_replay():
    """Seed 1: T = 4 steps, then the time limit. The chunk from row T - H = 2 (H = 2) runs a_2, a_3 to the
    limit: it is a transition to s_T = (1, 4) with R = r_2 + γ r_3, the rewards of steps 3 and 4 (3 and
    4), summed here by a loop; the starts 0, 1, 2 are full chunks (without s_T, 2 would be dropped)."""
    horizon, gamma, steps = 2, 0.9, 4
    data = StepData(
        observations={"obs": np.zeros((6, 2), np.float32)},
        action=np.zeros((6, 2), np.float32),
        reward=np.zeros(6, np.float32),
        terminal=np.zeros(6, bool),
        episode_ends=np.array([6]),
    )
    replay = ChunkReplay(data, horizon=horizon, obs_horizon=1, gamma=gamma)
    with vector_env(CountingEnv, num_envs=1) as envs:
        collector = Collector(envs, chunk_planner(horizon), seed=1, obs_horizon=1, execute=horizon)
        (rows,) = [r for _ in range(steps) for r in collector.advance()]
    assert (rows.episode.length, len(rows.obs), collector.env_steps) == (steps, steps + 1, steps)
    replay.append_episode(rows.obs, rows.action, rows.reward, rows.terminal)
    assert replay.online_chunks == 3
    entry = replay.offline_chunks + 2  # the online entries follow the offline ones, by start row
    assert replay.tensors.start[entry] == 6 + steps - horizon
    step_rewards = {t: t + 1 for t in range(steps)}  # CountingEnv: step t (from 0) returns t + 1
    expected = 0.0
    for i in range(horizon):
        expected += gamma**i * step_rewards[steps - horizon + i]
    assert replay.tensors.cumulative_reward[entry].item() == pytest.approx(expected)
    assert replay.tensors.obs[replay.tensors.next_row[entry]].tolist() == [1, steps]


def test_ogbench_rewards_of_collected_rows_equal_its_relabelling_of_the_same_states():
    """Random actions in scene task 1 (seed 0 changes the reward within 300 steps): the reward and terminal
    of each collected row equal OGBench's relabelling of that row's simulator state (info prev_qpos, the
    state before the step), the rule the offline stores are labelled by."""
    pytest.importorskip("ogbench")
    from functools import partial

    from offline_chunk.data.sources.ogbench_npz import raw_to_step_data
    from offline_chunk.harness.collect import check_row_aligned
    from offline_chunk.harness.envs.ogbench_env import make_env

    env_id, dataset = "scene-singletask-task1-v0", "scene-play-singletask-task1-v0"
    env = make_env(env_id)
    check_row_aligned(env)
    env.close()
    rng = np.random.default_rng(0)
    keys = ("prev_qpos", "prev_qvel", "prev_button_states")
    with vector_env(partial(make_env, env_id, 300), num_envs=1) as envs:
        collector = Collector(
            envs,
            lambda h: rng.uniform(-1, 1, (len(h), 5, 5)),
            seed=0,
            obs_horizon=1,
            execute=5,
            info_keys=keys,
        )
        (rows,) = [r for _ in range(300) for r in collector.advance()]
    assert len(set(rows.reward.tolist())) > 1  # the state changed: a shift of one row would show
    steps = rows.episode.length  # the rows before s_T, the time limit's last observation (its own row)
    raw = {
        "observations": rows.obs[:steps],
        "actions": rows.action[:steps],
        "terminals": np.arange(steps) == steps - 1,  # OGBench's files: episode ends
        "qpos": rows.info["prev_qpos"],
        "qvel": rows.info["prev_qvel"],
        "button_states": rows.info["prev_button_states"],
    }
    relabelled = raw_to_step_data(raw, "collected", dataset, "ogbench", {})
    np.testing.assert_array_equal(rows.reward[:steps], relabelled.reward)
    np.testing.assert_array_equal(rows.terminal[: steps - 1], relabelled.terminal[:-1])


@pytest.fixture(scope="module")
def offline_checkpoint(tmp_path_factory):
    """A 20-update CPQL checkpoint of seed 5 on a one-episode, 20-step scene store (seconds to make). Its tiny
    critics, fitted to 20 states, reach |Q| of thousands online within 10 updates: the divergence guard is
    widened (100x) for the tests of the loop's mechanics (a test below checks the guard itself)."""
    pytest.importorskip("ogbench")
    return tiny_scene_checkpoint(
        tmp_path_factory.mktemp("online"),
        "steps=20",
        "agent.act.candidates=2",
        "seed=5",
        "divergence_factor=1000",
    )


def test_make_finetune_collects_updates_evaluates_and_checkpoints(offline_checkpoint, tmp_path):
    """40 environment steps in episodes of 15: the run ends between episodes, so the third one runs to step
    45 and all three join the replay, each with 16 rows (cut by the time limit: s_15 is the last); one update
    (utd 1) after each environment step i >= warmup = 10 (QC's `if i >= start_training`), 36 in all, 31 of
    them by the evaluation at step 40, which follows the one of the starting agent (step 0, 20 updates); the
    final checkpoint continues the offline update count. Collection episode i resets with 1,000,000 + i."""
    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.harness.cli import main

    run = tmp_path / "tune"
    args = [
        "--env-steps",
        "40",
        "--warmup",
        "10",
        "--max-steps",
        "15",
        "--eval-every",
        "40",
        "--eval-episodes",
        "2",
    ]
    assert (
        main(
            [
                "finetune",
                str(offline_checkpoint),
                *args,
                "--log-every",
                "10",
                "--run",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    final = read_checkpoint(run / "checkpoints" / "final.pt")
    assert final["step"] == 20 + 36  # the offline updates, then steps 10..45
    episodes = np.load(run / "online_episodes.npz")
    assert episodes["episode_ends"].tolist() == [16, 32, 48] and episodes["env_steps"] == 45
    assert episodes["episode_length"].tolist() == [15, 15, 15]
    assert episodes["episode_seed"].tolist() == [1_000_000, 1_000_001, 1_000_002]
    assert final["online"]["episodes"] == 3
    evaluations = (run / "evaluations.csv").read_text().splitlines()
    assert evaluations[0].startswith("env_steps,updates,success_rate")
    assert [row.split(",")[:2] for row in evaluations[1:]] == [["0", "20"], ["40", "51"]]
    assert (run / "tb").is_dir() and (run / "speed.json").exists()


def test_fine_tuning_evaluates_the_offline_runs_episodes_apart_from_its_collection(
    offline_checkpoint, tmp_path
):
    """The evaluation of the starting agent (step 0, the only one: eval_every 1000) resets episode i with the
    offline run's seed 5 + i, as the offline run's periodic evaluation of the same checkpoint does: the two
    roll out the same episodes, so the same returns. The one collection episode resets with seed
    1,000,000 (settings.seed 0 + 1,000,000), which no evaluation uses."""
    import csv

    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.harness.evaluation import periodic_evaluator
    from offline_chunk.harness.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(env_steps=15, warmup=100, max_steps=15, eval_every=1000, eval_episodes=2)
    finetune(offline_checkpoint, settings, tmp_path / "tune", progress=False)
    cfg = read_checkpoint(offline_checkpoint)["config"]
    offline = cfg.model_copy(update={"eval_episodes": 2, "eval_workers": 1, "eval_max_steps": 15})
    periodic_evaluator(offline)(offline_checkpoint, out=tmp_path / "offline")

    def episodes(path):
        with open(path) as f:
            return list(csv.DictReader(f))

    tuned = episodes(tmp_path / "tune" / "evaluations" / "latest_eval.csv")
    assert [row["seed"] for row in tuned] == ["5", "6"]
    assert tuned == episodes(tmp_path / "offline" / f"{offline_checkpoint.stem}_eval.csv")
    assert (tmp_path / "tune" / "evaluations.csv").read_text().splitlines()[1].startswith("0,20,")
    assert np.load(tmp_path / "tune" / "online_episodes.npz")["episode_seed"].tolist() == [1_000_000]


def test_an_older_fine_tuning_run_resumes_with_its_seeds_and_its_episodes_as_recorded(
    offline_checkpoint, tmp_path
):
    """A checkpoint of a run made before the record held the seeds and before a time-limited episode kept
    its last observation (made here from a new one: the seeds removed from its `online` record, episode 0
    saved as it was then, 15 rows with seed 3): resumed, it collects episode 1 with the old scheme's seed
    3 + 1, keeps episode 0's 15 rows and gives episode 1 its 16."""
    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.harness.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(
        env_steps=30, warmup=100, max_steps=15, eval_every=0, checkpoint_every=15, seed=3
    )
    finetune(offline_checkpoint, settings, tmp_path / "new", progress=False)
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    payload = torch.load(tmp_path / "new" / "checkpoints" / "step_00000015.pt", weights_only=True)
    assert payload["online"].pop("collect_seed") == 1_000_003 and payload["online"].pop("eval_seed") == 5
    torch.save(payload, old / "checkpoints" / "step_00000015.pt")
    with np.load(tmp_path / "new" / "online_episodes.npz") as saved:
        episodes = {key: saved[key] for key in saved.files}
    assert episodes["episode_ends"].tolist() == [16, 32]
    recorded = {key: episodes[key][:1] for key in ("episode_episode", "episode_success", "episode_length")}
    recorded |= {key: episodes[key][:1] for key in ("episode_episode_return", "episode_final_reward")}
    np.savez(
        old / "online_episodes.npz",
        **{key: episodes[key][:15] for key in ("obs", "action", "reward", "terminal")},
        **recorded,
        episode_ends=np.array([15]),
        episode_seed=np.array([3]),
        env_steps=np.array(15),
    )
    final = finetune(old / "checkpoints" / "step_00000015.pt", run_dir=old, progress=False, resume=True)
    resumed = np.load(old / "online_episodes.npz")
    assert resumed["episode_seed"].tolist() == [3, 4] and resumed["episode_ends"].tolist() == [15, 31]
    np.testing.assert_array_equal(resumed["obs"][:15], episodes["obs"][:15])
    online = read_checkpoint(final)["online"]
    assert (online["collect_seed"], online["eval_seed"]) == (3, 1_000_003)


def test_a_resumed_fine_tuning_run_is_bit_identical_to_the_uninterrupted_one(offline_checkpoint, tmp_path):
    """45 environment steps in episodes of 15 with a checkpoint due every 20: the first is taken when the
    second episode ends (step 30). Resumed there, the run collects the same third episode and makes the same
    updates: the final weights are equal bit for bit."""
    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.harness.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(
        env_steps=40, warmup=10, max_steps=15, eval_every=0, checkpoint_every=20, log_every=10, seed=3
    )
    straight = finetune(offline_checkpoint, settings, tmp_path / "a", progress=False)
    middle = tmp_path / "a" / "checkpoints" / "step_00000030.pt"
    assert read_checkpoint(middle)["online"]["episodes"] == 2
    fork = tmp_path / "b"
    fork.mkdir()
    for name in ("online_episodes.npz",):  # a resumed run reads the episodes file of its own directory
        (fork / name).write_bytes((tmp_path / "a" / name).read_bytes())
    resumed = finetune(middle, run_dir=fork, progress=False, resume=True)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["online"]["env_steps"] == b["online"]["env_steps"] == 45
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "online_episodes.npz")["obs"], np.load(fork / "online_episodes.npz")["obs"]
    )
    speed = json.loads((fork / "speed.json").read_text())  # the resumed process collected steps 30..45
    assert (speed["env_steps"], speed["env_steps_collected"], speed["online_updates"]) == (45, 15, 15)
    assert speed["env_steps_per_s"] == speed["env_steps_collected"] / speed["collect_s"]
    with pytest.raises(CheckpointError, match="continue it with --resume"):
        finetune(middle, settings, tmp_path / "c", progress=False)


def test_an_episode_ending_at_the_last_step_ends_the_run(offline_checkpoint, tmp_path):
    """30 steps in episodes of 15: the second episode ends at step 30, and no third one starts."""
    from offline_chunk.harness.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(env_steps=30, warmup=30, max_steps=15, eval_every=0, log_every=10)
    finetune(offline_checkpoint, settings, tmp_path / "run", progress=False)
    episodes = np.load(tmp_path / "run" / "online_episodes.npz")
    assert episodes["episode_length"].tolist() == [15, 15] and episodes["env_steps"] == 30
    assert episodes["episode_ends"].tolist() == [16, 32]  # each with its s_15 row


def test_bad_fine_tuning_settings_are_refused_naming_the_setting(capsys):
    from offline_chunk.harness.cli import main

    assert main(["finetune", "no.pt", "--utd", "0", "--online-fraction", "1.5"]) == 2
    error = capsys.readouterr().err
    assert "finetune: utd: Input should be greater than or equal to 1 (got 0)" in error
    assert "online_fraction: Input should be less than or equal to 1 (got 1.5)" in error


def test_a_stopped_fine_tuning_run_ends_its_episode_checkpoints_and_resumes_exactly(
    offline_checkpoint, tmp_path, monkeypatch
):
    """SIGTERM during the first episode (at its second chunk): no episode starts after it, the run
    checkpoints when it ends (step 15) and raises RunStopped; resumed there, it collects the same episodes
    and ends with the weights of the run that was never stopped."""
    import os
    import signal

    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.harness import finetune as module
    from offline_chunk.stopping import RunStopped

    settings = module.FinetuneSettings(
        env_steps=40, warmup=10, max_steps=15, eval_every=0, checkpoint_every=20, log_every=10, seed=3
    )
    straight = module.finetune(offline_checkpoint, settings, tmp_path / "a", progress=False)
    plan, calls = module._plan, []

    def plan_then_signal(*args):
        calls.append(None)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return plan(*args)

    with monkeypatch.context() as patched:
        patched.setattr(module, "_plan", plan_then_signal)
        with pytest.raises(RunStopped, match="stopped at 15 environment steps") as stopped:
            module.finetune(offline_checkpoint, settings, tmp_path / "b", progress=False)
    assert stopped.value.path.name == "step_00000015.pt"
    assert read_checkpoint(stopped.value.path)["online"]["episodes"] == 1
    resumed = module.finetune(stopped.value.path, run_dir=tmp_path / "b", progress=False, resume=True)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["online"]["env_steps"] == b["online"]["env_steps"] == 45
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key


def test_a_diverging_fine_tuning_run_stops_with_a_checkpoint_naming_the_bound(offline_checkpoint, tmp_path):
    """Fine-tuning runs offline training's divergence guard at every metric read: with the guard at
    10⁻⁶ · max|r| / (1 − γ), the first read (10 updates after the warm-up of 10 steps, at step 19) stops it
    with a checkpoint of that step."""
    from offline_chunk.errors import DivergenceError
    from offline_chunk.harness.finetune import FinetuneSettings, finetune

    payload = torch.load(offline_checkpoint, weights_only=True)
    payload["config"]["divergence_factor"] = 1e-6
    tight = tmp_path / "tight.pt"
    torch.save(payload, tight)
    settings = FinetuneSettings(env_steps=40, warmup=10, max_steps=15, eval_every=0, log_every=10)
    with pytest.raises(DivergenceError, match="diverged by environment step 19: [|]Q[|] reached"):
        finetune(tight, settings, tmp_path / "run", progress=False)
    diverged = tmp_path / "run" / "checkpoints" / "diverged_environment_step_00000019.pt"
    assert torch.load(diverged, weights_only=True)["step"] == 20 + 10


def test_make_online_starts_untrained_with_uniform_warmup_actions_and_half_online_batches(
    offline_checkpoint, tmp_path
):
    """`online`: the chunk_sac agent of `make train`'s config, saved untrained (update 0), then the
    fine-tuning loop. The warm-up's 10 steps act uniformly in the store's action bounds: with H = 5 they are
    the first two chunks of torch.rand after manual_seed(seed), mapped to [low, high] by hand. Updates run
    from step 10 to the end of the second 15-step episode (step 30): 21."""
    import zarr

    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.config import load_config
    from offline_chunk.harness.finetune import FinetuneSettings, train_online

    store = offline_checkpoint.parents[2] / "s.zarr"
    named = [f"dataset={store}", f"run_dir={tmp_path / 'run'}", "batch_size=8", "seed=3", "horizon=5"]
    cfg = load_config("chunk_sac", "default", [*named, "divergence_factor=1000", *tiny_nets("chunk_sac")])
    settings = FinetuneSettings(
        env_steps=20, warmup=10, max_steps=15, eval_every=0, log_every=5, online_fraction=0.5,
        warmup_actions="uniform", seed=3,
    )  # fmt: skip
    final = read_checkpoint(train_online(cfg, settings, progress=False))
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "untrained.pt")["step"] == 0
    assert final["step"] == 21 and final["online"]["settings"]["online_fraction"] == 0.5
    actions = np.load(tmp_path / "run" / "online_episodes.npz")["action"]
    attrs, width = zarr.open_group(str(store), mode="r").attrs, actions.shape[1]
    low, high = (np.broadcast_to(np.float32(attrs[key]), width) for key in ("action_low", "action_high"))
    torch.manual_seed(3)
    draws = torch.cat([torch.rand(1, 5, width) for _ in range(2)], dim=1)[0].numpy() * 2 - 1
    expected = low + (draws + 1) * (high - low) / 2
    np.testing.assert_allclose(actions[:10], expected, rtol=1e-6, atol=1e-6)  # float32: one affine map

"""OGBench sources: .npz files relabelled for one task, and play data generated with OGBench's oracles."""

from __future__ import annotations

import re

import numpy as np
import pytest

from offline_chunk.data.sources import convert, load_source, ogbench_generate
from offline_chunk.data.store import open_store
from offline_chunk.errors import DataError

gymnasium = pytest.importorskip("gymnasium")
pytest.importorskip("ogbench")

PUZZLE = "puzzle-3x3-play-singletask-task1-v0"
CUBE = "cube-single-play-singletask-task1-v0"
SCENE_SPEC = "ogbench:scene-play-singletask-task2-v0?episodes=2&steps=30&seed=3"
STEPS = 30


def task_goal(env_id: str, key: str) -> np.ndarray:
    """The task's goal straight from the environment's task table (task1 = first entry)."""
    env = gymnasium.make(env_id)
    goal = env.unwrapped.task_infos[0][key]
    env.close()
    return np.asarray(goal)


def ogbench_rows(episode_lengths, rng, obs_dim=12) -> dict[str, np.ndarray]:
    """Synthetic rows in OGBench's .npz schema: `terminals` marks each episode's last row."""
    num_rows = sum(episode_lengths)
    terminals = np.zeros(num_rows, bool)
    terminals[np.cumsum(episode_lengths) - 1] = True
    return {
        "observations": rng.normal(size=(num_rows, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(num_rows, 5)).astype(np.float32),
        "terminals": terminals,
    }


def save_npz(tmp_path, name: str, rows: dict) -> str:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **rows)
    return str(path)


@pytest.fixture(scope="module")
def puzzle_npz(tmp_path_factory):
    """Two puzzle-3x3 episodes (5 and 4 rows) whose button states hit task1's goal in chosen rows."""
    goal = task_goal("puzzle-3x3-singletask-task1-v0", "goal_button_states")
    rows = ogbench_rows([5, 4], np.random.default_rng(0))
    buttons = np.tile(1 - goal, (9, 1))  # every button wrong
    buttons[1, :4] = goal[:4]  # four right
    buttons[2] = goal  # solved mid-episode: terminal
    buttons[4] = goal  # solved in the last row of episode 0: a time limit, not terminal
    buttons[6] = goal
    buttons[6, 0] = 1 - goal[0]  # all but one
    buttons[7] = goal
    state = np.zeros((9, 23), np.float32)  # puzzle-3x3: nq = nv = 23
    rows.update(qpos=state, qvel=state, button_states=buttons.astype(np.int64))
    path = save_npz(tmp_path_factory.mktemp("npz"), "puzzle", rows)
    return path, rows, goal


def test_npz_relabelled_for_puzzle_task(puzzle_npz):
    path, rows, goal = puzzle_npz
    data = load_source(f"{path}?env={PUZZLE}", progress=False)
    solved = (rows["button_states"] == goal).sum(axis=1)
    np.testing.assert_array_equal(data.episode_ends, [5, 9])
    np.testing.assert_array_equal(data.reward, solved - 9)
    np.testing.assert_array_equal(data.terminal, [0, 0, 1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(data.obs, rows["observations"])
    np.testing.assert_array_equal(data.extras["button_states"], rows["button_states"])
    assert data.attrs["env_id"] == "puzzle-3x3-singletask-task1-v0"
    assert (data.attrs["action_low"], data.attrs["action_high"]) == (-1.0, 1.0)
    assert data.attrs["source_file"] == path and data.attrs["source_format"] == "ogbench_npz"


def test_npz_sparse_reward(puzzle_npz):
    path, rows, goal = puzzle_npz
    data = load_source(f"{path}?env={PUZZLE}&reward=sparse", progress=False)
    all_solved = (rows["button_states"] == goal).all(axis=1)
    np.testing.assert_array_equal(data.reward, np.where(all_solved, 0.0, -1.0))
    np.testing.assert_array_equal(data.terminal, [0, 0, 1, 0, 0, 0, 0, 1, 0])
    assert "sparse" in data.attrs["reward_convention"]


def test_npz_relabelled_for_cube_task_from_qpos(tmp_path):
    goal = task_goal("cube-single-singletask-task1-v0", "goal_xyzs")[0]
    rows = ogbench_rows([3, 3], np.random.default_rng(1))
    qpos = np.zeros((6, 21), np.float32)
    # the cube's xyz is qpos[14:17]; OGBench counts a cube within 4 cm of its goal as placed
    offsets = np.array([0.2, 0.03, 0.1, 0.0, 0.05, 0.01])
    qpos[:, 14:17] = goal + offsets[:, None] * np.array([1.0, 0.0, 0.0])
    rows.update(qpos=qpos, qvel=np.zeros((6, 20), np.float32))
    data = load_source(f"{save_npz(tmp_path, 'cube', rows)}?env={CUBE}", progress=False)
    placed = np.linalg.norm(qpos[:, 14:17] - goal, axis=1) <= 0.04
    np.testing.assert_array_equal(data.reward, placed - 1.0)
    np.testing.assert_array_equal(data.terminal, placed & ~rows["terminals"])


def test_npz_with_own_rewards_needs_no_env(tmp_path):
    rows = ogbench_rows([3, 2], np.random.default_rng(2))
    rows.update(rewards=np.array([-1, 0, 0, -1, 0], np.float32), masks=np.array([1, 0, 0, 1, 0], np.float32))
    data = load_source(save_npz(tmp_path, "rewarded", rows), progress=False)
    np.testing.assert_array_equal(data.reward, rows["rewards"])
    np.testing.assert_array_equal(data.terminal, [0, 1, 0, 0, 0])  # rows 2 and 4 end episodes: never terminal


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows.pop("actions"), "'actions': required array is missing"),
        (lambda rows: rows["terminals"].__setitem__(-1, False), "last row is not marked"),
        (lambda rows: rows.update(actions=rows["actions"][:-1]), "has 4 rows but observations has 5"),
        (lambda rows: None, "has no rewards: pass ?env="),
    ],
    ids=["missing-key", "last-row-unmarked", "short-array", "no-rewards"],
)
def test_npz_errors_name_the_problem(tmp_path, change, message):
    rows = ogbench_rows([3, 2], np.random.default_rng(3))
    change(rows)
    path = save_npz(tmp_path, "bad", rows)
    with pytest.raises(DataError, match="bad.npz") as err:
        load_source(path, progress=False)
    assert message in str(err.value)


def test_npz_relabelling_checks_state_width(puzzle_npz, tmp_path):
    _, rows, _ = puzzle_npz
    path = save_npz(tmp_path, "narrow", {**rows, "button_states": rows["button_states"][:, :8]})
    with pytest.raises(DataError, match="has 8 columns, puzzle-3x3-singletask-task1-v0 needs 9"):
        load_source(f"{path}?env={PUZZLE}", progress=False)


# --------------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def generated_store(tmp_path_factory):
    """Two 30-step scene episodes from two worker processes, written and read back as a store."""
    out = tmp_path_factory.mktemp("generated") / "scene.zarr"
    convert(f"{SCENE_SPEC}&workers=2", out=out, progress=False)
    return open_store(out, extras=True)


def test_generated_store_layout(generated_store):
    data = generated_store
    assert data.num_rows == 2 * STEPS
    np.testing.assert_array_equal(data.episode_ends, [STEPS, 2 * STEPS])
    assert np.abs(data.action).max() <= 1.0
    assert not data.terminal[data.episode_ends - 1].any()
    assert set(np.unique(data.reward)) <= {-5.0, -4.0, -3.0, -2.0, -1.0, 0.0}  # scene task2 has 5 subtasks
    assert data.extras["qpos"].shape == (2 * STEPS, 25)
    assert data.extras["button_states"].shape == (2 * STEPS, 2)
    attrs = data.attrs
    assert attrs["env_id"] == "scene-singletask-task2-v0"
    assert attrs["source_format"] == "ogbench_generate"
    assert (attrs["episodes"], attrs["seed"], attrs["protocol"]["episode_steps"]) == (2, 3, STEPS)


def test_generation_is_reproducible_whatever_the_workers(generated_store):
    again = load_source(f"{SCENE_SPEC}&workers=1", progress=False)
    np.testing.assert_array_equal(again.obs, generated_store.obs)
    np.testing.assert_array_equal(again.action, generated_store.action)
    np.testing.assert_array_equal(again.reward, generated_store.reward)
    for key in ("qpos", "qvel", "button_states"):
        np.testing.assert_array_equal(again.extras[key], generated_store.extras[key])
    other_seed = load_source(SCENE_SPEC.replace("seed=3", "seed=4") + "&workers=1", progress=False)
    assert not np.array_equal(other_seed.action, generated_store.action)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ogbench:scene-play-v0", "not an OGBench single-task dataset name"),
        ("ogbench:antmaze-large-navigate-singletask-task1-v0", "only play datasets of scene, puzzle-*"),
        ("ogbench:scene-noisy-singletask-task1-v0", "only play datasets"),
        ("ogbench:scene-play-singletask-task9-v0", "no environment 'scene-singletask-task9-v0'"),
        ("ogbench:puzzle-9x9-play-singletask-task1-v0", "no environment 'puzzle-9x9-v0'"),
        ("ogbench:scene-play-singletask-task2-v0?episodes=0", "episodes='0' must be at least 1"),
        ("ogbench:scene-play-singletask-task2-v0?reward=dense", "reward='dense' is not one of"),
    ],
)
def test_generator_rejects_bad_specs(spec, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_source(spec, progress=False)


def test_scene_health_check():
    qpos = np.zeros((3, 25))
    qpos[:, 14:17] = [0.4, 0.0, 0.02]  # the cube on the table
    assert ogbench_generate.scene_is_healthy(qpos)
    in_drawer = qpos.copy()
    in_drawer[1, 15:17] = [-0.35, 0.07]
    assert ogbench_generate.scene_is_healthy(in_drawer)
    for y, z in ([0.3, 0.02], [-0.35, 0.02]):  # too far right; too far left outside the drawer
        gone = qpos.copy()
        gone[2, 15:17] = [y, z]
        assert not ogbench_generate.scene_is_healthy(gone)


def test_generator_gives_up_on_unhealthy_scenes(monkeypatch):
    monkeypatch.setattr(ogbench_generate, "scene_is_healthy", lambda qpos: False)
    monkeypatch.setattr(ogbench_generate, "MAX_ATTEMPTS", 2)
    with pytest.raises(DataError, match="scene-v0: no healthy episode in 2 tries"):
        load_source("ogbench:scene-play-singletask-task2-v0?episodes=1&steps=5&workers=1", progress=False)


@pytest.fixture(scope="module")
def visual_store(tmp_path_factory):
    """The episodes of `generated_store` in OGBench's pixel twin (visual-scene-v0), as a store."""
    from offline_chunk.rendering import find_gl_backend

    if find_gl_backend()[0] is None:
        pytest.skip("no MuJoCo GL backend renders here")
    out = tmp_path_factory.mktemp("visual") / "visual.zarr"
    convert(f"ogbench:visual-{SCENE_SPEC.removeprefix('ogbench:')}&workers=1", out=out, progress=False)
    return out


def test_a_visual_dataset_records_the_frames_of_the_same_episodes(generated_store, visual_store):
    """Under the same seeds, the same actions, states and rewards as the state-based episodes, with 64 x 64
    frames as the only observation."""
    visual = open_store(visual_store, extras=True)
    assert visual.obs.shape == (2 * STEPS, 0) and list(visual.images) == ["image"]
    frames = visual.images["image"]
    assert frames.shape == (2 * STEPS, 64, 64, 3) and frames.dtype == np.uint8 and frames.std() > 10
    np.testing.assert_array_equal(visual.action, generated_store.action)
    np.testing.assert_array_equal(visual.reward, generated_store.reward)
    np.testing.assert_array_equal(visual.extras["qpos"], generated_store.extras["qpos"])
    assert visual.attrs["env_id"] == "visual-scene-singletask-task2-v0"


def test_a_camera_agent_rolls_out_in_the_visual_environment(visual_store, tmp_path):
    from helpers import tiny_config

    from offline_chunk.harness.evaluation import evaluate
    from offline_chunk.train import train

    final = train(
        tiny_config("td3bc", visual_store, tmp_path / "run", "steps=2", "agent.vision.feature_dim=8")
    )
    report = evaluate(final, episodes=2, workers=1, max_steps=6, progress=False)
    assert report["env_id"] == "visual-scene-singletask-task2-v0" and report["episodes"] == 2
    assert report["length_mean"] == 6  # truncated at max_steps, each chunk planned from frames

"""Source converters: a small file in each source's real schema goes through `convert`, and the store read
back holds the arrays computed here from hand-placed episodes and flags."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from helpers import tree_digest

from offline_chunk.data.sources import convert
from offline_chunk.data.store import open_store
from offline_chunk.errors import DataError
from offline_chunk.harness.cli import main


def ramp(rows: int, width: int, start: float = 0.0) -> np.ndarray:
    """(rows, width) float32 with a distinct value per cell: 10 * row + column + start."""
    return (10 * np.arange(rows)[:, None] + np.arange(width) + start).astype(np.float32)


def rows_flagged(rows: int, flagged: list[int]) -> np.ndarray:
    flags = np.zeros(rows, bool)
    flags[flagged] = True
    return flags


# --------------------------------------------------------------------------- D4RL

# Four episodes in 12 rows: [0, 3) ends in a terminal, [3, 7) in a timeout, [7, 9) has both flags on its
# last row (a terminal), [9, 12) is cut off by the end of the file.
D4RL_ROWS = 12
D4RL_TERMINALS = [2, 8]
D4RL_TIMEOUTS = [6, 8]


def d4rl_arrays() -> dict[str, np.ndarray]:
    return {
        "observations": ramp(D4RL_ROWS, 3),
        "actions": ramp(D4RL_ROWS, 2) / 1000,
        "rewards": np.arange(D4RL_ROWS, dtype=np.float32) / 4,
        "terminals": rows_flagged(D4RL_ROWS, D4RL_TERMINALS),
        "timeouts": rows_flagged(D4RL_ROWS, D4RL_TIMEOUTS),
        "next_observations": ramp(D4RL_ROWS, 3, start=10),
    }


def write_d4rl(path: Path, arrays: dict, env_name: str | None = None) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value)
        f.create_dataset("infos/qpos", data=ramp(D4RL_ROWS, 4))
        if env_name is not None:
            f.attrs["env_name"] = env_name
    return path


@pytest.mark.parametrize("env_name", ["hopper-medium-v2", None])
def test_d4rl_episodes_end_at_terminals_timeouts_and_end_of_file(tmp_path, env_name):
    arrays = d4rl_arrays()
    source = write_d4rl(tmp_path / "hopper.hdf5", arrays, env_name)
    data = open_store(convert(str(source), out=tmp_path / "x.zarr", progress=False))
    np.testing.assert_array_equal(data.episode_ends, [3, 7, 9, 12])
    np.testing.assert_array_equal(np.flatnonzero(data.terminal), [2, 8])  # the timeout at row 6 is not
    np.testing.assert_array_equal(data.observations["obs"], arrays["observations"])
    np.testing.assert_array_equal(data.action, arrays["actions"])
    np.testing.assert_array_equal(data.reward, arrays["rewards"])
    assert data.attrs["source_format"] == "d4rl_hdf5"
    assert data.attrs["source_file"] == str(source.resolve())
    assert data.attrs["discount_hint"] == 0.99
    assert data.attrs.get("env_id") == env_name


# --------------------------------------------------------------------------- robomimic

DEMO_LENGTHS = {"demo_10": 2, "demo_1": 3, "demo_2": 4}  # written in this order, read by index
SUCCESS_STEPS = {"demo_2": 1}  # a done before the end (robomimic's done_mode with success)
OBS_WIDTHS = {"robot0_eef_pos": 3, "object": 5}


def demo_number(demo: str) -> int:
    return int(demo.split("_")[1])


def demo_obs(demo: str, key: str) -> np.ndarray:
    return ramp(DEMO_LENGTHS[demo], OBS_WIDTHS[key], start=1000 * demo_number(demo) + 100 * len(key))


def demo_actions(demo: str) -> np.ndarray:
    return ramp(DEMO_LENGTHS[demo], 2, start=demo_number(demo)) / 1000


def demo_rewards(demo: str) -> np.ndarray:
    return np.arange(DEMO_LENGTHS[demo], dtype=np.float64) + demo_number(demo)


def write_demo(data: h5py.Group, demo: str) -> None:
    length = DEMO_LENGTHS[demo]
    group = data.create_group(demo)
    for key in OBS_WIDTHS:
        group.create_dataset(f"obs/{key}", data=demo_obs(demo, key).astype(np.float64))
        group.create_dataset(f"next_obs/{key}", data=demo_obs(demo, key) + 1)
    group.create_dataset("obs/agentview_image", data=np.zeros((length, 4, 4, 3), np.uint8))
    group.create_dataset("actions", data=demo_actions(demo))
    group.create_dataset("rewards", data=demo_rewards(demo))
    dones = np.zeros(length, np.int64)
    dones[[SUCCESS_STEPS.get(demo, -1), -1]] = 1
    group.create_dataset("dones", data=dones)
    group.attrs["num_samples"] = length


def write_robomimic(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for demo in DEMO_LENGTHS:
            write_demo(data, demo)
        data.attrs["total"] = sum(DEMO_LENGTHS.values())
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        f.create_dataset("mask/train", data=np.array([b"demo_10", b"demo_1"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_2"]))
    return path


def expected_obs(demos: list[str], keys: list[str]) -> np.ndarray:
    return np.concatenate([np.concatenate([demo_obs(d, k) for k in keys], axis=1) for d in demos])


def test_robomimic_takes_demos_by_index_and_low_dim_keys_sorted(tmp_path):
    source = write_robomimic(tmp_path / "lift.hdf5")
    data = open_store(convert(str(source), out=tmp_path / "x.zarr", progress=True))
    demos = ["demo_1", "demo_2", "demo_10"]
    np.testing.assert_array_equal(data.episode_ends, [3, 7, 9])
    assert list(data.observations) == ["object", "robot0_eef_pos"]  # the image key is skipped
    np.testing.assert_array_equal(data.obs, expected_obs(demos, ["object", "robot0_eef_pos"]))
    np.testing.assert_array_equal(data.action, np.concatenate([demo_actions(d) for d in demos]))
    np.testing.assert_allclose(data.reward, np.concatenate([demo_rewards(d) for d in demos]))
    np.testing.assert_array_equal(np.flatnonzero(data.terminal), [2, 4, 6, 8])
    assert data.attrs["source_format"] == "robomimic_hdf5"
    assert data.attrs["source_file"] == str(source.resolve())
    assert (data.attrs["env_id"], data.attrs["demos"]) == ("Lift", 3)
    assert data.attrs["obs_keys"] == ["object", "robot0_eef_pos"]


def test_robomimic_obs_keys_keep_the_given_order(tmp_path):
    source = write_robomimic(tmp_path / "lift.hdf5")
    spec = f"{source}?obs_keys=robot0_eef_pos,object"
    data = open_store(convert(spec, out=tmp_path / "x.zarr", progress=False))
    assert list(data.observations) == data.attrs["obs_keys"] == ["robot0_eef_pos", "object"]
    np.testing.assert_array_equal(
        data.obs, expected_obs(["demo_1", "demo_2", "demo_10"], ["robot0_eef_pos", "object"])
    )


def test_robomimic_filter_takes_the_mask_demos_in_mask_order(tmp_path):
    source = write_robomimic(tmp_path / "lift.hdf5")
    data = open_store(convert(f"{source}?filter=train", out=tmp_path / "x.zarr", progress=False))
    np.testing.assert_array_equal(data.episode_ends, [2, 5])
    np.testing.assert_array_equal(data.obs, expected_obs(["demo_10", "demo_1"], ["object", "robot0_eef_pos"]))
    np.testing.assert_array_equal(np.flatnonzero(data.terminal), [1, 4])
    assert data.attrs["demos"] == 2


@pytest.mark.parametrize(("mode", "terminal_rows"), [("terminal", [2, 4, 6, 8]), ("ignore", [])])
def test_robomimic_dones_modes(tmp_path, mode, terminal_rows):
    source = write_robomimic(tmp_path / "lift.hdf5")
    data = open_store(convert(f"{source}?dones={mode}", out=tmp_path / "x.zarr", progress=False))
    np.testing.assert_array_equal(np.flatnonzero(data.terminal), terminal_rows)
    np.testing.assert_array_equal(data.episode_ends, [3, 7, 9])


# --------------------------------------------------------------------------- diffusion_policy zarr

PUSHT_EPISODE_ENDS = [4, 9, 12]


def write_pusht_like(path: Path) -> Path:
    """diffusion_policy's ReplayBuffer layout in zarr v2, without reward or terminal arrays."""
    rows = PUSHT_EPISODE_ENDS[-1]
    root = zarr.open_group(store=str(path), mode="w", zarr_format=2)
    root.create_array("data/action", data=ramp(rows, 2), chunks=(5, 2))
    root.create_array("data/state", data=ramp(rows, 5, start=0.5), chunks=(5, 5))
    root.create_array("data/keypoint", data=ramp(rows, 18, start=0.25).reshape(rows, 9, 2), chunks=(5, 9, 2))
    root.create_array("data/img", data=np.zeros((rows, 4, 4, 3), np.float32), chunks=(5, 4, 4, 3))
    root.create_array("meta/episode_ends", data=np.array(PUSHT_EPISODE_ENDS, np.int64), chunks=(3,))
    root.attrs["fps"] = 10
    return path


def test_zarr_v2_store_converts_with_obs_keys_and_the_reward_rule_it_is_given(tmp_path):
    source = write_pusht_like(tmp_path / "pusht.zarr")
    before = tree_digest(source)
    data = open_store(
        convert(f"{source}?obs_keys=state,keypoint&reward=zeros", out=tmp_path / "x.zarr", progress=False)
    )
    assert tree_digest(source) == before
    rows = PUSHT_EPISODE_ENDS[-1]
    assert list(data.observations) == data.attrs["obs_keys"] == ["state", "keypoint"]
    state, keypoint = ramp(rows, 5, start=0.5), ramp(rows, 18, start=0.25)  # keypoint (9, 2) flattened
    np.testing.assert_array_equal(data.observations["keypoint"], keypoint)
    np.testing.assert_array_equal(data.obs, np.concatenate([state, keypoint], axis=1))
    np.testing.assert_array_equal(data.action, ramp(rows, 2))
    np.testing.assert_array_equal(data.episode_ends, PUSHT_EPISODE_ENDS)
    np.testing.assert_array_equal(data.reward, np.zeros(rows))
    assert not data.terminal.any()
    assert data.attrs["reward_source"].startswith("reward=zeros")
    assert (data.attrs["source_format"], data.attrs["fps"]) == ("zarr", 10)
    assert data.attrs["source_file"] == str(source.resolve())


def test_zarr_success_at_end_rewards_and_ends_each_episode(tmp_path):
    source = write_pusht_like(tmp_path / "pusht.zarr")
    data = open_store(convert(f"{source}?obs_keys=state&reward=success_at_end", out=tmp_path / "x.zarr"))
    last_rows = [3, 8, 11]  # episode_ends [4, 9, 12] minus one
    expected = np.zeros(PUSHT_EPISODE_ENDS[-1])
    expected[last_rows] = 1.0
    np.testing.assert_array_equal(data.reward, expected)
    np.testing.assert_array_equal(np.flatnonzero(data.terminal), last_rows)
    assert data.attrs["reward_source"].startswith("reward=success_at_end")


def test_zarr_without_rewards_is_refused_naming_the_rules(tmp_path):
    source = write_pusht_like(tmp_path / "pusht.zarr")
    for spec, fragment in (
        (f"{source}?obs_keys=state", "say what the reward is with ?reward=zeros, reward=success_at_end"),
        (f"{source}?obs_keys=state&reward=ones", "reward='ones' is not a rule"),
    ):
        with pytest.raises(DataError, match="array 'data/reward': has no reward array") as caught:
            convert(spec, out=tmp_path / "x.zarr", progress=False)
        assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "x.zarr").exists()


def test_dataset_cli_refuses_a_rewardless_store_and_says_where_rewards_came_from(tmp_path, capsys):
    source = write_pusht_like(tmp_path / "pusht.zarr")
    assert main(["dataset", f"{source}?obs_keys=state", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "has no reward array" in capsys.readouterr().err
    assert (
        main(["dataset", f"{source}?obs_keys=state&reward=success_at_end", "--out", str(tmp_path / "x.zarr")])
        == 0
    )
    out = capsys.readouterr().out
    assert "reward       min 0   max 1" in out and "reward from  reward=success_at_end" in out


def test_zarr_reads_back_a_converted_store(tmp_path):
    """A v3 store written by `convert` converts again to the same arrays (obs keys from its attrs)."""
    first = open_store(convert(str(write_d4rl(tmp_path / "h.hdf5", d4rl_arrays())), out=tmp_path / "a.zarr"))
    second = open_store(convert(str(tmp_path / "a.zarr"), out=tmp_path / "b.zarr", progress=False))
    for name in ("obs", "action", "reward", "terminal", "episode_ends"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.attrs["reward_source"] == "data/reward" and first.attrs["reward_source"] == "rewards"


# --------------------------------------------------------------------------- errors


def d4rl_without_rewards(tmp_path: Path) -> str:
    arrays = d4rl_arrays()
    del arrays["rewards"]
    return str(write_d4rl(tmp_path / "bad.hdf5", arrays))


def d4rl_short_timeouts(tmp_path: Path) -> str:
    arrays = d4rl_arrays()
    arrays["timeouts"] = arrays["timeouts"][:-1]
    return str(write_d4rl(tmp_path / "bad.hdf5", arrays))


def robomimic_short_actions(tmp_path: Path) -> str:
    path = write_robomimic(tmp_path / "bad.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_2/actions"]
        f.create_dataset("data/demo_2/actions", data=np.zeros((3, 2)))
    return str(path)


def robomimic_unknown_key(tmp_path: Path) -> str:
    return f"{write_robomimic(tmp_path / 'bad.hdf5')}?obs_keys=object,gripper_qpos"


def zarr_without_action(tmp_path: Path) -> str:
    path = write_pusht_like(tmp_path / "bad.zarr")
    del zarr.open_group(store=str(path), mode="a")["data/action"]
    return f"{path}?obs_keys=state"


def zarr_without_obs(tmp_path: Path) -> str:
    return str(write_pusht_like(tmp_path / "bad.zarr"))


def zarr_unknown_key(tmp_path: Path) -> str:
    return f"{write_pusht_like(tmp_path / 'bad.zarr')}?obs_keys=state,agent_pos"


@pytest.mark.parametrize(
    ("make_source", "fragments"),
    [
        (d4rl_without_rewards, ["array 'rewards'", "missing"]),
        (d4rl_short_timeouts, ["array 'timeouts'", "11 rows but 'observations' has 12"]),
        (robomimic_short_actions, ["array 'data/demo_2/actions'", "3 rows but 'data/demo_2/obs/object'"]),
        (robomimic_unknown_key, ["array 'data/demo_1/obs'", "['gripper_qpos']", "'robot0_eef_pos'"]),
        (zarr_without_action, ["array 'data/action'", "missing"]),
        (zarr_without_obs, ["array 'data/obs'", "['state']"]),
        (zarr_unknown_key, ["array 'data/agent_pos'", "['state']"]),
    ],
)
def test_bad_source_is_one_error_naming_file_and_array_and_writes_nothing(tmp_path, make_source, fragments):
    spec = make_source(tmp_path)
    out = tmp_path / "x.zarr"
    with pytest.raises(DataError) as caught:
        convert(spec, out=out, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in [str((tmp_path / "bad").resolve()), *fragments]:
        assert fragment in message, (fragment, message)
    assert not out.exists()
    assert not list(tmp_path.glob(".x.zarr*"))

"""OGBench `.npz` files -> `StepData`, with OGBench's own single-task reward relabelling.

An OGBench file (the layout `ogbench.utils.load_dataset` reads) holds one raw row per recorded step:

    observations (N, D)   s_t
    actions      (N, A)   a_t; in the last row of an episode it has no successor
    terminals    (N,)     True on the LAST ROW OF EACH EPISODE: an episode end (time limit), not a terminal
    qpos, qvel, button_states (N, ...)   optional simulator state of s_t (needed for relabelling)

The file has no rewards. `?env=<single-task dataset name>` (e.g. `scene-play-singletask-task2-v0`) relabels
every row with `ogbench.relabel_utils.relabel_dataset`, which scores s_t from its qpos / button_states:
reward = successes - subtasks, mask = 0 where every subtask succeeds. Our store then holds
reward[t] = reward, terminal[t] = (mask == 0), except in the last row of each episode, which is a time-limit
end and so never terminal (docs/chunk_transitions.md). `?reward=sparse` uses the Q-chunking paper's
(r != 0) * -1 instead.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from offline_chunk.data.store import StepData
from offline_chunk.errors import DataError

REQUIRED_KEYS = ("observations", "actions", "terminals")
INFO_KEYS = ("qpos", "qvel", "button_states")
VISUAL_PREFIX = "visual-"  # OGBench's pixel-observation twins of its environments and datasets
PIXELS_KEY = "image"  # the camera key of a visual dataset's frames in the store
REWARD_MODES = ("ogbench", "sparse")
DISCOUNT_HINT = 0.99
OGBENCH_CONVENTION = "ogbench singletask: reward = successes - subtasks; terminal where all subtasks succeed"
SPARSE_CONVENTION = "; sparse (Q-chunking): reward = -1 unless every subtask succeeds, then 0"
# OGBench clips every recorded action to [-1, 1]; used when no environment is named.
OGBENCH_ACTION_BOUNDS = (-1.0, 1.0)


def load(spec, progress: bool = True) -> StepData:
    options = spec.take({"env": "", "reward": "ogbench"})
    path = Path(spec.location).resolve()
    attrs = {"source_format": "ogbench_npz", "source_file": str(path)}
    return raw_to_step_data(read_npz(path), path, options["env"] or None, options["reward"], attrs)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"is not a readable .npz file ({exc})") from exc


def raw_to_step_data(raw: dict, source, dataset_name: str | None, reward_mode: str, attrs: dict) -> StepData:
    """Turn OGBench's raw row layout (a .npz file's arrays, or generated ones) into `StepData`.

    `dataset_name` names the single-task dataset whose task relabels the rows; None uses the file's own
    `rewards` (and `masks`). `attrs` are the caller's provenance, completed here."""
    check_reward_mode(reward_mode, source)
    check_raw_arrays(raw, source)
    ends = episode_ends(raw["terminals"], source)
    if dataset_name:
        reward, mask, labels = relabel(raw, source, dataset_name)
    else:
        reward, mask, labels = file_rewards(raw, source)
    terminal = mask == 0
    terminal[ends - 1] = False  # an episode end is a time limit, never a terminal
    if reward_mode == "sparse":
        reward = sparse_reward(reward)
        labels["reward_convention"] += SPARSE_CONVENTION
    pixels = is_pixels(raw["observations"])  # OGBench's visual datasets: 64 x 64 frames, no state vector
    return StepData(
        observations={} if pixels else {"obs": np.asarray(raw["observations"], np.float32)},
        images={PIXELS_KEY: raw["observations"]} if pixels else {},
        action=np.asarray(raw["actions"], np.float32),
        reward=reward.astype(np.float32),
        terminal=terminal,
        episode_ends=ends,
        attrs={**attrs, **labels, "reward_mode": reward_mode, "discount_hint": DISCOUNT_HINT},
        extras={key: raw[key] for key in INFO_KEYS if key in raw},
    )


def is_pixels(observations: np.ndarray) -> bool:
    """Frames (N, H, W, C) uint8, as OGBench's visual datasets and environments give."""
    return observations.ndim == 4 and observations.dtype == np.uint8


def check_reward_mode(reward_mode: str, source) -> None:
    if reward_mode not in REWARD_MODES:
        raise DataError(source, f"option reward={reward_mode!r} is not one of {list(REWARD_MODES)}")


def sparse_reward(reward: np.ndarray) -> np.ndarray:
    """The Q-chunking paper's sparse reward: 0 where OGBench's reward is 0 (all subtasks done), else -1."""
    return (reward != 0) * -1.0


# --------------------------------------------------------------------------- shape checks


def _check_rows(source, raw: dict, key: str, rank: int, num_rows: int) -> None:
    arr = raw[key]
    if arr.ndim != rank:
        raise DataError(source, f"has shape {arr.shape}, expected rank {rank}", key)
    if arr.dtype.kind not in "biuf":
        raise DataError(source, f"has dtype {arr.dtype}, expected numbers", key)
    if len(arr) != num_rows:
        raise DataError(source, f"has {len(arr)} rows but observations has {num_rows}", key)


def check_raw_arrays(raw: dict, source) -> None:
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise DataError(
                source, f"required array is missing (OGBench files hold {list(REQUIRED_KEYS)})", key
            )
    observations = raw["observations"]
    if observations.ndim != 2 and not is_pixels(observations):
        raise DataError(
            source,
            f"has shape {observations.shape}, expected (N, D) states or (N, H, W, 3) uint8 frames",
            "observations",
        )
    num_rows = len(observations)
    if num_rows == 0:
        raise DataError(source, "has no rows", "observations")
    ranks = {"observations": observations.ndim, "actions": 2, "terminals": 1, "rewards": 1, "masks": 1}
    for key in (*ranks, *INFO_KEYS):
        if key in raw:
            _check_rows(source, raw, key, ranks.get(key, 2), num_rows)


def episode_ends(terminals: np.ndarray, source) -> np.ndarray:
    """Exclusive episode ends: OGBench marks the last row of each episode."""
    marked = np.asarray(terminals) != 0
    if not marked[-1]:
        raise DataError(
            source,
            "the last row is not marked: every episode must end with a row where terminals is True",
            "terminals",
            len(marked) - 1,
        )
    return (np.flatnonzero(marked) + 1).astype(np.int64)


# --------------------------------------------------------------------------- rewards


def file_rewards(raw: dict, source) -> tuple[np.ndarray, np.ndarray, dict]:
    """The file's own `rewards`, and `masks` (1 = bootstrap) when it has them."""
    if "rewards" not in raw:
        raise DataError(
            source,
            "has no rewards: pass ?env=<dataset>-singletask-taskN-v0 "
            "(e.g. ?env=scene-play-singletask-task2-v0) to relabel it for one task",
            "rewards",
        )
    reward = np.asarray(raw["rewards"], np.float64)
    low, high = OGBENCH_ACTION_BOUNDS
    labels = {"action_low": low, "action_high": high}
    if "masks" in raw:
        labels["reward_convention"] = "rewards from the file; terminal where masks == 0"
        return reward, np.asarray(raw["masks"]), labels
    labels["reward_convention"] = "rewards from the file; no terminals (the file has no masks)"
    return reward, np.ones_like(reward), labels


def single_task_env_id(dataset_name: str) -> str:
    """The gymnasium id of a single-task dataset's environment, as `ogbench.make_env_and_datasets` derives it:
    the dataset type (the word before 'singletask') is dropped, e.g. scene-play-singletask-task2-v0 ->
    scene-singletask-task2-v0."""
    parts = dataset_name.split("-")
    if "singletask" not in parts or parts.index("singletask") < 2:
        raise DataError(
            dataset_name,
            "is not an OGBench single-task dataset name "
            "(expected <env>-<type>-singletask[-taskN]-v0, e.g. scene-play-singletask-task2-v0)",
        )
    pos = parts.index("singletask")
    return "-".join(parts[: pos - 1] + parts[pos:])


def make_single_task_env(dataset_name: str):
    import gymnasium
    import ogbench

    env_id = single_task_env_id(dataset_name)
    try:
        return ogbench.make_env_and_datasets(dataset_name, env_only=True)
    except gymnasium.error.Error as exc:
        raise DataError(dataset_name, f"OGBench has no environment {env_id!r} ({exc})") from exc


def _action_bounds(env) -> tuple:
    """The action space's bounds: one float each when they are the same for every action dimension."""
    low, high = (np.asarray(bound, np.float64) for bound in (env.action_space.low, env.action_space.high))
    if np.ptp(low) == 0 and np.ptp(high) == 0:
        return float(low.flat[0]), float(high.flat[0])
    return low.tolist(), high.tolist()


def _needed_info_keys(env_id: str) -> tuple[str, ...]:
    """The simulator-state arrays `relabel_dataset` reads for this environment family."""
    if "puzzle" in env_id:
        return ("button_states",)
    if "scene" in env_id:
        return ("qpos", "button_states")
    return ("qpos",)


def _check_info_widths(raw: dict, source, env, env_id: str) -> None:
    model = env.unwrapped.model
    widths = {"qpos": model.nq, "button_states": getattr(env.unwrapped, "_num_buttons", None)}
    for key in _needed_info_keys(env_id):
        if key not in raw:
            raise DataError(source, f"required array is missing: relabelling for {env_id} reads it", key)
        if raw[key].shape[1] != widths[key]:
            raise DataError(source, f"has {raw[key].shape[1]} columns, {env_id} needs {widths[key]}", key)


def relabel(raw: dict, source, dataset_name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """OGBench's own single-task rewards and masks for every raw row (row-wise: row t scores s_t)."""
    from ogbench.relabel_utils import relabel_dataset

    env_id = single_task_env_id(dataset_name)
    # The task's rewards are functions of the simulator state alone: a visual dataset is relabelled by its
    # state-based twin (same task and model), which needs no rendering.
    state_name = dataset_name.removeprefix(VISUAL_PREFIX)
    env = make_single_task_env(state_name)
    try:
        env.reset()  # sets the task (and builds the model) before its sizes are read
        _check_info_widths(raw, source, env, env_id)
        labelled = {key: raw[key] for key in INFO_KEYS if key in raw}
        relabel_dataset(single_task_env_id(state_name), env, labelled)  # adds 'rewards' and 'masks' to it
        low, high = _action_bounds(env)
    finally:
        env.close()
    labels = {
        "env_id": env_id,
        "ogbench_dataset": dataset_name,
        "action_low": low,
        "action_high": high,
        "reward_convention": OGBENCH_CONVENTION,
    }
    return np.asarray(labelled["rewards"], np.float64), labelled["masks"], labels

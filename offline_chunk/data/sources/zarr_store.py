"""An existing diffusion_policy-style zarr store (zarr v2 or v3) -> `StepData`.

    data/action          (N, A)   required
    meta/episode_ends    (E,)     required, exclusive ends
    data/<obs key>...    (N, ...) observations: the keys of the option `obs_keys=state,keypoint`, else
                                  those in the store's attrs["obs_keys"], else data/obs
    data/reward          (N,)     optional, but a store without it needs the option `reward=` (below)
    data/terminal        (N,)     optional: all False when missing (every episode end a truncation)
    data/<camera>...     (N, H, W, C) frames: the keys of the option `image_keys=img`, uint8 or float in
                                  0..255 with whole values (diffusion_policy's Push-T `data/img`), stored
                                  as uint8 (default: the store's attrs["image_keys"]); `obs_keys=none` keeps
                                  no low-dimensional key

A store without data/reward (diffusion_policy's demonstrations have none) is refused unless `reward=` says
what the reward is: `zeros` or `success_at_end` (reward_rules.py).
`attrs["reward_source"]` records where the rewards came from.

Each observation key is kept as its own store key, flattened to (N, D) (diffusion_policy's pusht
`keypoint` (N, 9, 2) becomes (N, 18), as its low-dim dataset does), and concatenated in the order given.
Other data/ arrays (cameras not named, contact counts) are not copied. The store's attributes are copied
through.
The input is opened read-only and never modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offline_chunk.data.sources import SourceSpec
from offline_chunk.data.sources.reward_rules import rule_rewards
from offline_chunk.data.store import StepData, image_keys_of, obs_keys_of, open_group, read_array
from offline_chunk.errors import DataError

STEP_ARRAYS = ("action", "reward", "terminal")


def _obs_candidates(group) -> list[str]:
    """Names under data/ that could be observations: rank-2 float arrays other than the step arrays."""
    return sorted(
        name
        for name, arr in group["data"].arrays()
        if name not in STEP_ARRAYS and arr.ndim == 2 and arr.dtype.kind == "f"
    )


def _obs_keys(path: Path, group, requested: str) -> list[str]:
    keys = requested.split(",") if requested else obs_keys_of(group)
    missing = [key for key in keys if f"data/{key}" not in group]
    if missing:
        raise DataError(
            path,
            f"observation array is missing; rank-2 float arrays under data/: {_obs_candidates(group)} "
            "(choose with ?obs_keys=a,b)",
            f"data/{missing[0]}",
        )
    return keys


def _frames(path: Path, group, camera: str) -> np.ndarray:
    """A camera's (N, H, W, C) frames as uint8: uint8 as is, floats only if every value is a whole 0..255."""
    name = f"data/{camera}"
    frames = read_array(path, group, name)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise DataError(path, f"has shape {frames.shape}, expected (N, H, W, C) frames with C = 3 or 1", name)
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype.kind != "f":
        raise DataError(path, f"has dtype {frames.dtype}, expected uint8 or float frames in 0..255", name)
    bad = (frames < 0) | (frames > 255) | (frames != np.round(frames))
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])
        raise DataError(
            path, "holds a value that is not a whole number in 0..255 (not a uint8 frame)", name, row
        )
    return frames.astype(np.uint8)


def _as_rows(arr: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, D) float32 (an explicit D, so that an empty array reshapes too)."""
    return np.asarray(arr, np.float32).reshape(len(arr), int(np.prod(arr.shape[1:])))


def _rewards(path: Path, group, rule: str, rows: int, episode_ends: np.ndarray):
    """(reward, terminal or None, reward_source): the store's own data/reward, or the rule `reward=` names."""
    if "data/reward" in group:
        if rule:
            raise DataError(path, f"has data/reward; the option reward={rule} is for stores without one")
        return read_array(path, group, "data/reward"), None, "data/reward"
    return rule_rewards(path, rule, rows, episode_ends, "data/reward")


def load(spec: SourceSpec, progress: bool) -> StepData:
    options = spec.take({"obs_keys": "", "reward": "", "image_keys": ""})
    path = Path(spec.location).resolve()
    group = open_group(path)  # read-only
    action = read_array(path, group, "data/action")
    episode_ends = read_array(path, group, "meta/episode_ends")
    obs_keys = [] if options["obs_keys"] == "none" else _obs_keys(path, group, options["obs_keys"])
    cameras = [key for key in options["image_keys"].split(",") if key] or image_keys_of(group)
    reward, rule_terminal, reward_source = _rewards(path, group, options["reward"], len(action), episode_ends)
    terminal = read_array(path, group, "data/terminal") if "data/terminal" in group else None
    if terminal is None:
        terminal = rule_terminal if rule_terminal is not None else np.zeros(len(action), bool)
    elif rule_terminal is not None:
        terminal = np.asarray(terminal, bool) | rule_terminal
    attrs = group.attrs.asdict()
    attrs.pop("reward_filled", None)  # the earlier converters' flag, now `reward_source`
    return StepData(
        observations={key: _as_rows(read_array(path, group, f"data/{key}")) for key in obs_keys},
        action=np.asarray(action, np.float32),
        reward=np.asarray(reward, np.float32),
        terminal=terminal,
        episode_ends=episode_ends,
        attrs={**attrs, "source_format": "zarr", "source_file": str(path), "reward_source": reward_source},
        images={camera: _frames(path, group, camera) for camera in cameras},
    )

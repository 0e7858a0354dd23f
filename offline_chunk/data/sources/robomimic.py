"""robomimic HDF5 -> `StepData`.

    data/demo_<i>/obs/<key>   (T, D) low-dimensional, or (T, H, W, C) uint8 camera frames
    data/demo_<i>/actions     (T, A)
    data/demo_<i>/rewards     (T,)
    data/demo_<i>/dones       (T,)
    data.attrs["env_args"]    JSON with "env_name" (optional)
    mask/<filter>             demo names of a split, e.g. mask/train (optional)

Each demo is one episode. Demos are taken in order of their integer index (demo_2 before demo_10), or in
the order of `mask/<filter>` with the option `filter=<name>`. The option `obs_keys=a,b,c` picks
low-dimensional observation keys, concatenated in that order; each is written as its own store key
`data/<key>`. The default is every (T, D) key of the first demo in sorted order; `obs_keys=none` keeps
none. Cameras are copied only when named: `image_keys=agentview_image,robot0_eye_in_hand_image` (each a
store camera `data/<key>`, uint8 frames).

Dones: robomimic writes done = 1 on the last step of every demo and, depending on the `done_mode` used
at collection, on steps where the task succeeded. With `dones=terminal` (default) a done becomes a store
`terminal`: an absorbing state, no bootstrapping after that row's reward. This is what robomimic's own
offline RL algorithms (BCQ, CQL, IQL) do with `(1 - dones)` in their critic targets. With `dones=ignore`
no row is terminal, so every demo end is a truncation and targets bootstrap from the last observation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from offline_chunk.data.sources import SourceSpec
from offline_chunk.data.sources._hdf5 import as_flags, check_same_length, decode_text, read_dataset
from offline_chunk.data.store import StepData
from offline_chunk.errors import DataError

OPTIONS = {"obs_keys": "", "filter": "", "dones": "terminal", "image_keys": ""}
DONES_MODES = ("terminal", "ignore")
DEMO_NAME = re.compile(r"demo_(\d+)")


def _demos_by_index(path: Path, data: h5py.Group) -> list[str]:
    names = [name for name in data if DEMO_NAME.fullmatch(name)]
    if not names:
        raise DataError(path, "holds no demo_<i> groups", "data")
    return sorted(names, key=lambda name: int(DEMO_NAME.fullmatch(name).group(1)))


def _demos_in_filter(path: Path, h5file: h5py.File, data: h5py.Group, name: str) -> list[str]:
    masks = h5file.get("mask")
    available = sorted(masks) if isinstance(masks, h5py.Group) else []
    if name not in available:
        raise DataError(path, f"no such filter; the file has {available}", f"mask/{name}")
    demos = [decode_text(demo) for demo in masks[name][()]]
    if not demos:
        raise DataError(path, "lists no demos", f"mask/{name}")
    missing = [demo for demo in demos if demo not in data]
    if missing:
        raise DataError(path, f"lists demos that data/ does not hold: {missing}", f"mask/{name}")
    return demos


def _obs_keys(path: Path, data: h5py.Group, demo: str, requested: str) -> list[str]:
    """The requested keys, or every (T, D) key in sorted order; checked against the first demo."""
    name = f"data/{demo}/obs"
    obs = data.get(f"{demo}/obs")
    if not isinstance(obs, h5py.Group):
        raise DataError(path, "required group is missing", name)
    available = sorted(obs)
    if not requested:
        keys = [key for key in available if obs[key].ndim == 2]
        if not keys:
            raise DataError(path, f"has no low-dimensional (T, D) keys; it has {available}", name)
        return keys
    keys = [] if requested == "none" else requested.split(",")
    unknown = [key for key in keys if key not in obs]
    if unknown:
        raise DataError(path, f"has no observation key(s) {unknown}; available: {available}", name)
    return keys


def _read_demo(path: Path, h5file: h5py.File, demo: str, obs_keys: list[str], cameras: list[str]) -> dict:
    """One demo's arrays, keyed by their path under data/<demo>/."""
    prefix = f"data/{demo}"
    arrays = {f"obs/{key}": read_dataset(path, h5file, f"{prefix}/obs/{key}", 2) for key in obs_keys}
    for camera in cameras:
        name = f"{prefix}/obs/{camera}"
        frames = read_dataset(path, h5file, name, 4)
        if frames.dtype != np.uint8:
            raise DataError(path, f"has dtype {frames.dtype}, expected uint8 camera frames", name)
        arrays[f"obs/{camera}"] = frames
    arrays["actions"] = read_dataset(path, h5file, f"{prefix}/actions", 2)
    arrays["rewards"] = read_dataset(path, h5file, f"{prefix}/rewards", 1)
    arrays["dones"] = read_dataset(path, h5file, f"{prefix}/dones", 1)
    check_same_length(path, {f"{prefix}/{name}": arr for name, arr in arrays.items()})
    arrays["dones"] = as_flags(path, f"{prefix}/dones", arrays["dones"])
    return arrays


def _env_id(path: Path, data: h5py.Group) -> str | None:
    if "env_args" not in data.attrs:
        return None
    try:
        env_args = json.loads(decode_text(data.attrs["env_args"]))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"attribute env_args is not valid JSON ({exc})", "data") from exc
    return env_args.get("env_name")


def _demo_order(path: Path, h5file: h5py.File, filter_name: str) -> list[str]:
    data = h5file.get("data")
    if not isinstance(data, h5py.Group):
        raise DataError(path, "required group is missing", "data")
    return _demos_in_filter(path, h5file, data, filter_name) if filter_name else _demos_by_index(path, data)


def _concatenate(episodes: list[dict], obs_keys: list[str], cameras: list[str], keep_dones: bool) -> StepData:
    def joined(name: str) -> np.ndarray:
        return np.concatenate([episode[name] for episode in episodes])

    done = joined("dones")
    return StepData(
        observations={key: joined(f"obs/{key}").astype(np.float32) for key in obs_keys},
        action=joined("actions").astype(np.float32),
        reward=joined("rewards").astype(np.float32),
        terminal=done if keep_dones else np.zeros_like(done),
        episode_ends=np.cumsum([len(episode["actions"]) for episode in episodes]).astype(np.int64),
        images={camera: joined(f"obs/{camera}") for camera in cameras},
    )


def load(spec: SourceSpec, progress: bool) -> StepData:
    options = spec.take(OPTIONS)
    path = Path(spec.location).resolve()
    if options["dones"] not in DONES_MODES:
        raise DataError(path, f"option dones={options['dones']!r}: expected one of {list(DONES_MODES)}")
    with h5py.File(path, "r") as h5file:
        demos = _demo_order(path, h5file, options["filter"])
        obs_keys = _obs_keys(path, h5file["data"], demos[0], options["obs_keys"])
        cameras = [key for key in options["image_keys"].split(",") if key]
        episodes = [
            _read_demo(path, h5file, demo, obs_keys, cameras)
            for demo in tqdm(demos, desc=f"reading {path.name}", unit="demo", disable=not progress)
        ]
        env_id = _env_id(path, h5file["data"])
    data = _concatenate(episodes, obs_keys, cameras, keep_dones=options["dones"] == "terminal")
    data.attrs = {
        "source_format": "robomimic_hdf5",
        "source_file": str(path),
        "demos": len(demos),
        "obs_keys": obs_keys,
        "dones": options["dones"],
        "reward_source": "data/<demo>/rewards",
    }
    if options["filter"]:
        data.attrs["filter"] = options["filter"]
    if env_id is not None:
        data.attrs["env_id"] = env_id
    return data

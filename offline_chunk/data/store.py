"""The step-level store: diffusion_policy's ReplayBuffer layout in zarr (docs/chunk_transitions.md).

    data/<obs key>...   (N, D_k) float   observation at row t (keys in attrs["obs_keys"], concatenated)
    data/<camera>...    (N, H, W, C) uint8  frame at row t (keys in attrs["image_keys"]; C = 3 or 1)
    data/action         (N, A)   float   action taken at row t
    data/reward         (N,)     float   reward for taking action t at observation t
    data/terminal       (N,)     bool    no bootstrapping after this row's reward
    meta/episode_ends   (E,)     int     exclusive end row of each episode; strictly increasing, last = N

`open_store` reads and validates (read-only, never touching the input); `write_store` validates and
writes to a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from offline_chunk import __version__
from offline_chunk.atomic import sibling
from offline_chunk.errors import DataError

REQUIRED = ("data/action", "data/reward", "data/terminal", "meta/episode_ends")
# zarr reads a missing chunk as the fill value, and other writers skip chunks that hold only the fill
# value (zarr 3's default), so a missing chunk means truncation only in a store that says every chunk
# was written: `write_store` writes them all and records this attribute.
ALL_CHUNKS_WRITTEN = "all_chunks_written"
CHUNK_BYTES = 4 << 20
FRAMES_PER_CHUNK = 256  # camera frames are chunked along rows and compressed (zstd in blosc, bit-shuffled)
FRAME_CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


@dataclass
class StepData:
    """Step-level trajectories in memory, in environment units."""

    observations: dict[str, np.ndarray]  # key -> (N, D_k); concatenated in insertion order (may be empty
    # when there are cameras)
    action: np.ndarray  # (N, A)
    reward: np.ndarray  # (N,)
    terminal: np.ndarray  # (N,) bool
    episode_ends: np.ndarray  # (E,) int64, exclusive
    attrs: dict = field(default_factory=dict)  # provenance: source, env_id, action bounds, ...
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # optional per-row arrays (qpos, ...)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (N, H, W, C) uint8 frames

    @property
    def obs(self) -> np.ndarray:
        """(N, obs_dim) float32: the observation keys concatenated in order ((N, 0) with cameras only)."""
        parts = [np.asarray(v, np.float32) for v in self.observations.values()]
        if not parts:
            return np.zeros((self.num_rows, 0), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    @property
    def num_rows(self) -> int:
        return len(self.action)

    @property
    def episode_begins(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)


# --------------------------------------------------------------------------- validation


def _first_row(bad: np.ndarray) -> int:
    """Row of the first True in a per-row (or per-row-and-column) boolean array."""
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


def _check_array(path, name, arr, rank, kind, num_rows) -> None:
    kinds = {"f": "floating point", "b": "bool", "i": "integer"}
    if arr.ndim != rank:
        raise DataError(path, f"has rank {arr.ndim} (shape {arr.shape}), expected rank {rank}", name)
    if arr.dtype.kind != kind and not (kind == "i" and arr.dtype.kind == "u"):
        raise DataError(path, f"has dtype {arr.dtype}, expected {kinds[kind]}", name)
    if num_rows is not None and len(arr) != num_rows:
        raise DataError(path, f"has {len(arr)} rows but data/action has {num_rows}", name)
    if kind == "f" and not np.isfinite(arr).all():
        raise DataError(path, "contains NaN or inf", name, _first_row(~np.isfinite(arr)))


def _check_frames(path, name, frames, num_rows: int) -> None:
    """Camera frames: (N, H, W, C) uint8 with C = 3 (RGB) or 1, one per row."""
    if frames.ndim != 4:
        raise DataError(
            path, f"has rank {frames.ndim} (shape {frames.shape}), expected (N, H, W, C) frames", name
        )
    if frames.dtype != np.uint8:
        raise DataError(path, f"has dtype {frames.dtype}, expected uint8 frames (0..255)", name)
    if frames.shape[-1] not in (1, 3):
        raise DataError(
            path, f"has {frames.shape[-1]} channels (shape {frames.shape}), expected 3 (RGB) or 1", name
        )
    if frames.shape[0] != num_rows:  # shape, not len: a lazily opened zarr array has no len()
        raise DataError(path, f"has {frames.shape[0]} rows but data/action has {num_rows}", name)


def _check_episode_ends(path, ends: np.ndarray, num_rows: int) -> None:
    name = "meta/episode_ends"
    if len(ends) == 0:
        raise DataError(path, "is empty: a store holds at least one episode", name)
    lengths = np.diff(ends, prepend=0)
    if (lengths < 0).any():
        k = int(np.flatnonzero(lengths < 0)[0])
        raise DataError(
            path, f"is not strictly increasing at entry {k} ({ends[k]} after {ends[k - 1]})", name
        )
    if (lengths == 0).any():
        k = int(np.flatnonzero(lengths == 0)[0])
        raise DataError(
            path, f"entry {k} makes an empty episode (end {ends[k]} repeats the previous end)", name
        )
    if ends[-1] != num_rows:
        raise DataError(path, f"last entry is {ends[-1]}, must equal the number of rows {num_rows}", name)


def _check_action_bounds(path, action: np.ndarray, attrs: dict) -> None:
    if "action_low" not in attrs or "action_high" not in attrs:
        return
    low = np.asarray(attrs["action_low"], np.float64)
    high = np.asarray(attrs["action_high"], np.float64)
    outside = (action < low) | (action > high)
    if outside.any():
        row = _first_row(outside)
        col = int(np.flatnonzero(outside[row])[0])
        raise DataError(
            path,
            f"action[{col}] = {action[row, col]:.6g} is outside the declared bounds "
            f"[{np.broadcast_to(low, action.shape[1:])[col]:.6g}, "
            f"{np.broadcast_to(high, action.shape[1:])[col]:.6g}]",
            "data/action",
            row,
        )


def validate(data: StepData, path) -> None:
    """Raise `DataError` for the first broken rule of the layout of docs/chunk_transitions.md."""
    if not data.observations and not data.images:
        raise DataError(
            path,
            "no observation arrays (data/obs, keys listed in attrs['obs_keys'], or cameras in 'image_keys')",
        )
    _check_array(path, "data/action", data.action, 2, "f", None)
    n = data.num_rows
    for key, obs in data.observations.items():
        _check_array(path, f"data/{key}", obs, 2, "f", n)
    for camera, frames in data.images.items():
        _check_frames(path, f"data/{camera}", frames, n)
    _check_array(path, "data/reward", data.reward, 1, "f", n)
    _check_array(path, "data/terminal", data.terminal, 1, "b", n)
    _check_array(path, "meta/episode_ends", data.episode_ends, 1, "i", None)
    _check_episode_ends(path, data.episode_ends, n)
    for key, extra in data.extras.items():
        if len(extra) != n:
            raise DataError(path, f"has {len(extra)} rows but data/action has {n}", f"data/{key}")
    _check_action_bounds(path, data.action, data.attrs)


# --------------------------------------------------------------------------- reading


def open_group(path: Path):
    if not path.exists():
        raise DataError(path, "does not exist")
    try:
        return zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not a group here"
        raise DataError(path, f"is not a zarr store ({type(exc).__name__})") from exc


def lazy_array(path: Path, group, name: str) -> zarr.Array:
    """An array of the store, unread (checked to exist and to be an array)."""
    if name not in group:
        raise DataError(path, "required array is missing", name)
    if not isinstance(group[name], zarr.Array):
        raise DataError(path, "is a group, expected an array", name)
    return group[name]


def read_array(path: Path, group, name: str) -> np.ndarray:
    arr = lazy_array(path, group, name)
    if group.attrs.get(ALL_CHUNKS_WRITTEN) and arr.nchunks_initialized < arr.nchunks:
        raise DataError(
            path,
            f"is truncated on disk: {arr.nchunks - arr.nchunks_initialized} of {arr.nchunks} chunks missing",
            name,
        )
    try:
        return arr[...]
    except Exception as exc:  # a chunk cut short fails in its codec
        raise DataError(path, f"is truncated or corrupt on disk ({type(exc).__name__}: {exc})", name) from exc


def frame_bytes(path) -> int:
    """The bytes of a store's camera frames, from the arrays' metadata (nothing is read)."""
    path = Path(path)
    group = open_group(path)
    return sum(lazy_array(path, group, f"data/{camera}").nbytes for camera in image_keys_of(group))


def obs_keys_of(group) -> list[str]:
    """Low-dimensional observation keys of a store: attrs['obs_keys'] (empty in a store of cameras only),
    else the single array data/obs."""
    keys = group.attrs.get("obs_keys")
    if keys is not None and (keys or group.attrs.get("image_keys")):
        return [str(k) for k in keys]
    return ["obs"]


def image_keys_of(group) -> list[str]:
    return [str(k) for k in group.attrs.get("image_keys", [])]


def open_store(path, extras: bool = False, lazy_frames: bool = False) -> StepData:
    """Read and validate a store. Read-only: the input is never modified. `lazy_frames`: the cameras stay
    zarr arrays, read when indexed (a store whose frames exceed memory; data/streaming.py)."""
    path = Path(path)
    group = open_group(path)
    attrs = dict(group.attrs.asdict())
    observations = {key: read_array(path, group, f"data/{key}") for key in obs_keys_of(group)}
    read_frames = lazy_array if lazy_frames else read_array
    images = {camera: read_frames(path, group, f"data/{camera}") for camera in image_keys_of(group)}
    arrays = {name: read_array(path, group, name) for name in REQUIRED}
    extra_arrays = {}
    if extras and "data" in group:
        known = set(observations) | set(images) | {"action", "reward", "terminal"}
        extra_arrays = {k: group["data"][k][...] for k in group["data"].array_keys() if k not in known}
    data = StepData(
        observations=observations,
        action=arrays["data/action"],
        reward=arrays["data/reward"],
        terminal=arrays["data/terminal"],
        episode_ends=arrays["meta/episode_ends"],
        attrs=attrs,
        extras=extra_arrays,
        images=images,
    )
    validate(data, path)
    return data


# --------------------------------------------------------------------------- writing


def _row_chunks(arr: np.ndarray) -> tuple[int, ...]:
    row_bytes = max(1, arr[:1].nbytes)
    rows = int(min(max(1, len(arr)), max(1024, CHUNK_BYTES // row_bytes)))
    return (rows, *arr.shape[1:])


def _write_array(group, name: str, arr: np.ndarray, frames: bool = False) -> None:
    arr = np.ascontiguousarray(arr)
    chunks = (min(max(1, len(arr)), FRAMES_PER_CHUNK), *arr.shape[1:]) if frames else _row_chunks(arr)
    codec = {"compressors": FRAME_CODEC} if frames else {}
    out = group.create_array(
        name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, config={"write_empty_chunks": True}, **codec
    )
    out[...] = arr


def _to_json(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_store(data: StepData, path, overwrite: bool = False) -> Path:
    """Validate, then write `data` to `path` atomically (temporary directory, then rename)."""
    path = Path(path)
    validate(data, path)
    if path.exists() and not overwrite:
        raise DataError(path, "already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path)
    try:
        group = zarr.open_group(store=str(tmp), mode="w-", zarr_format=3)
        for key, obs in data.observations.items():
            _write_array(group, f"data/{key}", np.asarray(obs, np.float32))
        for camera, frames in data.images.items():
            _write_array(group, f"data/{camera}", frames, frames=True)
        _write_array(group, "data/action", np.asarray(data.action, np.float32))
        _write_array(group, "data/reward", np.asarray(data.reward, np.float32))
        _write_array(group, "data/terminal", np.asarray(data.terminal, bool))
        for key, extra in data.extras.items():
            _write_array(group, f"data/{key}", np.asarray(extra))
        _write_array(group, "meta/episode_ends", np.asarray(data.episode_ends, np.int64))
        attrs = {k: _to_json(v) for k, v in data.attrs.items()}
        attrs.update(obs_keys=list(data.observations), offline_chunk_version=__version__)
        if data.images:
            attrs["image_keys"] = list(data.images)
        attrs[ALL_CHUNKS_WRITTEN] = True
        group.attrs.update(attrs)
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace(tmp: Path, path: Path) -> None:
    """Move a finished store into place; an existing one is removed only after the new one is complete."""
    if path.exists():
        trash = sibling(path, "old")
        os.rename(path, trash)
        os.rename(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, path)

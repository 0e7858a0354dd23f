"""An existing diffusion_policy-style zarr store (zarr v2 or v3) -> `StepData`.

    data/action          (N, A)   required
    meta/episode_ends    (E,)     required, exclusive ends
    data/<obs key>...    (N, ...) observations: the keys of the option `obs_keys=state,keypoint`, else
                                  those in the store's attrs["obs_keys"], else data/obs
    data/reward          (N,)     optional: zeros when missing (attrs["reward_filled"] = True)
    data/terminal        (N,)     optional: all False when missing (every episode end a truncation)

Each observation key is kept as its own store key, flattened to (N, D) (diffusion_policy's pusht
`keypoint` (N, 9, 2) becomes (N, 18), as its low-dim dataset does), and concatenated in the order given.
Other data/ arrays (images, contact counts) are not copied. The store's attributes are copied through.
The input is opened read-only and never modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offline_chunk.data.sources import SourceSpec
from offline_chunk.data.store import StepData, obs_keys_of, open_group, read_array
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


def _as_rows(arr: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, D) float32 (an explicit D, so that an empty array reshapes too)."""
    return np.asarray(arr, np.float32).reshape(len(arr), int(np.prod(arr.shape[1:])))


def load(spec: SourceSpec, progress: bool) -> StepData:
    options = spec.take({"obs_keys": ""})
    path = Path(spec.location).resolve()
    group = open_group(path)  # read-only
    action = read_array(path, group, "data/action")
    episode_ends = read_array(path, group, "meta/episode_ends")
    obs_keys = _obs_keys(path, group, options["obs_keys"])
    attrs = {**group.attrs.asdict(), "source_format": "zarr", "source_file": str(path)}
    if "data/reward" in group:
        reward = read_array(path, group, "data/reward")
    else:
        reward = np.zeros(len(action), np.float32)
        attrs["reward_filled"] = True
    has_terminal = "data/terminal" in group
    return StepData(
        observations={key: _as_rows(read_array(path, group, f"data/{key}")) for key in obs_keys},
        action=np.asarray(action, np.float32),
        reward=np.asarray(reward, np.float32),
        terminal=read_array(path, group, "data/terminal") if has_terminal else np.zeros(len(action), bool),
        episode_ends=episode_ends,
        attrs=attrs,
    )

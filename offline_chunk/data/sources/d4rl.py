"""D4RL-style HDF5 -> `StepData`.

The file holds one row per transition (s_t, a_t, r_t, s_t+1) in root datasets:

    observations (N, D)   actions (N, A)   rewards (N,)   terminals (N,)   timeouts (N,)

`next_observations` and `infos/*` are not read. An episode ends after every row with `terminals` or
`timeouts` set, and at row N (a trailing unfinished episode is a truncation). `terminals` becomes the
store's `terminal` (absorbing state: no bootstrapping after that row's reward). `timeouts` are time-limit
truncations and never a terminal; a row with both set is a terminal.

The last transition of a timed-out episode is lost as a chunk transition. The row after a timeout
starts the next episode, so the store has no successor observation for that row's action: under
the rules of docs/chunk_transitions.md it is the last row of a truncated episode (tau = 0, not a
transition), and chunks running into it bootstrap from its observation. d4rl's own
`qlearning_dataset` likewise drops timeout rows. The same holds for the last row of the file when it
carries no flag.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from offline_chunk.data.sources import SourceSpec
from offline_chunk.data.sources._hdf5 import as_flags, check_same_length, decode_text, read_dataset
from offline_chunk.data.store import StepData

RANKS = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "timeouts": 1}
# Where D4RL versions and re-packagings record the environment: root or metadata/ attributes, or a
# scalar dataset under metadata/.
ENV_ID_KEYS = ("env_id", "env_name", "env")


def _env_id(h5file: h5py.File) -> str | None:
    places = [h5file.attrs]
    meta = h5file.get("metadata")
    if isinstance(meta, h5py.Group):
        places += [meta.attrs, {k: meta[k][()] for k in ENV_ID_KEYS if isinstance(meta.get(k), h5py.Dataset)}]
    found = [place[key] for place in places for key in ENV_ID_KEYS if key in place]
    return decode_text(found[0]) if found else None


def _episode_ends_after(flags: np.ndarray) -> np.ndarray:
    """Exclusive episode ends: after every flagged row, and at the end of the array."""
    ends = np.flatnonzero(flags) + 1
    if len(ends) == 0 or ends[-1] != len(flags):
        ends = np.append(ends, len(flags))
    return ends.astype(np.int64)


def load(spec: SourceSpec, progress: bool) -> StepData:
    spec.take({})
    path = Path(spec.location).resolve()
    with h5py.File(path, "r") as h5file:
        arrays = {name: read_dataset(path, h5file, name, rank) for name, rank in RANKS.items()}
        env_id = _env_id(h5file)
    check_same_length(path, arrays)
    terminal = as_flags(path, "terminals", arrays["terminals"])
    timeout = as_flags(path, "timeouts", arrays["timeouts"])
    attrs = {
        "source_format": "d4rl_hdf5",
        "source_file": str(path),
        "discount_hint": 0.99,
        "reward_source": "rewards",
    }
    if env_id is not None:
        attrs["env_id"] = env_id
    return StepData(
        observations={"obs": arrays["observations"].astype(np.float32)},
        action=arrays["actions"].astype(np.float32),
        reward=arrays["rewards"].astype(np.float32),
        terminal=terminal,
        episode_ends=_episode_ends_after(terminal | timeout),
        attrs=attrs,
    )

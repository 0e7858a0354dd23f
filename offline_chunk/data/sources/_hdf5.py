"""HDF5 reading helpers shared by the D4RL and robomimic converters."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from offline_chunk.errors import DataError


def read_dataset(path: Path, h5file: h5py.File, name: str, rank: int) -> np.ndarray:
    """The numeric dataset `name` read into memory, or a `DataError` naming the file and dataset."""
    node = h5file.get(name)
    if not isinstance(node, h5py.Dataset):
        raise DataError(path, "required dataset is missing", name)
    if node.ndim != rank:
        raise DataError(path, f"has shape {node.shape}, expected rank {rank}", name)
    if node.dtype.kind not in "biuf":
        raise DataError(path, f"has dtype {node.dtype}, expected numbers", name)
    return node[()]


def check_same_length(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """All `arrays` have as many rows as the first one, and that is at least one."""
    (reference, first), *others = arrays.items()
    if len(first) == 0:
        raise DataError(path, "has no rows", reference)
    for name, arr in others:
        if len(arr) != len(first):
            raise DataError(path, f"has {len(arr)} rows but '{reference}' has {len(first)}", name)


def as_flags(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """A 0/1 (or bool) column as bool; any other value is an error naming its row."""
    if values.dtype == bool:
        return values
    bad = (values != 0) & (values != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(path, f"value {values[row]} is not a 0/1 flag", name, row)
    return values == 1


def decode_text(value) -> str:
    """An HDF5 string attribute or scalar (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)

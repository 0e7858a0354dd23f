"""Atomic writes: a file or a directory appears under its final name only when complete."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden, unique name beside `path` (same directory, so a rename is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a temporary sibling, then rename it to `path`: no half-written final file."""
    path = Path(path)
    tmp = sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

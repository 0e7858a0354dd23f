"""Writing a run's files so that a crash leaves no half of one: a file or a directory appears under its final
name only when complete (`write_atomic`); a CSV log grows by whole lines (`append_row`)."""

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


def append_row(path: Path, header: str, row: str) -> None:
    """One line appended to a CSV file, its header line first when the file is new."""
    new_file = not Path(path).exists()
    with open(path, "a") as f:
        f.write(f"{header}\n{row}\n" if new_file else f"{row}\n")

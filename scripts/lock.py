"""The dependency lock (requirements.lock) that `make install` installs with: every package of the `.[all]`
environment at an exact version, except torch and the packages that come with a torch build (nvidia-*,
triton), whose version the Makefile's TORCH line fixes for the CPU or the CUDA build.

    python scripts/lock.py freeze < pip-freeze-output > requirements.lock   (what `make lock` runs)
    python scripts/lock.py check requirements.lock                          (the end of `make install`)
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PROJECT = "offline-chunk"
HEADER = (
    "# Exact versions that `make install` installs (pip constraints). Regenerate with `make lock`.\n"
    "# torch, triton and nvidia-* are not listed: the Makefile's TORCH line pins the torch build.\n"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_build(name: str) -> bool:
    """Packages whose version a torch build (CPU or CUDA) decides."""
    name = canonical(name)
    return name in ("torch", "triton", "pytorch-triton") or name.startswith("nvidia-")


def freeze(lines: list[str]) -> str:
    """`pip freeze --all` output -> the lock's text, sorted, without the project and the torch build."""
    pins = []
    for line in lines:
        name, sep, version = line.strip().partition("==")
        if line.startswith(("#", "-e")) or not sep or torch_build(name) or canonical(name) == PROJECT:
            continue
        pins.append(f"{canonical(name)}=={version}")
    return HEADER + "\n".join(sorted(pins)) + "\n"


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def torch_closure() -> set[str]:
    """torch and every package it requires, transitively: a CUDA build brings packages (nvidia-*, cuda-*)
    that the CPU lock cannot list; those the lock lists are still checked."""
    seen, todo = set(), ["torch"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [
            canonical(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0])
            for r in requirements
            if "extra ==" not in r
        ]
    return seen


def check(path: Path) -> list[str]:
    """What differs between the lock and the installed environment (empty when they agree)."""
    pins = read_lock(path)
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    brought_by_torch = torch_closure()
    problems = [
        f"{name}: locked {version}, installed {installed.get(name, 'nothing')}"
        for name, version in sorted(pins.items())
        if installed.get(name) != version
    ]
    problems += [
        f"{name} {version}: installed but not in the lock"
        for name, version in sorted(installed.items())
        if name not in pins and name != PROJECT and not torch_build(name) and name not in brought_by_torch
    ]
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["freeze"]:
        sys.stdout.write(freeze(sys.stdin.readlines()))
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        problems = check(Path(argv[1]))
        for problem in problems:
            print(f"{argv[1]}: {problem}", file=sys.stderr)
        if problems:
            print(
                "the environment differs from the lock: `make clean install` (or `make lock` to refresh it)",
                file=sys.stderr,
            )
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

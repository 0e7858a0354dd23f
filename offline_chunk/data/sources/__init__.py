"""Source formats -> `StepData`. One module per format; `convert` writes the result atomically.

A source is named by a spec string: ``<location>[?key=value&key=value]``.

    data/scene-play-v0.npz?env=scene-play-singletask-task2-v0   OGBench .npz (+ single-task relabelling)
    data/hopper-medium-v2.hdf5                                   D4RL-style HDF5
    data/lift_ph.hdf5?obs_keys=robot0_eef_pos,object             robomimic HDF5
    data/pusht_cchi_v7_replay.zarr?obs_keys=state&reward=zeros   diffusion_policy zarr (reward= rule)
    data/koch_pick_place?image_keys=observation.images.top       a local LeRobotDataset folder (v3.0, v2.1)
    ogbench:scene-play-singletask-task2-v0?episodes=20           generated with OGBench's oracles
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from offline_chunk.data.store import StepData, validate, write_store
from offline_chunk.errors import DataError

OGBENCH_SCHEME = "ogbench:"


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # module name under offline_chunk.data.sources
    location: str  # file path, or the OGBench dataset name for generated data
    options: dict[str, str]

    def take(self, allowed: dict[str, object]) -> dict[str, object]:
        """The options with defaults filled in; an unknown option is an error naming the allowed ones."""
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise DataError(
                self.location, f"unknown option(s) {unknown}; this source takes {sorted(allowed)}"
            )
        return {**allowed, **self.options}

    @property
    def default_name(self) -> str:
        return Path(self.location).name.split(".")[0] if self.kind != "ogbench_generate" else self.location


def _hdf5_kind(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "robomimic" if "data" in f and isinstance(f["data"], h5py.Group) else "d4rl"
    except OSError as exc:
        raise DataError(path, f"is not a readable HDF5 file ({exc})") from exc


def parse_spec(spec: str) -> SourceSpec:
    location, _, query = spec.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    if location.startswith(OGBENCH_SCHEME):
        return SourceSpec("ogbench_generate", location[len(OGBENCH_SCHEME) :], options)
    path = Path(location)
    if not path.exists():
        raise DataError(path, "does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return SourceSpec("ogbench_npz", location, options)
    if suffix in (".hdf5", ".h5"):
        return SourceSpec(_hdf5_kind(path), location, options)
    if path.is_dir() and (path / "meta" / "info.json").is_file():
        return SourceSpec("lerobot", location, options)
    if suffix == ".zarr" or path.is_dir():
        return SourceSpec("zarr_store", location, options)
    raise DataError(
        path,
        "unknown source format (expected .npz, .hdf5/.h5, .zarr, a LeRobotDataset folder or ogbench:<name>)",
    )


def load_source(spec: str, progress: bool = True) -> StepData:
    """Read (or generate) a source into `StepData`, validated against the rules of docs/chunk_transitions.md.

    Errors name the source file, so a user sees which input broke which rule."""
    parsed = parse_spec(spec)
    module = importlib.import_module(f"offline_chunk.data.sources.{parsed.kind}")
    data = module.load(parsed, progress=progress)
    validate(data, parsed.location)
    return data


def default_output(spec: str) -> Path:
    return Path("data") / f"{parse_spec(spec).default_name}.zarr"


def convert(spec: str, out=None, overwrite: bool = False, progress: bool = True) -> Path:
    """Convert a source to a store at `out` (default data/<name>.zarr), written atomically."""
    out = Path(out) if out else default_output(spec)
    if out.exists() and not overwrite:
        raise DataError(out, "already exists (pass --overwrite to replace it)")
    return write_store(load_source(spec, progress=progress), out, overwrite=overwrite)

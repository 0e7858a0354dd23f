"""A local LeRobotDataset folder (codebase v3.0 or v2.1) -> `StepData`, read with pyarrow and PyAV: neither
the hub nor the `lerobot` package is needed.

    meta/info.json                 codebase_version, fps, features, data_path and video_path templates
    data/.../*.parquet             one row per frame: observation.state, action, timestamp, frame_index,
                                   episode_index, index, and next.reward / next.done when recorded
    videos/...mp4                  each camera's frames, in the feature's codec (AV1 by default, h264 in
                                   older datasets)
    v3.0: meta/episodes/chunk-*/file-*.parquet   per episode: length and, per camera, the video file
                                   (videos/<key>/chunk_index, file_index) and the episode's start in it
                                   (from_timestamp): several episodes share a file
    v2.1: meta/episodes.jsonl      per episode: length; one video per camera and episode, starting at 0

Options:
    obs_keys=observation.state     the low-dimensional features, concatenated in that order ("none": none;
                                   default observation.state when the dataset has it)
    image_keys=a,b                 the cameras kept (default: every video or image feature; an `image`
                                   feature's frames are encoded images inside the parquet)
    reward=zeros|success_at_end    required when the dataset has no next.reward (reward_rules.py)
    done=terminal|ignore           next.done as the terminal flag (default), or ignored (when a dataset
                                   marks time-limit ends with it: those are truncations, not terminals)
    tolerance=0.0001               seconds between a row's time and its decoded frame's (LeRobot's
                                   `tolerance_s` default)

Each row's frame is the decoded frame at time from_timestamp + timestamp of its episode in the camera's
video; a row without a frame within `tolerance` is refused. Videos are decoded once each, in order.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from offline_chunk.data.sources import SourceSpec
from offline_chunk.data.sources.reward_rules import rule_rewards
from offline_chunk.data.store import StepData
from offline_chunk.errors import DataError

VERSIONS = ("v3.0", "v2.1")


def read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DataError(root, "is not a LeRobotDataset folder (no meta/info.json)")
    info = json.loads(path.read_text())
    if info.get("codebase_version") not in VERSIONS:
        raise DataError(
            path, f"codebase_version {info.get('codebase_version')!r}: this reader takes {VERSIONS}"
        )
    return info


def read_frames_table(root: Path):
    """Every data parquet file's rows, ordered by episode and frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise DataError(root / "data", "holds no parquet files")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    for column in ("episode_index", "frame_index", "timestamp", "action"):
        if column not in table.column_names:
            raise DataError(files[0], f"has no column {column!r} (columns: {table.column_names})")
    return table.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])


def column_rows(table, name: str, path: Path) -> np.ndarray:
    """A feature column as (N, D) float32: a list column flattened, a scalar column as D = 1."""
    import pyarrow as pa

    if name not in table.column_names:
        raise DataError(path, f"has no feature {name!r} (columns: {table.column_names})")
    column = table.column(name).combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.astype(np.float32).reshape(len(table), -1)
    return column.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), 1)


def episode_bounds(table, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(episode indices (E,), exclusive row ends (E,)); each episode's frame_index must run 0, 1, 2, ..."""
    episode = table.column("episode_index").to_numpy()
    frame = table.column("frame_index").to_numpy()
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
    ends = np.r_[starts[1:], len(episode)]
    expected = np.arange(len(episode)) - np.repeat(starts, ends - starts)
    if not np.array_equal(frame, expected):
        row = int(np.flatnonzero(frame != expected)[0])
        raise DataError(
            path, f"episode {episode[row]} has frame_index {frame[row]} where {expected[row]} is due"
        )
    return episode[starts], ends


def video_segments(root: Path, info: dict, camera: str, episodes: np.ndarray) -> list[tuple[Path, float]]:
    """Per episode, the camera's video file and the episode's start time in it."""
    template = info["video_path"]
    if info["codebase_version"] == "v2.1":
        chunk = int(info.get("chunks_size", 1000))
        return [
            (root / template.format(episode_chunk=e // chunk, video_key=camera, episode_index=e), 0.0)
            for e in episodes
        ]
    meta = episodes_meta(root)
    prefix = f"videos/{camera}/"
    segments = []
    for e in episodes:
        row = meta.get(int(e))
        if row is None or prefix + "from_timestamp" not in row:
            raise DataError(root / "meta" / "episodes", f"has no video entry of {camera!r} for episode {e}")
        chunk, file = int(row[prefix + "chunk_index"]), int(row[prefix + "file_index"])
        path = root / template.format(video_key=camera, chunk_index=chunk, file_index=file)
        segments.append((path, float(row[prefix + "from_timestamp"])))
    return segments


def episodes_meta(root: Path) -> dict[int, dict]:
    """v3.0's meta/episodes parquet files, one dict per episode index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        raise DataError(root / "meta" / "episodes", "holds no parquet files (a v3.0 dataset needs them)")
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    return {int(row["episode_index"]): row for row in rows}


def decode_at(path: Path, queries: list[tuple[float, int]], out: np.ndarray, tolerance: float) -> None:
    """Decode the video at `path` once, in order, writing the frame at each query time into out[row] for
    the (time, row) queries; a query with no frame within `tolerance` seconds is refused."""
    import av

    if not path.is_file():
        raise DataError(path, "is missing (a video the dataset's metadata names)")
    queries, pending = sorted(queries), 0
    if not queries:
        return
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            time = float(frame.pts * stream.time_base)
            if queries[pending][0] < time - tolerance:
                break  # the next query falls between this frame and the one before: no frame at its time
            image = None
            while pending < len(queries) and abs(queries[pending][0] - time) <= tolerance:
                image = frame.to_ndarray(format="rgb24") if image is None else image
                if image.shape != out.shape[1:]:
                    raise DataError(
                        path, f"decodes to frames {image.shape}, the dataset declares {out.shape[1:]}"
                    )
                out[queries[pending][1]] = image
                pending += 1
            if pending == len(queries):
                return
    time, row = queries[pending]
    raise DataError(path, f"has no frame within {tolerance} s of time {time:.6f} s (row {row})")


def frame_shape(feature: dict) -> tuple[int, int, int]:
    """The (H, W, C) of a camera feature's frames (a (C, H, W) declaration is turned around)."""
    shape, names = tuple(feature["shape"]), feature.get("names")
    if names and list(names)[:2] == ["channels", "height"]:
        return shape[1], shape[2], shape[0]
    return shape


def image_column_frames(table, camera: str, shape: tuple, path: Path) -> np.ndarray:
    """(N, H, W, C) uint8 of a camera of dtype `image`: each row's encoded image (PNG, JPEG) inside the
    parquet, as Hugging Face datasets' Image struct {bytes, path}, decoded with Pillow."""
    from PIL import Image

    encoded = table.column(camera).combine_chunks().field("bytes").to_pylist()
    out = np.zeros((len(table), *shape), np.uint8)
    for row, data in enumerate(encoded):  # conversion time, once per row, as video frames are
        frame = np.asarray(Image.open(io.BytesIO(data)).convert("RGB" if shape[-1] == 3 else "L"))
        frame = frame.reshape(*frame.shape[:2], -1)
        if frame.shape != shape:
            raise DataError(
                path, f"row {row} of {camera!r} is an image {frame.shape}, the dataset declares {shape}"
            )
        out[row] = frame
    return out


def camera_frames(root, info, camera, table, episodes, ends, tolerance, progress) -> np.ndarray:
    """(N, H, W, C) uint8: every row's frame of `camera`: from its videos, each file decoded once, or from
    the parquet's encoded images (dtype `image`)."""
    from tqdm import tqdm

    shape = frame_shape(info["features"][camera])
    if info["features"][camera]["dtype"] == "image":
        return image_column_frames(table, camera, shape, root / "data")
    out = np.zeros((len(table), *shape), np.uint8)
    timestamps = table.column("timestamp").to_numpy().astype(np.float64)
    by_file: dict[Path, list[tuple[float, int]]] = {}
    starts = np.r_[0, ends[:-1]]
    for (path, offset), begin, end in zip(
        video_segments(root, info, camera, episodes), starts, ends, strict=True
    ):
        by_file.setdefault(path, []).extend((offset + timestamps[r], r) for r in range(begin, end))
    for path, queries in tqdm(by_file.items(), desc=f"decode {camera}", unit="video", disable=not progress):
        decode_at(path, queries, out, tolerance)
    return out


def load(spec: SourceSpec, progress: bool) -> StepData:
    options = spec.take(
        {"obs_keys": "", "image_keys": "", "reward": "", "done": "terminal", "tolerance": "0.0001"}
    )
    root = Path(spec.location).resolve()
    info = read_info(root)
    features = info.get("features", {})
    known = [key for key, feature in features.items() if feature.get("dtype") in ("video", "image")]
    cameras = [key for key in options["image_keys"].split(",") if key] or known
    unknown = [key for key in cameras if key not in known]
    if unknown:
        raise DataError(
            root / "meta" / "info.json", f"has no camera feature {unknown[0]!r} (video or image: {known})"
        )
    if options["done"] not in ("terminal", "ignore"):
        raise DataError(root, f"done={options['done']!r}: choose done=terminal or done=ignore")
    table = read_frames_table(root)
    data_dir = root / "data"
    episodes, ends = episode_bounds(table, data_dir)
    if options["obs_keys"] == "none":
        obs_keys = []
    elif options["obs_keys"]:
        obs_keys = options["obs_keys"].split(",")
    else:
        obs_keys = ["observation.state"] if "observation.state" in table.column_names else []
    if "next.reward" in table.column_names:
        if options["reward"]:
            raise DataError(
                root, f"records next.reward; the option reward={options['reward']} is for datasets without"
            )
        reward, rule_terminal, source = column_rows(table, "next.reward", data_dir)[:, 0], None, "next.reward"
    else:
        reward, rule_terminal, source = rule_rewards(root, options["reward"], len(table), ends, "next.reward")
    terminal = np.zeros(len(table), bool)
    if options["done"] == "terminal" and "next.done" in table.column_names:
        terminal = table.column("next.done").to_numpy(zero_copy_only=False).astype(bool)
    if rule_terminal is not None:
        terminal |= rule_terminal
    tolerance = float(options["tolerance"])
    return StepData(
        observations={key: column_rows(table, key, data_dir) for key in obs_keys},
        action=column_rows(table, "action", data_dir),
        reward=np.asarray(reward, np.float32),
        terminal=terminal,
        episode_ends=ends,
        attrs={
            "source_format": f"lerobot {info['codebase_version']}",
            "source_file": str(root),
            "reward_source": source,
            "fps": info.get("fps"),
            "terminal_source": "next.done" if options["done"] == "terminal" else "none (done=ignore)",
        },
        images={
            camera: camera_frames(root, info, camera, table, episodes, ends, tolerance, progress)
            for camera in cameras
        },
    )

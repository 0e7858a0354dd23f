"""LeRobotDataset folders (v3.0 and v2.1) written here in LeRobot's own schema (meta/info.json, parquet
frames, mp4 videos encoded with PyAV in AV1 and h264), converted by the `lerobot` source: every row's
frame must be the video frame at its episode's from_timestamp + timestamp, checked by the frames' grey
levels, which encode their position in their file."""

import json

import numpy as np
import pytest

av = pytest.importorskip("av")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from offline_chunk.data.sources import convert, load_source  # noqa: E402
from offline_chunk.errors import DataError  # noqa: E402

FPS, SIDE, CAMERA = 10, 64, "observation.images.top"
LENGTHS = [5, 4, 6]  # three episodes; in v3.0 the first two share a data file and a video file


def grey(level: int) -> np.ndarray:
    return np.full((SIDE, SIDE, 3), level, np.uint8)


def encode(path, levels, codec):
    """An mp4 of uniform grey frames at FPS, in `codec` (libsvtav1: AV1, LeRobot's default; libx264)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for level in levels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(grey(level), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_rows(episodes, reward=True):
    """LeRobot's per-frame columns for `episodes` (global row numbers follow LENGTHS)."""
    first = np.r_[0, np.cumsum(LENGTHS)]
    rows = [(e, f, first[e] + f) for e in episodes for f in range(LENGTHS[e])]
    columns = {
        "observation.state": [[float(i), i + 0.5, -float(i)] for _, _, i in rows],
        "action": [[0.1 * i, -0.1 * i] for _, _, i in rows],
        "timestamp": [np.float32(f / FPS) for _, f, _ in rows],
        "frame_index": [f for _, f, _ in rows],
        "episode_index": [e for e, _, _ in rows],
        "index": [i for _, _, i in rows],
        "task_index": [0 for _ in rows],
    }
    if reward:
        columns["next.reward"] = [float(f == LENGTHS[e] - 1) for e, f, _ in rows]
        columns["next.done"] = [f == LENGTHS[e] - 1 and e == 1 for e, f, _ in rows]
    return pa.table(
        {
            **columns,
            "observation.state": pa.array(columns["observation.state"], pa.list_(pa.float32())),
            "action": pa.array(columns["action"], pa.list_(pa.float32())),
        }
    )


def info(version: str, codec: str) -> dict:
    paths = {
        "v3.0": (
            "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        ),
        "v2.1": (
            "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        ),
    }[version]
    return {
        "codebase_version": version,
        "fps": FPS,
        "chunks_size": 1000,
        "data_path": paths[0],
        "video_path": paths[1],
        "total_episodes": len(LENGTHS),
        "features": {
            "observation.state": {"dtype": "float32", "shape": [3]},
            "action": {"dtype": "float32", "shape": [2]},
            CAMERA: {
                "dtype": "video",
                "shape": [SIDE, SIDE, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.codec": "av1" if "av1" in codec else "h264", "video.fps": FPS},
            },
            "timestamp": {"dtype": "float32", "shape": [1]},
        },
    }


def level_of(file_position: int, episode: int = 0) -> int:
    return 10 + 40 * episode + 9 * file_position


def write_v3(root, codec, reward=True, files=((0, 1), (2,))):
    """The episodes of each of `files` in one data file and one video file (default: episodes 0 and 1 in
    file 0, episode 1 from time 0.5 s, and episode 2 in file 1). The metadata is computed from LENGTHS."""
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info("v3.0", codec)))
    meta = {key: [] for key in ("episode_index", "length", "data/file_index", "from", "to")}
    for file_index, episodes in enumerate(files):
        data = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_rows(episodes, reward), data)
        frames = sum(LENGTHS[e] for e in episodes)
        levels = (level_of(p) % 256 for p in range(frames))
        encode(root / f"videos/{CAMERA}/chunk-000/file-{file_index:03d}.mp4", levels, codec)
        start = 0
        for e in episodes:
            meta["episode_index"].append(e)
            meta["length"].append(LENGTHS[e])
            meta["data/file_index"].append(file_index)
            meta["from"].append(start / FPS)
            meta["to"].append((start + LENGTHS[e]) / FPS)
            start += LENGTHS[e]
    zeros = [0] * len(meta["length"])
    episodes_meta = {
        "episode_index": meta["episode_index"],
        "length": meta["length"],
        "data/chunk_index": zeros,
        "data/file_index": meta["data/file_index"],
        f"videos/{CAMERA}/chunk_index": zeros,
        f"videos/{CAMERA}/file_index": meta["data/file_index"],
        f"videos/{CAMERA}/from_timestamp": meta["from"],
        f"videos/{CAMERA}/to_timestamp": meta["to"],
    }
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(episodes_meta), root / "meta/episodes/chunk-000/file-000.parquet")
    return root


def write_v21(root, codec):
    """One parquet file and one video per episode, each video starting at time 0."""
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info("v2.1", codec)))
    lines = [json.dumps({"episode_index": e, "tasks": ["pick"], "length": n}) for e, n in enumerate(LENGTHS)]
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    for e, n in enumerate(LENGTHS):
        data = root / f"data/chunk-000/episode_{e:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_rows([e]), data)
        levels = [level_of(f, e) for f in range(n)]
        encode(root / f"videos/chunk-000/{CAMERA}/episode_{e:06d}.mp4", levels, codec)
    return root


def expected_levels(version: str) -> np.ndarray:
    if version == "v2.1":
        return np.array([level_of(f, e) for e, n in enumerate(LENGTHS) for f in range(n)])
    return np.array(
        [level_of(p) for p in range(LENGTHS[0] + LENGTHS[1])] + [level_of(p) for p in range(LENGTHS[2])]
    )


def check_frames(frames: np.ndarray, levels: np.ndarray) -> None:
    """Each row's frame is uniformly its expected grey: within 3 of it (the codecs' error on flat grey is a
    level or two), and levels of other positions are at least 9 away, so no other frame passes."""
    assert frames.dtype == np.uint8 and frames.shape == (len(levels), SIDE, SIDE, 3)
    means = frames.reshape(len(frames), -1).mean(axis=1)
    np.testing.assert_array_less(np.abs(means - levels), 3.0)


@pytest.mark.parametrize("codec", ["libsvtav1", "libx264"])
def test_a_v3_dataset_converts_each_row_to_its_frame_inside_shared_files(tmp_path, codec):
    root = write_v3(tmp_path / "ds", codec)
    out = convert(str(root), out=tmp_path / "store.zarr", progress=False)
    data = load_source(str(root), progress=False)
    check_frames(data.images[CAMERA], expected_levels("v3.0"))
    rows = np.arange(sum(LENGTHS))
    np.testing.assert_array_equal(data.episode_ends, np.cumsum(LENGTHS))
    np.testing.assert_allclose(data.obs, np.stack([rows, rows + 0.5, -rows], 1))
    np.testing.assert_allclose(data.action, np.stack([0.1 * rows, -0.1 * rows], 1), rtol=1e-6)
    assert data.reward[np.cumsum(LENGTHS) - 1].tolist() == [1, 1, 1] and data.reward.sum() == 3
    assert np.flatnonzero(data.terminal).tolist() == [LENGTHS[0] + LENGTHS[1] - 1]  # next.done of episode 1
    assert data.attrs["source_format"] == "lerobot v3.0" and out.exists()


def test_a_v21_dataset_converts_one_video_per_episode(tmp_path):
    root = write_v21(tmp_path / "ds", "libx264")
    data = load_source(str(root), progress=False)
    check_frames(data.images[CAMERA], expected_levels("v2.1"))
    assert data.attrs["source_format"] == "lerobot v2.1" and list(data.observations) == ["observation.state"]


def test_without_next_reward_the_rule_must_be_named(tmp_path):
    root = write_v3(tmp_path / "ds", "libx264", reward=False)
    with pytest.raises(DataError, match="has no reward array.*reward=success_at_end"):
        load_source(str(root), progress=False)
    data = load_source(f"{root}?reward=success_at_end&obs_keys=none", progress=False)
    assert np.flatnonzero(data.terminal).tolist() == (np.cumsum(LENGTHS) - 1).tolist()
    assert data.obs.shape == (sum(LENGTHS), 0) and data.attrs["reward_source"].startswith(
        "reward=success_at_end"
    )


def test_a_row_between_two_frames_is_refused(tmp_path):
    root = write_v3(tmp_path / "ds", "libx264")
    path = root / "data/chunk-000/file-001.parquet"
    table = pq.read_table(path)
    shifted = (table.column("timestamp").to_numpy() + 0.5 / FPS).astype(np.float32)
    pq.write_table(
        table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(shifted)), path
    )
    with pytest.raises(DataError, match="has no frame within 0.0001 s of time 0.050000 s"):
        load_source(str(root), progress=False)


def test_unknown_cameras_and_versions_are_refused(tmp_path):
    root = write_v3(tmp_path / "ds", "libx264")
    with pytest.raises(DataError, match="has no camera feature 'wrist'"):
        load_source(f"{root}?image_keys=wrist", progress=False)
    meta = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**meta, "codebase_version": "v1.6"}))
    with pytest.raises(DataError, match="codebase_version 'v1.6'"):
        load_source(str(root), progress=False)


def test_a_converted_lerobot_store_trains(tmp_path):
    from helpers import tiny_config

    from offline_chunk.train import train

    store = convert(str(write_v3(tmp_path / "ds", "libx264")), out=tmp_path / "store.zarr", progress=False)
    final = train(tiny_config("cpql", store, tmp_path / "run", "steps=3", "log_every=3", "batch_size=8"))
    assert final.exists()


def test_an_image_feature_is_decoded_from_the_parquet(tmp_path):
    """A camera of dtype `image` (older datasets): PNG bytes per row inside the parquet, as Hugging Face
    datasets' Image struct {bytes, path}; decoded losslessly, so each row's frame is exactly its own."""
    import io

    from PIL import Image

    root = write_v21(tmp_path / "ds", "libx264")
    meta = json.loads((root / "meta/info.json").read_text())
    meta["features"]["observation.images.wrist"] = {
        "dtype": "image", "shape": [3, 8, 6], "names": ["channels", "height", "width"]
    }  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    expected = []
    for e, path in enumerate(sorted((root / "data").rglob("*.parquet"))):
        table = pq.read_table(path)
        frames = rng.integers(0, 256, (LENGTHS[e], 8, 6, 3), dtype=np.uint8)
        expected.append(frames)
        encoded = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="PNG")
            encoded.append({"bytes": buffer.getvalue(), "path": None})
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        pq.write_table(table.append_column("observation.images.wrist", pa.array(encoded, image_type)), path)
    data = load_source(str(root), progress=False)
    assert list(data.images) == [CAMERA, "observation.images.wrist"]
    np.testing.assert_array_equal(data.images["observation.images.wrist"], np.concatenate(expected))
    check_frames(data.images[CAMERA], expected_levels("v2.1"))

"""Camera sources end to end (issue 17's check): each source format written at a stated size in its own
schema, converted with `make dataset`'s converter (wall time), then every agent trained a few hundred
updates on the store with small networks at batch 16 (updates/s, last critic loss, finite). Prints a
markdown table.

    python benchmarks/camera_sources.py --out /tmp/camera_sources [--updates 200] [--sources a,b]

Sources: robomimic image hdf5 (2 cameras, 84 px), diffusion_policy Push-T image zarr (96 px, float
frames), LeRobotDataset v3.0 (AV1 video, 96 px, 10 episodes per file; written with the test suite's
writer), OGBench visual scene (64 px frames rendered while its oracles play; needs a GL backend).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

EPISODES, LENGTH = 20, 150


def smooth_frames(rng, rows: int, side: int, channels: int = 3) -> np.ndarray:
    """Frames with structure a codec and an encoder can work with: a drifting gradient plus noise."""
    y, x = np.mgrid[0:side, 0:side] / side
    t = np.arange(rows)[:, None, None] / rows
    base = 127 + 100 * np.sin(2 * np.pi * (x + t)) * np.cos(2 * np.pi * y)
    noise = rng.integers(-10, 10, (rows, side, side))
    grey = np.clip(base + noise, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], channels, axis=-1)


def robomimic(root: Path) -> str:
    rng, path = np.random.default_rng(0), root / "lift_image.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for d in range(EPISODES):
            demo = data.create_group(f"demo_{d}")
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (LENGTH, 7)).astype(np.float32))
            demo.create_dataset("rewards", data=(np.arange(LENGTH) == LENGTH - 1).astype(np.float64))
            demo.create_dataset("dones", data=(np.arange(LENGTH) == LENGTH - 1).astype(np.int64))
            demo.create_dataset("obs/robot0_eef_pos", data=rng.normal(size=(LENGTH, 3)).astype(np.float32))
            for camera in ("agentview_image", "robot0_eye_in_hand_image"):
                demo.create_dataset(f"obs/{camera}", data=smooth_frames(rng, LENGTH, 84))
            demo.attrs["num_samples"] = LENGTH
    return f"{path}?obs_keys=robot0_eef_pos&image_keys=agentview_image,robot0_eye_in_hand_image"


def pusht(root: Path) -> str:
    rng, path = np.random.default_rng(1), root / "pusht_image.zarr"
    rows = EPISODES * LENGTH
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("data/img", data=smooth_frames(rng, rows, 96).astype(np.float32))
    group.create_array("data/state", data=rng.normal(size=(rows, 5)).astype(np.float32))
    group.create_array("data/action", data=rng.uniform(0, 512, (rows, 2)).astype(np.float32))
    group.create_array("meta/episode_ends", data=np.arange(LENGTH, rows + 1, LENGTH, dtype=np.int64))
    return f"{path}?obs_keys=state&image_keys=img&reward=success_at_end"


def lerobot(root: Path) -> str:
    """The test suite's v3.0 writer (tests/test_lerobot.py) at this size: 96 px AV1, EPISODES episodes of
    LENGTH frames, 10 episodes per data and video file. Its frames are uniform greys (cheaper to encode and
    decode than camera video)."""
    import test_lerobot as writer

    writer.SIDE, writer.LENGTHS = 96, [LENGTH] * EPISODES
    files = [tuple(range(first, first + 10)) for first in range(0, EPISODES, 10)]
    return str(writer.write_v3(root / "lerobot", "libsvtav1", files=files))


def ogbench_visual(root: Path) -> str:
    return "ogbench:visual-scene-play-singletask-task1-v0?episodes=2&steps=200&workers=2"


SOURCES = {"robomimic": robomimic, "pusht": pusht, "lerobot": lerobot, "ogbench_visual": ogbench_visual}


def train_one(agent: str, store: Path, run_dir: Path, updates: int) -> tuple[float, float]:
    """(updates/s, the mean critic loss of the last log interval) of `updates` updates with small networks."""
    from helpers import tiny_config

    from offline_chunk.train import train

    overrides = [
        f"steps={updates}",
        f"log_every={updates // 2}",
        "batch_size=16",
        "agent.vision.feature_dim=32",
    ]
    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        train(tiny_config(agent, store, run_dir, *overrides))
    seconds = time.perf_counter() - started
    loss = float(re.search(r"critic loss (\S+)", printed.getvalue()).group(1))
    return updates / seconds, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--agents", default="cpql,dql,chunk_sac,td3bc")
    args = parser.parse_args()
    from offline_chunk.data.sources import convert
    from offline_chunk.data.store import frame_bytes, open_store

    rows = ["| source | rows | cameras | frames MB | convert s | agent | updates | updates/s | critic loss |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in args.sources.split(","):
        root = args.out / name
        root.mkdir(parents=True, exist_ok=True)
        spec = SOURCES[name](root)
        started = time.perf_counter()
        store = convert(spec, out=root / "store.zarr", overwrite=True, progress=False)
        convert_s = time.perf_counter() - started
        data = open_store(store)
        cameras = ", ".join(f"{k} {v.shape[1]}x{v.shape[2]}" for k, v in data.images.items())
        for agent in args.agents.split(","):
            rate, loss = train_one(agent, store, root / f"run-{agent}", args.updates)
            finite = "" if math.isfinite(loss) else " NOT FINITE"
            megabytes = frame_bytes(store) / 2**20
            rows.append(
                f"| {name} | {data.num_rows:,} | {cameras} | {megabytes:,.0f} | {convert_s:.1f} | {agent} "
                f"| {args.updates} | {rate:.2f} | {loss:.4g}{finite} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""Camera frames in the store and in chunk items (docs/chunk_transitions.md, "Image observations"): uint8
(N, H, W, C) arrays listed in attrs["image_keys"], chunked by frames and compressed; items carry the frames
of the observation history rows as (To, C, H, W) uint8, checked against a plain reference loop."""

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.store import FRAMES_PER_CHUNK, StepData, open_store, write_store
from offline_chunk.errors import DataError


def camera_data(rng, lengths, obs_dim=3, cameras=(("front", (6, 5, 3)), ("wrist", (4, 4, 1)))) -> StepData:
    n = int(sum(lengths))
    return StepData(
        observations={"state": rng.normal(size=(n, obs_dim)).astype(np.float32)} if obs_dim else {},
        action=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        reward=rng.uniform(-1, 0, size=n).astype(np.float32),
        terminal=rng.random(n) < 0.1,
        episode_ends=np.cumsum(lengths),
        images={name: rng.integers(0, 256, size=(n, *shape), dtype=np.uint8) for name, shape in cameras},
    )


def test_frames_round_trip_chunked_by_frames_and_compressed(tmp_path):
    data = camera_data(np.random.default_rng(0), [300, 200])
    path = write_store(data, tmp_path / "cams.zarr")
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["image_keys"] == ["front", "wrist"] and group.attrs["obs_keys"] == ["state"]
    front = group["data/front"]
    assert front.chunks == (FRAMES_PER_CHUNK, 6, 5, 3) and front.dtype == np.uint8
    assert type(front.compressors[0]).__name__ == "BloscCodec"
    read = open_store(path)
    for camera, frames in data.images.items():
        np.testing.assert_array_equal(read.images[camera], frames)


def test_a_store_of_cameras_only_has_no_low_dimensional_keys(tmp_path):
    data = camera_data(np.random.default_rng(1), [10], obs_dim=0)
    read = open_store(write_store(data, tmp_path / "only.zarr"))
    assert read.observations == {} and read.obs.shape == (10, 0) and list(read.images) == ["front", "wrist"]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d.images.update(front=d.images["front"].astype(np.float32)),
            "dtype float32, expected uint8",
        ),
        (lambda d: d.images.update(front=d.images["front"][..., 0]), "rank 3.*expected \\(N, H, W, C\\)"),
        (lambda d: d.images.update(front=np.zeros((10, 6, 5, 4), np.uint8)), "has 4 channels"),
        (lambda d: d.images.update(wrist=d.images["wrist"][:9]), "has 9 rows but data/action has 10"),
    ],
)
def test_bad_frames_are_refused_naming_the_array(tmp_path, change, message):
    data = camera_data(np.random.default_rng(2), [10])
    change(data)
    with pytest.raises(DataError, match=message) as error:
        write_store(data, tmp_path / "bad.zarr")
    assert "data/front" in str(error.value) or "data/wrist" in str(error.value)


def test_a_listed_camera_missing_from_the_store_is_refused(tmp_path):
    path = write_store(camera_data(np.random.default_rng(3), [10]), tmp_path / "cams.zarr")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["image_keys"] = ["front", "wrist", "top"]
    with pytest.raises(DataError, match="required array is missing") as error:
        open_store(path)
    assert "data/top" in str(error.value)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    horizon=st.integers(1, 4),
    obs_horizon=st.integers(1, 3),
)
def test_item_frames_are_the_history_rows_of_the_observations(seed, lengths, horizon, obs_horizon):
    """For each chunk start t of episode [b, e): images are the frames of rows max(t - To + 1 + k, b), as
    (C, H, W); next_images those ending at the next row n; a plain loop over items computes them here."""
    data = camera_data(np.random.default_rng(seed), lengths)
    dataset = OfflineRLDataset(data, horizon, obs_horizon, gamma=0.9, drop_partial=False)
    index = dataset.index
    for i in range(len(dataset)):
        item = dataset[i]
        b, t, n = index.episode_begin[i], index.start[i], index.next_row[i]
        rows = [max(t - obs_horizon + 1 + k, b) for k in range(obs_horizon)]
        next_rows = [max(n - obs_horizon + 1 + k, b) for k in range(obs_horizon)]
        for camera, frames in data.images.items():
            assert item["images"][camera].dtype == torch.uint8
            assert torch.equal(item["images"][camera], torch.as_tensor(frames[rows].transpose(0, 3, 1, 2)))
            expected_next = torch.as_tensor(frames[next_rows].transpose(0, 3, 1, 2))
            assert torch.equal(item["next_images"][camera], expected_next)


def test_batches_carry_uint8_frames_when_asked():
    data = camera_data(np.random.default_rng(4), [20, 15])
    dataset = OfflineRLDataset(data, horizon=3, obs_horizon=2, gamma=0.9)
    batch = dataset.sampler(16, seed=0, images=True).sample()
    assert (
        batch["images"]["front"].shape == (16, 2, 3, 6, 5) and batch["images"]["wrist"].dtype == torch.uint8
    )
    assert "images" not in dataset.sampler(16, seed=0).sample()  # only when asked


def pusht_like_zarr(path, frames):
    """diffusion_policy's Push-T image layout: data/img float32 0..255 (N, H, W, 3), data/state, data/action,
    meta/episode_ends, no reward."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    n = len(frames)
    group.create_array("data/img", data=frames)
    group.create_array("data/state", data=np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32))
    group.create_array("data/action", data=np.zeros((n, 2), np.float32))
    group.create_array("meta/episode_ends", data=np.array([n // 2, n], np.int64))
    return path


def test_a_pusht_image_zarr_converts_its_float_frames_to_uint8(tmp_path):
    from offline_chunk.data.sources import convert

    frames = np.random.default_rng(6).integers(0, 256, size=(12, 8, 8, 3)).astype(np.float32)
    source = pusht_like_zarr(tmp_path / "pusht.zarr", frames)
    out = convert(
        f"{source}?obs_keys=state&image_keys=img&reward=zeros", out=tmp_path / "s.zarr", progress=False
    )
    data = open_store(out)
    assert data.images["img"].dtype == np.uint8 and list(data.observations) == ["state"]
    np.testing.assert_array_equal(data.images["img"], frames.astype(np.uint8))
    only = convert(
        f"{source}?obs_keys=none&image_keys=img&reward=zeros", out=tmp_path / "o.zarr", progress=False
    )
    assert open_store(only).observations == {}


def test_frames_that_are_not_whole_0_to_255_values_are_refused(tmp_path):
    from offline_chunk.data.sources import convert

    frames = np.zeros((12, 8, 8, 3), np.float32)
    frames[7, 0, 0, 0] = 0.5  # a normalised frame, not 0..255
    source = pusht_like_zarr(tmp_path / "pusht.zarr", frames)
    with pytest.raises(DataError, match="data/img.*row 7.*not a whole number in 0..255"):
        convert(
            f"{source}?image_keys=img&obs_keys=state&reward=zeros", out=tmp_path / "s.zarr", progress=False
        )
    assert not (tmp_path / "s.zarr").exists()


def robomimic_image_file(path, frame_dtype=np.uint8):
    """Two demos in robomimic's layout with a camera (T, 6, 6, 3) and one low-dimensional key."""
    import h5py

    rng = np.random.default_rng(7)
    frames = {}
    with h5py.File(path, "w") as f:
        for demo, length in (("demo_0", 4), ("demo_1", 3)):
            group = f.create_group(f"data/{demo}")
            frames[demo] = rng.integers(0, 256, size=(length, 6, 6, 3)).astype(frame_dtype)
            group.create_dataset("obs/agentview_image", data=frames[demo])
            group.create_dataset("obs/robot0_eef_pos", data=rng.normal(size=(length, 3)))
            group.create_dataset("actions", data=rng.uniform(-1, 1, size=(length, 2)))
            group.create_dataset("rewards", data=np.zeros(length))
            group.create_dataset("dones", data=np.eye(length, dtype=np.int64)[-1])
    return path, frames


def test_a_robomimic_image_file_converts_its_named_cameras(tmp_path):
    from offline_chunk.data.sources import convert

    source, frames = robomimic_image_file(tmp_path / "lift_image.hdf5")
    out = convert(f"{source}?image_keys=agentview_image", out=tmp_path / "s.zarr", progress=False)
    data = open_store(out)
    assert list(data.observations) == ["robot0_eef_pos"] and list(data.images) == ["agentview_image"]
    np.testing.assert_array_equal(
        data.images["agentview_image"], np.concatenate([frames["demo_0"], frames["demo_1"]])
    )
    only = convert(
        f"{source}?obs_keys=none&image_keys=agentview_image", out=tmp_path / "o.zarr", progress=False
    )
    assert open_store(only).observations == {}


def test_robomimic_cameras_that_are_not_uint8_are_refused(tmp_path):
    from offline_chunk.data.sources import convert

    source, _ = robomimic_image_file(tmp_path / "float.hdf5", frame_dtype=np.float32)
    with pytest.raises(DataError, match="data/demo_0/obs/agentview_image.*expected uint8"):
        convert(f"{source}?image_keys=agentview_image", out=tmp_path / "s.zarr", progress=False)

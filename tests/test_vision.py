"""Camera encoders and their augmentations (nets/vision.py), and agents that read cameras: values checked
against DrQ-v2's grid_sample formula, plain slicing, the spatial softmax's closed form and the published
layer sizes; the gradient routing of DrQ-v2; every agent trains and acts on camera frames."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from test_images import camera_data

from offline_chunk.agents import AGENTS
from offline_chunk.data.store import write_store
from offline_chunk.errors import ConfigError
from offline_chunk.nets.vision import (
    DrQEncoder,
    ImageEncoder,
    ResNet18Encoder,
    SpatialSoftmax,
    VisionConfig,
    random_crop,
    random_shift,
    window,
)


def drqv2_shift(frames: torch.Tensor, shift: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ-v2's RandomShiftsAug (drqv2.py) with given shifts (n, 2) in [0, 2 pad] (x, y) instead of random
    ones: replicate padding, then grid_sample on a grid of the padded frame's pixel centres."""
    n, _, h, w = frames.shape
    x = F.pad(frames, (pad,) * 4, "replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad, dtype=frames.dtype)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    grid = base_grid + shift.to(frames.dtype).view(n, 1, 1, 2) * 2.0 / (h + 2 * pad)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def test_the_shift_window_is_drqv2s_grid_sample_shift():
    """Every offset of ±pad on square frames; grid_sample samples exactly at pixel centres, so the two agree
    up to its interpolation weights' rounding (a few 1e-6 of a pixel value, whatever the CPU)."""
    pad, side = 2, 7
    frames = torch.randint(0, 256, (25, 1, 3, side, side), dtype=torch.uint8)
    offsets = torch.tensor(list(itertools.product(range(-pad, pad + 1), repeat=2)))  # (dy, dx) per sample
    ours = window(frames, offsets[:, 0], offsets[:, 1], side, side)[:, 0].float()
    reference = drqv2_shift(
        frames[:, 0].float(), (offsets.flip(1) + pad), pad
    )  # DrQ-v2: (x, y) in [0, 2 pad]
    assert ours.dtype == torch.float32 and frames.dtype == torch.uint8
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=0)


def test_random_shift_keeps_uint8_moves_all_history_frames_alike_and_stays_within_pad():
    pad = 1
    frames = torch.randint(0, 256, (64, 2, 3, 5, 6), dtype=torch.uint8)
    shifted = random_shift(frames, pad)
    assert shifted.dtype == torch.uint8 and shifted.shape == frames.shape
    padded = F.pad(frames.float().flatten(1, 2), (pad,) * 4, "replicate").view(64, 2, 3, 7, 8)
    for b in range(64):  # the one offset that explains sample b, the same for both history frames
        matches = [
            (dy, dx)
            for dy, dx in itertools.product(range(2 * pad + 1), repeat=2)
            if torch.equal(padded[b, :, :, dy : dy + 5, dx : dx + 6], shifted[b].float())
        ]
        assert matches, f"sample {b} is not a shift of at most {pad} pixels"
    assert not torch.equal(random_shift(frames, pad), shifted)  # s and s' draw apart (P(equal) = 9^-64)


def test_random_crop_is_a_window_of_the_frame_and_the_centre_when_acting():
    frames = torch.randint(0, 256, (32, 1, 3, 10, 10), dtype=torch.uint8)
    centre = random_crop(frames, 0.8, train=False)
    assert torch.equal(centre, frames[..., 1:9, 1:9])
    cropped = random_crop(frames, 0.8, train=True)
    for b in range(32):
        assert any(
            torch.equal(cropped[b], frames[b, ..., top : top + 8, left : left + 8])
            for top, left in itertools.product(range(3), repeat=2)
        )


def test_drq_encoder_has_drqv2s_representation_size_at_84_pixels():
    encoder = DrQEncoder(channels=9, height=84, width=84, feature_dim=50)
    assert encoder.trunk[0].in_features == 32 * 35 * 35  # drqv2.py Encoder.repr_dim
    features = encoder(torch.randint(0, 256, (2, 9, 84, 84), dtype=torch.uint8))
    assert features.shape == (2, 50) and features.abs().max() <= 1  # LayerNorm then Tanh
    with pytest.raises(ValueError, match="at least 15 x 15"):
        DrQEncoder(3, 14, 40, 8)


def test_spatial_softmax_gives_the_expected_coordinates_of_a_peaked_map():
    """A map with one pixel 50 above the rest has its softmax within e^-50 of one-hot at that pixel, so the
    keypoint is that pixel's (x, y) on the linspace(-1, 1) grid."""
    pool = SpatialSoftmax(channels=2, height=5, width=4, keypoints=2)
    with torch.no_grad():
        pool.keypoint_maps.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        pool.keypoint_maps.bias.zero_()
    features = torch.zeros(1, 2, 5, 4)
    features[0, 0, 1, 3] = 50.0  # row 1 of 5, column 3 of 4
    features[0, 1, 4, 0] = 50.0
    keypoints = pool(features)
    expected = torch.tensor([[1.0, -0.5, -1.0, 1.0]])  # x = linspace(-1,1,4)[3], y = linspace(-1,1,5)[1], ...
    torch.testing.assert_close(keypoints, expected, atol=1e-12 + 20 * np.exp(-50), rtol=0)


def torchvision_resnet18_keys() -> set[str]:
    """The trunk keys of torchvision's resnet18 state dict, written out from its architecture."""
    keys = {"conv1.weight", "bn1.weight", "bn1.bias"}
    for level, block in itertools.product(range(1, 5), range(2)):
        prefix = f"layer{level}.{block}"
        keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
        keys |= {f"{prefix}.bn{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
        if level > 1 and block == 0:
            keys |= {
                f"{prefix}.downsample.0.weight",
                f"{prefix}.downsample.1.weight",
                f"{prefix}.downsample.1.bias",
            }
    return keys


def test_resnet18_is_named_as_torchvisions_and_loads_its_weights(tmp_path):
    encoder = ResNet18Encoder(3, 84, 84, feature_dim=64)
    trunk = {k for k in encoder.state_dict() if k.startswith(("conv1", "bn1", "layer"))}
    assert trunk == torchvision_resnet18_keys()
    assert encoder.layer4[0].downsample[0].weight.shape == (512, 256, 1, 1)
    assert encoder.layer1[0].bn1.num_groups == 4 and encoder.layer4[1].bn2.num_groups == 32  # channels // 16
    assert encoder.pool.positions.shape == (3 * 3, 2)  # 84 -> 42 -> 21 -> 11 -> 6 -> 3
    # A torchvision-format file: BatchNorm statistics and fc beside the trunk's weights.
    saved = {k: torch.randn_like(v) for k, v in encoder.state_dict().items() if k in trunk}
    for name in ("bn1", "layer1.0.bn1"):
        saved |= {f"{name}.running_mean": torch.zeros(1), f"{name}.num_batches_tracked": torch.tensor(0)}
    saved |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(saved, tmp_path / "resnet18.pth")
    loaded = ResNet18Encoder(3, 84, 84, 64, pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(loaded.layer3[1].conv2.weight, saved["layer3.1.conv2.weight"])
    assert torch.equal(loaded.bn1.bias, saved["bn1.bias"])
    assert loaded(torch.zeros(2, 3, 84, 84, dtype=torch.uint8)).shape == (2, 64)
    torch.save({"conv1.weight": saved["conv1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a torchvision resnet18 state dict"):
        ResNet18Encoder(3, 84, 84, 64, pretrained=str(tmp_path / "partial.pth"))


def test_image_encoder_concatenates_each_cameras_features_per_history_row():
    shapes = {"observation.images.top": [16, 16, 3], "wrist": [15, 17, 1]}
    encoder = ImageEncoder(shapes, VisionConfig(feature_dim=5, augment="none"))
    images = {
        "observation.images.top": torch.randint(0, 256, (4, 2, 3, 16, 16), dtype=torch.uint8),
        "wrist": torch.randint(0, 256, (4, 2, 1, 15, 17), dtype=torch.uint8),
    }
    features = encoder(images)
    assert features.shape == (4, 2, 10) and encoder.feature_dim == 10
    # Row (b, t)'s first five features are the top camera's frame (b, t) through its own network.
    alone = encoder.nets["observation_images_top"](images["observation.images.top"][1, 0][None])
    torch.testing.assert_close(features[1, 0, :5], alone[0])


CAMERAS = (("front", (16, 16, 3)), ("wrist", (15, 17, 1)))


@pytest.fixture(scope="module")
def camera_store(tmp_path_factory):
    data = camera_data(np.random.default_rng(0), [30, 25], cameras=CAMERAS)
    return write_store(data, tmp_path_factory.mktemp("cams") / "cams.zarr")


def frames_of(batch_size: int):
    return {name: np.full((batch_size, 1, *shape), 128, np.uint8) for name, shape in CAMERAS}


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_trains_on_cameras_and_acts_on_uint8_frames(name, camera_store, tmp_path):
    from offline_chunk import load_agent
    from offline_chunk.train import train

    cfg = tiny_config(
        name, camera_store, tmp_path / "run", "steps=6", "log_every=3", "agent.vision.feature_dim=8"
    )
    final = train(cfg)
    agent = load_agent(final)
    assert agent.encoder is not None and agent.encoder.cameras == ["front", "wrist"]
    chunks = agent.act(np.zeros((3, 1, 3), np.float32), images=frames_of(3))
    assert chunks.shape == (3, 2, 2) and np.isfinite(chunks).all()
    single = agent.act(np.zeros((1, 3), np.float32), images={k: v[0] for k, v in frames_of(1).items()})
    assert single.shape == (2, 2)
    q = agent.q_value(np.zeros((3, 1, 3), np.float32), chunks, images=frames_of(3))
    assert q.shape == (3,) and np.isfinite(q).all()
    with pytest.raises(ValueError, match="images= lacks \\['front', 'wrist'\\]"):
        agent.act(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="expected uint8 frames"):
        agent.act(
            np.zeros((1, 1, 3), np.float32), images={k: v.astype(np.float32) for k, v in frames_of(1).items()}
        )


def test_the_critic_loss_trains_the_encoder_and_the_actor_reads_it_detached(camera_store, tmp_path):
    """DrQ-v2's routing (drqv2.py update): the encoder moves with the critic step; the actor step gets the
    same features without a graph to the encoder."""
    from offline_chunk.train import build_run

    run = build_run(tiny_config("cpql", camera_store, tmp_path / "run", "agent.vision.feature_dim=8"))
    agent, batch = run.agent, run.sampler.sample()
    before = [p.detach().clone() for p in agent.encoder.parameters()]
    seen = {}
    original = agent.actor_objective

    def spy(obs, actions, mask):
        seen["obs"] = obs
        return original(obs, actions, mask)

    agent.actor_objective = spy
    agent.update(batch)
    assert not seen["obs"].requires_grad and seen["obs"].grad_fn is None
    assert seen["obs"].shape[-1] == 3 + 2 * 8  # D low-dimensional values, then 8 features per camera
    assert any(not torch.equal(b, p) for b, p in zip(before, agent.encoder.parameters(), strict=True))
    assert "encoder_opt" in agent.optimizers and len(agent.schedulers) == 3


def test_a_camera_only_store_trains(tmp_path):
    from offline_chunk.train import train

    data = camera_data(np.random.default_rng(5), [20], obs_dim=0, cameras=CAMERAS[:1])
    store = write_store(data, tmp_path / "only.zarr")
    final = train(tiny_config("td3bc", store, tmp_path / "run", "steps=3", "log_every=3"))
    assert final.exists()


def test_resuming_on_a_store_with_other_cameras_is_refused(camera_store, tmp_path):
    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.train import build_run, train

    final = train(tiny_config("td3bc", camera_store, tmp_path / "run", "steps=2", "log_every=2"))
    other = write_store(
        camera_data(np.random.default_rng(1), [30], cameras=(("front", (20, 20, 3)),)),
        tmp_path / "other.zarr",
    )
    cfg = tiny_config("td3bc", other, tmp_path / "run2", "steps=4")
    with pytest.raises(ConfigError, match="cameras"):
        build_run(cfg, resume=read_checkpoint(final))


def test_q_on_demos_reads_the_frames_of_a_camera_store(camera_store, tmp_path):
    """Q along the recorded episodes equals the agent's q_value on each item's frames (a plain loop)."""
    from einops import rearrange

    from offline_chunk import load_agent
    from offline_chunk.data.dataset import OfflineRLDataset
    from offline_chunk.harness.q_analysis import q_on_demos
    from offline_chunk.train import train

    agent = load_agent(train(tiny_config("td3bc", camera_store, tmp_path / "run", "steps=2", "log_every=2")))
    result = q_on_demos(agent, camera_store, gamma=0.9, episodes=[0], batch_size=7)
    dataset = OfflineRLDataset(camera_store, horizon=2, obs_horizon=1, gamma=0.9, drop_partial=False)
    for position, row in enumerate(result.row[:5]):
        item = dataset[int(np.flatnonzero(dataset.index.start == row)[0])]
        images = {k: rearrange(v, "t c h w -> 1 t h w c") for k, v in item["images"].items()}
        q = agent.q_value(item["observations"][None], item["actions"][None], images=images)
        torch.testing.assert_close(torch.as_tensor(result.q[position], dtype=q.dtype), q[0])


def test_evaluating_a_camera_agent_where_the_environment_observes_states_is_refused(tmp_path):
    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.harness.evaluation.settings import eval_settings
    from offline_chunk.train import train

    data = camera_data(np.random.default_rng(0), [30, 25], cameras=CAMERAS)
    data.attrs["env_id"] = "scene-singletask-task2-v0"
    store = write_store(data, tmp_path / "cams.zarr")
    final = train(tiny_config("td3bc", store, tmp_path / "run", "steps=1", "log_every=1"))
    with pytest.raises(ConfigError, match="reads cameras \\['front', 'wrist'\\] and 3 state values.*visual-"):
        eval_settings(read_checkpoint(final), final, 2, None, 1, 0, None, None)


def test_the_q_on_demos_notebook_opens_a_camera_store(camera_store, tmp_path, monkeypatch):
    """The notebook on a camera agent: no errors, and the frame strips of both cameras beside the plots."""
    from test_q_analysis import executed_notebook

    from offline_chunk.train import train

    final = train(tiny_config("td3bc", camera_store, tmp_path / "run", "steps=2", "log_every=2"))
    nb = executed_notebook(final, camera_store, tmp_path, monkeypatch)
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    strips = [cell for cell in nb.cells if cell.cell_type == "code" and "demos.images.items()" in cell.source]
    assert len([o for o in strips[0].outputs if "image/png" in o.get("data", {})]) == 2  # front and wrist

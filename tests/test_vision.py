"""Camera encoders and their augmentations (nets/vision.py), and agents that read cameras: values checked
against DrQ-v2's grid_sample formula, plain slicing, the spatial softmax's closed form, a float64 conv net and
trunk written out by hand and the published layer sizes; the gradient routing of DrQ-v2; every agent trains
and acts on camera frames; checkpoints of the shared-trunk layout load."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from helpers import tiny_config
from test_images import camera_data
from torch import nn

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
    encoder = DrQEncoder(channels=9, height=84, width=84)
    features = encoder(torch.randint(0, 256, (2, 9, 84, 84), dtype=torch.uint8))
    assert encoder.repr_dim == 32 * 35 * 35  # drqv2.py Encoder.repr_dim
    assert features.shape == (2, encoder.repr_dim)
    with pytest.raises(ValueError, match="at least 15 x 15"):
        DrQEncoder(3, 14, 40)


def drqv2_features(conv_net: nn.Sequential, trunk: nn.Sequential, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, feature_dim) in float64, DrQ-v2's Encoder and trunk written out with the
    modules' weights: four 3x3 convolutions (stride 2, then 1) with ReLU on frames / 255 − 0.5, flattened
    channel-major (drqv2.py `h.view(h.shape[0], -1)`), then x Wᵀ + b, LayerNorm by its formula (biased
    variance), tanh."""
    convolutions = [layer for layer in conv_net if isinstance(layer, nn.Conv2d)]
    x = frames.double() / 255.0 - 0.5
    for index, conv in enumerate(convolutions):
        x = F.conv2d(x, conv.weight.double(), conv.bias.double(), stride=2 if index == 0 else 1).clamp(min=0)
    linear, norm = trunk[0], trunk[1]
    z = x.flatten(1) @ linear.weight.double().T + linear.bias.double()
    mean, variance = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
    normalized = (z - mean) / torch.sqrt(variance + norm.eps)
    return torch.tanh(normalized * norm.weight.double() + norm.bias.double())


def test_drq_rows_are_drqv2s_conv_net_and_trunk_computed_by_hand():
    """A network's observation rows from two cameras (ImageEncoder, then that network's CameraTrunks) against
    the float64 computation written out above, the low-dimensional values passed through. The float32 path
    differs from it by its roundings only: sums of at most 288 products (the 3 x 3 x 32 convolutions) err by
    about √n·u ≈ 1e-6 of their magnitude (u = 2^-24; rounding errors add like a random walk whatever order a
    CPU's kernel sums in), through four convolutions, the Linear and the LayerNorm; over 200 draws of
    weights and frames the largest difference was 2.5e-6 of the outputs' range [-1, 1], so 1e-5 holds."""
    torch.manual_seed(0)
    shapes = {"front": [17, 17, 3], "wrist": [15, 16, 1]}  # conv features: 32 x 2 x 2 and 32 x 1 x 1
    encoder = ImageEncoder(shapes, VisionConfig(feature_dim=6, augment="none"))
    trunks = encoder.trunks(obs_dim=2)
    with torch.no_grad():  # LayerNorm's affine parameters away from their initial 1 and 0
        for trunk in trunks.nets.values():
            trunk[1].weight.uniform_(0.5, 1.5)
            trunk[1].bias.uniform_(-0.5, 0.5)
    images = {
        name: torch.randint(0, 256, (3, 2, channels, height, width), dtype=torch.uint8)
        for name, (height, width, channels) in shapes.items()
    }
    low_dim = torch.randn(3, 2, 2)
    conv_features = encoder(images)
    assert conv_features.shape == (3, 2, 32 * 4 + 32)
    with torch.no_grad():
        rows = trunks(torch.cat([low_dim, conv_features], dim=-1))
    expected = [low_dim.double()]
    for name in shapes:
        flat = rearrange(images[name], "b t c h w -> (b t) c h w")
        features = drqv2_features(encoder.nets[name].convnet, trunks.nets[name], flat)
        expected.append(rearrange(features, "(b t) f -> b t f", t=2))
    assert rows.shape == (3, 2, 2 + 2 * 6)
    torch.testing.assert_close(rows.double(), torch.cat(expected, dim=-1), rtol=0, atol=1e-5)


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
    # drq: each camera's conv features (32 x 1 x 1 and 32 x 1 x 2), which each network's trunks take to 5.
    assert features.shape == (4, 2, 32 + 64) and encoder.feature_dim == 10
    # Row (b, t)'s first 32 features are the top camera's frame (b, t) through its own network.
    alone = encoder.nets["observation_images_top"](images["observation.images.top"][1, 0][None])
    torch.testing.assert_close(features[1, 0, :32], alone[0])


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


def test_each_network_trains_its_own_trunks_and_the_critic_loss_the_conv_nets(camera_store, tmp_path):
    """DrQ-v2's routing (drqv2.py `update_critic`, `update_actor`): the critic step moves the conv nets, the
    critics and the critics' trunks, and not the actor's; the actor step, reading the conv features
    detached, moves the actor and its trunks and nothing of the encoder or the critics. Then the target
    critics' trunks take one Polyak step towards the critics' and the EMA actor's one EMA step towards the
    actor's, each from its own copy."""
    from offline_chunk.train import build_run

    every_update = ["agent.target_start=0", "agent.ema_start=0", "agent.ema_every=1"]
    cfg = tiny_config("cpql", camera_store, tmp_path / "run", "agent.vision.feature_dim=8", *every_update)
    run = build_run(cfg)
    agent, batch = run.agent, run.sampler.sample()
    parts = {
        "conv nets": agent.encoder,
        "actor": agent.actor.net,
        "actor trunks": agent.actor.trunks,
        "critics": agent.critic.net,
        "critic trunks": agent.critic.trunks,
        "EMA actor trunks": agent.actor_ema.trunks,
        "target critic trunks": agent.critic_target.trunks,
    }

    def snapshot():
        return {name: [p.detach().clone() for p in part.parameters()] for name, part in parts.items()}

    def moved(before):
        return {
            name
            for name, part in parts.items()
            if any(not torch.equal(b, p) for b, p in zip(before[name], part.parameters(), strict=True))
        }

    seen, original = {}, agent.actor_objective

    def spy(obs, actions, mask):
        seen["obs"] = obs
        return original(obs, actions, mask)

    agent.actor_objective = spy
    start = snapshot()
    obs, actions, next_obs = agent.normalized(batch)
    agent.update_critic(obs, actions, next_obs, batch)
    assert moved(start) == {"conv nets", "critics", "critic trunks"}
    after_critic = snapshot()
    agent.update_actor(obs, actions, batch["action_mask"])
    assert moved(after_critic) == {"actor", "actor trunks"}
    trunks_now = agent.actor.trunks.parameters()  # every tensor of them
    assert not any(torch.equal(b, p) for b, p in zip(after_critic["actor trunks"], trunks_now, strict=True))
    assert not seen["obs"].requires_grad and seen["obs"].grad_fn is None
    assert seen["obs"].shape[-1] == 3 + 32 + 64  # D low-dimensional values, then each camera's conv features
    agent.finish_update()
    tau, ema = agent.cfg.tau, 1.0 - agent.cfg.ema_decay
    pairs = (
        ("target critic trunks", agent.critic_target.trunks, agent.critic.trunks, tau),
        ("EMA actor trunks", agent.actor_ema.trunks, agent.actor.trunks, ema),
    )
    for name, copy, online, weight in pairs:
        for old, new, towards in zip(start[name], copy.parameters(), online.parameters(), strict=True):
            torch.testing.assert_close(new, old + weight * (towards.detach() - old))
    assert "encoder_opt" in agent.optimizers and len(agent.schedulers) == 3


TRUNK_PARAMS = ("0.weight", "0.bias", "1.weight", "1.bias")  # a drq trunk's Linear and LayerNorm


def shared_trunk_layout(payload: dict, agent) -> dict:
    """`payload` as agents wrote it while each camera's drq trunk sat in the shared encoder (taking the
    critics' trunks as that one): `encoder.nets.<camera>.trunk.*` right after the camera's conv net
    (`convnet.6.bias`), every other network's weights without `net.` and without trunks, and the Adam states
    of then: the encoder's over each camera's 8 conv parameters and 4 trunk parameters, the actor's and the
    critics' over their networks alone."""
    weights, training = payload["weights"], payload["training"]
    old_weights = {}
    for key, value in weights.items():
        head, _, rest = key.partition(".")
        if rest.startswith("trunks."):
            continue
        old_weights[f"{head}.{rest.removeprefix('net.')}"] = value
        if key.startswith("encoder.nets.") and key.endswith(".convnet.6.bias"):
            camera = key.split(".")[2]
            for param in TRUNK_PARAMS:
                shared = weights[f"critic.trunks.nets.{camera}.{param}"]
                old_weights[f"encoder.nets.{camera}.trunk.{param}"] = shared
    actor_count = len(list(agent.actor.net.parameters()))
    critic_count = len(list(agent.critic.net.parameters()))
    encoder_states, critic_states = training["encoder_opt"]["state"], training["critic_opt"]["state"]
    old_encoder_states = []
    for camera in range(len(agent.encoder.cameras)):
        old_encoder_states += [encoder_states[8 * camera + i] for i in range(8)]
        old_encoder_states += [critic_states[critic_count + 4 * camera + i] for i in range(4)]

    def first(optimizer_state: dict, count: int) -> dict:
        group = {**optimizer_state["param_groups"][0], "params": list(range(count))}
        return {"state": {i: optimizer_state["state"][i] for i in range(count)}, "param_groups": [group]}

    encoder_params = list(range(len(old_encoder_states)))
    encoder_group = {**training["encoder_opt"]["param_groups"][0], "params": encoder_params}
    old_training = {
        **training,
        "actor_opt": first(training["actor_opt"], actor_count),
        "critic_opt": first(training["critic_opt"], critic_count),
        "encoder_opt": {"state": dict(enumerate(old_encoder_states)), "param_groups": [encoder_group]},
    }
    return {**payload, "weights": old_weights, "training": old_training}


@pytest.mark.parametrize("name", ["cpql", "td3bc"])  # with an EMA actor; with a target actor
def test_a_checkpoint_of_the_shared_trunk_layout_loads_acts_and_trains(name, camera_store, tmp_path):
    """Every network that reads observation rows gets the old shared trunks as its own, so the agent values
    and acts as it did; the critics' Adam takes over the trunks' moments, the actor's trunks start without;
    training resumes from it."""
    from offline_chunk import load_agent
    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.train import build_run, train

    final = train(tiny_config(name, camera_store, tmp_path / "run", "steps=3", "agent.vision.feature_dim=8"))
    agent = load_agent(final)
    payload = torch.load(final, weights_only=True)
    old = shared_trunk_layout(payload, agent)
    assert "encoder.nets.front.trunk.0.weight" in old["weights"]
    assert not any(".trunks." in key for key in old["weights"])
    torch.save(old, tmp_path / "shared.pt")
    upgraded = load_agent(tmp_path / "shared.pt")

    shared = agent.critic.trunks.state_dict()
    readers = [upgraded.actor, upgraded.critic, upgraded.critic_target]
    readers.append(upgraded.actor_ema if name == "cpql" else upgraded.actor_target)
    for reader in readers:
        for key, value in reader.trunks.state_dict().items():
            assert torch.equal(value, shared[key]), key
    obs, chunks = np.zeros((3, 1, 3), np.float32), np.zeros((3, 2, 2), np.float32)
    q = upgraded.q_value(obs, chunks, images=frames_of(3), reduce="none")
    np.testing.assert_array_equal(q, agent.q_value(obs, chunks, images=frames_of(3), reduce="none"))
    agent.actor.trunks.load_state_dict(shared)  # what the old agent's actor read: the shared trunks
    torch.manual_seed(1)
    expected = agent.act(obs, images=frames_of(3))
    torch.manual_seed(1)
    np.testing.assert_array_equal(upgraded.act(obs, images=frames_of(3)), expected)

    critic_trunk_params = list(upgraded.critic.trunks.parameters())
    old_states = old["training"]["encoder_opt"]["state"]
    trunk_ids = [12 * camera + 8 + i for camera in range(2) for i in range(4)]
    for param, old_id in zip(critic_trunk_params, trunk_ids, strict=True):
        assert torch.equal(upgraded.critic_opt.state[param]["exp_avg"], old_states[old_id]["exp_avg"])
    assert not any(param in upgraded.actor_opt.state for param in upgraded.actor.trunks.parameters())

    resumed = read_checkpoint(tmp_path / "shared.pt")
    run = build_run(resumed["config"], resume=resumed)
    metrics = run.agent.update(run.sampler.sample())
    assert torch.isfinite(metrics["critic/loss"])


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

"""Camera encoders: per camera a convolutional network from uint8 frames to a feature vector, and the
augmentations applied to the frames on the device before it.

Every history row's frame is encoded on its own, so a history of To rows gives To features per camera,
concatenated with that row's low-dimensional observation (diffusion_policy encodes each of its To frames the
same way). The networks downstream take the result as their observation rows: (B, To, D + F).

Two encoders (`vision.encoder`):
- `drq`: DrQ-v2's (Yarats et al. 2021; github facebookresearch/drqv2, drqv2.py `Encoder`, `Actor.trunk`,
  `Critic.trunk`): conv 3x3 stride 2 then three conv 3x3 stride 1, 32 channels, ReLU, on frames / 255 − 0.5,
  shared by all networks; then each network's own trunk, Linear -> LayerNorm -> Tanh, from the conv
  features to `feature_dim` (CameraTrunks). For frames of up to about 96 px.
- `resnet18`: diffusion_policy's image encoder (robomimic's VisualCore): a ResNet-18 trunk (He et al. 2016)
  with every BatchNorm replaced by GroupNorm(channels // 16) (diffusion_policy `replace_bn_with_gn`), a
  spatial softmax of 32 keypoints (Levine et al. 2016; robomimic models/base_nets.py `SpatialSoftmax`,
  temperature 1, not learned) and a Linear to the feature, all of it shared. Its parameters are named as
  torchvision's `resnet18`, so ImageNet weights saved from torchvision load from a local file
  (`vision.pretrained`); torchvision itself is not a dependency: its PyPI wheel is built against the CUDA
  torch and does not import beside the CPU build.

Gradients, as DrQ-v2 (drqv2.py `update_critic`, `update_actor`): the shared encoder is trained by the critic
loss (its optimizer steps with the critics'), and the actor reads its features detached. With `drq` the
actor's trunk is the actor's (trained by the actor loss, copied into the EMA or target actor) and the
critics' trunk is the critics' (one for the ensemble, as DrQ-v2's Q1 and Q2 share theirs; trained by the
critic loss, Polyak-copied into the target critics). `resnet18` keeps its final Linear in the shared
encoder, as robomimic's VisualCore holds it: a per-network Linear on the 64 keypoint coordinates would be
followed directly by each network's own input layer, and two linear maps in a row are one; DrQ-v2's trunk
is a network of its own only through its LayerNorm and Tanh, which robomimic's encoder does not have.

Augmentation (`vision.augment`), in training only, drawn independently for s and s' and once per sample
for all its history frames of a camera:
- `shift`: DrQ-v2's random shift, ±`shift_pad` pixels with the border replicated (drqv2.py
  `RandomShiftsAug`: replicate padding, then an integer-offset crop, written here as a gather of clamped
  rows and columns, on the uint8 frames);
- `crop`: diffusion_policy's random crop to `crop_fraction` of the side, the centre crop when acting;
- `none`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field
from torch import nn
from torch.func import functional_call

from offline_chunk.sections import Section

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights expect this normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisionConfig(Section):
    """The camera encoders (used when the store has cameras): one per camera, shared by the networks and
    trained by the critic loss; with `drq`, each network has its own trunk after it (DrQ-v2's routing; see
    ImageEncoder)."""

    encoder: Literal["drq", "resnet18"] = "drq"
    """drq: DrQ-v2's 4-layer conv net (<= 96 px) | resnet18: GroupNorm ResNet-18 + spatial softmax"""
    feature_dim: int = Field(64, ge=1)
    """features per camera and frame (DrQ-v2: 50; robomimic VisualCore: 64)"""
    augment: Literal["shift", "crop", "none"] = "shift"
    """shift: DrQ-v2 | crop: diffusion_policy (centre crop when acting) | none"""
    shift_pad: int = Field(4, ge=0)
    """shift: largest offset in pixels (DrQ-v2: 4 at 84 px)"""
    crop_fraction: float = Field(0.9, gt=0, le=1)
    """crop: the crop's side over the frame's (diffusion_policy: 76 of 84 px)"""
    pretrained: str | None = None
    """resnet18 only: a local torchvision resnet18 state dict (.pt/.pth) to start from"""


# ---------------------------------------------------------------------- augmentation


def window(frames: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int):
    """frames (B, To, C, H, W); per-sample window corners top, left (B,) -> (B, To, C, height, width).

    Rows and columns outside the frame are clamped to its border (replicate padding). Gathers only: the
    frames keep their dtype (uint8) and nothing is read back to the host."""
    b, _, _, h, w = frames.shape
    rows = (top[:, None] + torch.arange(height, device=frames.device)).clamp(0, h - 1)  # (B, height)
    cols = (left[:, None] + torch.arange(width, device=frames.device)).clamp(0, w - 1)  # (B, width)
    samples = torch.arange(b, device=frames.device)[:, None, None]
    rows_last = rearrange(frames, "b t c h w -> b h w t c")[samples, rows[:, :, None], cols[:, None, :]]
    return rearrange(rows_last, "b h w t c -> b t c h w")


def random_shift(frames: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ-v2's random shift: each sample moved by integer offsets in [−pad, pad], the border replicated."""
    b, _, _, h, w = frames.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), device=frames.device) - pad
    return window(frames, offsets[0], offsets[1], h, w)


def crop_size(height: int, width: int, fraction: float) -> tuple[int, int]:
    return max(1, round(height * fraction)), max(1, round(width * fraction))


def random_crop(frames: torch.Tensor, fraction: float, train: bool) -> torch.Tensor:
    """diffusion_policy's crop randomizer: a random window of `fraction` of each side (training), the centre
    one (acting)."""
    b, _, _, h, w = frames.shape
    ch, cw = crop_size(h, w, fraction)
    if train:
        top = torch.randint(0, h - ch + 1, (b,), device=frames.device)
        left = torch.randint(0, w - cw + 1, (b,), device=frames.device)
    else:
        top = torch.full((b,), (h - ch) // 2, device=frames.device)
        left = torch.full((b,), (w - cw) // 2, device=frames.device)
    return window(frames, top, left, ch, cw)


# ---------------------------------------------------------------------- DrQ-v2's encoder


class DrQEncoder(nn.Module):
    """uint8 (N, C, H, W) -> (N, repr_dim): DrQ-v2's conv net (drqv2.py `Encoder`, repr_dim = 32 h w),
    orthogonal init (drqv2 utils.weight_init: gain √2, biases 0)."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        out_h, out_w = (height - 3) // 2 + 1 - 6, (width - 3) // 2 + 1 - 6  # stride 2, then 3 x (3 - 1)
        if min(out_h, out_w) < 1:
            raise ValueError(
                f"the drq encoder needs frames of at least 15 x 15 pixels, gets {height} x {width} "
                "(after any crop)"
            )
        layers = [nn.Conv2d(channels, 32, 3, stride=2), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Conv2d(32, 32, 3, stride=1), nn.ReLU()]
        self.convnet = nn.Sequential(*layers, nn.Flatten())
        self.repr_dim = 32 * out_h * out_w
        for module in self.convnet:
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
                nn.init.zeros_(module.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.convnet(frames.float() / 255.0 - 0.5)


def drq_trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    """DrQ-v2's trunk (drqv2.py `Actor.trunk`, `Critic.trunk`): Linear -> LayerNorm -> Tanh, the Linear
    orthogonal with gain 1 and bias 0 (utils.weight_init)."""
    linear = nn.Linear(repr_dim, feature_dim)
    nn.init.orthogonal_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(linear, nn.LayerNorm(feature_dim), nn.Tanh())


class CameraTrunks(nn.Module):
    """One network's trunks, one per camera (`drq_trunk`): observation rows (..., D + Σ repr_dim), D
    low-dimensional values and then each camera's conv features in ImageEncoder's order -> the rows the
    network is built for, (..., D + cameras x feature_dim). The D values pass unchanged."""

    def __init__(self, obs_dim: int, repr_dims: dict[str, int], feature_dim: int):
        super().__init__()
        self.widths = [obs_dim, *repr_dims.values()]
        self.nets = nn.ModuleDict({name: drq_trunk(width, feature_dim) for name, width in repr_dims.items()})

    def forward(self, rows: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """detach_params: gradients reach the rows only (the critics' trunk inside an actor's Q term)."""
        if detach_params:
            return functional_call(self, {name: p.detach() for name, p in self.named_parameters()}, (rows,))
        low_dim, *cameras = rows.split(self.widths, dim=-1)
        features = [net(conv) for net, conv in zip(self.nets.values(), cameras, strict=True)]
        return torch.cat([low_dim, *features], dim=-1)


class TrunkedPolicy(nn.Module):
    """A chunk policy behind its own camera trunks (DrQ-v2's `Actor.trunk`): the policy's API (forward,
    sample, sample_candidates, bc_loss) on the agent's observation rows of conv features. A copy of it (the
    EMA or target actor) carries a copy of the trunks, averaged with the rest of its parameters."""

    def __init__(self, net: nn.Module, trunks: CameraTrunks):
        super().__init__()
        self.net, self.trunks = net, trunks

    def forward(self, obs: torch.Tensor, *args, **kwargs):
        return self.net(self.trunks(obs), *args, **kwargs)

    def sample(self, obs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.net.sample(self.trunks(obs), *args, **kwargs)

    def sample_candidates(self, obs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.net.sample_candidates(self.trunks(obs), *args, **kwargs)

    def bc_loss(self, obs, actions, action_mask=None, target: TrunkedPolicy | None = None, **kwargs):
        """The policy's loss on this actor's trunk rows. A `target` (CPQL's consistency target, the EMA
        actor) is its policy on those same rows: the target network of the chunk generator, on the
        observation features the online actor has learnt."""
        if target is not None:
            kwargs["target"] = target.net
        return self.net.bc_loss(self.trunks(obs), actions, action_mask, **kwargs)


class TrunkedCritic(nn.Module):
    """The critic ensemble behind its own camera trunks (DrQ-v2's `Critic.trunk`: one for all members, as
    its Q1 and Q2 share theirs): forward(obs, chunk, detach_params) as the ensemble's, on the agent's
    observation rows of conv features. The target critics are a copy of it, trunks included, and move with
    it by the same Polyak step."""

    def __init__(self, net: nn.Module, trunks: CameraTrunks):
        super().__init__()
        self.net, self.trunks = net, trunks

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        return self.net(self.trunks(obs, detach_params), chunk, detach_params=detach_params)


# ---------------------------------------------------------------------- diffusion_policy's ResNet-18


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // 16, channels)


class BasicBlock(nn.Module):
    """ResNet's two-convolution residual block, torchvision's parameter names, GroupNorm for BatchNorm."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, padding=1, bias=False)
        self.bn1 = group_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, padding=1, bias=False)
        self.bn2 = group_norm(channels_out)
        self.downsample = None
        if stride != 1 or channels_in != channels_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), group_norm(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class SpatialSoftmax(nn.Module):
    """(N, C, h, w) -> (N, 2K): a 1x1 convolution to K keypoint maps, a softmax over each map's pixels, and
    each map's expected (x, y) in [−1, 1]² (robomimic's SpatialSoftmax, temperature 1)."""

    def __init__(self, channels: int, height: int, width: int, keypoints: int = 32):
        super().__init__()
        self.keypoint_maps = nn.Conv2d(channels, keypoints, 1)
        pos_y, pos_x = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        self.register_buffer("positions", torch.stack([pos_x.flatten(), pos_y.flatten()], dim=-1))  # (hw, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        attention = torch.softmax(self.keypoint_maps(features).flatten(2), dim=-1)  # (N, K, hw)
        return (attention @ self.positions).flatten(1)  # (N, K * 2): x_1, y_1, x_2, y_2, ...


class ResNet18Encoder(nn.Module):
    """uint8 (N, C, H, W) -> (N, feature_dim): ResNet-18 trunk (GroupNorm), spatial softmax, Linear.
    Frames are normalised as torchvision's ImageNet weights expect; initialisation as torchvision's
    (Kaiming-normal fan-out convolutions, norms 1 and 0)."""

    def __init__(
        self, channels: int, height: int, width: int, feature_dim: int, pretrained: str | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 7, 2, padding=3, bias=False)
        self.bn1 = group_norm(64)
        widths = (64, 128, 256, 512)
        for level, (width_in, width_out) in enumerate(zip((64, *widths[:-1]), widths, strict=True), 1):
            stride = 1 if level == 1 else 2
            self.add_module(
                f"layer{level}",
                nn.Sequential(BasicBlock(width_in, width_out, stride), BasicBlock(width_out, width_out, 1)),
            )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        out_h, out_w = height, width
        for _ in range(5):  # conv1, max pool, layers 2-4 each halve the side (rounding up)
            out_h, out_w = math.ceil(out_h / 2), math.ceil(out_w / 2)
        self.pool = SpatialSoftmax(512, out_h, out_w)
        self.linear = nn.Linear(2 * 32, feature_dim)
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_MEAN[:channels] if channels == 3 else [0.5] * channels)
        )
        self.register_buffer(
            "std", torch.tensor(IMAGENET_STD[:channels] if channels == 3 else [0.25] * channels)
        )
        if pretrained is not None:
            self.load_torchvision_weights(Path(pretrained))

    def load_torchvision_weights(self, path: Path) -> None:
        """The trunk's weights from a torchvision resnet18 state dict; its BatchNorm statistics and `fc` are
        not used (GroupNorm keeps the affine weights only, as diffusion_policy's replacement does)."""
        if not path.is_file():
            raise FileNotFoundError(f"vision.pretrained: no file {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        unused = re.compile(r"^fc\.|\.(running_mean|running_var|num_batches_tracked)$")
        trunk = {key: value for key, value in state.items() if not unused.search(key)}
        own = {
            key
            for key in self.state_dict()
            if key.split(".")[0] in ("conv1", "bn1") or key.startswith("layer")
        }
        if set(trunk) != own:
            raise ValueError(
                f"{path}: not a torchvision resnet18 state dict (missing {sorted(own - set(trunk))[:3]}, "
                f"unexpected {sorted(set(trunk) - own)[:3]})"
            )
        if trunk["conv1.weight"].shape != self.conv1.weight.shape:
            raise ValueError(
                f"{path}: conv1 takes {trunk['conv1.weight'].shape[1]} channels, the frames have "
                f"{self.conv1.weight.shape[1]}"
            )
        self.load_state_dict(trunk, strict=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = (frames.float() / 255.0 - self.mean[:, None, None]) / self.std[:, None, None]
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.pool(x))


# ---------------------------------------------------------------------- all cameras


def module_name(camera: str) -> str:
    """A camera key as a submodule name (LeRobot's keys hold dots, which module names may not)."""
    return re.sub(r"\W", "_", camera)


class ImageEncoder(nn.Module):
    """Frames of every camera {camera: (B, To, C, H, W) uint8} -> features (B, To, Σ widths), each
    camera's network's output in the order of `image_shapes` (the store's `image_keys`): with `drq` its
    conv features, which each network's own trunks (`trunks`) take to `feature_dim`; with `resnet18` its
    `feature_dim` features.

    Gradients, as DrQ-v2 (drqv2.py `update`): the one encoder is shared by the critic ensemble and the
    actor; the critic loss trains it (its optimizer steps with the critics'), the actor reads its features
    detached, and the critic target's next-state features come from this same encoder without gradient
    (the encoder has no Polyak copy; with `drq` the target critics have trunks of their own)."""

    def __init__(self, image_shapes: dict[str, list[int]], cfg: VisionConfig):
        super().__init__()
        self.cfg, self.cameras = cfg, list(image_shapes)
        names = [module_name(camera) for camera in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera keys {self.cameras} collide as module names {names}")
        nets = {}
        for name, (height, width, channels) in zip(names, image_shapes.values(), strict=True):
            if cfg.augment == "crop":
                height, width = crop_size(height, width, cfg.crop_fraction)
            if cfg.encoder == "drq":
                nets[name] = DrQEncoder(channels, height, width)
            else:
                nets[name] = ResNet18Encoder(channels, height, width, cfg.feature_dim, cfg.pretrained)
        self.nets = nn.ModuleDict(nets)
        self.feature_dim = cfg.feature_dim * len(self.cameras)  # per row, as the networks read them

    def trunks(self, obs_dim: int) -> CameraTrunks | None:
        """A network's own trunks for observation rows of `obs_dim` low-dimensional values and this
        encoder's features (`drq`), freshly initialised; None for `resnet18`, whose features are final."""
        if self.cfg.encoder != "drq":
            return None
        repr_dims = {name: net.repr_dim for name, net in self.nets.items()}
        return CameraTrunks(obs_dim, repr_dims, self.cfg.feature_dim)

    def augmented(self, frames: torch.Tensor, train: bool) -> torch.Tensor:
        cfg = self.cfg
        if cfg.augment == "crop":
            return random_crop(frames, cfg.crop_fraction, train)
        if cfg.augment == "shift" and train and cfg.shift_pad > 0:
            return random_shift(frames, cfg.shift_pad)
        return frames

    def forward(self, images: dict[str, torch.Tensor], train: bool = False) -> torch.Tensor:
        features = []
        for camera in self.cameras:  # one network per camera: a loop over modules, not over data
            frames = self.augmented(images[camera], train)
            flat = self.nets[module_name(camera)](rearrange(frames, "b t c h w -> (b t) c h w"))
            features.append(rearrange(flat, "(b t) f -> b t f", t=frames.shape[1]))
        return torch.cat(features, dim=-1)

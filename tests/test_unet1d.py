"""The chunk U-Nets hold their activations steps-last and compute the convolutions as matrix products
(nets/unet1d.py); these tests set them beside the library's channel-first Conv1d, GroupNorm and Mish, the
computation of diffusion_policy's ConditionalUnet1D, from the same parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from offline_chunk.nets.unet1d import ChunkConv1d, ChunkQNet, ChunkUNet, group_norm_steps

UNIT_ROUNDOFF = torch.finfo(torch.float32).eps / 2


def summation_bound(terms: int, magnitude: torch.Tensor) -> torch.Tensor:
    """|computed − exact| of a float32 sum of `terms` products, in any order and with or without FMA, is at
    most γ_n · Σ|products| with γ_n = n u / (1 − n u) (Higham, Accuracy and Stability, eq. 3.5): two
    implementations therefore differ by at most twice that."""
    gamma = terms * UNIT_ROUNDOFF / (1 - terms * UNIT_ROUNDOFF)
    return 2 * gamma * magnitude


@pytest.mark.parametrize(
    "in_channels, out_channels, kernel, stride, padding, length",
    [
        (5, 32, 5, 1, 2, 5),  # the first convolution of a chunk critic at H = 5
        (32, 32, 3, 2, 1, 5),  # its down-sampling
        (32, 64, 5, 1, 2, 3),  # the second level
        (64, 64, 3, 2, 1, 3),
        (7, 3, 1, 1, 0, 5),  # the 1 x 1 skip and output convolutions
        (4, 6, 5, 1, 2, 10),  # longest sequence computed as one matrix product
        (4, 6, 5, 1, 2, 16),  # longer: the library convolution
        (3, 4, 3, 2, 1, 1),
    ],
)
def test_chunk_conv_is_the_library_convolution_with_its_gradients(
    in_channels, out_channels, kernel, stride, padding, length
):
    torch.manual_seed(0)
    conv = ChunkConv1d(in_channels, out_channels, kernel, stride, padding)
    x = torch.randn(9, in_channels, length)
    upstream = torch.randn(9, out_channels, (length + 2 * padding - kernel) // stride + 1)

    ours = conv(x.transpose(1, 2)).transpose(1, 2)  # steps last in and out
    (ours_grad,) = torch.autograd.grad(ours, conv.weight, upstream)
    weight = conv.weight.detach().requires_grad_()
    library = F.conv1d(x, weight, conv.bias, stride, padding)
    (library_grad,) = torch.autograd.grad(library, weight, upstream)

    # Σ|products| of each output and of each weight gradient: the same computations on magnitudes
    weight_abs = weight.detach().abs().requires_grad_()
    magnitude = F.conv1d(x.abs(), weight_abs, conv.bias.abs(), stride, padding)
    (grad_magnitude,) = torch.autograd.grad(magnitude, weight_abs, upstream.abs())
    assert ours.shape == library.shape
    assert ((ours - library).abs() <= summation_bound(in_channels * kernel + 1, magnitude)).all()
    terms = x.shape[0] * upstream.shape[-1]
    assert ((ours_grad - library_grad).abs() <= summation_bound(terms, grad_magnitude)).all()


def test_the_written_out_group_norm_is_the_librarys():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 32) * 3 + 1  # (B, L, C)
    weight, bias = torch.randn(32), torch.randn(32)
    ours = group_norm_steps(x, 8, weight, bias, 1e-5)
    library = F.group_norm(x.double().transpose(1, 2), 8, weight.double(), bias.double(), 1e-5).transpose(
        1, 2
    )
    # Each group's mean and variance are float32 sums of 4 x 5 = 20 values (relative error ≤ γ_20 ≈ 1.2e-6
    # each); the normalised values are O(1) here (at most 4 in magnitude for 20 values) and scaled by
    # |weight| ≤ 4, so 1e-4 holds whatever the summation order.
    assert (ours.double() - library).abs().max() < 1e-4


def reference_block(block, x, cond):
    """A FiLMResidualBlock computed channel-first with the library's functions (diffusion_policy's
    ConditionalResidualBlock1D)."""

    def conv_block(seq, h):
        conv, norm = seq[0], seq[1]
        h = F.conv1d(h, conv.weight, conv.bias, conv.stride, conv.padding)
        return F.mish(F.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps))

    film = block.film[1](F.mish(cond))
    scale, bias = film.chunk(2, dim=-1)
    h = conv_block(block.first, x) * scale[..., None] + bias[..., None]
    skip = x if isinstance(block.skip, torch.nn.Identity) else F.conv1d(x, block.skip.weight, block.skip.bias)
    return conv_block(block.second, h) + skip


def reference_q(net: ChunkQNet, chunk, cond):
    x = chunk.transpose(1, 2)
    for block, down in net.down:
        x = F.conv1d(reference_block(block, x, cond), down.weight, down.bias, 2, 1)
    return net.head(torch.cat([x.mean(-1), cond], dim=-1)).squeeze(-1)


def reference_unet(net: ChunkUNet, chunk, cond):
    horizon = chunk.shape[1]
    x = F.pad(chunk.transpose(1, 2), (0, -horizon % 2 ** (net.levels - 1)))
    skips = []
    for first, second, down in net.down:
        x = reference_block(second, reference_block(first, x, cond), cond)
        skips.append(x)
        if not isinstance(down, torch.nn.Identity):
            x = F.conv1d(x, down.weight, down.bias, 2, 1)
    for block in net.mid:
        x = reference_block(block, x, cond)
    for (first, second, up), skip in zip(net.up, reversed(skips[1:]), strict=True):
        x = reference_block(second, reference_block(first, torch.cat([x, skip], 1), cond), cond)
        x = up(x)
    conv, norm = net.out[0][0], net.out[0][1]
    x = F.mish(
        F.group_norm(
            F.conv1d(x, conv.weight, conv.bias, 1, conv.padding),
            norm.num_groups,
            norm.weight,
            norm.bias,
            norm.eps,
        )
    )
    return F.conv1d(x, net.out[1].weight, net.out[1].bias)[..., :horizon].transpose(1, 2)


@pytest.mark.parametrize("horizon, down_dims", [(5, [32, 64]), (5, [32]), (8, [16, 32]), (16, [16, 32, 64])])
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_chunk_nets_compute_diffusion_policys_channel_first_unet(horizon, down_dims, compiled):
    """In float64, where rounding (~1e-16 per operation through a few dozen layers) is far below the
    1e-9 allowed, so that only a different computation could fail."""
    if compiled and horizon != 5:
        pytest.skip("compiled once, at the H of the CPU presets")
    torch.manual_seed(0)
    q_net = ChunkQNet(5, 24, down_dims, head_hidden=32).double()
    unet = ChunkUNet(5, 24, down_dims).double()
    chunk, cond = torch.randn(7, horizon, 5, dtype=torch.float64), torch.randn(7, 24, dtype=torch.float64)
    q_fn, unet_fn = (torch.compile(q_net), torch.compile(unet)) if compiled else (q_net, unet)
    with torch.no_grad():
        assert (q_fn(chunk, cond) - reference_q(q_net, chunk, cond)).abs().max() < 1e-9
        assert (unet_fn(chunk, cond) - reference_unet(unet, chunk, cond)).abs().max() < 1e-9


def test_chunk_conv_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="groups 1, dilation 1 and zero padding"):
        ChunkConv1d(4, 4, 3, groups=2)

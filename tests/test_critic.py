"""Chunk critic ensembles: shapes, independent members, agreement with per-member evaluation, gradients,
candidate scoring, and the module plumbing targets and checkpoints rely on (state_dict, deepcopy, dtype)."""

import copy

import pytest
import torch
from torch import nn

from offline_chunk.nets.critic import ChunkCritic, ChunkCriticEnsemble
from offline_chunk.nets.ensemble import Ensemble

OBS_DIM, OBS_HORIZON, ACTION_DIM = 6, 2, 3
TINY = dict(feature_dim=32, down_dims=(16, 32), kernel_size=5, n_groups=8, head_hidden=64, encoder_hidden=32)
SIZE, BATCH = 3, 4


def make_ensemble(seed: int = 0) -> ChunkCriticEnsemble:
    torch.manual_seed(seed)
    return ChunkCriticEnsemble(OBS_DIM, OBS_HORIZON, ACTION_DIM, size=SIZE, **TINY)


def make_inputs(horizon: int, candidates: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """obs (B, To, D) and chunks in [-1, 1], (B, H, A) or with a candidate axis (B, N, H, A)."""
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(BATCH, OBS_HORIZON, OBS_DIM, generator=generator)
    candidate_axis = () if candidates is None else (candidates,)
    chunk = torch.rand(BATCH, *candidate_axis, horizon, ACTION_DIM, generator=generator) * 2 - 1
    return obs, chunk


def member_critic(ensemble: ChunkCriticEnsemble, k: int) -> ChunkCritic:
    """A plain ChunkCritic holding member k's slice of the stacked parameters."""
    critic = ChunkCritic(OBS_DIM, OBS_HORIZON, ACTION_DIM, **TINY)
    critic.load_state_dict({name.removeprefix("stacked."): p[k] for name, p in ensemble.state_dict().items()})
    return critic


@pytest.mark.parametrize("horizon", [1, 5, 7])
def test_output_has_a_value_per_member_and_state(horizon):
    values = make_ensemble()(*make_inputs(horizon))
    assert values.shape == (SIZE, BATCH)
    assert torch.isfinite(values).all()


def test_parameters_are_stacked_once_with_member_names():
    ensemble, critic = make_ensemble(), ChunkCritic(OBS_DIM, OBS_HORIZON, ACTION_DIM, **TINY)
    member_shapes = {name: p.shape for name, p in critic.state_dict().items()}
    assert {name: p.shape for name, p in ensemble.state_dict().items()} == {
        f"stacked.{name}": (SIZE, *shape) for name, shape in member_shapes.items()
    }
    assert sum(p.numel() for p in ensemble.parameters()) == SIZE * sum(p.numel() for p in critic.parameters())
    assert ensemble.size == SIZE


def test_members_are_initialised_independently():
    stacked = dict(make_ensemble().stacked.named_parameters())
    critic = ChunkCritic(OBS_DIM, OBS_HORIZON, ACTION_DIM, **TINY)
    # GroupNorm starts every member at weight 1, bias 0; every other tensor is drawn at random.
    constant = {
        f"{module_name}.{p_name}"
        for module_name, module in critic.named_modules()
        if isinstance(module, nn.GroupNorm)
        for p_name, _ in module.named_parameters()
    }
    assert constant and constant < stacked.keys()
    for name, p in stacked.items():
        pairs_equal = [torch.equal(p[j], p[k]) for j in range(SIZE) for k in range(j + 1, SIZE)]
        assert all(pairs_equal) if name in constant else not any(pairs_equal), name


@pytest.mark.parametrize("horizon", [1, 5])
def test_vmapped_forward_equals_each_member_alone(horizon):
    ensemble = make_ensemble()
    obs, chunk = make_inputs(horizon)
    expected = torch.stack([member_critic(ensemble, k)(obs, chunk) for k in range(SIZE)])
    torch.testing.assert_close(ensemble(obs, chunk), expected)


def test_gradients_reach_only_the_member_they_come_from():
    ensemble = make_ensemble()
    obs, chunk = make_inputs(5)
    for k in range(SIZE):
        ensemble.zero_grad()
        ensemble(obs, chunk)[k].sum().backward()
        for name, p in ensemble.named_parameters():
            others = [j for j in range(SIZE) if j != k]
            assert p.grad[k].abs().sum() > 0, (name, k)
            assert (p.grad[others] == 0).all(), (name, k)


def test_candidate_axis_equals_scoring_each_candidate_alone():
    ensemble = make_ensemble()
    obs, chunks = make_inputs(5, candidates=6)
    values = ensemble(obs, chunks)
    assert values.shape == (SIZE, BATCH, 6)
    expected = torch.stack([ensemble(obs, chunks[:, n]) for n in range(6)], dim=-1)
    torch.testing.assert_close(values, expected)


def test_chunk_of_wrong_rank_is_refused():
    obs, chunk = make_inputs(5)
    with pytest.raises(ValueError, match="chunk must be"):
        make_ensemble()(obs, chunk[0])


def test_state_dict_round_trip_reproduces_outputs():
    ensemble, fresh = make_ensemble(seed=0), make_ensemble(seed=1)
    obs, chunk = make_inputs(5)
    assert not torch.allclose(ensemble(obs, chunk), fresh(obs, chunk))
    fresh.load_state_dict(ensemble.state_dict())
    torch.testing.assert_close(fresh(obs, chunk), ensemble(obs, chunk), rtol=0, atol=0)


def test_deepcopy_is_an_independent_target():
    ensemble = make_ensemble()
    target = copy.deepcopy(ensemble)
    obs, chunk = make_inputs(5)
    before = target(obs, chunk).detach()
    torch.testing.assert_close(before, ensemble(obs, chunk).detach())

    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-2)
    ensemble(obs, chunk).square().mean().backward()
    nn.utils.clip_grad_norm_(ensemble.parameters(), 1.0)
    optimizer.step()

    torch.testing.assert_close(target(obs, chunk).detach(), before, rtol=0, atol=0)
    assert not torch.allclose(ensemble(obs, chunk), before)


def test_no_grad_and_float64():
    ensemble = make_ensemble()
    obs, chunk = make_inputs(7)
    with_grad = ensemble(obs, chunk)
    with torch.no_grad():
        without_grad = ensemble(obs, chunk)
    assert with_grad.requires_grad and not without_grad.requires_grad
    torch.testing.assert_close(without_grad, with_grad.detach())

    wide = copy.deepcopy(ensemble).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in wide.parameters())
    wide_values = wide(obs.double(), chunk.double())
    assert wide_values.dtype == torch.float64
    torch.testing.assert_close(wide_values.float(), with_grad.detach(), rtol=1e-4, atol=1e-5)


def test_train_and_eval_reach_the_members():
    torch.manual_seed(0)
    ensemble = Ensemble(lambda: nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5)), size=2)
    x = torch.randn(8, 4)
    assert not torch.equal(ensemble(x), ensemble(x))  # dropout is active while training
    ensemble.eval()
    assert torch.equal(ensemble(x), ensemble(x))


def test_members_with_buffers_or_no_members_are_refused():
    with pytest.raises(ValueError, match="buffers"):
        Ensemble(lambda: nn.BatchNorm1d(3), size=2)
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble(lambda: nn.Linear(2, 2), size=0)


# --------------------------------------------------------------------------- Q-chunking's MLP critic

MLP_HIDDEN = (16, 16, 8)


def make_mlp_ensemble(horizon: int = 5, **kwargs) -> ChunkCriticEnsemble:
    torch.manual_seed(0)
    sizes = {"hidden_dims": MLP_HIDDEN, "layer_norm": True, **TINY, **kwargs}  # the U-Net's knobs unused
    return ChunkCriticEnsemble(
        OBS_DIM, OBS_HORIZON, ACTION_DIM, size=SIZE, kind="mlp", horizon=horizon, **sizes
    )


def reference_mlp(params: dict, obs: torch.Tensor, chunk: torch.Tensor, layer_norm: bool) -> torch.Tensor:
    """QC's Value MLP written out for one member (utils/networks.py): x = [flattened obs, flattened chunk],
    Dense -> GELU (tanh) -> LayerNorm for each hidden layer, then Dense(1); one chunk per state."""
    x = torch.cat([obs.flatten(1), chunk.flatten(1)], dim=1)
    first = torch.cat([params["trunk.parts.0.weight"], params["trunk.parts.1.weight"]], dim=1)
    weights = [first, *[params[f"trunk.hidden.{i}.weight"] for i in range(len(MLP_HIDDEN) - 1)]]
    biases = [
        params["trunk.parts.0.bias"],
        *[params[f"trunk.hidden.{i}.bias"] for i in range(len(MLP_HIDDEN) - 1)],
    ]
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        x = torch.nn.functional.gelu(x @ weight.T + bias, approximate="tanh")
        if layer_norm:
            mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
            norm = f"trunk.norms.{i}"
            x = (x - mean) / torch.sqrt(var + 1e-6) * params[f"{norm}.weight"] + params[f"{norm}.bias"]
    return (x @ params["value.weight"].T + params["value.bias"]).squeeze(-1)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_mlp_critic_is_qc_value_mlp_on_the_concatenated_input(layer_norm):
    ensemble = make_mlp_ensemble(layer_norm=layer_norm).double()
    obs, chunk = (x.double() for x in make_inputs(5))
    stacked = {name.removeprefix("stacked."): p.detach() for name, p in ensemble.state_dict().items()}
    expected = torch.stack(
        [reference_mlp({n: p[k] for n, p in stacked.items()}, obs, chunk, layer_norm) for k in range(SIZE)]
    )
    # float64 on both sides: the split first layer and the concatenation differ only by summation order
    torch.testing.assert_close(ensemble(obs, chunk), expected, rtol=1e-12, atol=1e-12)


def test_mlp_critic_scores_candidates_as_one_at_a_time():
    ensemble = make_mlp_ensemble().double()
    obs, chunks = (x.double() for x in make_inputs(5, candidates=6))
    expected = torch.stack([ensemble(obs, chunks[:, n]) for n in range(6)], dim=-1)
    torch.testing.assert_close(ensemble(obs, chunks), expected, rtol=1e-12, atol=1e-12)


def test_mlp_critic_initialises_like_flax():
    """Xavier-uniform kernels (the first bounded by the whole input width), zero biases, members apart."""
    torch.manual_seed(0)
    ensemble = make_mlp_ensemble(hidden_dims=(512, 256))
    params = dict(ensemble.stacked.named_parameters())
    fan_in = OBS_DIM * OBS_HORIZON + ACTION_DIM * 5
    first = torch.cat([params["trunk.parts.0.weight"], params["trunk.parts.1.weight"]], dim=-1)
    for weight, bound in (
        (first, (6 / (fan_in + 512)) ** 0.5),
        (params["trunk.hidden.0.weight"], (6 / 768) ** 0.5),
    ):
        assert weight.abs().max() <= bound
        # a uniform on [-b, b] has standard deviation b / sqrt(3); 512 x 27 draws put it within 2%
        assert abs(weight.std().item() / (bound / 3**0.5) - 1) < 0.02
    assert all(
        (params[name] == 0).all() for name in ("trunk.parts.0.bias", "trunk.hidden.0.bias", "value.bias")
    )
    assert not torch.equal(params["trunk.parts.0.weight"][0], params["trunk.parts.0.weight"][1])


def test_unknown_critic_kind_is_refused():
    with pytest.raises(ValueError, match="critic.kind must be one of"):
        ChunkCriticEnsemble(OBS_DIM, OBS_HORIZON, ACTION_DIM, kind="transformer")

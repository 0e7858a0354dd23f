"""QC's behaviour-cloning flow actor (policies/flow.py) against acfql.py's formulas written out here:
ActorVectorField as one MLP on the concatenated [observation, x_t, t], the BC flow loss on the linear path,
and compute_flow_actions' Euler steps."""

import torch

from offline_chunk.policies.flow import FlowChunkPolicy

OBS_DIM, OBS_HORIZON, ACTION_DIM, HORIZON, HIDDEN, STEPS = 3, 2, 2, 4, (16, 8), 5


def make_policy() -> FlowChunkPolicy:
    torch.manual_seed(0)
    return FlowChunkPolicy(
        OBS_DIM, OBS_HORIZON, ACTION_DIM, HORIZON, hidden_dims=HIDDEN, flow_steps=STEPS
    ).double()


def reference_velocity(policy: FlowChunkPolicy, obs, chunk, time) -> torch.Tensor:
    """ActorVectorField: MLP([obs flattened, chunk flattened, t]) with GELU (tanh) hidden layers, no norm."""
    params = dict(policy.named_parameters())
    x = torch.cat([obs.flatten(1), chunk.flatten(1), time], dim=1)
    first = torch.cat([params[f"trunk.parts.{i}.weight"] for i in range(3)], dim=1)
    weights = [first, *[params[f"trunk.hidden.{i}.weight"] for i in range(len(HIDDEN) - 1)]]
    biases = [
        params["trunk.parts.0.bias"],
        *[params[f"trunk.hidden.{i}.bias"] for i in range(len(HIDDEN) - 1)],
    ]
    for weight, bias in zip(weights, biases, strict=True):
        x = torch.nn.functional.gelu(x @ weight.T + bias, approximate="tanh")
    out = x @ params["velocity_out.weight"].T + params["velocity_out.bias"]
    return out.view(-1, HORIZON, ACTION_DIM)


def inputs(batch: int = 6):
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(batch, OBS_HORIZON, OBS_DIM, generator=generator, dtype=torch.float64)
    actions = torch.rand(batch, HORIZON, ACTION_DIM, generator=generator, dtype=torch.float64) * 2 - 1
    return obs, actions


def test_bc_loss_is_the_flow_matching_loss_on_the_linear_path():
    """L = mean ‖v(s, (1 − t) x_0 + t x_1, t) − (x_1 − x_0)‖², the noise and time drawn in that order."""
    policy = make_policy()
    obs, actions = inputs()
    torch.manual_seed(5)
    loss = policy.bc_loss(obs, actions)
    torch.manual_seed(5)
    noise = torch.randn(actions.shape, dtype=torch.float64)
    time = torch.rand(len(actions), 1, dtype=torch.float64)
    x_t = (1 - time[:, :, None]) * noise + time[:, :, None] * actions
    expected = ((reference_velocity(policy, obs, x_t, time) - (actions - noise)) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_masked_loss_averages_the_recorded_steps_only():
    """With an action mask, the per-sample mean runs over the recorded steps' entries (QC multiplies by its
    `valid` mask; with every chunk whole, as drop_partial gives, the two are the same)."""
    policy = make_policy()
    obs, actions = inputs()
    mask = torch.ones(len(actions), HORIZON, dtype=torch.bool)
    mask[::2, -2:] = False
    torch.manual_seed(5)
    loss = policy.bc_loss(obs, actions, mask)
    torch.manual_seed(5)
    noise = torch.randn(actions.shape, dtype=torch.float64)
    time = torch.rand(len(actions), 1, dtype=torch.float64)
    x_t = (1 - time[:, :, None]) * noise + time[:, :, None] * actions
    squared = (reference_velocity(policy, obs, x_t, time) - (actions - noise)) ** 2
    expected = torch.stack([squared[i][mask[i]].mean() for i in range(len(actions))])
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_sampling_is_k_euler_steps_from_noise_then_clipped():
    """x_{k+1} = x_k + v(s, x_k, k / K) / K from x_0 ~ N(0, I), then clip(−1, 1); N candidates per state
    are the chains of N noise draws, in the generator's order (state-major)."""
    policy = make_policy()
    obs, _ = inputs(3)
    n = 4
    samples = policy.sample_candidates(obs, n, generator=torch.Generator().manual_seed(7))
    repeated = obs.repeat_interleave(n, dim=0)
    x = torch.randn(
        3 * n, HORIZON, ACTION_DIM, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    for k in range(STEPS):
        time = torch.full((3 * n, 1), k / STEPS, dtype=torch.float64)
        x = x + reference_velocity(policy, repeated, x, time) / STEPS
    torch.testing.assert_close(
        samples, x.clamp(-1, 1).view(3, n, HORIZON, ACTION_DIM), rtol=1e-12, atol=1e-12
    )


def test_trained_flow_samples_both_modes_not_their_mean():
    """Chunks recorded at +0.5 or −0.5 (all entries alike, half the rows each) for one state: the trained
    flow's samples fall near both modes, as best of N needs, where a regression to the data (a denoiser's
    one-step answer) gives their mean 0. Bounds: each mode is half the data, so 64 samples of a fitted
    flow put about 32 near each; 'at least 10' and 'the mean within 0.2 of ±0.5 for each group' hold with a
    wide margin for any rounding, and both fail for samples collapsed to one value."""
    torch.manual_seed(0)
    policy = FlowChunkPolicy(1, 1, 1, 2, hidden_dims=(64, 64), flow_steps=10)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    obs = torch.zeros(256, 1, 1)
    actions = torch.where(torch.arange(256) % 2 == 0, 0.5, -0.5).view(256, 1, 1).expand(256, 2, 1)
    for _ in range(400):
        optimizer.zero_grad()
        policy.bc_loss(obs, actions).mean().backward()
        optimizer.step()
    samples = policy.sample_candidates(obs[:1], 64, generator=torch.Generator().manual_seed(0))[0, :, :, 0]
    first = samples[:, 0]
    upper, lower = samples[first > 0], samples[first <= 0]
    assert len(upper) >= 10 and len(lower) >= 10
    assert (upper.mean() - 0.5).abs() < 0.2 and (lower.mean() + 0.5).abs() < 0.2


def test_gelu_is_the_tanh_approximation_to_float32_rounding():
    """nets/mlp.py's gelu_tanh, x σ(2z), against torch's tanh-form GELU in float64. Bound: the argument 2z
    carries ≤ 5 roundings relative to |2z| and σ' (t) |t| ≤ 0.23, so it moves σ by ≤ 1.2 u; σ itself is within
    4 u (exp within an ulp, then one addition and one division); the product adds u: ≤ 6.2 u |x| in all,
    u = 2^-24, on any CPU and kernel."""
    from offline_chunk.nets.mlp import gelu_tanh

    x = torch.linspace(-12.0, 12.0, 200_001)
    reference = torch.nn.functional.gelu(x.double(), approximate="tanh")
    error = (gelu_tanh(x).double() - reference).abs()
    assert (error <= 8 * 2.0**-24 * x.double().abs()).all()
    compiled = torch.compile(gelu_tanh)(x).double()
    assert ((compiled - reference).abs() <= 8 * 2.0**-24 * x.double().abs()).all()

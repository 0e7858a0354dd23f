"""Chunk policies: shapes, ranges, gradients through the sampler, schedules, losses, overfitting one chunk."""

import copy
import math

import pytest
import torch

from offline_chunk.config import load_config
from offline_chunk.errors import ConfigError
from offline_chunk.policies import POLICIES, ConsistencyChunkPolicy, DDPMChunkPolicy
from offline_chunk.policies.base import per_sample_mean
from offline_chunk.policies.consistency import SIGMA_DATA, SIGMA_MIN, karras_weight
from offline_chunk.policies.ddpm import vp_betas

OBS_DIM, ACTION_DIM = 3, 2
TINY = dict(
    obs_dim=OBS_DIM,
    obs_horizon=2,
    action_dim=ACTION_DIM,
    feature_dim=32,
    noise_emb_dim=16,
    down_dims=(16, 32),
)
VARIANTS = {
    "ddpm": ("ddpm", {}),
    "ddim": (
        "ddpm",
        dict(num_diffusion_steps=10, beta_schedule="squaredcos_cap_v2", sampler="ddim", inference_steps=5),
    ),
    "consistency": ("consistency", {}),
    "consistency_multistep": ("consistency", dict(sample_steps=(20, 30))),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny nets are per-op-overhead bound; extra intra-op threads only add contention on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_policy(variant: str, horizon: int = 5):
    kind, kwargs = VARIANTS[variant]
    return POLICIES[kind](horizon=horizon, **TINY, **kwargs)


def random_obs(batch: int) -> torch.Tensor:
    return torch.randn(batch, TINY["obs_horizon"], OBS_DIM)


def random_chunk(batch: int, horizon: int) -> torch.Tensor:
    return torch.rand(batch, horizon, ACTION_DIM) * 2 - 1


def vp_alpha_bar(t: int, steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> float:
    """ᾱ_t = Π_{s<=t+1} α_s of the VP schedule in closed form: the exponents of the α_s of
    test_vp_betas_match_the_closed_form summed over s = 1..k are k β_min / T + (β_max − β_min) k² / (2 T²),
    k = t + 1."""
    k = t + 1
    return math.exp(-k * beta_min / steps - (beta_max - beta_min) * k**2 / (2 * steps**2))


def cosine_alpha_bar(t: int, steps: int) -> float:
    """ᾱ_t of the squaredcos_cap_v2 schedule (Nichol & Dhariwal 2021, eq. 17, s = 0.008):
    f((t + 1) / T) / f(0), f(x) = cos²((x + s) / (1 + s) · π/2), the product of the 1 − β_i telescoping; only
    the last β, 1 − f(1) / f(1 − 1/T) ≈ 1, reaches the cap 0.999."""
    f = lambda x: math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    if t == steps - 1:
        return f(t / steps) / f(0.0) * (1 - 0.999)
    return f((t + 1) / steps) / f(0.0)


def oracle_network(variant: str, target: torch.Tensor):
    """A stand-in for the policy's net that, called at any noise level, predicts the output for which the
    sampler's data estimate is exactly `target` (H, A): DDPM's ε̂ = (x_t − √ᾱ_t target) / √(1 − ᾱ_t), so that
    x̂0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t = target; the consistency model's F = (target − c_skip x) / c_out with
    Song et al. 2023's c_skip = σ_d² / ((σ − σ_min)² + σ_d²), c_out = σ_d (σ − σ_min) / √(σ² + σ_d²), its
    input c_in x with c_in = (σ² + σ_d²)^-½ and its noise input 250 ln σ (App. C). All by hand, in float64."""
    kind, kwargs = VARIANTS[variant]
    steps = kwargs.get("num_diffusion_steps", 5)
    schedule = cosine_alpha_bar if kwargs.get("beta_schedule") == "squaredcos_cap_v2" else vp_alpha_bar
    goal = target.double()

    def network(noisy_chunk, noise_level, obs_feature):
        x, level = noisy_chunk.double(), noise_level.double()[:, None, None]
        if kind == "ddpm":
            a = torch.tensor([schedule(int(t), steps) for t in noise_level.round()], dtype=torch.float64)
            a = a[:, None, None]
            out = (x - a.sqrt() * goal) / (1 - a).sqrt()
        else:
            sigma = torch.exp(level / 250.0)
            x = x * (sigma**2 + SIGMA_DATA**2).sqrt()  # undo c_in
            c_skip = SIGMA_DATA**2 / ((sigma - SIGMA_MIN) ** 2 + SIGMA_DATA**2)
            c_out = SIGMA_DATA * (sigma - SIGMA_MIN) / (sigma**2 + SIGMA_DATA**2).sqrt()
            out = (goal - c_skip * x) / c_out
        return out.to(noisy_chunk.dtype)

    return network


@pytest.mark.parametrize("horizon", [1, 5, 7])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_and_range(variant, horizon):
    """The sampler returns the clipped data estimate of its last step, clip(x̂0, −1, 1): with a stand-in net
    whose estimate is a known chunk, in-range values come back as they are and values beyond ±1 as ±1."""
    torch.manual_seed(0)
    policy = tiny_policy(variant, horizon)
    obs = random_obs(3)
    assert policy.sample(obs).shape == (3, horizon, ACTION_DIM)
    assert policy.bc_loss(obs, random_chunk(3, horizon)).shape == (3,)
    values = [4.0, -0.6, 0.3, -9.0, -1.5, 0.95, 0.0, 2.0, -0.25, 1.0, -1.0, 0.7, 1.3, -0.45][: 2 * horizon]
    target = torch.tensor(values).view(horizon, ACTION_DIM)
    clipped = torch.tensor([max(-1.0, min(1.0, v)) for v in values]).view(horizon, ACTION_DIM)
    policy.network = oracle_network(variant, target)
    chunks = policy.sample(obs)
    torch.testing.assert_close(chunks, clipped.expand(3, -1, -1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keep_graph_backpropagates_through_the_sampling_chain(variant):
    torch.manual_seed(0)
    policy = tiny_policy(variant)
    obs = random_obs(4)
    assert not policy.sample(obs).requires_grad
    policy.sample(obs, keep_graph=True).sum().backward()
    for name, param in policy.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_sample_candidates_are_batched_distinct_and_reproducible():
    policy = tiny_policy("consistency")
    obs = random_obs(2)
    candidates = policy.sample_candidates(obs, n=6, generator=torch.Generator().manual_seed(1))
    assert candidates.shape == (2, 6, 5, ACTION_DIM)
    gaps = (candidates[:, :, None] - candidates[:, None]).abs().amax(dim=(-2, -1))  # (B, n, n)
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    assert (gaps[:, off_diagonal] > 1e-4).all()
    again = policy.sample_candidates(obs, n=6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(candidates, again)
    torch.manual_seed(3)
    from_global_rng = policy.sample_candidates(obs, n=6)
    torch.manual_seed(3)
    assert torch.equal(from_global_rng, policy.sample_candidates(obs, n=6))


def test_vp_betas_match_the_closed_form():
    steps, beta_min, beta_max = 5, 0.1, 10.0
    alphas = [
        math.exp(-beta_min / steps - (beta_max - beta_min) * (2 * t - 1) / (2 * steps**2))
        for t in range(1, steps + 1)
    ]
    expected = torch.tensor([1 - a for a in alphas], dtype=torch.float64)
    torch.testing.assert_close(vp_betas(steps), expected)
    policy = DDPMChunkPolicy(horizon=5, **TINY)
    torch.testing.assert_close(policy.noise_scheduler.betas, expected.float())
    torch.testing.assert_close(policy.noise_scheduler.alphas_cumprod, torch.tensor(alphas).cumprod(0))


def test_consistency_boundary_condition_is_exact():
    policy = ConsistencyChunkPolicy(horizon=5, **TINY)
    sigma_min = torch.full((4,), SIGMA_MIN)
    c_skip, c_out = policy.karras.get_scalings_for_boundary_condition(sigma_min)
    assert torch.equal(c_skip, torch.ones(4)) and torch.equal(c_out, torch.zeros(4))
    assert torch.isclose(policy.sigmas[-1], torch.tensor(SIGMA_MIN))
    chunk = random_chunk(4, 5)
    with torch.no_grad():
        assert torch.equal(policy.denoise(chunk, sigma_min, policy.obs_encoder(random_obs(4))), chunk)


def test_karras_weight_by_hand():
    sigma = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(karras_weight(sigma), torch.tensor([1 / 0.25 + 4.0, 1 / 4.0 + 4.0]))
    assert SIGMA_DATA == 0.5


def test_recon_loss_is_weighted_mse_at_the_drawn_sigma():
    # Two Karras levels: training always draws n = 0, sigma_n = sigma_max = 1, so w = 1 / 1 + 1 / 0.25 = 5.
    policy = ConsistencyChunkPolicy(horizon=5, sigma_max=1.0, num_scales=2, **TINY)
    obs, actions = random_obs(3), random_chunk(3, 5)
    loss = policy.bc_loss(obs, actions, generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    torch.randint(1, (3,), generator=replay)  # the level draw
    noise = torch.randn(actions.shape, generator=replay)
    denoised = policy.denoise(actions + noise, torch.ones(3), policy.obs_encoder(obs))
    torch.testing.assert_close(loss, 5.0 * ((denoised - actions) ** 2).mean(dim=(1, 2)))


def test_consistency_loss_against_the_sigma_min_target_is_the_recon_loss():
    # With levels (sigma_max, sigma_min) the Euler step lands at actions + sigma_min z and the target
    # returns it unchanged (boundary condition), so the two losses differ only by the sigma_min noise.
    policy = ConsistencyChunkPolicy(horizon=5, sigma_max=1.0, num_scales=2, **TINY)
    obs, actions = random_obs(3), random_chunk(3, 5) * 0.9
    losses = policy.consistency_losses(obs, actions, target=copy.deepcopy(policy))
    torch.testing.assert_close(losses["consistency"], losses["recon"], rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="target"):
        policy.bc_loss(obs, actions, kind="consistency")


def test_per_sample_mean_skips_padded_steps():
    squared_error = torch.ones(2, 3, 2)
    squared_error[0, 2] = 100.0  # padding step of the first chunk
    mask = torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(per_sample_mean(squared_error, mask), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(per_sample_mean(squared_error), torch.tensor([(4 + 200) / 6, 1.0]))


def test_ddpm_masked_loss_by_hand():
    policy = DDPMChunkPolicy(horizon=5, **TINY)
    obs, actions = random_obs(2), random_chunk(2, 5)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    loss = policy.bc_loss(obs, actions, mask, generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    noise = torch.randn(actions.shape, generator=replay)
    t = torch.randint(5, (2,), generator=replay)
    noisy = policy.noise_scheduler.add_noise(actions, noise, t)
    squared_error = (policy.network(noisy, t.float(), policy.obs_encoder(obs)) - noise) ** 2
    expected = torch.stack([squared_error[0, :3].mean(), squared_error[1].mean()])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("variant", ["ddpm", "ddim"])
def test_reverse_chain_matches_diffusers_step(variant):
    """The precomputed affine steps reproduce diffusers' `scheduler.step` chain (same net, same draws)."""
    policy = tiny_policy(variant)
    feature = policy.obs_encoder(random_obs(4))
    ours = policy._sample(feature, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    chunk = torch.randn(4, 5, ACTION_DIM, generator=replay)
    for t in policy.sampler.timesteps:
        eps = policy.network(chunk, t.float().expand(4), feature)
        chunk = policy.sampler.step(eps, t, chunk, generator=replay).prev_sample
    torch.testing.assert_close(ours, chunk, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours, policy._sample(feature, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("kind, lr", [("ddpm", 1e-2), ("consistency", 3e-3)])
def test_overfits_one_chunk(kind, lr):
    """300 Adam steps on one chunk for one observation: samples land within 0.08 of it on average."""
    torch.manual_seed(0)
    policy = POLICIES[kind](horizon=5, **TINY)
    target = torch.tensor([[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1], [0.9, -0.9], [0.0, 0.4]])
    obs = torch.zeros(32, TINY["obs_horizon"], OBS_DIM)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(300):
        loss = policy.bc_loss(obs, target.expand(32, -1, -1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    error = (policy.sample(torch.zeros(128, TINY["obs_horizon"], OBS_DIM)) - target).abs()
    assert error.mean() < 0.08, error.mean()


@pytest.mark.parametrize("steps", [10, 39])
def test_the_ode_sampler_with_the_exact_gaussian_denoiser_lands_where_euler_says(steps):
    """Data a ~ N(μ, s²) in every coordinate, whose exact denoiser is D(x, σ) = μ + s²/(s² + σ²) (x − μ).
    An Euler step of dx/dσ = (x − D)/σ from σ to σ' multiplies x − μ by 1 + (σ' − σ) σ / (s² + σ²), so from
    x = σ_max z the samples have mean μ (1 − g) and std g σ_max, g the product over the levels (computed
    here by hand from the Karras levels). 200,000 coordinates: the std's relative standard error is 0.16%
    and the mean's 0.0005, so 1% and 0.003 hold on any machine. The ODE itself ends at std
    σ_max ((s² + σ_min²) / (s² + σ_max²))^½ ≈ s; Euler over all 39 steps lands within 15% of it (over 10,
    28% short: g is exact arithmetic, so this is the method's error, not the machine's)."""
    mu, s = 0.2, 0.2
    policy = ConsistencyChunkPolicy(horizon=5, ode_steps=steps, **TINY)
    policy.denoise = lambda x, sigma, feature: mu + (s**2 / (s**2 + sigma**2))[:, None, None] * (x - mu)
    levels = [round(i * 39 / steps) for i in range(steps + 1)]
    sigmas = [float(policy.sigmas[i]) for i in levels]
    g = math.prod(
        1 + (low - high) * high / (s**2 + high**2) for high, low in zip(sigmas[:-1], sigmas[1:], strict=True)
    )
    torch.manual_seed(0)
    chunks = policy.sample(torch.zeros(20_000, TINY["obs_horizon"], OBS_DIM))
    assert abs(chunks.std().item() / (g * sigmas[0]) - 1) < 0.01
    assert abs(chunks.mean().item() - mu * (1 - g)) < 0.003
    exact = sigmas[0] * math.sqrt((s**2 + SIGMA_MIN**2) / (s**2 + sigmas[0] ** 2))
    if steps == 39:
        assert abs(g * sigmas[0] / exact - 1) < 0.15


def test_ode_steps_reach_the_policy_from_the_config():
    from offline_chunk.policies import make_policy

    cfg = load_config("cpql", "default", ["agent.policy.ode_steps=10", "agent.policy.down_dims=[16]"])
    shape = dict(obs_dim=OBS_DIM, obs_horizon=1, action_dim=ACTION_DIM, horizon=4)
    policy = make_policy(cfg.agent.policy, **shape)
    assert len(policy.ode_sigmas) == 11 and policy.ode_sigmas[0] == policy.sigmas[0]
    assert policy.ode_sigmas[-1] == policy.sigmas[-1]
    assert policy.sample(torch.zeros(3, 1, OBS_DIM)).shape == (3, 4, ACTION_DIM)


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="policy.kind: Input should be 'consistency'"):
        load_config("cpql", "default", ["agent.policy.kind=flow"])
    with pytest.raises(ValueError, match="divide"):
        DDPMChunkPolicy(horizon=5, sampler="ddim", inference_steps=2, **TINY)
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMChunkPolicy(horizon=5, beta_schedule="cosine", **TINY)
    with pytest.raises(ValueError, match="sample_steps"):
        ConsistencyChunkPolicy(horizon=5, sample_steps=(30, 20), **TINY)
    with pytest.raises(ValueError, match="two samplers"):
        ConsistencyChunkPolicy(horizon=5, sample_steps=(20,), ode_steps=10, **TINY)

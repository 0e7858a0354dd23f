"""ChunkSACAgent and TD3BCAgent: the tanh-Gaussian joint log-probability, the temperature, the actor's
critic strategies on a stub critic, the one-step TD3 target, TD3's delays, short training runs,
checkpoints and exact resume."""

import numpy as np
import pytest
import torch
from helpers import BY_ACTOR, chain_store, tiny_config, tiny_nets
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from offline_chunk import load_agent
from offline_chunk.agents import Dims, make_agent
from offline_chunk.agents.targets import chunk_target
from offline_chunk.config import load_config
from offline_chunk.data.normalize import Normalizer
from offline_chunk.policies.act import TanhGaussianChunkPolicy, tanh_gaussian_log_prob
from offline_chunk.train import build_run, train


def tiny_agent(name: str, dims: Dims, *extra: str):
    """An agent built directly (no store): normalizer identity, tiny networks."""
    cfg = load_config(name, "default", [*tiny_nets(name), *extra])
    return make_agent(cfg.agent, dims, Normalizer(dims.obs_dim, dims.action_dim), total_steps=10)


# --------------------------------------------------------------------------- the tanh-Gaussian actor


def test_joint_log_prob_is_the_sum_of_torch_distributions_step_log_probs():
    torch.manual_seed(0)
    batch, horizon, action_dim = 4, 3, 2
    mean = torch.randn(batch, horizon, action_dim, dtype=torch.float64)
    log_std = torch.empty_like(mean).uniform_(-2.0, 1.0)
    pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
    step = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform())
    expected = step.log_prob(torch.tanh(pre_tanh)).sum(dim=(-2, -1))  # independent steps and dimensions
    joint = tanh_gaussian_log_prob(pre_tanh, mean, log_std).sum(dim=-1)
    torch.testing.assert_close(joint, expected, rtol=1e-9, atol=1e-9)


def test_joint_log_prob_stays_finite_for_saturated_actions():
    pre_tanh = torch.tensor([[[20.0, -20.0]]])  # tanh rounds to ±1: log(1 − a²) would be −inf
    mean, log_std = torch.zeros_like(pre_tanh), torch.zeros_like(pre_tanh)
    log_prob = tanh_gaussian_log_prob(pre_tanh, mean, log_std)
    assert torch.isfinite(log_prob).all()
    # log N(±20; 0, 1) − log(1 − tanh²(±20)), with log(1 − tanh² x) = log 4 − 2|x| − 2 log(1 + e^{−2|x|}).
    gaussian = -0.5 * 400.0 - 0.5 * np.log(2 * np.pi)
    expected = 2 * (gaussian - (np.log(4.0) - 40.0))
    assert log_prob.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_gaussian_policy_shapes_and_first_action(decoding):
    torch.manual_seed(0)
    policy = TanhGaussianChunkPolicy(
        3, 2, 2, 4, feature_dim=16, num_heads=2, feedforward_dim=32, decoding=decoding
    )
    obs = torch.randn(5, 2, 3)
    chunk, log_prob, mean_chunk = policy(obs)
    assert chunk.shape == mean_chunk.shape == (5, 4, 2) and log_prob.shape == (5,)
    torch.manual_seed(1)
    first, first_log_prob, first_mean = policy(obs, return_sequence=False)
    torch.manual_seed(1)
    again, _, again_mean = policy(obs)
    assert first.shape == first_mean.shape == (5, 2) and first_log_prob.shape == (5,)
    torch.testing.assert_close(first, again[:, 0])
    torch.testing.assert_close(first_mean, again_mean[:, 0])


def log_cosh(x: np.ndarray) -> np.ndarray:
    """log cosh x = |x| + log(1 + e^{−2|x|}) − log 2, exact for large |x| where cosh overflows."""
    return np.abs(x) + np.log1p(np.exp(-2 * np.abs(x))) - np.log(2.0)


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
def test_gaussian_policy_samples_and_log_probs_by_hand(decoding):
    """With the head's output fixed (weights 0, bias (μ, log σ) = (0.3, −1.2, −9, 7)), the log-std is clamped
    to [−5, 2], the sample is a_{t,i} = tanh(μ_i + σ_i ε_{t,i}) for the draws ε ~ N(0, I), the mean chunk
    tanh(μ), and the joint log-probability Σ_{t,i} [log N(ε; 0, 1) − log σ_i − log(1 − a²)], with
    log(1 − tanh² x) = −2 log cosh x (SAC's change of variables). σ = e² saturates tanh (|ã| > 9 for some
    draws): those actions are ±1 in float32, and the log-probability stays finite and exact."""
    torch.manual_seed(0)
    policy = TanhGaussianChunkPolicy(
        3, 2, 2, 4, feature_dim=16, num_heads=2, feedforward_dim=32, decoding=decoding
    )
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.copy_(torch.tensor([0.3, -1.2, -9.0, 7.0]))
    obs = torch.randn(5, 2, 3)
    with torch.no_grad():
        torch.manual_seed(1)
        chunk, log_prob, mean_chunk = policy(obs)
        torch.manual_seed(1)
        first, first_log_prob, first_mean = policy(obs, return_sequence=False)
    torch.manual_seed(1)
    epsilon = torch.randn(5, 4, 2).double().numpy()  # the policy's one draw, (B, H, A)
    mu, sigma = np.array([0.3, -1.2]), np.exp([-5.0, 2.0])
    pre_tanh = mu + sigma * epsilon
    step = -0.5 * epsilon**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi) + 2 * log_cosh(pre_tanh)  # (B, H, A)
    expected = {
        "chunk": np.tanh(pre_tanh),
        "mean": np.broadcast_to(np.tanh(mu), (5, 4, 2)),
        "log_prob": step.sum(axis=(1, 2)),
    }
    assert np.abs(expected["chunk"]).max() > 1 - 1e-8  # saturated actions are among them
    np.testing.assert_allclose(chunk.numpy(), expected["chunk"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(mean_chunk.numpy(), expected["mean"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(log_prob.numpy(), expected["log_prob"], rtol=1e-5)
    np.testing.assert_allclose(first.numpy(), expected["chunk"][:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(first_mean.numpy(), expected["mean"][:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(first_log_prob.numpy(), step[:, 0].sum(axis=1), rtol=1e-5)


def test_autoregressive_decoding_is_causal():
    """Step t sees the queries and outputs of steps <= t only: changing the last query leaves the rest."""
    torch.manual_seed(0)
    policy = TanhGaussianChunkPolicy(
        3, 1, 2, 4, feature_dim=16, num_heads=2, feedforward_dim=32, decoding="autoregressive"
    )
    obs = torch.randn(5, 1, 3)
    _, _, before = policy(obs)
    with torch.no_grad():
        policy.transformer.queries[-1].add_(torch.randn(16))  # not a constant: LayerNorm removes those
    _, _, after = policy(obs)
    torch.testing.assert_close(after[:, :-1], before[:, :-1])
    assert not torch.allclose(after[:, -1], before[:, -1])


# --------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("entropy_above_target", [True, False])
def test_temperature_moves_toward_the_target_entropy(entropy_above_target):
    torch.manual_seed(0)
    agent = tiny_agent("chunk_sac", Dims(3, 1, 2, 2))
    obs, actions = torch.randn(32, 1, 3), torch.rand(32, 2, 2) * 2 - 1
    mask = torch.ones(32, 2, dtype=torch.bool)
    entropy = -agent.actor(obs)[1].mean().item()
    agent.target_entropy = entropy - 20.0 if entropy_above_target else entropy + 20.0
    alpha_before = agent.alpha().item()
    for _ in range(5):
        agent.update_actor(obs, actions, mask)
    assert (agent.alpha().item() < alpha_before) == entropy_above_target
    assert agent.alpha().item() != alpha_before


# --------------------------------------------------------------------------- critic strategies


class StubCritic(nn.Module):
    """Q_1 = Σ a, Q_2 = 2 Σ a over the (..., L, A) chunk it is given; records each call's chunk shape."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, obs, chunk, detach_params=False):
        self.calls.append(tuple(chunk.shape))
        total = chunk.sum(dim=(-2, -1))
        return torch.stack([total, 2 * total])


HAND_CHUNK = torch.tensor([[[0.5, 0.1], [-0.2, -0.3], [0.4, 0.4]]])  # step sums 0.6, −0.5, 0.8


@pytest.mark.parametrize(
    "critic_input, strategy, expected, critic_shape",
    [
        # min(Σ, 2Σ) over the whole chunk: Σ = 0.9
        ("chunk", "standard", 0.9, (1, 3, 2)),
        # per step min(Σ_t, 2Σ_t) = [0.6, −1.0, 0.8]
        ("first_action", "standard", 0.6, (1, 1, 1, 2)),
        ("first_action", "conservative", -1.0, (1, 3, 1, 2)),
        # weights ∝ 0.5^t = [1, 0.5, 0.25] / 1.75
        ("first_action", "temporal_weighted", (0.6 - 0.5 + 0.2) / 1.75, (1, 3, 1, 2)),
    ],
)
def test_actor_value_of_each_critic_strategy(critic_input, strategy, expected, critic_shape):
    agent = tiny_agent(
        "chunk_sac",
        Dims(3, 1, 2, 3),
        f"agent.critic_input={critic_input}",
        f"agent.actor_strategy={strategy}",
        "agent.temporal_decay=0.5",
    )
    agent.critic = StubCritic()
    value = agent.policy_value(torch.zeros(1, 1, 3), HAND_CHUNK)
    assert value.item() == pytest.approx(expected, abs=1e-6)
    assert agent.critic.calls == [critic_shape]  # all steps in one batched call


# --------------------------------------------------------------------------- TD3+BC


class StubTargetActor(nn.Module):
    def forward(self, obs):
        return 1.5 * torch.tanh(obs[:, -1:, :2])  # (B, H = 1, A = 2), beyond ±1 for large observations


class StubTargetCritic(nn.Module):
    """Q_1 = s·u + a·w_1, Q_2 = s·u + a·w_2 on (B, N, 1, A) chunks -> (2, B, N)."""

    def forward(self, obs, chunk):
        state_part = (obs[:, -1] @ torch.tensor([1.0, -1.0, 0.5]))[:, None]
        return torch.stack(
            [
                state_part + chunk[..., 0, :] @ torch.tensor([2.0, 1.0]),
                state_part + chunk[..., 0, :] @ torch.tensor([-1.0, 3.0]),
            ]
        )


def test_td3_target_with_horizon_one_is_the_one_step_td3_target():
    agent = tiny_agent("td3bc", Dims(3, 1, 2, 1), "agent.policy_noise=0.4", "agent.noise_clip=0.3")
    agent.actor_target, agent.critic_target = StubTargetActor(), StubTargetCritic()
    gamma = 0.9
    batch = {
        "cumulative_reward": torch.tensor([1.0, -0.5, 0.25, 2.0]),
        "chunk_done": torch.tensor([0.0, 1.0, 0.0, 0.0]),
        "discount_factor": torch.full((4,), gamma),  # γ^τ with τ = 1
    }
    next_obs = torch.tensor([[[0.1, -0.2, 0.3]], [[2.0, 1.0, -1.0]], [[-3.0, 0.5, 0.0]], [[0.0, -4.0, 2.0]]])
    torch.manual_seed(7)
    target = chunk_target(batch, agent.next_state_value(next_obs, batch))

    # r + γ (1 − d) min_k Q_k^targ(s′, clip(π′(s′) + clip(ε, −c, c), −1, 1)), ε ~ N(0, 0.4²), c = 0.3
    epsilon = 0.4 * torch.randn(4, 1, 2, generator=torch.Generator().manual_seed(7))
    pi = 1.5 * torch.tanh(next_obs[:, 0, :2])
    a = (pi + epsilon[:, 0].clamp(-0.3, 0.3)).clamp(-1.0, 1.0)
    s_u = next_obs[:, 0, 0] - next_obs[:, 0, 1] + 0.5 * next_obs[:, 0, 2]
    q1 = s_u + 2.0 * a[:, 0] + 1.0 * a[:, 1]
    q2 = s_u - 1.0 * a[:, 0] + 3.0 * a[:, 1]
    expected = batch["cumulative_reward"] + gamma * (1 - batch["chunk_done"]) * torch.minimum(q1, q2)
    torch.testing.assert_close(target, expected)


def test_td3bc_delays_actor_and_target_updates():
    torch.manual_seed(0)
    agent = tiny_agent("td3bc", Dims(3, 1, 2, 2))
    batch = {
        "observations": torch.randn(16, 1, 3),
        "next_observations": torch.randn(16, 1, 3),
        "actions": torch.rand(16, 2, 2) * 2 - 1,
        "action_mask": torch.ones(16, 2, dtype=torch.bool),
        "cumulative_reward": torch.randn(16),
        "chunk_done": torch.zeros(16),
        "discount_factor": torch.full((16,), 0.81),
    }

    def snapshot():
        return [
            nn.utils.parameters_to_vector(m.parameters()).clone()
            for m in (agent.actor, agent.actor_target, agent.critic_target)
        ]

    for index in range(4):
        before = snapshot()
        metrics = agent.update(batch)
        assert ("actor/loss" in metrics) == (index % 2 == 0)  # actor metrics from actor updates only
        moved = [not torch.equal(b, a) for b, a in zip(before, snapshot(), strict=True)]
        assert moved == [index % 2 == 0] * 3, index  # policy_delay = 2: updates 0, 2


# --------------------------------------------------------------------------- training, checkpoints, resume

AGENT_VARIANTS = {
    "chunk_sac": ("chunk_sac", []),
    "chunk_sac-first_action": (
        "chunk_sac",
        [
            "agent.critic_input=first_action",
            "agent.actor_strategy=conservative",
            "agent.policy.decoding=autoregressive",
        ],
    ),
    "td3bc": ("td3bc", []),
}


@pytest.mark.parametrize("variant", list(AGENT_VARIANTS))
def test_agent_trains_with_finite_losses(tmp_path, variant):
    torch.manual_seed(0)
    name, extra = AGENT_VARIANTS[variant]
    store = chain_store(tmp_path / "chain.zarr")
    run = build_run(tiny_config(name, store, tmp_path / "run", "steps=150", *extra))
    losses = []
    for _ in range(150):
        metrics = run.agent.update(run.sampler.sample())
        assert all(torch.isfinite(v) for v in metrics.values())
        losses.append(metrics["critic/loss"].item())
    assert np.mean(losses[-30:]) < np.mean(losses[:30])
    if name == "chunk_sac":
        assert metrics["q_chunking/chunk_size"].item() == 2
        assert metrics["q_chunking/adjusted_entropy"].item() == -4.0  # −A · H (linear scaling)


class StandInActor(nn.Module):
    """An actor whose chunks are fixed (B = 1 and 3 alike): the tanh-Gaussian's (sample, log p, mean chunk)
    or the deterministic actor's chunk, in normalized units and beyond [-1, 1] in places."""

    SAMPLE = torch.tensor([[-3.0, 0.75], [0.0, 1.25]])
    MEAN = torch.tensor([[0.5, -2.0], [1.5, -0.25]])

    def __init__(self, gaussian: bool):
        super().__init__()
        self.gaussian = gaussian

    def forward(self, obs):
        sample, mean = (chunk.expand(obs.shape[0], -1, -1) for chunk in (self.SAMPLE, self.MEAN))
        return (sample, torch.zeros(obs.shape[0]), mean) if self.gaussian else sample


@pytest.mark.parametrize(
    "name, select", [("chunk_sac", "mean"), ("chunk_sac", "sample"), ("td3bc", "deterministic")]
)
def test_checkpoint_loads_and_acts_within_bounds(tmp_path, name, select):
    """`act` executes the actor's chunk (the mean chunk or the sample, as `act.select` says), clipped to
    [-1, 1] and mapped to the action bounds: a = low + (clip(c) + 1) (high − low) / 2. By hand for bounds
    low = (−2, 0), high = (2, 10), i.e. a = (2 clip(c_0), 5 (clip(c_1) + 1)):
    MEAN   [[0.5, −2], [1.5, −0.25]] -> clipped [[0.5, −1], [1, −0.25]] -> [[1, 0], [2, 3.75]]
    SAMPLE [[−3, 0.75], [0, 1.25]]   -> clipped [[−1, 0.75], [0, 1]]   -> [[−2, 8.75], [0, 10]]"""
    store = chain_store(tmp_path / "chain.zarr")
    final = train(tiny_config(name, store, tmp_path / "run", "steps=20", f"agent.act.select={select}"))
    agent = load_agent(final)
    assert type(agent).name == name
    assert agent.act(torch.zeros(1, 8)).shape == (2, 2)
    assert agent.act(torch.zeros(3, 1, 8)).shape == (3, 2, 2)
    # The store declares the bounds [-1, 1]: the checkpoint's normalizer carries them.
    assert agent.normalizer.action_low.tolist() == [-1.0, -1.0]
    assert agent.normalizer.action_high.tolist() == [1.0, 1.0]
    agent.normalizer.action_low.copy_(torch.tensor([-2.0, 0.0]))
    agent.normalizer.action_high.copy_(torch.tensor([2.0, 10.0]))
    agent.actor = StandInActor(gaussian=name == "chunk_sac")
    expected = [[1.0, 0.0], [2.0, 3.75]] if select == "mean" else [[-2.0, 8.75], [0.0, 10.0]]
    np.testing.assert_allclose(agent.act(torch.zeros(1, 8)).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(agent.act(np.zeros((3, 1, 8), np.float32)), [expected] * 3, rtol=0, atol=1e-6)
    obs, chunks = torch.zeros(3, 1, 8), torch.zeros(3, 2, 2)
    assert agent.q_value(obs, chunks).shape == (3,)
    assert agent.q_value(obs, chunks, reduce="none").shape == (2, 3)


@pytest.mark.parametrize("name", BY_ACTOR)
def test_candidates_are_refused_for_agents_that_act_by_their_actor(tmp_path, name):
    from offline_chunk.errors import ConfigError
    from offline_chunk.harness.evaluation import evaluate

    final = train(tiny_config(name, chain_store(tmp_path / "chain.zarr"), tmp_path / "run", "steps=2"))
    with pytest.raises(ConfigError, match=f"candidates=4: agent '{name}' does not act by candidate chunks"):
        evaluate(final, candidates=4)


@pytest.mark.parametrize("name", BY_ACTOR)
def test_presets_build_the_agents(name):
    """The presets size the transformer (feature_dim); their U-Net sizes (down_dims) do not apply to it."""
    for preset in ("default", "gpu"):
        cfg = load_config(name, preset)
        assert "down_dims" not in cfg.agent.policy.model_dump()
        agent = make_agent(cfg.agent, Dims(4, 1, 2, 5), Normalizer(4, 2), cfg.steps)
        assert agent.actor.head.in_features == cfg.agent.policy.feature_dim


def test_the_metric_log_averages_each_metric_over_the_updates_that_report_it():
    """TD3+BC's actor reports on every 2nd update: its mean is over those, the critic's over all."""
    from offline_chunk.train import MetricLog

    log = MetricLog()
    for step in range(4):
        metrics = {
            "critic/loss": torch.tensor(float(step)),
            "critic/q_abs_max": torch.tensor(float(5 - step)),
        }
        log.add({**metrics, "actor/loss": torch.tensor(10.0 * step)} if step % 2 == 0 else metrics)
    means = log.read()
    assert means == {"critic/loss": 1.5, "critic/q_abs_max": 3.5, "actor/loss": 10.0, "guard/q_abs_max": 5.0}

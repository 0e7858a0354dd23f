"""chunk_sac as RLPD-AC (configs/train/rlpd_ac.yaml): each piece against Q-chunking's acrlpd.py computed by
hand here: the MLP tanh-Gaussian actor over the flattened chunk, the critic MLP in RLPD's order (Dense ->
LayerNorm -> ReLU), the target without the entropy term over the mean of all target critics, the actor's Q
as the ensemble's mean, and the target entropy −0.5 · H · A."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, TanhTransform, TransformedDistribution

from offline_chunk.agents import Dims, make_agent
from offline_chunk.config import load_config
from offline_chunk.data.normalize import Normalizer
from offline_chunk.nets.critic import MLPChunkCritic
from offline_chunk.policies.mlp_gaussian import TanhGaussianMLPPolicy

OBS_DIM, ACTION_DIM, HORIZON = 6, 2, 3


def small_rlpd_agent(*overrides: str):
    """RLPD-AC's preset at small widths (every setting but the sizes is the preset's)."""
    cfg = load_config(
        "chunk_sac",
        "rlpd_ac",
        [
            f"horizon={HORIZON}",
            "agent.policy.hidden_dims=[16,16]",
            "agent.critic.hidden_dims=[16,16]",
            *overrides,
        ],
    )
    dims = Dims(OBS_DIM, 1, ACTION_DIM, cfg.horizon)
    return make_agent(cfg.agent, dims, Normalizer(OBS_DIM, ACTION_DIM), total_steps=10).double()


def test_the_actor_is_a_relu_mlp_with_one_tanh_gaussian_over_the_flattened_chunk():
    torch.manual_seed(0)
    policy = TanhGaussianMLPPolicy(OBS_DIM, 2, ACTION_DIM, HORIZON, hidden_dims=[8, 8]).double()
    obs = torch.randn(5, 2, OBS_DIM, dtype=torch.float64)
    torch.manual_seed(1)
    chunk, log_prob, mean_chunk = policy(obs)

    # by hand: Dense -> ReLU twice (no LayerNorm), then the two heads; log-std clipped to [-20, 2]
    x = obs.reshape(5, -1)
    first = policy.trunk.parts[0]
    x = F.relu(x @ first.weight.T + first.bias)
    x = F.relu(x @ policy.trunk.hidden[0].weight.T + policy.trunk.hidden[0].bias)
    mean = x @ policy.mean_head.weight.T + policy.mean_head.bias
    log_std = (x @ policy.log_std_head.weight.T + policy.log_std_head.bias).clamp(-20.0, 2.0)
    torch.manual_seed(1)
    noise = torch.randn(5, HORIZON, ACTION_DIM, dtype=torch.float64).reshape(5, -1)
    expected_chunk = torch.tanh(mean + log_std.exp() * noise)
    flat = Independent(TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform()), 1)

    torch.testing.assert_close(chunk.reshape(5, -1), expected_chunk)
    torch.testing.assert_close(mean_chunk.reshape(5, -1), torch.tanh(mean))
    # TanhTransform's log-det is the stable form too; both in float64, rounding ~1e-14
    torch.testing.assert_close(
        log_prob, flat.log_prob(expected_chunk.clamp(-1 + 1e-12, 1 - 1e-12)), rtol=1e-7, atol=1e-7
    )


def test_the_critic_mlp_in_rlpds_order():
    torch.manual_seed(0)
    critic = MLPChunkCritic(OBS_DIM, 1, ACTION_DIM, HORIZON, hidden_dims=[8, 8], mlp_style="rlpd").double()
    obs = torch.randn(4, 1, OBS_DIM, dtype=torch.float64)
    chunk = torch.rand(4, HORIZON, ACTION_DIM, dtype=torch.float64) * 2 - 1
    trunk = critic.trunk
    x = (
        obs.reshape(4, -1) @ trunk.parts[0].weight.T
        + trunk.parts[0].bias
        + chunk.reshape(4, -1) @ trunk.parts[1].weight.T
    )

    def layer_norm_relu(h, norm):  # flax LayerNorm (eps 1e-6), then ReLU
        mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return F.relu((h - mean) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias)

    x = layer_norm_relu(x, trunk.norms[0])
    x = layer_norm_relu(x @ trunk.hidden[0].weight.T + trunk.hidden[0].bias, trunk.norms[1])
    expected = (x @ critic.value.weight.T + critic.value.bias).squeeze(-1)
    torch.testing.assert_close(critic(obs, chunk), expected)


def test_the_target_is_the_mean_of_all_target_critics_without_the_entropy_term():
    agent = small_rlpd_agent()
    assert agent.critic.size == 10
    next_obs = torch.randn(7, 1, OBS_DIM, dtype=torch.float64)
    torch.manual_seed(3)
    value = agent.next_state_value(next_obs, {})
    torch.manual_seed(3)
    next_chunk, log_prob, _ = agent.actor(next_obs)
    members = agent.critic_target(next_obs, next_chunk)  # (10, B)
    torch.testing.assert_close(value, sum(members[k] for k in range(10)) / 10)

    soft = small_rlpd_agent("agent.backup_entropy=true")
    soft.load_state_dict(agent.state_dict())
    torch.manual_seed(3)
    torch.testing.assert_close(soft.next_state_value(next_obs, {}), value - soft.alpha() * log_prob)


def test_the_actor_scores_by_the_mean_over_the_ensemble_and_aims_at_minus_half_h_a_entropy():
    agent = small_rlpd_agent()
    obs = torch.randn(5, 1, OBS_DIM, dtype=torch.float64)
    chunk = torch.rand(5, HORIZON, ACTION_DIM, dtype=torch.float64) * 2 - 1
    members = agent.critic(obs, chunk)
    torch.testing.assert_close(agent.policy_value(obs, chunk), members.sum(0) / members.shape[0])
    assert agent.target_entropy == -0.5 * HORIZON * ACTION_DIM
    assert (
        small_rlpd_agent("horizon=1").target_entropy == -0.5 * ACTION_DIM
    )  # RLPD: −2.5 for A = 5 in OGBench


def test_an_rlpd_ac_agent_trains_and_its_losses_stay_finite():
    agent = small_rlpd_agent().float()
    batch = {
        "observations": torch.randn(16, 1, OBS_DIM),
        "actions": torch.rand(16, HORIZON, ACTION_DIM) * 2 - 1,
        "next_observations": torch.randn(16, 1, OBS_DIM),
        "cumulative_reward": -torch.ones(16),
        "chunk_done": torch.zeros(16),
        "discount_factor": torch.full((16,), 0.99**HORIZON),
        "action_mask": torch.ones(16, HORIZON, dtype=torch.bool),
    }
    before = [p.detach().clone() for p in agent.actor.parameters()]
    metrics = agent.update(batch)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, agent.actor.parameters(), strict=True))

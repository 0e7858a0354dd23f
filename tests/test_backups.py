"""Backups over candidate chunks and acting by best of N inside the diffusion agents
(docs/chunk_transitions.md, "Backups over candidate chunks"), by hand: the policy's candidates and the
critics' values are fixed stand-ins, so the chunk each rule picks and the value it backs up are known in
advance."""

import pytest
import torch
from helpers import ONLINE_Q, TARGET_Q, chain_store, tiny_config
from torch import nn

from offline_chunk.errors import ConfigError
from offline_chunk.train import build_run

# B = 3 states, N = 2 candidates, H = 2, A = 2: candidate j of state b is the constant chunk 10 b + j.
CANDIDATES = (10 * torch.arange(3.0)[:, None] + torch.arange(2.0))[..., None, None].expand(3, 2, 2, 2)


class FixedCritics(nn.Module):
    """Critics whose values (K, B, N) of the candidates are given: chunks (B, n, H, A) of CANDIDATES, any n
    of them per state, get values[:, b, j], j read from the chunk (10 b + j)."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = values

    def forward(self, obs, chunks, detach_params=False):
        j = (chunks[:, :, 0, 0] - 10 * torch.arange(len(chunks))[:, None]).long()  # (B, n)
        return self.values.gather(2, j.expand(self.values.shape[0], -1, -1))


class FixedCandidates(nn.Module):
    def sample_candidates(self, obs, n, keep_graph=False, generator=None):
        assert n == CANDIDATES.shape[1]
        return CANDIDATES


@pytest.fixture
def agent(tmp_path):
    def build(*overrides):
        cfg = tiny_config("cpql", chain_store(tmp_path / "chain.zarr"), tmp_path / "run", *overrides)
        agent = build_run(cfg).agent
        agent.actor = agent.actor_ema = FixedCandidates()
        agent.critic, agent.critic_target = FixedCritics(ONLINE_Q), FixedCritics(TARGET_Q)
        return agent

    return build


def chosen(chunks: torch.Tensor) -> list[int]:
    """The candidate index j of each state's chosen chunk (10 b + j)."""
    return (chunks[:, 0, 0] - 10 * torch.arange(len(chunks))).long().tolist()


@pytest.mark.parametrize(
    "act, expected",
    [
        # QC: online critics, mean [[0, 9], [1, 1], [2.5, 4.5]] -> [1, 0 (tie: the first), 1]
        (["agent.act.critic=online", "agent.act.q_agg=mean"], [1, 0, 1]),
        # online min [[0, 9], [1, 1], [0, 0]] -> [1, 0, 0]
        (["agent.act.critic=online", "agent.act.q_agg=min"], [1, 0, 0]),
        # Diffusion-QL's critics: target min [[4, 3], [1, 0], [8, -2]] -> [0, 0, 0]
        (["agent.act.critic=target", "agent.act.q_agg=min"], [0, 0, 0]),
        # target mean [[4.5, 4.5], [4, 0.5], [9, -1]] -> [0 (tie), 0, 0]
        (["agent.act.critic=target", "agent.act.q_agg=mean"], [0, 0, 0]),
    ],
)
def test_acting_by_best_of_n_picks_by_hand(agent, act, expected):
    acting = agent("agent.act.candidates=2", "agent.act.select=argmax", *act)
    assert chosen(acting.choose_chunk(torch.zeros(3, 1, 8))) == expected


@pytest.mark.parametrize(
    "backup, agg, value",
    [
        (
            "best_of_n",
            "mean",
            [4.5, 4.0, -1.0],
        ),  # j* = [1, 0, 1] by the online mean, valued by the target mean
        ("best_of_n", "min", [3.0, 1.0, 8.0]),  # j* = [1, 0, 0] by the online min, valued by the target min
        ("max_of_n", "min", [5.0, 1.0, 8.0]),  # min_k max_j of the target critics
    ],
)
def test_the_agents_backup_over_candidates_by_hand(agent, backup, agg, value):
    backing_up = agent(f"agent.backup={backup}", f"agent.q_agg={agg}", "agent.backup_candidates=2")
    next_value = backing_up.next_state_value(torch.zeros(3, 1, 8), batch={})
    torch.testing.assert_close(next_value, torch.tensor(value), rtol=0, atol=0)


def test_bad_aggregations_and_acting_critics_are_refused(tmp_path):
    for override, message in (
        ("agent.q_agg=max", "agent.q_agg: Input should be 'min' or 'mean'"),
        ("agent.act.q_agg=median", "agent.act.q_agg: Input should be 'min' or 'mean'"),
        ("agent.act.critic=ema", "agent.act.critic: Input should be 'target' or 'online'"),
    ):
        with pytest.raises(ConfigError, match=message):
            tiny_config("cpql", tmp_path / "chain.zarr", tmp_path / "run", override)


# --------------------------------------------------------------------------- the qc recipe


def test_qc_recipe_is_q_chunkings_settings():
    """The recipe against Q-chunking's values (agents/acfql.py get_config, main.py flags, its README)."""
    from offline_chunk.config import load_config

    for agent in ("cpql", "dql"):
        cfg = load_config(agent, "qc")
        a = cfg.agent
        assert (cfg.horizon, cfg.gamma, cfg.batch_size, cfg.steps) == (5, 0.99, 256, 1_000_000)
        assert (a.eta, a.backup, a.backup_candidates, a.q_agg) == (0, "best_of_n", 32, "mean")
        assert (a.tau, a.target_every, a.target_start, a.lr) == (0.005, 1, 0, 3e-4)
        assert a.target_lower_bound == "none" and a.grad_norm == float("inf")
        act = a.act
        assert (act.actor, act.candidates, act.select, act.critic, act.q_agg) == (
            "online",
            32,
            "argmax",
            "online",
            "mean",
        )
        critic = a.critic
        assert (critic.kind, critic.ensemble, critic.hidden_dims, critic.layer_norm) == (
            "mlp",
            2,
            [512, 512, 512, 512],
            True,
        )
        assert cfg.eval_episodes == 50


def test_qc_recipe_trains_with_mlp_critics_and_no_actor_q_sample(tmp_path, monkeypatch):
    from offline_chunk.config import load_config
    from offline_chunk.nets.critic import MLPChunkCritic

    store = chain_store(tmp_path / "chain.zarr")
    tiny = ["agent.critic.hidden_dims=[16, 16]", "agent.backup_candidates=3", "agent.act.candidates=3"]
    overrides = [f"dataset={store}", f"run_dir={tmp_path / 'run'}", "batch_size=16", "horizon=2", *tiny]
    run = build_run(load_config("cpql", "qc", overrides))
    assert isinstance(run.agent.critic._base, MLPChunkCritic)

    def no_sample(*args, **kwargs):
        raise AssertionError("eta = 0: the actor's Q term samples nothing")

    monkeypatch.setattr(run.agent.actor, "sample", no_sample)
    for _ in range(3):
        metrics = run.agent.update(run.sampler.sample())
    assert all(torch.isfinite(value) for value in metrics.values())
    assert metrics["actor/q_term"] == 0 and metrics["actor/bc_loss"] > 0
    assert run.agent.act(torch.zeros(1, 8)).shape == (2, 2)

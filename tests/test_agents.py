"""Agents: chunk Bellman targets by hand, policy evaluation against Monte-Carlo chunk values, short
training runs, checkpoints, exact resume, and refusal of bad checkpoint files."""

import numpy as np
import pytest
import torch
from helpers import BY_CANDIDATES, ONLINE_Q, TARGET_Q, TINY_NETS, chain_store, monte_carlo_values, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from offline_chunk import load_agent
from offline_chunk.agents import AGENTS
from offline_chunk.agents.targets import (
    backup_value,
    best_candidate,
    chunk_target,
    critic_loss,
    lerp_parameters_,
    lower_bounded,
)
from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.config import load_config
from offline_chunk.data.store import StepData, write_store
from offline_chunk.errors import CheckpointError, ConfigError, DataError
from offline_chunk.harness.cli import main
from offline_chunk.train import build_run, train

# --------------------------------------------------------------------------- targets by hand


def hand_batch():
    return {
        "cumulative_reward": torch.tensor([1.0, 2.0, 3.0]),
        "chunk_done": torch.tensor([0.0, 1.0, 0.0]),
        "discount_factor": torch.tensor([0.9, 0.81, 0.5]),
    }


@pytest.mark.parametrize(
    "backup, agg, next_value",
    [
        # min over critics then (N = 1) the single candidate: first candidate only
        ("min", "min", [4.0, 1.0, 8.0]),
        ("mean", "mean", [4.5, 4.0, 9.0]),
        # Diffusion-QL / CPQL order: per critic the max over candidates, [[6, 1, 10], [5, 7, 8]], then the min
        # over critics. The other order (per candidate the min, [[4, 3], [1, 0], [8, -2]], then the max)
        # gives 4 for state 0: the two orders differ there.
        ("max_of_n", "min", [5.0, 1.0, 8.0]),
    ],
)
def test_chunk_targets_by_hand(backup, agg, next_value):
    single = backup in ("min", "mean")
    value = backup_value(backup, TARGET_Q[..., :1] if single else TARGET_Q)
    np.testing.assert_allclose(value.numpy(), next_value)
    y = chunk_target(hand_batch(), value)
    # y = R + (1 - d) γ^τ V: the done row keeps only its reward.
    expected = [1 + 0.9 * next_value[0], 2.0, 3 + 0.5 * next_value[2]]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)


def test_best_candidate_is_argmax_of_the_aggregated_critics():
    # mean over critics: [[0, 9], [1, 1], [2.5, 4.5]]; min: [[0, 9], [1, 1], [0, 0]]
    assert best_candidate(ONLINE_Q, "mean").tolist() == [1, 0, 1]
    assert best_candidate(ONLINE_Q, "min").tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="aggregation 'max'"):
        best_candidate(ONLINE_Q, "max")


def test_monte_carlo_lower_bound_lifts_only_targets_below_the_recorded_return():
    batch = {**hand_batch(), "return_lower_bound": torch.tensor([5.0, 0.0, -100.0])}
    y = chunk_target(batch, torch.tensor([4.0, 1.0, 8.0]))  # [1 + 0.9·4, 2, 3 + 0.5·8] = [4.6, 2, 7]
    np.testing.assert_allclose(lower_bounded(y, batch, "monte_carlo").numpy(), [5.0, 2.0, 7.0], rtol=1e-6)
    np.testing.assert_allclose(lower_bounded(y, batch, "none").numpy(), [4.6, 2.0, 7.0], rtol=1e-6)


def test_critic_loss_is_mse_summed_over_critics():
    q = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    target = torch.tensor([0.0, 2.0])
    # critic 0: ((1)^2 + 0) / 2 = 0.5; critic 1: (9 + 9) / 2 = 9
    assert critic_loss(q, target).item() == pytest.approx(9.5)


def test_lerp_parameters_is_polyak():
    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = [
        0.75 * t.detach().clone() + 0.25 * o.detach().clone()
        for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    lerp_parameters_(target, online, 0.25)
    for param, want in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach(), want)


# --------------------------------------------------------------------------- tiny stores


def test_sarsa_critic_converges_to_monte_carlo_chunk_values(tmp_path):
    """Policy evaluation: with the data's own next chunks the chunk critic's fixed point is the MC return."""
    torch.manual_seed(0)
    length, gamma = 8, 0.9
    store = chain_store(tmp_path / "chain.zarr", length=length)
    cfg = tiny_config(
        "dql",
        store,
        tmp_path / "run",
        "steps=1500",
        "agent.backup=sarsa",
        "agent.lr=0.003",
        "agent.tau=0.05",
        "agent.lr_schedule=constant",
    )
    run = build_run(cfg)
    agent = run.agent
    for _ in range(cfg.steps):
        batch = run.sampler.sample()
        obs = agent.normalizer.obs(batch["observations"])
        agent.update_critic(
            obs,
            agent.normalizer.action(batch["actions"]),
            agent.normalizer.obs(batch["next_observations"]),
            batch,
        )
        agent.num_updates += 1
        agent.update_targets()
    data = run.dataset.data
    rows = np.arange(length)  # the first episode; every start row is a transition (terminal at the end)
    obs = torch.as_tensor(data.obs[rows])[:, None]
    chunks = torch.as_tensor(data.action[np.minimum(rows[:, None] + np.arange(2), length - 1)])
    q = agent.q_value(obs, chunks, reduce="mean").numpy()
    np.testing.assert_allclose(q, monte_carlo_values(length, gamma), atol=0.15)


@pytest.mark.parametrize("bound", ["none", "monte_carlo"])
def test_return_bound_carries_the_recorded_return_without_target_iterations(tmp_path, bound):
    """Frozen target critics (no Polyak update ever) back up only their initial values, so the critic can
    learn the chain's Monte-Carlo values only through the recorded-return lower bound."""
    torch.manual_seed(0)
    length = 8
    store = chain_store(tmp_path / "chain.zarr", length=length, reward_scale=10.0)
    cfg = tiny_config(
        "cpql",
        store,
        tmp_path / "run",
        "agent.lr=0.003",
        "agent.target_start=1000000",
        f"agent.target_lower_bound={bound}",
    )
    run = build_run(cfg)
    agent = run.agent
    for _ in range(600):
        agent.update_critic(*agent.normalized(batch := run.sampler.sample()), batch)
    data = run.dataset.data
    rows = np.arange(length)
    obs = torch.as_tensor(data.obs[rows])[:, None]
    chunks = torch.as_tensor(data.action[np.minimum(rows[:, None] + np.arange(2), length - 1)])
    q = agent.q_value(obs, chunks, reduce="mean").numpy()
    mc = 10.0 * monte_carlo_values(length, 0.9)  # the chain's rewards are positive: G > R^(τ) everywhere
    if bound == "monte_carlo":
        np.testing.assert_allclose(q, mc, atol=1.0)
    else:  # the first rows' values stay far below their return (by ~γ² G_{t+2})
        assert np.all(q[:4] < mc[:4] - 10.0)


def test_with_eta_0_the_actor_never_sees_the_critic(tmp_path):
    """QC mode and its BC-only ablation (README, `make benchmark`) train the same actor: with eta = 0 the
    actor's weights after training depend neither on the rewards nor on the critic's target."""

    def flat(module):
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    actors = []
    for scale, bound in [(1.0, "none"), (10.0, "monte_carlo")]:
        store = chain_store(tmp_path / f"chain{scale}.zarr", reward_scale=scale)
        cfg = tiny_config("cpql", store, tmp_path / f"run{scale}", "agent.eta=0",
                          f"agent.target_lower_bound={bound}")  # fmt: skip
        torch.manual_seed(0)
        run = build_run(cfg)
        initial = flat(run.agent.actor)
        for _ in range(15):
            run.agent.update(run.sampler.sample())
        actors.append(flat(run.agent.actor))
        assert not torch.equal(actors[-1], initial)
    torch.testing.assert_close(actors[0], actors[1], rtol=0, atol=0)


def test_chunk_sac_refuses_the_return_bound(tmp_path):
    """A soft Q adds entropy bonuses that the recorded return does not bound: chunk_sac has no such option."""
    with pytest.raises(
        ConfigError, match="agent.target_lower_bound: Input should be 'none' .got 'monte_carlo'"
    ):
        tiny_config(
            "chunk_sac", tmp_path / "chain.zarr", tmp_path / "run", "agent.target_lower_bound=monte_carlo"
        )


# --------------------------------------------------------------------------- training runs


@pytest.mark.parametrize("agent_name", BY_CANDIDATES)
def test_agent_trains_with_finite_decreasing_critic_loss(tmp_path, agent_name):
    torch.manual_seed(0)
    store = chain_store(tmp_path / "chain.zarr")
    cfg = tiny_config(agent_name, store, tmp_path / "run", "steps=150")
    run = build_run(cfg)
    losses = []
    for _ in range(cfg.steps):
        metrics = run.agent.update(run.sampler.sample())
        assert all(torch.isfinite(v) for v in metrics.values())
        losses.append(metrics["critic/loss"].item())
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:30])


def test_train_cli_writes_checkpoint_and_events_and_load_agent_works(tmp_path, capsys):
    store = chain_store(tmp_path / "chain.zarr")
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--agent",
            "cpql",
            "--dataset",
            str(store),
            "--steps",
            "20",
            "--run",
            str(run_dir),
            "horizon=2",
            "log_every=8",
            *TINY_NETS,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    final = run_dir / "checkpoints" / "final.pt"
    assert str(final) in out and final.is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "config.yaml").is_file()
    # The closing summary: updates done, the last logged critic loss (as TensorBoard has it), next steps.
    assert "trained      cpql: 20 updates (step 0 to 20)" in out
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    last_loss = events.Scalars("critic/loss")[-1]
    assert last_loss.step == 20 and f"critic loss {last_loss.value:.4g} " in out
    assert "(means over the last 4 updates)" in out  # logs at updates 8, 16 and the last, 20
    assert f"make eval CKPT={final}" in out and "evaluate_q_on_demos.ipynb" in out

    agent = load_agent(final)
    obs = torch.zeros(3, 1, 8)
    chunks = torch.zeros(3, 2, 2)
    assert agent.q_value(obs, chunks).shape == (3,)
    assert agent.q_value(obs, chunks, reduce="none").shape == (2, 3)
    assert agent.act(torch.zeros(1, 8)).shape == (2, 2)
    # The chosen chunk goes out clipped to [-1, 1] and mapped to the action bounds, a = low + (clip(c) + 1) ·
    # (high − low) / 2, with the bounds the store declares ([-1, 1], carried by the checkpoint) and with
    # others. CPQL chooses among the actor's candidate chunks by Q: all 4 candidates are one known chunk c.
    assert agent.normalizer.action_low.tolist() == [-1.0, -1.0]
    assert agent.normalizer.action_high.tolist() == [1.0, 1.0]
    c = torch.tensor([[1.7, -0.25], [-3.0, 0.5]])
    agent.actor.sample_candidates = lambda obs, n, *args, **kwargs: c.expand(obs.shape[0], n, 2, 2)
    np.testing.assert_allclose(agent.act(torch.zeros(1, 8)).numpy(), [[1.0, -0.25], [-1.0, 0.5]], atol=1e-6)
    agent.normalizer.action_low.copy_(torch.tensor([-2.0, 0.0]))
    agent.normalizer.action_high.copy_(torch.tensor([2.0, 10.0]))
    # by hand: (2 clip(c_0), 5 (clip(c_1) + 1)) = [[2, 3.75], [-2, 7.5]]
    np.testing.assert_allclose(agent.act(torch.zeros(1, 8)).numpy(), [[2.0, 3.75], [-2.0, 7.5]], atol=1e-6)


def test_train_cli_from_a_runs_config_repeats_the_run(tmp_path):
    """`train --config <run>/config.yaml` (what `make benchmark` launches) trains the same run again."""
    store = chain_store(tmp_path / "chain.zarr")
    first = train(tiny_config("td3bc", store, tmp_path / "a", "steps=30"))
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), f"run_dir={tmp_path / 'b'}"]) == 0
    a, b = (read_checkpoint(path)["weights"] for path in (first, tmp_path / "b" / "checkpoints" / "final.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("name", list(AGENTS))
def test_resume_is_bit_identical(tmp_path, name):
    """Resumed at update 25: for TD3+BC between its delayed updates; SAC's temperature optimizer travels."""
    store = chain_store(tmp_path / "chain.zarr")
    steps = ["steps=40", "checkpoint_every=25"]
    straight = train(tiny_config(name, store, tmp_path / "a", *steps))
    resumed_from = tmp_path / "a" / "checkpoints" / "step_00000025.pt"
    payload = read_checkpoint(resumed_from)
    cfg = payload["config"].model_copy(update={"run_dir": str(tmp_path / "b")})
    resumed = train(cfg, payload)
    a, b = read_checkpoint(straight)["weights"], read_checkpoint(resumed)["weights"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_version_1_checkpoint_loads_with_the_keys_it_predates(tmp_path):
    """Version 1 predates `target_lower_bound`; its agents trained with the plain target ('none')."""
    store = chain_store(tmp_path / "chain.zarr")
    path = train(tiny_config("cpql", store, tmp_path / "run", "steps=3"))
    payload = torch.load(path, weights_only=True)
    assert payload["version"] == 3
    del payload["config"]["agent"]["target_lower_bound"]
    torch.save({**payload, "version": 1}, tmp_path / "v1.pt")
    assert load_agent(tmp_path / "v1.pt").cfg.target_lower_bound == "none"
    assert read_checkpoint(tmp_path / "v1.pt")["version"] == 3


def test_a_version_2_checkpoint_acts_and_backs_up_as_it_did(tmp_path):
    """Version 2 predates the critic kinds, `q_agg` and the acting critics: it had U-Net critics, acted by the
    target critics' min, and its `double` backup is best_of_n with the min."""
    store = chain_store(tmp_path / "chain.zarr")
    path = train(tiny_config("dql", store, tmp_path / "run", "steps=3"))
    payload = torch.load(path, weights_only=True)
    agent_cfg = payload["config"]["agent"]
    for section, key in (("critic", "kind"), ("act", "critic"), ("act", "q_agg")):
        del agent_cfg[section][key]
    del agent_cfg["q_agg"]
    agent_cfg["backup"] = "double"
    torch.save({**payload, "version": 2}, tmp_path / "v2.pt")
    cfg = load_agent(tmp_path / "v2.pt").cfg
    assert (cfg.backup, cfg.q_agg, cfg.critic.kind) == ("best_of_n", "min", "unet")
    assert (cfg.act.critic, cfg.act.q_agg) == ("target", "min")


def test_bad_checkpoints_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_agent(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not an offline_chunk checkpoint"):
        load_agent(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_agent(tmp_path / "absent.pt")


def test_truncated_checkpoint_is_refused(tmp_path):
    store = chain_store(tmp_path / "chain.zarr")
    final = train(tiny_config("cpql", store, tmp_path / "run", "steps=2"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_agent(truncated)


def test_a_store_whose_episodes_are_all_shorter_than_the_chunk_is_refused_before_training(tmp_path):
    """Ten 3-step episodes without terminals, H = 4: drop_partial keeps no start (none has τ = H or d = 1),
    so there is nothing to sample; the error says why and what to change. drop_partial=false trains."""
    rows = 30
    store = write_store(
        StepData(
            observations={"obs": np.zeros((rows, 3), np.float32)},
            action=np.zeros((rows, 2), np.float32),
            reward=np.zeros(rows, np.float32),
            terminal=np.zeros(rows, bool),
            episode_ends=np.arange(3, rows + 1, 3),
        ),
        tmp_path / "short.zarr",
    )
    with pytest.raises(
        DataError, match="short.zarr: no chunk transitions at horizon=4: .*drop_partial=false"
    ):
        train(tiny_config("cpql", store, tmp_path / "run", "horizon=4", "steps=2"))
    assert not (tmp_path / "run").exists()
    partial = tiny_config("cpql", store, tmp_path / "partial", "horizon=4", "steps=2", "drop_partial=false")
    assert train(partial).exists()


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="did you mean agent.eta"):
        load_config("dql", "default", ["agent.etta=2"])


def test_presets_resolve_per_agent_values():
    assert load_config("dql", "default").steps == 1200  # DQL's CPU budget
    assert load_config("cpql", "default").steps == 3000
    gpu = load_config("dql", "gpu")
    assert gpu.steps == 1_000_000 and "per_agent" not in gpu.model_dump()  # a later preset's value wins
    assert gpu.agent.policy.down_dims == [64, 128, 256]

"""The typed configuration: every layer (preset files, their agent sections, overrides, config files) is
checked for its keys and its types, and each error names the file, the key and the closest valid keys."""

import shutil

import pytest
import yaml

import offline_chunk.config as config
from offline_chunk.agents import AGENTS
from offline_chunk.config import load_config, parse_yaml, read_config, with_overrides
from offline_chunk.errors import ConfigError


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """A copy of the shipped presets that a test may edit, in place of the package's."""
    shutil.copytree(config.CONFIG_DIR, tmp_path / "configs")
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path / "configs")
    return tmp_path / "configs" / "train"


def edit_preset(directory, name, edit):
    path = directory / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_typo_in_a_preset_file_is_refused_naming_file_key_and_closest(presets):
    path = edit_preset(presets, "quick", lambda cfg: cfg.update(eval_evry=7))
    with pytest.raises(ConfigError) as error:
        load_config("cpql", "quick")
    assert str(error.value) == f"{path}: unknown config key 'eval_evry' (did you mean eval_every, log_every?)"


def test_a_misspelt_key_in_a_presets_agent_section_is_refused(presets):
    """Before: silently dropped, and the width fell back to its default."""
    path = edit_preset(presets, "quick", lambda cfg: cfg["agent"]["policy"].update(feature_dm=64))
    with pytest.raises(
        ConfigError,
        match=rf"^{path}: unknown config key 'agent.policy.feature_dm' \(did you mean agent.policy.feature_d",
    ):
        load_config("cpql", "quick")


def test_a_presets_agent_section_sizes_only_the_agents_that_have_the_key(presets):
    """down_dims is a U-Net's: the transformer actors of chunk_sac and td3bc do not take it."""
    edit_preset(presets, "quick", lambda cfg: cfg["agent"]["policy"].update(down_dims=[16]))
    assert load_config("cpql", "quick").agent.policy.down_dims == [16]
    assert "down_dims" not in load_config("td3bc", "quick").agent.policy.model_dump()


def test_a_wrong_type_in_a_preset_is_refused_naming_the_file(presets):
    path = edit_preset(presets, "quick", lambda cfg: cfg.update(steps="many"))
    with pytest.raises(ConfigError, match=rf"^{path}: steps: Input should be a valid integer \(got 'many'\)"):
        load_config("cpql", "quick")


def test_per_agent_sections_name_known_agents(presets):
    edit_preset(presets, "quick", lambda cfg: cfg["per_agent"].update(cpqll={"steps": 3}))
    with pytest.raises(ConfigError, match="per_agent names unknown agents .'cpqll'."):
        load_config("cpql", "quick")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "agent.eta=banana",
            "override 'agent.eta=banana': agent.eta: Input should be a valid number (got 'banana')",
        ),
        ("agent.eta=true", "agent.eta: Input should be a valid number (got True)"),
        ("steps=1.5", "steps: Input should be a valid integer (got 1.5)"),
        ("agent.act.select=best", "agent.act.select: Input should be 'softmax' or 'argmax' (got 'best')"),
        ("agent.eta=-1", "agent.eta: Input should be greater than or equal to 0 (got -1)"),
        (
            "agent.feature_dm=3",
            "unknown config key 'agent.feature_dm' "
            "(did you mean agent.vision.feature_dim, agent.policy.feature_dim",
        ),
        ("agent.alpha=3", "unknown config key 'agent.alpha'"),  # td3bc's, not cpql's
        ("eta", "override 'eta' is not key=value"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("cpql", "default", [override])
    assert message in str(error.value)


def test_overrides_are_typed_values():
    cfg = load_config("cpql", "default", ["agent.lr=1e-4", "agent.policy.down_dims=[8, 16]", "compile=true"])
    assert cfg.agent.lr == 1e-4 and cfg.agent.policy.down_dims == [8, 16] and cfg.compile is True
    section = with_overrides(cfg, ["agent.act={candidates: 3}"])  # a section is merged, not replaced
    assert (section.agent.act.candidates, section.agent.act.select) == (3, "softmax")


def test_yaml_numbers_follow_yaml_1_2():
    """PyYAML reads `1e-4` as a string (YAML 1.1); a config reads it as the number it means."""
    assert parse_yaml("[1e-4, 3.0e-4, .inf, -.inf, 5, 1.5, auto, 1_000]") == [
        1e-4,
        3e-4,
        float("inf"),
        float("-inf"),
        5,
        1.5,
        "auto",
        1000,  # fmt: skip
    ]


def test_a_config_file_round_trips_and_names_itself_in_errors(tmp_path):
    cfg = load_config("dql", "qc_cpu")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    assert read_config(path) == cfg
    path.write_text(yaml.safe_dump({**cfg.model_dump(), "horizn": 5}))
    with pytest.raises(ConfigError, match=f"^{path}: horizn: Extra inputs are not permitted"):
        read_config(path)


PUBLISHED = {  # from the papers' official code, typed here by hand (the files cited in each agent's Config)
    "cpql": {"target_actor": "online", "target_every": 5, "target_start": 1000, "grad_norm": 1.0, "eta": 1.0},
    "dql": {
        "target_actor": "ema",
        "lr_schedule": "constant",  # main.py --lr_decay ends at 0.999 of the base (test_schedules.py)
        "critic_lr": 3e-4,
        "ema_decay": 0.995,
        "ema_every": 5,
        "ema_start": 1000,
    },
    "qc": {  # agents/acfql.py get_config with actor_type=best-of-n; main.py
        "backup": "best_of_n",
        "backup_candidates": 32,
        "q_agg": "mean",
        "target_actor": "online",
        "eta": 0.0,
        "grad_norm": float("inf"),
        "tau": 0.005,
        "target_every": 1,
        "target_start": 0,
    },
    "chunk_sac": {"init_alpha": 1.0, "alpha_lr": 3e-4, "grad_norm": float("inf"), "tau": 0.005},
    "td3bc": {"alpha": 2.5, "policy_noise": 0.2, "noise_clip": 0.5, "policy_delay": 2, "tau": 0.005},
}


@pytest.mark.parametrize("agent", list(AGENTS))
def test_every_agent_config_holds_the_published_defaults(agent):
    defaults = AGENTS[agent].Config()
    assert {key: getattr(defaults, key) for key in PUBLISHED[agent]} == PUBLISHED[agent]
    backup = PUBLISHED[agent].get("backup", "min")
    assert (defaults.name, defaults.lr, defaults.critic.ensemble, defaults.backup) == (agent, 3e-4, 2, backup)


def test_qc_networks_and_acting_are_acfqls():
    """The flow actor (actor_hidden_dims, flow_steps, actor_layer_norm), the critics (value_hidden_dims,
    layer_norm, num_qs) and best-of-n acting (sample_actions: online critics' mean, argmax of 32)."""
    defaults = AGENTS["qc"].Config()
    policy, critic, act = defaults.policy, defaults.critic, defaults.act
    assert (policy.kind, policy.hidden_dims, policy.flow_steps, policy.layer_norm) == (
        "flow",
        [512] * 4,
        10,
        False,
    )
    assert (critic.kind, critic.hidden_dims, critic.layer_norm, critic.ensemble) == (
        "mlp",
        [512] * 4,
        True,
        2,
    )
    assert (act.actor, act.candidates, act.select, act.critic, act.q_agg) == (
        "online",
        32,
        "argmax",
        "online",
        "mean",
    )


def test_the_diffusion_recipes_are_refused_for_single_chunk_agents():
    """qc.yaml backs up the best of N sampled chunks: an actor with one chunk per state cannot."""
    with pytest.raises(ConfigError, match="qc.yaml: agent.backup: Input should be 'min' or 'mean'"):
        load_config("td3bc", "qc")


@pytest.mark.parametrize("agent", list(AGENTS))
def test_the_config_command_prints_the_resolved_config_with_descriptions(agent, capsys):
    from offline_chunk.harness.cli import main

    assert main(["config", "--agent", agent, "--preset", "quick", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert parse_yaml(printed) == load_config(agent, "quick", ["seed=3"]).model_dump()  # comments aside
    assert "  # unet: U-Net over the chunk | mlp: Q-chunking's MLP critic" in printed

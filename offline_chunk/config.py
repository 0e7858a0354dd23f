"""Run configuration, typed: `RunConfig` (the run's fields below, and `agent`: the agent's own `Config`,
declared in its file with the published defaults), resolved in three layers, each checked for its keys
and its types before the next applies:

1. the train presets, configs/train/<preset>.yaml (default.yaml first; a preset may name a `base` preset
   under it and give `per_agent` values), partial YAML: a key no config has is refused with the file, the
   key and the closest valid keys. A preset's `agent:` section sizes every agent: a key another agent
   has (a U-Net's down_dims for a transformer actor) does not apply to this one, and a layer that sets
   a policy's `kind` to another kind (chunk_sac's `mlp_gaussian`) starts that section from its defaults;
2. `key=value` overrides (dotted keys, values parsed as YAML): the key must be this run's;
3. the whole resolved config, validated as `RunConfig` (pydantic, strict: no "1" for an int, no `true` for
   a number, `Literal` choices).

pydantic rather than OmegaConf structured configs (no `Literal`, so no checked choices without Enums),
draccus or tyro (command-line parsers with `--key value` syntax, where this project's overrides and
presets are `key=value` and partial YAML): it checks choices, ranges and nesting, refuses unknown keys at
any depth, and takes each field's docstring as its description.
"""

from __future__ import annotations

import copy
import difflib
import functools
import operator
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError

from offline_chunk.agents import AGENTS
from offline_chunk.errors import ConfigError
from offline_chunk.policies import POLICY_CONFIGS
from offline_chunk.sections import Section

# The presets: the checkout's top-level configs/, which offline_chunk/configs links to and a wheel carries
# as package data, so the same files are read from a checkout and from an installed package.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# every agent's Config, told apart by its `name`
AgentConfigs = Annotated[
    functools.reduce(operator.or_, [a.Config for a in AGENTS.values()]), Field(discriminator="name")
]


class RunConfig(Section):
    """One training run: the store, the chunk contract, the loop's budget and intervals, the agent."""

    agent: AgentConfigs
    preset: str = "default"
    """the train preset it was resolved from"""
    dataset: str = "data/scene-play-singletask-task2-v0.zarr"
    """the step-level store (`make train` builds it with `make dataset` if missing)"""
    run_dir: str | None = None
    """default: runs/<agent>-<dataset name>-<date-time>"""
    seed: int = 0
    device: str = "auto"
    """auto: cuda when available, else cpu"""
    compile: Literal["auto"] | bool = "auto"
    """torch.compile the loss computations: auto = on CUDA only"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: autocast network passes (losses, targets, Q outputs stay fp32)"""
    steps: int = Field(3000, ge=1)
    """total updates (CPQL: 4.6 updates/s on 2 CPU cores, 11 min)"""
    batch_size: int = Field(256, ge=1)
    horizon: int = Field(5, ge=1)
    """H, the chunk length (the Q-chunking paper's 5)"""
    obs_horizon: int = Field(1, ge=1)
    """To, the observation history the networks read"""
    gamma: float = Field(0.99, gt=0, le=1)
    drop_partial: bool = True
    """drop chunks that would run past an episode's end (docs/chunk_transitions.md)"""
    log_every: int = Field(100, ge=1)
    """metrics leave the device only at these intervals"""
    checkpoint_every: int = Field(2000, ge=1)
    divergence_factor: float = Field(10.0, gt=0)
    """stop when |Q| > factor · max|r| / (1 - gamma)"""
    eval_every: int = Field(0, ge=0)
    """periodic rollouts in the simulator every K updates (0: off)"""
    eval_episodes: int = Field(5, ge=1)
    eval_workers: int = Field(2, ge=1)
    eval_max_steps: int | None = None
    """null: the environment's own time limit"""
    frame_budget_mb: float | None = Field(None, gt=0)
    """camera frames held in memory at most; a store with more streams them from disk through a buffer of
    this size (data/streaming.py). null: half the memory available at the start (host, and CUDA's)"""


# ------------------------------------------------------------------ YAML with YAML 1.2's numbers

_FLOAT = re.compile(
    r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"
)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-4` as a number (YAML 1.2) rather than a string (YAML 1.1)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{path}: no such config (available: {', '.join(choices)})")
    return parse_yaml(path.read_text()) or {}


# ------------------------------------------------------------------ checked layers


def _flat_keys(cfg: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}{key}.")
    return keys


def _unknown(source: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _defaults(agent: str) -> dict:
    return RunConfig(agent=AGENTS[agent].Config()).model_dump()


def _apply(cfg: dict, update: dict, source: str, valid: list[str], elsewhere: set[str], prefix="") -> None:
    """`cfg` updated in place by the partial `update`, key by key. A key `cfg` lacks is skipped when
    another agent has it (`elsewhere`), and refused otherwise."""
    for key, value in update.items():
        dotted = prefix + str(key)
        if key not in cfg:
            if dotted in elsewhere:
                continue
            raise _unknown(source, dotted, valid)
        if isinstance(value, dict) and isinstance(cfg[key], dict):
            kind = value.get("kind", cfg[key].get("kind"))
            if kind != cfg[key].get("kind") and kind in POLICY_CONFIGS:
                cfg[key] = POLICY_CONFIGS[kind]().model_dump()  # another kind of policy: from its defaults
            _apply(cfg[key], value, source, valid, elsewhere, dotted + ".")
        else:
            cfg[key] = copy.deepcopy(value)


def validated(values: dict, source: str, model: type[Section] | None = None) -> Section:
    """`values` checked as `model` (default RunConfig); a ConfigError naming `source` and each bad key."""
    try:
        return (model or RunConfig).model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            if loc[:1] == ["agent"] and len(loc) > 1 and loc[1] in AGENTS:
                del loc[1]  # the discriminated union's tag
            problems.append(f"{'.'.join(loc)}: {error['msg']} (got {error['input']!r})")
        raise ConfigError(f"{source}: {'; '.join(problems)}") from None


def _preset_layers(preset: str, agent: str) -> list[tuple[str, dict]]:
    """(file, partial config) of a preset, under the presets it names as `base` (first), with its
    `per_agent` values for this agent applied on top of the file's own."""
    path = CONFIG_DIR / "train" / f"{preset}.yaml"
    cfg = _read_yaml(path)
    per_agent = cfg.pop("per_agent", {})
    unknown_agents = sorted(set(per_agent) - set(AGENTS))
    if unknown_agents:
        raise ConfigError(
            f"{path}: per_agent names unknown agents {unknown_agents} (agents: {sorted(AGENTS)})"
        )
    base = cfg.pop("base", None)
    layers = _preset_layers(base, agent) if base else []
    return [*layers, (str(path), cfg), (f"{path} (per_agent.{agent})", per_agent.get(agent, {}))]


def _override(cfg: dict, assignment: str) -> None:
    """Set `a.b.c=value` in `cfg` in place; the key must be one it has (a section's value is merged)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not key=value")
    *parents, leaf = key.split(".")
    update: dict = {leaf: parse_yaml(raw)}
    for part in reversed(parents):
        update = {part: update}
    _apply(cfg, update, f"override {assignment!r}", _flat_keys(cfg), elsewhere=set())


def load_config(agent: str, preset: str = "default", overrides: list[str] | tuple = ()) -> RunConfig:
    """The resolved configuration of a run of `agent` (a key of AGENTS) under a train preset."""
    if agent not in AGENTS:
        raise ConfigError(f"unknown agent {agent!r}; available: {', '.join(AGENTS)}")
    cfg = _defaults(agent)
    valid = _flat_keys(cfg)
    elsewhere = {key for other in AGENTS for key in _flat_keys(_defaults(other))} - set(valid)
    layers = _preset_layers("default", agent) + (_preset_layers(preset, agent) if preset != "default" else [])
    for source, layer in layers:
        _apply(cfg, layer, source, valid, elsewhere)
        validated(cfg, source)
    cfg["preset"] = preset
    return with_overrides(validated(cfg, "preset"), overrides)


def with_overrides(cfg: RunConfig, overrides: list[str] | tuple) -> RunConfig:
    """A copy of `cfg` with `key=value` overrides applied and checked."""
    resolved, result = cfg.model_dump(), cfg.model_copy(deep=True)
    for assignment in overrides:
        _override(resolved, assignment)
        result = validated(resolved, f"override {assignment!r}")
    return result


def read_config(path) -> RunConfig:
    """A resolved config from a YAML file (a run's config.yaml), checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    return validated(parse_yaml(path.read_text()) or {}, str(path))


def describe(section: Section, indent: str = "") -> str:
    """A resolved config as YAML, each field with its description as a comment."""
    lines = []
    for key, field in type(section).model_fields.items():
        value = getattr(section, key)
        comment = f"  # {' '.join(field.description.split())}" if field.description else ""
        if isinstance(value, Section):
            lines += [f"{indent}{key}:{comment}", describe(value, indent + "  ")]
        else:
            text = yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()
            lines.append(f"{indent}{key}: {text}{comment}")
    return "\n".join(lines)

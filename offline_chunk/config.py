"""Run configuration: configs/train/<preset>.yaml, with the agent's configs/agent/<name>.yaml under `agent`,
then `key=value` overrides (dotted keys reach into nested sections, values parsed as YAML).

An override of a key that no config defines is an error naming the closest valid keys: a typo never
silently does nothing.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from offline_chunk.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data: works from an installed wheel


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{path}: no such config (available: {', '.join(choices)})")
    return yaml.safe_load(path.read_text()) or {}


def _merge(base: dict, update: dict, existing_only: bool = False) -> dict:
    """`base` updated recursively by `update`; with existing_only, keys that `base` lacks are skipped."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if existing_only and key not in merged:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, existing_only)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _flat_keys(cfg: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}{key}.")
    return keys


def apply_override(cfg: dict, assignment: str) -> None:
    """Set `a.b.c=value` in place; the key must already exist."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not key=value")
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        close = difflib.get_close_matches(key, _flat_keys(cfg), n=3)
        raise ConfigError(
            f"unknown config key {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
        )
    node[leaf] = yaml.safe_load(raw)


def _read_preset(preset: str, agent: str) -> dict:
    """A train preset with its values for this agent applied (`per_agent`: e.g. the CPU step budget,
    since a DQL update costs ~2.5x a CPQL one), on top of the preset it names as `base` (if any). Resolved
    per file, so a later preset's value wins."""
    cfg = _read_yaml(CONFIG_DIR / "train" / f"{preset}.yaml")
    cfg = _merge(cfg, cfg.pop("per_agent", {}).get(agent, {}))
    base = cfg.pop("base", None)
    return _merge(_read_preset(base, agent), cfg) if base else cfg


def load_config(agent: str, preset: str = "default", overrides: list[str] | tuple = ()) -> dict:
    """The resolved configuration of a run."""
    train = _read_preset("default", agent)
    if preset != "default":
        train = _merge(train, _read_preset(preset, agent))
    # A preset's `agent:` section (network sizes) sets the values that the agent's file defines; a size an
    # agent does not have (a U-Net's down_dims for a transformer actor) does not apply to it.
    sizes = train.pop("agent", {})
    cfg = {
        "agent": _merge(_read_yaml(CONFIG_DIR / "agent" / f"{agent}.yaml"), sizes, existing_only=True),
        **train,
    }
    cfg["preset"] = preset
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg

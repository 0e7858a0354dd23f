"""Checkpoints: one file holding everything needed to resume exactly, written atomically and loaded
without executing code (`torch.load(weights_only=True)`).

Contents: a format marker and version, the agent's name, dims and resolved config (as a plain dict; read
back as a checked `RunConfig`), all module weights
(actor, EMA actor, critics, target critics, normalizer), optimizer and LR-scheduler states, the update
count, the RNG states (torch CPU and CUDA, the batch sampler's generator), and what evaluation needs of the
training store (`store`: its path, simulator id, reward convention, observation keys, action bounds), so
that a checkpoint copied without its store still evaluates.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import torch

from offline_chunk.agents import ChunkAgent, Dims, make_agent
from offline_chunk.atomic import write_atomic
from offline_chunk.compute import pick_device
from offline_chunk.config import RunConfig
from offline_chunk.data.normalize import Normalizer
from offline_chunk.errors import CheckpointError

FORMAT = "offline_chunk.checkpoint"
VERSION = 3
# Agent config keys added in a checkpoint version, with the values that reproduce what older versions did
# (nested sections are filled key by key).
ADDED_AGENT_KEYS = {
    2: {"target_lower_bound": "none"},
    3: {"q_agg": "min", "critic": {"kind": "unet"}, "act": {"critic": "target", "q_agg": "min"}},
}


def rng_state(sampler_generator: torch.Generator | None) -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    return state


def restore_rng_state(state: dict, sampler_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if sampler_generator is not None and "sampler" in state:
        sampler_generator.set_state(state["sampler"])


# The training store's attributes that evaluation and analysis read (a checkpoint keeps them).
STORE_ATTRIBUTES = (
    "env_id",
    "reward_mode",
    "reward_source",
    "reward_convention",
    "obs_keys",
    "action_low",
    "action_high",
    "source_format",
)


def store_provenance(store_path, attrs: dict) -> dict:
    """What a checkpoint keeps of its training store: the path and the attributes evaluation reads."""
    return {"path": str(store_path), **{key: attrs[key] for key in STORE_ATTRIBUTES if key in attrs}}


def save_checkpoint(
    path,
    agent: ChunkAgent,
    cfg: RunConfig,
    step: int,
    sampler_generator: torch.Generator | None = None,
    store: dict | None = None,
    train_seconds: float = 0.0,
    extra: dict | None = None,
) -> Path:
    """Write to a temporary name in the same directory, then rename: a crash never leaves half a file.
    `extra`: more top-level entries of plain values (a fine-tuning run's `online` record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "agent": agent.name,
        "dims": asdict(agent.dims),
        "config": cfg.model_dump(),
        "step": int(step),
        "weights": agent.state_dict(),
        "training": agent.training_state(),
        "rng": rng_state(sampler_generator),
        "store": store or {},
        "train_seconds": float(train_seconds),  # wall time spent updating so far, over resumed parts
        **(extra or {}),
    }
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path) -> dict:
    """The payload of a checkpoint; a missing, corrupt or foreign file gets one clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or non-torch files
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an offline_chunk checkpoint (no '{FORMAT}' marker)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload['version']} is newer than this "
            f"offline_chunk understands ({VERSION}); upgrade offline_chunk"
        )
    payload = upgraded(payload)
    try:
        return {**payload, "config": RunConfig.model_validate(payload["config"])}
    except ValueError as exc:
        raise CheckpointError(f"{path}: its config does not validate ({exc})") from exc


def with_missing(config: dict, defaults: dict) -> dict:
    """`config` with the keys of `defaults` it lacks, recursively into sections that both have."""
    filled = {**defaults, **config}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            filled[key] = with_missing(config[key], value)
    return filled


def upgraded(payload: dict) -> dict:
    """A payload of an older version with the agent config keys added since then (ADDED_AGENT_KEYS); before
    version 3 the backup `double` was what `best_of_n` with the ensemble min now is. Camera weights of the
    shared-trunk layout move to today's (`with_own_camera_trunks`)."""
    agent = payload["config"]["agent"]
    version = payload.get("version", 0)
    for added_in, keys in ADDED_AGENT_KEYS.items():
        if version < added_in:
            agent = with_missing(agent, keys)
    if version < 3 and agent.get("backup") == "double":
        agent = {**agent, "backup": "best_of_n", "q_agg": "min"}
    payload = with_own_camera_trunks(payload)
    return {**payload, "config": {**payload["config"], "agent": agent}, "version": VERSION}


# The earlier camera layout: a `drq` encoder held each camera's trunk, shared by the networks that read the
# observation rows (these attributes of an agent).
SHARED_TRUNK = re.compile(r"^encoder\.nets\.(?P<camera>[^.]+)\.trunk\.(?P<param>.+)$")
ROW_READERS = ("actor", "actor_ema", "actor_target", "critic", "critic_target")


def with_own_camera_trunks(payload: dict) -> dict:
    """A camera checkpoint of the shared-trunk layout, recognised by its `encoder.nets.*.trunk.*` weights
    (each camera's trunk, Linear -> LayerNorm -> Tanh, inside the `drq` encoder, shared by the actor and the
    critics and trained by the critic loss), in today's layout, where each network has its own trunks
    (nets/vision.py): every network that reads observation rows (actor, its EMA or target copy, critics,
    target critics) gets the old trunks as its `trunks` and keeps its weights under `net.`, so the agent
    acts and values as before, up to float rounding. Adam states: the encoder's keeps its conv nets'; the
    critics' takes over the trunks' (the critic loss trained them); the actor's trunks start without one
    (Adam initialises it at their first step). Other payloads pass unchanged."""
    weights, training = payload["weights"], payload["training"]
    encoder_keys = [key for key in weights if key.startswith("encoder.")]  # its parameters, in order
    trunk_ids = [i for i, key in enumerate(encoder_keys) if SHARED_TRUNK.match(key)]
    if not trunk_ids:
        return payload
    trunks = {}  # the `trunks` state of each network: nets.<camera>.<param>
    moved = {}
    for key, value in weights.items():
        if match := SHARED_TRUNK.match(key):
            trunks[f"nets.{match['camera']}.{match['param']}"] = value
            continue
        head = key.split(".", 1)[0]
        moved[f"{head}.net{key[len(head) :]}" if head in ROW_READERS else key] = value
    readers = {key.split(".", 1)[0] for key in weights} & set(ROW_READERS)
    for head in readers:
        moved |= {f"{head}.trunks.{name}": value for name, value in trunks.items()}
    encoder_opt = training["encoder_opt"]
    adam_states = [encoder_opt["state"].get(i) for i in range(len(encoder_keys))]
    conv_states = [state for i, state in enumerate(adam_states) if i not in trunk_ids]
    no_parameters = {"state": {}, "param_groups": [{**encoder_opt["param_groups"][0], "params": []}]}
    training = {
        **training,
        "encoder_opt": with_parameters(no_parameters, conv_states),
        "critic_opt": with_parameters(training["critic_opt"], [adam_states[i] for i in trunk_ids]),
        "actor_opt": with_parameters(training["actor_opt"], [None] * len(trunk_ids)),
    }
    return {**payload, "weights": moved, "training": training}


def with_parameters(optimizer_state: dict, states: list[dict | None]) -> dict:
    """An optimizer's state dict (one parameter group) with parameters appended to the group, each with its
    given per-parameter state (None: none)."""
    group = optimizer_state["param_groups"][0]
    ids = range(len(group["params"]), len(group["params"]) + len(states))
    added = {i: state for i, state in zip(ids, states, strict=True) if state is not None}
    return {
        "state": {**optimizer_state["state"], **added},
        "param_groups": [{**group, "params": [*group["params"], *ids]}],
    }


def agent_from_payload(payload: dict, device) -> ChunkAgent:
    """The agent of a payload read by `read_checkpoint` (its config a RunConfig), weights and training
    state loaded."""
    dims = Dims(**payload["dims"])
    cfg = payload["config"]
    normalizer = Normalizer(dims.obs_dim, dims.action_dim)
    agent = make_agent(cfg.agent, dims, normalizer, total_steps=cfg.steps).to(device)
    agent.load_state_dict(payload["weights"])
    agent.load_training_state(payload["training"])  # after .to(): optimizer state follows the parameters
    return agent


def load_agent(checkpoint, device=None) -> ChunkAgent:
    """A trained agent from a checkpoint, in eval mode: `agent.q_value(obs, actions)` and
    `agent.act(observation_history)`, both in environment units (see ChunkAgent)."""
    return agent_from_payload(read_checkpoint(checkpoint), pick_device(device)).eval()

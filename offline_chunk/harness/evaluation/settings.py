"""What an evaluation runs: the settings resolved from a checkpoint (its simulator, reward convention, chunk
execution, candidates) and the caller's arguments, checked."""

from __future__ import annotations

import sys

from offline_chunk.agents import AGENTS
from offline_chunk.compute import pick_device
from offline_chunk.data.sources.ogbench_npz import VISUAL_PREFIX, sparse_reward
from offline_chunk.errors import ConfigError
from offline_chunk.harness.envs.ogbench_env import env_id_from_store, store_attributes, time_limit
from offline_chunk.rendering import find_gl_backend, require_gl_backend


def training_store_attributes(payload: dict) -> dict:
    """What a checkpoint recorded of its training store (env id, reward convention, ...); a checkpoint from
    before that record reads them from the store its config names."""
    return payload.get("store") or store_attributes(payload["config"].dataset)


def reward_convention(store_attrs: dict) -> str:
    """The training store's reward convention, which the reported returns follow so that they compare with
    the critic's values: OGBench's single-task reward ('ogbench'), or the Q-chunking paper's (r != 0) * -1
    ('sparse'); 'environment' (the simulator's own reward) for stores that do not say."""
    return store_attrs.get("reward_mode", "environment")


REWARD_TRANSFORMS = {"sparse": sparse_reward}  # per-step environment reward -> the store's convention


def check_settings(episodes, workers, execute, horizon, candidates, max_steps) -> None:
    for name, value, least in (
        ("episodes", episodes, 1),
        ("workers", workers, 1),
        ("candidates", candidates, 1),
        ("max_steps", max_steps, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{name}={value}: must be at least {least}")
    if execute is not None and not 1 <= execute <= horizon:
        raise ConfigError(f"execute={execute}: must be between 1 and the chunk horizon H={horizon}")


def check_cameras(payload: dict, checkpoint, env_id: str) -> None:
    """A camera agent rolls out where the environment observes its one camera's frames and nothing else
    (OGBench's visual environments: 64 x 64 frames)."""
    cameras, obs_dim = list(payload["dims"].get("image_shapes", {})), payload["dims"]["obs_dim"]
    if cameras and (len(cameras) > 1 or obs_dim or not env_id.startswith(VISUAL_PREFIX)):
        raise ConfigError(
            f"{checkpoint}: the agent reads cameras {cameras} and {obs_dim} state values; rollouts of camera "
            f"agents need an environment that observes one camera's frames alone (OGBench's visual-*), "
            f"not {env_id}"
        )


def gl_backend_for(render: int, env_id: str = "") -> str | None:
    """The GL backend the workers render with: needed for GIFs (`render` episodes) and by the visual
    environments, whose observations are rendered."""
    if env_id.startswith(VISUAL_PREFIX):
        return require_gl_backend(lambda why: ConfigError(f"{env_id} {why}"))
    if render == 0:
        return None
    backend, why = find_gl_backend()
    if backend is None:
        print(f"render: skipped, {why}; evaluating without GIFs", file=sys.stderr)
    return backend


def eval_settings(payload, checkpoint, episodes, execute, workers, seed, candidates, max_steps) -> dict:
    """What the report records about the run, resolved from the checkpoint, its store and the overrides."""
    horizon, store = payload["dims"]["horizon"], payload["config"].dataset
    check_settings(episodes, workers, execute, horizon, candidates, max_steps)
    act = payload["config"].agent.act
    by_candidates = AGENTS[payload["agent"]].acts_by_candidates  # chooses among sampled chunks by Q
    if candidates is not None and not by_candidates:
        raise ConfigError(
            f"candidates={candidates}: agent {payload['agent']!r} does not act by candidate chunks "
            "(it executes its actor's chunk)"
        )
    store_attrs = training_store_attributes(payload)
    env_id = env_id_from_store(store, store_attrs)
    check_cameras(payload, checkpoint, env_id)
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_step": payload["step"],
        "agent": payload["agent"],
        "env_id": env_id,
        "store": str(store),
        "episodes": episodes,
        "seed": seed,
        "workers": min(workers, episodes),
        "execute": execute or horizon,
        "horizon": horizon,
        "obs_horizon": payload["dims"]["obs_horizon"],
        "candidates": (candidates or act.candidates) if by_candidates else None,
        "select": act.select,
        "actor": act.actor,
        "time_limit": time_limit(env_id, max_steps),
        "reward_convention": reward_convention(store_attrs),
        "device": str(pick_device(None)),
    }

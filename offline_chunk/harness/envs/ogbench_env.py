"""OGBench environments for evaluation: the gymnasium id a store records and the environment itself (the
GL backend for rendering is offline_chunk.rendering's)."""

from __future__ import annotations

import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np

from offline_chunk.data.sources.ogbench_npz import VISUAL_PREFIX
from offline_chunk.data.store import open_group
from offline_chunk.errors import DataError


def store_attributes(store) -> dict:
    """The root attributes of a store, without reading its arrays."""
    return dict(open_group(Path(store)).attrs.asdict())


def env_id_from_store(store, attrs: dict | None = None) -> str:
    """The gymnasium id recorded in the store (`attrs["env_id"]`, read from the store unless given, e.g. as a
    checkpoint recorded them), checked to be registered."""
    env_id = (store_attributes(store) if attrs is None else attrs).get("env_id")
    if not env_id:
        raise DataError(
            store,
            "has no 'env_id' attribute: evaluation needs the simulator's gymnasium id "
            "(OGBench sources record it, e.g. scene-singletask-task2-v0)",
        )
    check_registered(env_id, store)
    return env_id


def check_registered(env_id: str, source) -> None:
    import gymnasium
    import ogbench  # noqa: F401  (registers OGBench's environments)

    if env_id not in gymnasium.registry:
        raise DataError(
            source,
            f"env_id {env_id!r} is not a registered gymnasium environment (after `import ogbench`)",
        )


def time_limit(env_id: str, max_steps: int | None) -> int | None:
    """The episode step limit: `max_steps`, else the one the environment is registered with."""
    import gymnasium

    return max_steps if max_steps is not None else gymnasium.spec(env_id).max_episode_steps


def make_env(env_id: str, max_steps: int | None = None, gl_backend: str | None = None):
    """One environment, built inside its worker process (AsyncVectorEnv also builds one in the calling
    process to read the spaces). MuJoCo reads MUJOCO_GL when it is first imported, so a rendering worker
    must be a fresh (spawned) process that sets it first. A visual environment renders already in its
    constructor, which the calling process (MuJoCo imported there without a GL backend) cannot: there it
    is a stand-in with the same spaces."""
    if gl_backend is not None:
        os.environ["MUJOCO_GL"] = gl_backend
    import gymnasium
    import ogbench  # noqa: F401  (registers OGBench's environments)

    if env_id.startswith(VISUAL_PREFIX) and multiprocessing.parent_process() is None:
        return VisualSpaces(env_id)

    # OGBench declares float64 bounds on float32 Box spaces and builds a new Box on every `action_space`
    # access (its resets sample from it), each warning that the bounds are cast to float32.
    warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
    limit = {} if max_steps is None else {"max_episode_steps": max_steps}
    return gymnasium.make(env_id, **limit)


class VisualSpaces:
    """A visual environment's spaces without its simulator: the frames (H, W, 3) uint8 of its registration,
    the action space of its state-based twin (the same robot)."""

    metadata: dict = {}
    render_mode = None

    def __init__(self, env_id: str):
        import gymnasium

        kwargs = gymnasium.spec(env_id).kwargs
        twin = gymnasium.make(env_id.removeprefix(VISUAL_PREFIX))
        self.action_space = twin.action_space
        twin.close()
        shape = (kwargs["height"], kwargs["width"], 3)
        self.observation_space = gymnasium.spaces.Box(0, 255, shape, np.uint8)

    def close(self) -> None:
        pass

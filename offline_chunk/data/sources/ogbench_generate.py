"""Generate an OGBench `play` dataset in MuJoCo with OGBench's scripted plan oracles.

Spec: ``ogbench:<single-task dataset name>[?episodes=N&workers=W&seed=S&reward=ogbench|sparse]``, e.g.
``ogbench:scene-play-singletask-task2-v0``. The protocol is OGBench's for play datasets: the goal-free
collection environment (``scene-v0`` here) in data-collection mode, episodes of 1001 steps, plan oracles
with noise 0.1 and noise smoothing 0.5 (puzzles press buttons with the gripper closed), a new random
subtask whenever the oracle finishes one, and scene episodes retried while a cube leaves the visible area.
The rows are laid out as an OGBench .npz file holds them and go through the same conversion
(`ogbench_npz.raw_to_step_data`), so the task's rewards come from OGBench's own relabelling.

Episode i is seeded from (seed, i) alone, so the data do not depend on the number of workers.

Visual datasets (``ogbench:visual-scene-play-singletask-task1-v0``): the same protocol in OGBench's pixel
twin of the collection environment (``visual-scene-v0``: 64 x 64 frames of its `front_pixels` camera as
observations; the oracles read the simulator state, not the observation). The frames become the store's
camera `image`; there is no state vector, as in OGBench's visual datasets; the rewards are relabelled from
the recorded simulator states. Rendering needs a MuJoCo GL backend (offline_chunk.rendering): the episodes
are recorded in fresh worker processes that set it before importing MuJoCo.
"""

from __future__ import annotations

import os
import re
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_all_start_methods, get_context

import numpy as np
from tqdm import tqdm

from offline_chunk.data.sources.ogbench_npz import (
    VISUAL_PREFIX,
    check_reward_mode,
    raw_to_step_data,
    single_task_env_id,
)
from offline_chunk.data.store import StepData
from offline_chunk.errors import DataError
from offline_chunk.rendering import require_gl_backend

# Measured on the 2-core development machine: about 44 scene episodes (1001 steps each) per minute with
# 2 workers (23 with 1), so the default of 100 episodes (100,100 rows) takes about 2.5 minutes.
DEFAULT_EPISODES = 100
DEFAULT_STEPS = 1001
NOISE = 0.1
NOISE_SMOOTHING = 0.5
# Range of the per-episode probability of stacking the target cube on another one, by cube-env size.
P_STACK_RANGES = {
    "single": (0.0, 0.0),
    "double": (0.0, 0.25),
    "triple": (0.05, 0.35),
    "quadruple": (0.1, 0.5),
    "octuple": (0.0, 0.35),
}
P_STACK_OTHER = 0.5  # scene (one cube: no effect) and puzzles (no cubes)
MAX_ATTEMPTS = 50  # scene episodes retried while unhealthy; OGBench's own retry rate is a few percent
FAMILIES = ("scene", "puzzle", "cube")
COUNT_OPTIONS = ("episodes", "workers", "steps")


@dataclass(frozen=True)
class Collection:
    """What a worker needs to record episodes of one dataset."""

    env_id: str  # the goal-free collection environment, e.g. scene-v0
    family: str  # scene, puzzle or cube
    steps: int  # rows per episode
    p_stack_range: tuple[float, float]
    gl_backend: str | None = None  # visual environments: the MuJoCo GL backend their workers render with


def load(spec, progress: bool = True) -> StepData:
    options = spec.take(
        {
            "episodes": DEFAULT_EPISODES,
            "workers": default_workers(),
            "seed": 0,
            "reward": "ogbench",
            "steps": DEFAULT_STEPS,
        }
    )
    name = spec.location
    episodes, workers, steps = (_positive_int(name, key, options[key]) for key in COUNT_OPTIONS)
    seed = _int_option(name, "seed", options["seed"])
    collection = parse_dataset_name(name, steps)
    check_reward_mode(options["reward"], name)  # before minutes of generation, not after
    if name.startswith(VISUAL_PREFIX):
        collection = replace(collection, gl_backend=require_gl_backend(lambda why: DataError(name, why)))
    raw = generate(collection, episodes, seed, workers, progress)
    attrs = {
        "source_format": "ogbench_generate",
        "source_file": f"ogbench:{name}",
        "episodes": episodes,
        "seed": seed,
        "collection_env_id": collection.env_id,
        "protocol": {
            "oracle": "plan",
            "noise": NOISE,
            "noise_smoothing": NOISE_SMOOTHING,
            "episode_steps": steps,
        },
    }
    return raw_to_step_data(raw, f"ogbench:{name}", name, options["reward"], attrs)


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def _int_option(name: str, key: str, value) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(name, f"option {key}={value!r} is not an integer") from None


def _positive_int(name: str, key: str, value) -> int:
    number = _int_option(name, key, value)
    if number < 1:
        raise DataError(name, f"option {key}={value!r} must be at least 1")
    return number


def parse_dataset_name(name: str, steps: int) -> Collection:
    """`<env>-play-singletask[-taskN]-v0` -> its collection environment `<env>-v0` and protocol details."""
    single_task_env_id(name)  # raises for names that are not single-task datasets
    visual = name.startswith(VISUAL_PREFIX)
    parts = name.removeprefix(VISUAL_PREFIX).split("-")
    pos = parts.index("singletask")
    env_parts, dataset_type = parts[: pos - 1], parts[pos - 1]
    if dataset_type != "play" or env_parts[0] not in FAMILIES or not re.fullmatch(r"v\d+", parts[-1]):
        raise DataError(
            name,
            "cannot be generated: only play datasets of scene, puzzle-* and cube-* "
            "(e.g. scene-play-singletask-task2-v0)",
        )
    size = env_parts[1] if len(env_parts) > 1 else ""
    p_stack_range = P_STACK_RANGES.get(size, (P_STACK_OTHER, P_STACK_OTHER))
    if env_parts[0] == "cube" and size not in P_STACK_RANGES:
        raise DataError(name, f"unknown cube environment size {size!r} (one of {list(P_STACK_RANGES)})")
    env_id = VISUAL_PREFIX * visual + "-".join([*env_parts, parts[-1]])
    collection = Collection(env_id, env_parts[0], steps, p_stack_range)
    _check_registered(name, collection.env_id, single_task_env_id(name))
    return collection


def _check_registered(name: str, *env_ids: str) -> None:
    """Fail before generating rather than after (or opaquely inside a worker)."""
    import gymnasium
    import ogbench.manipspace  # noqa: F401  (registers the environments)

    for env_id in env_ids:
        if env_id not in gymnasium.registry:
            raise DataError(name, f"OGBench has no environment {env_id!r}")


def episode_seed(seed: int, index: int) -> int:
    """A 32-bit seed for episode `index` that depends only on (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# --------------------------------------------------------------------------- generation


def generate(collection: Collection, episodes: int, seed: int, workers: int, progress: bool) -> dict:
    """Record `episodes` episodes; returns the arrays an OGBench .npz file holds, episodes in index order."""
    seeds = [episode_seed(seed, i) for i in range(episodes)]
    bar = tqdm(total=episodes, desc=f"generating {collection.env_id}", unit="episode", disable=not progress)
    with bar:
        if workers == 1 and collection.gl_backend is None:
            recorded = _record_in_process(collection, seeds, bar)
        else:
            recorded = _record_in_pool(collection, seeds, workers, bar)
    return {key: np.concatenate([episode[key] for episode in recorded]) for key in recorded[0]}


def _record_in_process(collection: Collection, seeds: list[int], bar) -> list[dict]:
    # The oracles use numpy's global RNG (hence the legacy calls): leave the caller's state untouched.
    rng_state = np.random.get_state()  # noqa: NPY002
    recorder = Recorder(collection)
    try:
        return [_tick(bar, recorder.episode(seed)) for seed in seeds]
    finally:
        recorder.close()
        np.random.set_state(rng_state)  # noqa: NPY002


def _record_in_pool(collection: Collection, seeds: list[int], workers: int, bar) -> list[dict]:
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(seeds)),
        mp_context=_pool_context() if collection.gl_backend is None else get_context("spawn"),
        initializer=_start_worker,
        initargs=(collection,),
    )
    with pool:
        return [_tick(bar, episode) for episode in pool.map(_worker_episode, seeds)]


def _pool_context():
    """fork where the platform has it: workers start at once and, unlike spawn, do not re-run the caller's
    main module (a script without an `if __name__ == "__main__"` guard still works). Elsewhere spawn."""
    return get_context("fork" if "fork" in get_all_start_methods() and sys.platform == "linux" else "spawn")


def _tick(bar, episode: dict) -> dict:
    bar.update(1)
    return episode


class Recorder:
    """One collection environment and its oracles, recording whole episodes."""

    def __init__(self, collection: Collection):
        import gymnasium
        import ogbench.manipspace  # noqa: F401  (registers the environments)

        self.collection = collection
        self.env = gymnasium.make(
            collection.env_id,
            terminate_at_goal=False,
            mode="data_collection",
            max_episode_steps=collection.steps,
        )
        self.oracles = make_oracles(self.env, collection.family)

    def close(self) -> None:
        self.env.close()

    def episode(self, seed: int) -> dict[str, np.ndarray]:
        np.random.seed(seed)  # noqa: NPY002  (the oracles draw plans and noise from numpy's global RNG)
        reset_seed = seed  # the environment draws its scenes and subtasks from its own RNG
        for _ in range(MAX_ATTEMPTS):
            rows = self._rollout(reset_seed)
            reset_seed = None  # a retry continues both random streams
            if self.collection.family != "scene" or scene_is_healthy(rows["qpos"]):
                return rows
        raise DataError(
            self.collection.env_id, f"no healthy episode in {MAX_ATTEMPTS} tries (episode seed {seed})"
        )

    def _rollout(self, reset_seed: int | None) -> dict[str, np.ndarray]:
        ob, info = self.env.reset(seed=reset_seed)
        p_stack = np.random.uniform(*self.collection.p_stack_range)  # noqa: NPY002
        oracle = self._next_oracle(ob, info)
        rows = defaultdict(list)
        done = False
        while not done:
            action = np.clip(np.asarray(oracle.select_action(ob, info)), -1, 1)
            next_ob, _, terminated, truncated, info = self.env.step(action)
            done = terminated or truncated
            if oracle.done:  # start a new random subtask from where this one left the scene
                oracle = self._next_oracle(*self.env.unwrapped.set_new_target(p_stack=p_stack))
            # info['prev_*'] is the simulator state before this step, i.e. the state of `ob`
            _append_row(rows, ob, action, done, info)
            ob = next_ob
        return _rows_to_arrays(rows)

    def _next_oracle(self, ob, info):
        oracle = self.oracles[info["privileged/target_task"]]
        oracle.reset(ob, info)
        return oracle


_worker_recorder: Recorder | None = None  # one per worker process, built by its initializer


def _start_worker(collection: Collection) -> None:
    global _worker_recorder
    if collection.gl_backend is not None:  # a spawned process: MuJoCo is not imported yet
        os.environ["MUJOCO_GL"] = collection.gl_backend
    _worker_recorder = Recorder(collection)


def _worker_episode(seed: int) -> dict:
    return _worker_recorder.episode(seed)


def make_oracles(env, family: str) -> dict:
    """OGBench's plan oracles for a family, keyed by the subtask kind the environment asks for."""
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    noise = {"noise": NOISE, "noise_smoothing": NOISE_SMOOTHING}
    if family == "puzzle":
        return {"button": ButtonPlanOracle(env=env, gripper_always_closed=True, **noise)}
    if family == "cube":
        return {"cube": CubePlanOracle(env=env, **noise)}
    kinds = {
        "cube": CubePlanOracle,
        "button": ButtonPlanOracle,
        "drawer": DrawerPlanOracle,
        "window": WindowPlanOracle,
    }
    return {kind: oracle(env=env, **noise) for kind, oracle in kinds.items()}


def _append_row(rows: dict, ob, action, done: bool, info: dict) -> None:
    rows["observations"].append(ob)
    rows["actions"].append(action)
    rows["terminals"].append(done)
    rows["qpos"].append(info["prev_qpos"])
    rows["qvel"].append(info["prev_qvel"])
    if "prev_button_states" in info:
        rows["button_states"].append(info["prev_button_states"])


def _rows_to_arrays(rows: dict) -> dict[str, np.ndarray]:
    """Per-step lists -> arrays with the dtypes OGBench's files use (frames stay uint8)."""
    dtypes = {"terminals": bool, "button_states": np.int64}
    if np.asarray(rows["observations"][0]).dtype == np.uint8:
        dtypes["observations"] = np.uint8
    return {key: np.asarray(values, dtypes.get(key, np.float32)) for key, values in rows.items()}


def scene_is_healthy(qpos: np.ndarray) -> bool:
    """OGBench's scene check: the cube stays visible unless it is in the drawer.

    qpos[:, 14:17] is the cube's xyz. Unhealthy: y >= 0.29 (too far right), or y <= -0.3 (too far left)
    at a height other than the drawer's floor (0.06 to 0.08)."""
    y, z = qpos[:, 15], qpos[:, 16]
    too_far_right = y >= 0.29
    too_far_left_outside_drawer = (y <= -0.3) & ((z < 0.06) | (z > 0.08))
    return not (too_far_right | too_far_left_outside_drawer).any()

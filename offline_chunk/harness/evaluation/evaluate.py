"""Evaluation in the task's simulator: rollouts of a checkpoint's agent with chunk execution, the success
rate with a Wilson interval, returns and episode lengths; a JSON summary, a CSV row per episode, GIFs.

Protocol (Q-chunking, Li, Zhou & Levine 2025, on OGBench): 50 episodes, each chunk executed open loop
(all H actions, `execute` to change it), success = OGBench's `info["success"]` at the episode's end (the
single-task environments terminate at the goal; the time limit truncates). Beside it, the simulator's own
reward at the last step (`final_reward`): in OGBench's manipulation tasks, minus the number of subtasks
(objects, buttons, lights) left unsolved, so partial progress shows where success is still 0.

Episodes run in parallel simulator processes, all environments that need a chunk planned in one
`agent.act` call (rollouts.py).

Reproducibility: the same checkpoint, seed, worker count and device give the same episodes. Episode i
resets with seed + i; the policy's noise is one torch stream seeded with `seed` and shared by the batched
planning calls, so the worker count (which episodes share a call) changes the draws.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from offline_chunk.checkpoint import agent_from_payload, read_checkpoint
from offline_chunk.compute import pick_device
from offline_chunk.config import RunConfig, with_overrides
from offline_chunk.errors import ConfigError
from offline_chunk.harness.envs.ogbench_env import make_env
from offline_chunk.harness.evaluation.report import write_outputs
from offline_chunk.harness.evaluation.rollouts import Rollouts, planner, planning_threads, vector_env
from offline_chunk.harness.evaluation.settings import REWARD_TRANSFORMS, eval_settings, gl_backend_for
from offline_chunk.harness.evaluation.stats import Episode, summarize


def roll_out(payload: dict, settings: dict, render: int, progress: bool) -> tuple[list[Episode], dict, dict]:
    """The episodes, the rendered frames, and the timing."""
    backend = gl_backend_for(render, settings["env_id"])
    env_fn = partial(make_env, settings["env_id"], settings["time_limit"], backend)
    started = time.perf_counter()
    device = pick_device(None)
    cuda_rng = [device] if device.type == "cuda" else []
    with (
        vector_env(env_fn, settings["workers"], fresh=backend is not None) as envs,
        planning_threads(device, settings["workers"]),
        torch.random.fork_rng(devices=cuda_rng),  # seeded here; the caller's RNG states are restored
    ):
        if settings["candidates"] is not None:  # the agent is built acting by that many candidates
            acting = with_overrides(payload["config"], [f"agent.act.candidates={settings['candidates']}"])
            payload = {**payload, "config": acting}
        agent = agent_from_payload(payload, device).eval()
        torch.manual_seed(settings["seed"])
        rollouts = Rollouts(
            envs,
            planner(agent),
            settings["episodes"],
            settings["seed"],
            settings["obs_horizon"],
            settings["execute"],
            REWARD_TRANSFORMS.get(settings["reward_convention"]),
            render if backend else 0,
        )
        rollout_start = time.perf_counter()
        bar = tqdm(
            total=settings["episodes"],
            desc=f"eval {settings['env_id']}",
            unit="episode",
            disable=not progress,
        )
        with bar:
            results = rollouts.run(bar)
        wall = time.perf_counter() - rollout_start
    env_steps = sum(e.length for e in results)
    timing = {
        "env_steps": env_steps,
        "wall_time_s": wall,
        "startup_s": rollout_start - started,
        "env_steps_per_s": env_steps / wall,
    }
    return results, rollouts.frames, timing


def evaluate(
    checkpoint,
    episodes: int = 50,
    execute: int | None = None,
    workers: int = 2,
    seed: int = 0,
    candidates: int | None = None,
    max_steps: int | None = None,
    render: int = 0,
    out=None,
    progress: bool = True,
) -> dict:
    """Roll a checkpoint's agent out in its store's simulator; write `<stem>_eval.json` (the returned summary)
    and `<stem>_eval.csv` (episode, seed, success, return, length, final reward) next to the checkpoint or in
    `out`.

    execute: actions of each chunk run before re-planning (default H, open loop; k < H: receding horizon).
    candidates: overrides the agent's `act.candidates` (1: no best-of-N selection by Q).
    max_steps: overrides the environment's time limit. render: GIFs of the first `render` episodes."""
    if render < 0:
        raise ConfigError(f"render={render}: must be at least 0")
    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    settings = eval_settings(payload, checkpoint, episodes, execute, workers, seed, candidates, max_steps)
    results, frames, timing = roll_out(payload, settings, render, progress)
    return write_outputs({**settings, **summarize(results), **timing}, results, frames, checkpoint, out)


def evaluation_seed(cfg: RunConfig) -> int:
    """The reset seed of evaluation episode 0 (episode i: seed + i) of a training run and of the fine-tuning
    runs that continue its checkpoints: the run's seed, so that all of them evaluate the same initial
    states (`make eval`'s default seed, 0, is that of a run of seed 0)."""
    return cfg.seed


def periodic_evaluator(cfg: RunConfig):
    """The evaluation a run makes every `eval_every` updates (train(..., evaluator=...)): the checkpoint's
    rollouts for `eval_episodes` episodes from `evaluation_seed`, without a progress bar."""
    return partial(
        evaluate,
        episodes=cfg.eval_episodes,
        workers=cfg.eval_workers,
        seed=evaluation_seed(cfg),
        max_steps=cfg.eval_max_steps,
        progress=False,
    )

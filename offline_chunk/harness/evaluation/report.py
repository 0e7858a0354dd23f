"""Evaluation outputs: a CSV row per episode, GIFs, the JSON summary (each written atomically), and the
summary a user reads."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np

from offline_chunk.atomic import write_atomic
from offline_chunk.harness.evaluation.stats import Episode

GIF_FRAME_MS = 150  # RENDER_EVERY control steps of 0.05 s (OGBench manipspace): real time


def write_csv(path: Path, episodes: list[Episode]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "seed", "success", "return", "length", "final_reward"])
        for e in episodes:
            row = [e.episode, e.seed, int(e.success), repr(e.episode_return), e.length, repr(e.final_reward)]
            writer.writerow(row)


def write_gif(path: Path, frames: list[np.ndarray]) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)


def write_outputs(report: dict, episodes: list[Episode], frames: dict, checkpoint: Path, out) -> dict:
    """The GIFs, the CSV, then the JSON summary (which lists them), each written atomically."""
    directory = Path(out) if out is not None else checkpoint.parent
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{checkpoint.stem}_eval"
    gifs = [
        str(write_atomic(Path(f"{stem}_episode{i:03d}.gif"), partial(write_gif, frames=frames[i])))
        for i in sorted(frames)
    ]
    report = {**report, "outputs": {"json": f"{stem}.json", "csv": f"{stem}.csv", "gifs": gifs}}
    write_atomic(Path(report["outputs"]["csv"]), partial(write_csv, episodes=episodes))
    text = json.dumps(report, indent=2) + "\n"
    write_atomic(Path(report["outputs"]["json"]), lambda tmp: tmp.write_text(text))
    return report


def interval(bounds: tuple[float | None, float | None]) -> str:
    low, high = bounds
    return f" [{low:.4g}, {high:.4g}] (95% normal approx.)" if low is not None else ""


def format_summary(report: dict) -> str:
    low, high, episodes = *report["success_ci95"], report["episodes"]
    return_ci, final_ci = (interval(report[key]) for key in ("return_ci95", "final_reward_ci95"))
    choice = f", candidates {report['candidates']} ({report['select']})" if report["candidates"] else ""
    lines = [
        f"eval {Path(report['checkpoint']).name} (step {report['checkpoint_step']}) on {report['env_id']}: "
        f"execute {report['execute']} of H={report['horizon']}{choice}, seed {report['seed']}",
        f"success {report['success_rate']:.2f} [{low:.2f}, {high:.2f}] (95% Wilson, {episodes} episodes)",
        f"return {report['return_mean']:.4g}{return_ci}",
        f"final reward {report['final_reward_mean']:.4g}{final_ci} (the simulator's own, at the last step)",
        f"length mean {report['length_mean']:.1f}, min {report['length_min']}, max {report['length_max']}",
        f"speed {report['env_steps']} env steps in {report['wall_time_s']:.1f} s "
        f"({report['env_steps_per_s']:.1f} steps/s, {report['workers']} workers)",
        f"wrote {report['outputs']['json']}, {report['outputs']['csv']}",
    ]
    lines += [f"gif {path}" for path in report["outputs"]["gifs"]]
    return "\n".join(lines)

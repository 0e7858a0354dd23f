"""Command line: `python -m offline_chunk <command> ...` (also installed as `offline-chunk`).

Bad input prints one line naming the file, array, row and rule, and exits with status 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from offline_chunk.agents import AGENTS
from offline_chunk.errors import BenchmarkError, CheckpointError, ConfigError, DataError, DivergenceError
from offline_chunk.harness.benchmark import PRESETS, REWARDS
from offline_chunk.harness.speed import CONFIGS
from offline_chunk.stopping import RunStopped

DEFAULT_HORIZON = 5  # the Q-chunking paper's chunk length, used for the summary's chunk count


def store_summary(path: Path, horizon: int = DEFAULT_HORIZON, gamma: float = 0.99) -> str:
    """What a user wants to see after writing or opening a store."""
    from offline_chunk.data.chunks import build_chunk_index
    from offline_chunk.data.store import open_store

    data = open_store(path)
    index = build_chunk_index(data.reward, data.terminal, data.episode_ends, horizon, gamma)
    lengths = data.episode_ends - data.episode_begins
    reward = data.reward
    lines = [
        f"store        {path}",
        f"rows         {data.num_rows:,}   obs_dim {data.obs.shape[1]}   action_dim {data.action.shape[1]}",
        f"episodes     {len(lengths):,}   length min/median/max "
        f"{lengths.min()}/{int(np.median(lengths))}/{lengths.max()}",
        f"terminals    {int(data.terminal.sum()):,} rows",
        f"chunks       {len(index):,} valid starts for H={horizon} (drop_partial)",
        f"reward       min {reward.min():.4g}   max {reward.max():.4g}   mean {reward.mean():.4g}",
    ]
    sources = [data.attrs[key] for key in ("reward_source", "reward_convention") if data.attrs.get(key)]
    lines.append(f"reward from  {'; '.join(sources) if sources else 'not recorded in the store'}")
    if data.attrs.get("env_id"):
        lines.append(f"env_id       {data.attrs['env_id']}")
    return "\n".join(lines)


def cmd_dataset(args) -> None:
    from offline_chunk.data.sources import convert

    out = convert(args.source, out=args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(store_summary(out, args.horizon))


def cmd_inspect(args) -> None:
    print(store_summary(Path(args.store), args.horizon))


def cmd_train(args) -> None:
    from offline_chunk.checkpoint import read_checkpoint
    from offline_chunk.config import load_config, read_config, with_overrides
    from offline_chunk.harness.evaluation import periodic_evaluator  # simulators load on first evaluation
    from offline_chunk.train import train

    named = [
        f"{key}={value}"
        for key, value in (("dataset", args.dataset), ("steps", args.steps), ("run_dir", args.run))
        if value is not None
    ]
    if args.resume or args.config:
        resume = read_checkpoint(args.resume) if args.resume else None
        # a copy: the checkpoint's own config stays as it was, for check_resume to compare against
        cfg = with_overrides(resume["config"] if resume else read_config(args.config), named + args.overrides)
    else:
        resume = None
        cfg = load_config(args.agent, args.preset, named + args.overrides)
    train(cfg, resume, periodic_evaluator(cfg) if cfg.eval_every else None)


def cmd_config(args) -> None:
    from offline_chunk.config import describe, load_config

    print(describe(load_config(args.agent, args.preset, args.overrides)))


def cmd_eval(args) -> None:
    from offline_chunk.harness.evaluation import evaluate, format_summary

    report = evaluate(
        args.checkpoint,
        episodes=args.episodes,
        execute=args.execute,
        workers=args.workers,
        seed=args.seed,
        candidates=args.candidates,
        max_steps=args.max_steps,
        render=args.render,
        out=args.out,
        progress=not args.no_progress,
    )
    print(format_summary(report))


def given_settings(args) -> dict:
    """The fine-tuning settings given on the command line."""
    from offline_chunk.harness.finetune import FinetuneSettings

    return {
        name: getattr(args, name) for name in FinetuneSettings.model_fields if getattr(args, name) is not None
    }


def cmd_finetune(args) -> None:
    from offline_chunk.config import validated
    from offline_chunk.harness.finetune import FinetuneSettings, finetune

    given = given_settings(args)
    if args.resume and set(given) - {"env_steps"}:
        raise ConfigError(
            f"--resume goes on with the run's settings; only --env-steps may change, got {sorted(given)}"
        )
    settings = validated(given, "finetune", FinetuneSettings) if given or not args.resume else None
    finetune(args.checkpoint, settings, args.run, progress=not args.no_progress, resume=args.resume)


def cmd_online(args) -> None:
    from offline_chunk.config import load_config, validated
    from offline_chunk.harness.finetune import ONLINE_DEFAULTS, FinetuneSettings, train_online

    named = [f"{key}={value}" for key, value in (("dataset", args.dataset), ("run_dir", args.run)) if value]
    cfg = load_config(args.agent, args.preset, named + args.overrides)
    settings = {**ONLINE_DEFAULTS, "seed": cfg.seed, **given_settings(args)}  # the run's seed by default
    settings = validated(settings, "online", FinetuneSettings)
    train_online(cfg, settings, progress=not args.no_progress)


# How a benchmark's runs are started: processes on this machine (the default), or tasks on a Ray cluster.
LAUNCHERS = ("local", "ray")


def benchmark_runner(args):
    """The function that trains a benchmark's planned runs (returning the failed ones), for `--launcher`."""
    from offline_chunk.harness.benchmark import run_all

    if args.launcher == "ray":
        from offline_chunk.harness.sweep_ray import run_all_on_ray

        return partial(run_all_on_ray, jobs=args.jobs, address=args.address, gpus_per_run=args.gpus_per_run)
    if args.address or args.gpus_per_run:
        raise BenchmarkError("--address and --gpus-per-run place runs on Ray: add --launcher ray")
    return partial(run_all, jobs=args.jobs)


def cmd_benchmark(args) -> None:
    from offline_chunk.harness.benchmark import run_benchmark

    run_benchmark(
        args.task,
        args.agent.split(","),
        args.steps,
        [int(s) for s in args.seeds.split(",")],
        args.preset,
        Path(args.out),
        args.overrides,
        args.jobs,
        args.ablation,
        args.reward,
        benchmark_runner(args),
    )


def cmd_bench(args) -> None:
    from offline_chunk.harness.speed import run_bench, run_scaling

    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    if args.scaling:
        run_scaling(args.agent.split(",")[0], args.device, Path(args.out), ints(args.batch_sizes),
                    ints(args.horizons), args.blocks, args.block_updates, args.overrides)  # fmt: skip
    else:
        cameras = args.cameras.split(",") if args.cameras else [""]
        run_bench(args.agent.split(","), args.config.split(","), args.device, Path(args.out), args.blocks,
                  args.block_updates, args.overrides, cameras)  # fmt: skip


def add_online_settings(parser) -> None:
    """The flags of FinetuneSettings (make finetune, make online)."""
    parser.add_argument(
        "--env-steps",
        type=int,
        help="environment steps to collect (default: finetune 50,000, online 100,000)",
    )
    parser.add_argument("--utd", type=int, help="updates per environment step (default 1, QC's)")
    parser.add_argument("--envs", type=int, help="environments collecting at once (default 1)")
    parser.add_argument("--warmup", type=int, help="steps collected before updates start (default 5,000)")
    parser.add_argument(
        "--warmup-actions",
        choices=["policy", "uniform"],
        help="what acts in the warm-up (default: finetune policy, online uniform)",
    )
    parser.add_argument(
        "--online-fraction",
        type=float,
        help="share of online chunks per batch (default: finetune all alike, online 0.5)",
    )
    parser.add_argument("--noise", type=float, help="td3bc's exploration noise (default 0.1)")
    parser.add_argument(
        "--eval-every", type=int, help="environment steps between evaluations (default 10,000)"
    )
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default 50)")
    parser.add_argument("--checkpoint-every", type=int, help="environment steps between checkpoints")
    parser.add_argument("--log-every", type=int, help="updates between metric logs (default 1,000)")
    parser.add_argument("--max-steps", type=int, help="episode time limit (default: the environment's)")
    parser.add_argument(
        "--seed",
        type=int,
        help="seeds the updates; collection episode i resets with seed + 1,000,000 + i (default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offline_chunk", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True)

    dataset = commands.add_parser("dataset", help="convert or generate a step-level zarr store")
    dataset.add_argument(
        "source",
        nargs="?",
        default="ogbench:scene-play-singletask-task2-v0",
        help="file.npz|file.hdf5|store.zarr|ogbench:<name>, with ?key=value options",
    )
    dataset.add_argument("--out", help="output store (default data/<name>.zarr)")
    dataset.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    dataset.add_argument(
        "--horizon", type=int, default=DEFAULT_HORIZON, help="H for the summary's chunk count"
    )
    dataset.add_argument("--no-progress", action="store_true", help="no progress bar")
    dataset.set_defaults(handler=cmd_dataset)

    train = commands.add_parser("train", help="train an agent on a store")
    train.add_argument("--agent", default="cpql", choices=list(AGENTS))
    train.add_argument(
        "--preset",
        default="default",
        help="configs/train/<preset>.yaml: default, quick, gpu, qc (Q-chunking's QC), qc_cpu",
    )
    train.add_argument("--dataset", help="store path (overrides the config's dataset)")
    train.add_argument("--steps", type=int, help="total updates")
    train.add_argument("--run", help="run directory (default runs/<agent>-<dataset>-<time>)")
    train.add_argument("--resume", help="checkpoint to continue from (its config, plus any overrides)")
    train.add_argument(
        "--config", help="a resolved config to train with (a run's config.yaml), then overrides"
    )
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. agent.eta=2")
    train.set_defaults(handler=cmd_train)

    config = commands.add_parser("config", help="print a resolved config, each field described")
    config.add_argument("--agent", default="cpql", choices=list(AGENTS))
    config.add_argument("--preset", default="default", help="configs/train/<preset>.yaml")
    config.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. agent.eta=2"
    )
    config.set_defaults(handler=cmd_config)

    evaluation = commands.add_parser("eval", help="roll a checkpoint out in its store's simulator")
    evaluation.add_argument("checkpoint")
    evaluation.add_argument("--episodes", type=int, default=50, help="episodes (default 50, the paper's)")
    evaluation.add_argument(
        "--execute", type=int, help="actions run per chunk before re-planning (default H: open loop)"
    )
    evaluation.add_argument("--workers", type=int, default=2, help="environment processes (default 2)")
    evaluation.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    evaluation.add_argument("--candidates", type=int, help="chunks sampled per plan (default: the agent's)")
    evaluation.add_argument("--max-steps", type=int, help="episode time limit (default: the environment's)")
    evaluation.add_argument("--render", type=int, default=0, help="GIFs of the first K episodes")
    evaluation.add_argument("--out", help="output directory (default: the checkpoint's)")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluation.set_defaults(handler=cmd_eval)

    tune = commands.add_parser("finetune", help="continue a checkpoint's agent online in its simulator")
    tune.add_argument("checkpoint")
    add_online_settings(tune)
    tune.add_argument("--run", help="output directory (default: finetune-<time> beside the checkpoint's run)")
    tune.add_argument("--resume", action="store_true", help="continue a fine-tuning run from its checkpoint")
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")
    tune.set_defaults(handler=cmd_finetune)

    online = commands.add_parser(
        "online", help="train an untrained agent online, the store in its replay (RLPD; Q-chunking's RLPD-AC)"
    )
    online.add_argument("--agent", default="chunk_sac", choices=list(AGENTS))
    online.add_argument("--preset", default="default", help="configs/train/<preset>.yaml (the networks)")
    online.add_argument("--dataset", help="store path (overrides the config's dataset)")
    online.add_argument("--run", help="run directory (default runs/<agent>-<dataset>-<time>)")
    add_online_settings(online)
    online.add_argument("--no-progress", action="store_true", help="no progress bar")
    online.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. agent.lr=1e-4"
    )
    online.set_defaults(handler=cmd_online)

    bench = commands.add_parser("benchmark", help="train and evaluate on an OGBench task; table vs the paper")
    bench.add_argument("--task", default="scene-play-singletask-task1-v0")
    bench.add_argument("--agent", default="cpql", help="comma-separated agents")
    bench.add_argument("--steps", type=int, help="updates per run (default: the preset's)")
    bench.add_argument("--seeds", default="0", help="comma-separated seeds (3 or more for reported figures)")
    bench.add_argument("--preset", default="quick", choices=list(PRESETS))
    bench.add_argument(
        "--reward",
        choices=REWARDS,
        help="training reward (default: the preset's; quick: ogbench, paper: QC's for the task)",
    )
    bench.add_argument("--out", default="runs/benchmark")
    bench.add_argument("--jobs", type=int, default=1, help="runs trained at once (the cores are shared)")
    bench.add_argument(
        "--launcher", default="local", choices=LAUNCHERS, help="local processes, or tasks on a Ray cluster"
    )
    bench.add_argument(
        "--address", help="with --launcher ray: the cluster's HOST:PORT (default: a local Ray)"
    )
    bench.add_argument(
        "--gpus-per-run", type=float, default=0.0, help="with --launcher ray: a GPU share per run, e.g. 0.25"
    )
    bench.add_argument(
        "--ablation", action=argparse.BooleanOptionalAction, default=True, help="the BC-only runs"
    )
    bench.add_argument("overrides", nargs="*", metavar="key=value")
    bench.set_defaults(handler=cmd_benchmark)

    speed = commands.add_parser("bench", help="update speed: updates/s, time split, memory, FLOPs")
    speed.add_argument("--agent", default=",".join(AGENTS), help="comma-separated agents")
    speed.add_argument("--config", default="default,matched", help=f"{', '.join(CONFIGS)} (comma-separated)")
    speed.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    speed.add_argument("--blocks", type=int, default=5, help="timed blocks (median, min, max over them)")
    speed.add_argument("--block-updates", type=int, default=20, help="updates per timed block")
    speed.add_argument(
        "--cameras", default="", help="camera rows instead: side:count per row, e.g. 64:1,84:2 (RGB frames)"
    )
    speed.add_argument("--scaling", action="store_true", help="updates/s against batch size and H instead")
    speed.add_argument("--batch-sizes", default="64,256,1024,4096", help="with --scaling")
    speed.add_argument("--horizons", default="1,2,5,8,16", help="with --scaling")
    speed.add_argument("--out", default="benchmarks/last_speed", help="output stem (.md and .json)")
    speed.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. precision=bf16")
    speed.set_defaults(handler=cmd_bench)

    inspect = commands.add_parser("inspect", help="validate a store and print its summary")
    inspect.add_argument("store")
    inspect.add_argument("--horizon", type=int, default=DEFAULT_HORIZON)
    inspect.set_defaults(handler=cmd_inspect)
    return parser


def quiet_library_warnings() -> None:
    """OGBench declares float64 space bounds, and mujoco's GLFW import warns when there is no display:
    neither concerns a user (the simulators render through EGL/OSMesa when asked)."""
    warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
    warnings.filterwarnings("ignore", module="glfw")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_warnings()
    try:
        args.handler(args)
    except (
        BenchmarkError,
        DataError,
        ConfigError,
        CheckpointError,
        DivergenceError,
        FileNotFoundError,
        ImportError,
    ) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted: no output was written under the final name", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: how fast an agent update runs, and where its time goes.

On a synthetic store of the Q-chunking OGBench shapes (100,000 rows in 1,000 episodes, obs 40, action 5,
H = 5, batch 256), for each agent and network configuration:

- updates/s: median, min and max over timed blocks of updates (batch sampling included) after warm-up,
  the device synchronised at each block's end;
- the time split of an update (batch sampling, critic step with the normalisation and camera encoding
  before it, actor step, targets and schedules), from
  separate updates with a device synchronisation after each phase (so the phases add up to a little more
  than an update in the throughput blocks, where they overlap);
- peak memory (CUDA: allocator peak; CPU: the process's peak resident set), parameter counts, the FLOPs
  of one update (torch.utils.flop_counter: matrix products and convolutions, forward and backward) and
  the FLOP/s achieved.

Configurations: `default` (the CPU preset's networks), `matched` (sized like the official Diffusion-QL and
CPQL networks: ~150k actor and ~300k critic parameters), `gpu` (the paper-scale preset's networks), and
the recipes `qc` and `qc_cpu` whole (Q-chunking's QC: best of N with MLP critics, configs/train/qc*.yaml).
`scaling` varies the batch size and H for one agent at `matched`.

Camera rows (`--cameras 64:1,84:2`, `make bench-images`): the same measurements with RGB camera frames of
that side and count beside the observations (the default DrQ-v2 encoders, random shift), on a store of
IMAGE_ROWS rows so that its frames fit in memory; the split's `sample` column is the sampler's share.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from offline_chunk.agents import ChunkAgent, Dims, make_agent
from offline_chunk.agents.targets import batch_fields
from offline_chunk.compute import pick_device
from offline_chunk.config import RunConfig, load_config
from offline_chunk.data.batches import ChunkSampler
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.normalize import Normalizer
from offline_chunk.data.store import StepData

ROWS, EPISODE, OBS_DIM, ACTION_DIM = 100_000, 1_000, 40, 5
IMAGE_ROWS = 10_000  # camera stores: 10 episodes (84 px, 2 cameras: 0.4 GB of frames)
# Network sizes per configuration: the train preset whose networks are measured; everything else is the
# default preset's (each agent's published settings). `matched` takes the quick preset's networks, sized
# like the official Diffusion-QL and CPQL MLPs (160k actor, 2 x 149k critics): a one-level U-Net actor
# (152k parameters) or a one-layer transformer actor (145k), and two U-Net critics (146k each).
CONFIGS = {
    "default": "default",
    "matched": "quick",
    "gpu": "gpu",
    "qc": "qc",
    "qc_cpu": "qc_cpu",
    "published_cpu": "published_cpu",
    "rlpd_ac": "rlpd_ac",
}
# Recipes are measured whole (backup, candidates, acting), not only their networks.
RECIPES = ("qc", "qc_cpu", "published_cpu", "rlpd_ac")


def synthetic_dataset(horizon: int = 5, cameras: str = "") -> OfflineRLDataset:
    """The benchmark's store; `cameras` "side:count" (e.g. "84:2") adds that many RGB cameras."""
    rows = ROWS if not cameras else IMAGE_ROWS
    rng = np.random.default_rng(0)
    images = {}
    if cameras:
        side, count = (int(v) for v in cameras.split(":"))
        images = {
            f"camera{i}": rng.integers(0, 256, (rows, side, side, 3), dtype=np.uint8) for i in range(count)
        }
    data = StepData(
        observations={"obs": rng.normal(size=(rows, OBS_DIM)).astype(np.float32)},
        action=rng.uniform(-1, 1, size=(rows, ACTION_DIM)).astype(np.float32),
        reward=-(rng.random(rows) < 0.9).astype(np.float32),
        terminal=rng.random(rows) < 0.001,
        episode_ends=np.arange(EPISODE, rows + 1, EPISODE, dtype=np.int64),
        images=images,
    )
    return OfflineRLDataset(data, horizon=horizon, obs_horizon=1, gamma=0.99)


def camera_label(dataset: OfflineRLDataset) -> str:
    """ "none", or e.g. "2 x 84x84" for the dataset's cameras."""
    shapes = [frames.shape[1:3] for frames in dataset.data.images.values()]
    return f"{len(shapes)} x {shapes[0][0]}x{shapes[0][1]}" if shapes else "none"


def bench_config(agent: str, config: str, overrides: list[str] = ()) -> RunConfig:
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {', '.join(CONFIGS)}; got {config!r}")
    sized = load_config(agent, CONFIGS[config], overrides)
    if config in RECIPES:
        return sized
    cfg = load_config(agent, "default", overrides)
    for networks in ("policy", "critic"):
        setattr(cfg.agent, networks, getattr(sized.agent, networks))
    return cfg


@dataclass
class BenchSetup:
    """An agent and a device-resident sampler; `step()` is one training-loop iteration."""

    agent: ChunkAgent
    sampler: ChunkSampler
    device: torch.device
    cfg: RunConfig

    def step(self) -> dict[str, torch.Tensor]:
        return self.agent.update(self.sampler.sample())

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def bench_setup(
    agent: str,
    config: str = "matched",
    device: str = "auto",
    batch_size: int = 256,
    horizon: int = 5,
    overrides: list[str] = (),
    dataset: OfflineRLDataset | None = None,
) -> BenchSetup:
    shaped = [o for o in overrides if o.split("=", 1)[0] in ("batch_size", "horizon")]
    if shaped:  # the synthetic data and the networks are built at the arguments' batch and H, not at these
        raise ValueError(
            f"{', '.join(shaped)}: bench measures at batch {batch_size} and H = {horizon}; "
            "set them with `bench --scaling --batch-sizes B,.. --horizons H,..` instead"
        )
    cfg = bench_config(agent, config, [f"batch_size={batch_size}", f"horizon={horizon}", *overrides])
    torch_device = pick_device(device if device != "auto" else cfg.device)
    torch.manual_seed(0)
    dataset = dataset or synthetic_dataset(horizon)
    cameras = dataset.image_shapes
    dims = Dims(OBS_DIM, 1, ACTION_DIM, horizon, cameras)
    normalizer = Normalizer.from_data(dataset.data)
    built = make_agent(cfg.agent, dims, normalizer, total_steps=10**6).to(torch_device)
    built.configure_compute(cfg.compile, cfg.precision)
    fields = batch_fields(cfg.agent)
    sampler = dataset.sampler(batch_size, device=torch_device, seed=0, images=bool(cameras), **fields)
    return BenchSetup(built, sampler, torch_device, cfg)


# --------------------------------------------------------------------------- measurements


@dataclass
class SpeedResult:
    agent: str
    config: str
    device: str
    batch_size: int
    horizon: int
    compile: bool
    precision: str
    cameras: str  # "none", or count x side
    updates_per_s: float  # median over blocks
    updates_per_s_min: float
    updates_per_s_max: float
    blocks: list[float]
    split_ms: dict[str, float]  # median per phase
    peak_memory_mb: float
    memory_kind: str
    actor_params: int
    critic_params: int
    gflop_per_update: float
    achieved_tflops: float
    hours_to_1m_updates: float


def throughput(setup: BenchSetup, blocks: int, block_updates: int) -> list[float]:
    rates = []
    for _ in range(blocks):
        setup.sync()
        start = time.perf_counter()
        for _ in range(block_updates):
            setup.step()
        setup.sync()
        rates.append(block_updates / (time.perf_counter() - start))
    return rates


def time_split(setup: BenchSetup, updates: int) -> dict[str, float]:
    """Median milliseconds of each phase of `ChunkAgent.update`, synchronising after each."""
    agent, phases = setup.agent, {"sample": [], "critic": [], "actor": [], "targets": []}

    def timed(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        setup.sync()
        phases[name].append(1e3 * (time.perf_counter() - start))
        return out

    def critic_phase(batch):  # normalisation and camera encoding belong to it: the critic loss trains them
        obs, actions, next_obs = agent.normalized(batch)
        agent.update_critic(obs, actions, next_obs, batch)
        return obs, actions

    for _ in range(updates):
        setup.sync()
        batch = timed("sample", setup.sampler.sample)
        obs, actions = timed("critic", critic_phase, batch)
        timed("actor", agent.update_actor, obs, actions, batch["action_mask"])
        timed("targets", agent.finish_update)
    return {name: statistics.median(times) for name, times in phases.items()}


class FlopCount(TorchDispatchMode):
    """FLOPs of the matrix products and convolutions dispatched inside it, by torch.utils.flop_counter's
    formulas (FlopCounterMode itself also tracks modules, which fails on the vmapped critics)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def update_flops(agent: str, config: str, batch_size: int, horizon: int, dataset, overrides=()) -> int:
    """FLOPs of one eager update on the CPU (the count does not depend on device or compilation)."""
    setup = bench_setup(agent, config, "cpu", batch_size, horizon, [*overrides, "compile=false"], dataset)
    setup.step()  # optimizer state exists
    with FlopCount() as counter:
        setup.step()
    return counter.total


def peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda allocator peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def measure(
    agent: str,
    config: str,
    device: str = "auto",
    batch_size: int = 256,
    horizon: int = 5,
    blocks: int = 5,
    block_updates: int = 20,
    warmup: int = 10,
    split_updates: int = 10,
    overrides: list[str] = (),
    dataset: OfflineRLDataset | None = None,
) -> SpeedResult:
    dataset = dataset or synthetic_dataset(horizon)
    setup = bench_setup(agent, config, device, batch_size, horizon, overrides, dataset)
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    for _ in range(warmup):  # compilation, allocator and oneDNN caches, target schedules
        setup.step()
    rates = throughput(setup, blocks, block_updates)
    split = time_split(setup, split_updates)
    memory, memory_kind = peak_memory(setup.device)
    flops = update_flops(agent, config, batch_size, horizon, dataset, overrides)
    median = statistics.median(rates)
    count = lambda module: sum(p.numel() for p in module.parameters() if p.requires_grad)  # noqa: E731
    return SpeedResult(
        agent=agent,
        config=config,
        device=describe_device(setup.device),
        batch_size=batch_size,
        horizon=horizon,
        compile=setup.agent.compiles,
        precision=setup.cfg.precision,
        cameras=camera_label(dataset),
        updates_per_s=median,
        updates_per_s_min=min(rates),
        updates_per_s_max=max(rates),
        blocks=rates,
        split_ms=split,
        peak_memory_mb=memory,
        memory_kind=memory_kind,
        actor_params=count(setup.agent.actor),
        critic_params=count(setup.agent.critic),
        gflop_per_update=flops / 1e9,
        achieved_tflops=flops * median / 1e12,
        hours_to_1m_updates=1e6 / median / 3600,
    )


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- reports


def format_table(results: list[SpeedResult]) -> str:
    header = (
        "| agent | config | cameras | device | batch | H | updates/s median [min, max] | split ms sample / "
        "critic / actor / targets | actor / critic params | GFLOP/update | achieved TFLOP/s | peak MB | "
        "h to 1M |"
    )
    lines = [header, "|" + "---|" * 13]
    for r in results:
        split = " / ".join(f"{r.split_ms[k]:.2f}" for k in ("sample", "critic", "actor", "targets"))
        lines.append(
            f"| {r.agent} | {r.config} | {r.cameras} | {r.device} | {r.batch_size} | {r.horizon} | "
            f"{r.updates_per_s:.1f} [{r.updates_per_s_min:.1f}, {r.updates_per_s_max:.1f}] | {split} | "
            f"{r.actor_params:,} / {r.critic_params:,} | {r.gflop_per_update:.2f} | "
            f"{r.achieved_tflops:.3f} | {r.peak_memory_mb:.0f} ({r.memory_kind}) | "
            f"{r.hours_to_1m_updates:.1f} |"
        )
    return "\n".join(lines)


def write_results(results: list[SpeedResult], out: Path, title: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "title": title,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": [asdict(r) for r in results],
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(f"# {title}\n\n{format_table(results)}\n")
    return out.with_suffix(".md")


def run_bench(
    agents: list[str],
    configs: list[str],
    device: str,
    out: Path,
    blocks: int,
    block_updates: int,
    overrides: list[str] = (),
    cameras: list[str] = ("",),
) -> Path:
    """Each agent at each configuration, for each camera setting ("" none, or "side:count")."""
    results = []
    for camera_setting in cameras:
        dataset = synthetic_dataset(cameras=camera_setting)
        for config in configs:
            for agent in agents:
                result = measure(agent, config, device, blocks=blocks, block_updates=block_updates,
                                 overrides=overrides, dataset=dataset)  # fmt: skip
                print(format_table([result]).splitlines()[-1], flush=True)
                results.append(result)
    report = write_results(results, out, "offline_chunk update speed")
    print(f"\n{format_table(results)}\n\nwritten: {report} and {report.with_suffix('.json')}")
    return report


def run_scaling(
    agent: str,
    device: str,
    out: Path,
    batch_sizes: list[int],
    horizons: list[int],
    blocks: int,
    block_updates: int,
    overrides: list[str] = (),
) -> Path:
    """updates/s against batch size (H = 5) and against H (batch 256), at `matched`."""
    results = []
    points = [(b, 5) for b in batch_sizes] + [(256, h) for h in horizons if h != 5 or 256 not in batch_sizes]
    for batch_size, horizon in points:
        result = measure(agent, "matched", device, batch_size, horizon, blocks, block_updates,
                         warmup=3, split_updates=3, overrides=overrides)  # fmt: skip
        print(format_table([result]).splitlines()[-1], flush=True)
        results.append(result)
    report = write_results(results, out, f"offline_chunk update speed against batch size and H ({agent})")
    print(f"\n{format_table(results)}\n\nwritten: {report} and {report.with_suffix('.json')}")
    return report

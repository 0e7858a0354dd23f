"""How the networks compute, apart from what they compute: on which device (`pick_device`), with how many
CPU threads (`FreeCoreThreads`), and torch.compile of an agent's loss computations and bf16 autocast of its
network passes (`ChunkAgent.configure_compute`).

- compile: `auto` compiles on CUDA only; `true` compiles on any device (inductor generates C++ on the CPU,
  which needs a compiler and, on 2 cores, about 3 minutes per agent); `false` runs eagerly. Inductor's
  default mode: kernels fused, no CUDA graphs yet (a graph replay overwrites its outputs, and metrics
  outlive an update; not enabled before it has been validated on a GPU). A compilation failure warns once
  and falls back to the eager function, so a run never stops because a backend is missing.
- precision: `fp32`, or `bf16` to autocast convolutions and matrix products to bfloat16. Losses, targets and
  each critic's output layer stay in float32 (ChunkQNet): a bf16 Q value of -80 would be rounded to a
  multiple of 0.5.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
COMPILE_CHOICES = ("auto", True, False)


def pick_device(device=None) -> torch.device:
    """`device`, or (None, "auto") CUDA when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compile_enabled(choice: str | bool, device: torch.device) -> bool:
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of auto, true, false; got {choice!r}")
    return device.type == "cuda" if choice == "auto" else bool(choice)


def autocast_context(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for `precision` ('fp32': a no-op)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class CompiledWithFallback:
    """`fn` through torch.compile; if compiling fails, one warning and `fn` itself from then on."""

    def __init__(self, fn: Callable, backend: str = "inductor"):
        self.fn = fn
        self.compiled: Callable | None = torch.compile(fn, backend=backend, dynamic=False)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as error:
                warnings.warn(
                    f"torch.compile failed for {getattr(self.fn, '__name__', self.fn)}; running eagerly "
                    f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
                    stacklevel=2,
                )
                self.compiled = None
        return self.fn(*args)


class FreeCoreThreads:
    """A CPU run's intra-op threads = the cores of its affinity mask that other processes leave free: over a
    short window when the run starts and, for an eager run, again at every `follow()` (the training loops
    call it at each log interval). A run with one thread per core beside a busy neighbour waits at every
    parallel region for the thread that shares a core with it: on the 2-core machine cpql's default run fell
    to 0.32x of its speed alone beside one spinning process, and ran at 0.77x following the free cores
    (benchmarks/busy_neighbour.py, benchmarks/RESULTS.md). Others' load is the busy time of those cores
    (/proc/stat) less this process's own CPU time, over the interval; their cores (rounded) are left to
    them, at least one thread kept, never more than the process had when the run began (a caller's
    torch.set_num_threads is a ceiling). A compiled run keeps the count it starts with (torch.compile guards
    on the thread count: each new count compiles the update again). Never changed where the user chose:
    OMP_NUM_THREADS set (torchrun sets it, and `benchmark` for its runs), or not on a Linux CPU."""

    def __init__(self, device: torch.device, compiled: bool, window_s: float = 0.25):
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.active = (
            device.type == "cpu"
            and "OMP_NUM_THREADS" not in os.environ
            and len(self.cpus) > 1
            and Path("/proc/stat").exists()
        )
        self.ticks_per_s = os.sysconf("SC_CLK_TCK") if self.active else 100
        self.most = torch.get_num_threads()
        if self.active:
            self.mark = self.read()
            time.sleep(window_s)  # others' load before this run's own work starts
            self.follow()
        self.active = self.active and not compiled

    def read(self) -> tuple[float, float, float]:
        """(wall seconds, busy seconds of this process's cores, this process's CPU seconds) now."""
        busy = 0
        with open("/proc/stat") as stat:
            for line in stat:
                name, *ticks = line.split()
                if name[3:].isdigit() and name.startswith("cpu") and int(name[3:]) in self.cpus:
                    # user nice system idle iowait irq softirq steal: all but idle and iowait are taken
                    values = [int(t) for t in ticks[:8]]
                    busy += sum(values) - values[3] - values[4]
        own = os.times()
        return time.perf_counter(), busy / self.ticks_per_s, own.user + own.system

    def restart(self) -> None:
        """Forget the interval so far (its load was this run's own evaluation workers)."""
        if self.active:
            self.mark = self.read()

    def follow(self) -> int:
        """Threads set to the cores others left free over the interval since the last call; returns them."""
        if self.active:
            now = self.read()
            wall, busy, own = (b - a for a, b in zip(self.mark, now, strict=True))
            self.mark = now
            if wall > 0.05:
                others = max(0.0, busy - own) / wall  # cores' worth of other processes' work
                torch.set_num_threads(max(1, min(self.most, len(self.cpus) - round(others))))
        return torch.get_num_threads()

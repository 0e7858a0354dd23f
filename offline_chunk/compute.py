"""How the networks compute, apart from what they compute: on which device (`pick_device`), and
torch.compile of an agent's loss computations and bf16 autocast of its network passes
(`ChunkAgent.configure_compute`).

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
import warnings
from collections.abc import Callable

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

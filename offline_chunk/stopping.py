"""Stopping a long run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption, `kill`).

The first signal only asks: the loop finishes what it is doing (an update; in fine-tuning, the episodes
under way), writes an ordinary step checkpoint and raises `RunStopped`, so the run resumes exactly from
it. A second signal stops at once (KeyboardInterrupt) and writes nothing: a checkpoint taken inside an
update would hold half of it (the critics stepped, the actor not), and resuming it would repeat that half.
"""

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """A run stopped on request after writing the checkpoint it resumes from (`path`, None where the stop
    left nothing new to write). `exit_code` is the shell's for the signal: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, message: str, signum: int, path: Path | None = None):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.path = path


class StopRequest:
    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self, what: str, path: Path | None = None) -> RunStopped:
        name = signal.Signals(self.signum).name
        return RunStopped(f"{name}: {what}", self.signum, path)


@contextmanager
def stop_requests(what_happens: str):
    """Within the block, the first SIGINT or SIGTERM sets `request.signum` and prints `what_happens`;
    the second raises KeyboardInterrupt. Off the main thread (where Python cannot take signals) nothing is
    installed and `requested` stays False."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def ask(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.signum = signum
        name = signal.Signals(signum).name
        print(f"\n{name}: {what_happens} (signal again to stop at once)", file=sys.stderr)

    previous = {signum: signal.signal(signum, ask) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

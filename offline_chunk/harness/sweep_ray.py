"""`benchmark --launcher ray`: each planned run a Ray task, on a cluster or on a local Ray, asking for the
cores it trains with and a fraction of a GPU (several runs share one). Runs write to their run directories
as local ones do, so the benchmark's table is built from them the same way; the store is generated once,
by the benchmark, before any task starts.

A task trains its run with `benchmark.launch` (the one way a run starts, bound to the task's worker: the
run dies with it) and returns its exit status. Ray retries a task whose worker or node died (RETRIES
times); the retried task's `launch` resumes the run from its last step checkpoint, bit-identically, so a
lost worker costs the updates since that checkpoint. The benchmark's directory (run directories, the
store) must be on storage every node sees, at the same path: tasks run in the directory the benchmark was
started in.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from offline_chunk.errors import BenchmarkError
from offline_chunk.harness.benchmark import launch, report_end, run_threads, runs_to_train
from offline_chunk.stopping import stop_requests

if TYPE_CHECKING:
    from types import ModuleType

    from offline_chunk.harness.benchmark import PlannedRun

RETRIES = 3  # times a task whose worker died is started again before its run counts as failed
CONNECT_TIMEOUT_S = 5.0  # to reach a cluster's address before giving up on it


def train_run(run: PlannedRun, threads: int, directory: str) -> int:
    """The Ray task: `run` trained with `threads` threads from `directory` (the benchmark's working
    directory, where its relative paths point); the run's exit status."""
    os.chdir(directory)
    return launch(run, threads, quiet=True, bound_to_parent=True).wait()


def check_reachable(address: str) -> None:
    """A HOST:PORT address (ray:// too) that accepts no connection within CONNECT_TIMEOUT_S is refused with
    one line, before Ray waits on it far longer. Other forms (`auto`) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BenchmarkError(
            f"no Ray cluster at {address} ({exc.strerror or exc}): start one with `ray start --head` "
            "(docs/benchmark.md, On a Ray cluster) and pass its HOST:6379"
        ) from None


@contextmanager
def ray_session(address: str | None) -> Iterator[ModuleType]:
    """`ray`, connected to the cluster at `address`, or to a local Ray on this process's cores when None,
    and disconnected afterwards, with the SIGTERM handler `ray.init` installs put back as it was. A
    connection made before (a notebook, the tests) is used and kept."""
    try:
        import ray
    except ImportError:
        raise BenchmarkError("--launcher ray needs Ray: pip install -e '.[cluster]'") from None
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_reachable(address)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(
            address=address,
            num_cpus=None if address else len(os.sched_getaffinity(0)),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise BenchmarkError(f"could not start or reach {where}: {str(exc).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, sigterm)


def run_all_on_ray(
    runs: list[PlannedRun], jobs: int, address: str | None = None, gpus_per_run: float = 0.0
) -> list[PlannedRun]:
    """Train the runs that are not complete yet as Ray tasks, each asking for the threads it trains with
    (run_threads(jobs): a local Ray on this machine's cores runs `jobs` at once) and `gpus_per_run` GPUs;
    returns the runs that failed: a nonzero exit, or a worker lost more than RETRIES times. A stop (Ctrl-C,
    SIGTERM) cancels the tasks at once (their workers end, and their runs with them): each run under way
    loses the updates since its last step checkpoint, which the same command resumes from. (Ray's gentle
    cancel, a KeyboardInterrupt in the task, did not reach a task waiting on its run in Ray 2.60.)"""
    pending = runs_to_train(runs)
    if not pending:
        return []
    threads = run_threads(jobs)
    failed = []
    stopping = "the tasks are cancelled; each run under way resumes from its last checkpoint"
    with ray_session(address) as ray, stop_requests(stopping) as stop:
        task = ray.remote(train_run).options(num_cpus=threads, num_gpus=gpus_per_run, max_retries=RETRIES)
        active = {}
        for run in pending:
            print(f"submitted    {run.label} seed {run.seed} -> {run.run_dir}")
            active[task.remote(run, threads, os.getcwd())] = run
        while active and not stop.requested:
            ready = wait_for_one(ray, list(active), address, len(pending) - len(active))
            for ref in ready:
                run = active.pop(ref)
                failure = task_failure(ray, ref)
                report_end(run, failure)
                if failure is not None:
                    failed.append(run)
        if stop.requested:
            for ref in active:
                ray.cancel(ref, force=True)
            raise stop.stopped("stopped; the same command resumes every run from its last checkpoint")
    return failed


def wait_for_one(ray: ModuleType, refs: list, address: str | None, finished: int) -> list:
    """The tasks among `refs` that ended within a second; the loss of the whole cluster (its head or its
    connection) is one line that says what is kept: the runs that finished, and every run's checkpoints."""
    try:
        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
    except (ray.exceptions.RaySystemError, ConnectionError) as exc:
        where = f"the Ray cluster at {address}" if address else "the local Ray"
        raise BenchmarkError(
            f"lost {where} ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}); {finished} run(s) had "
            "finished and are kept, the others resume from their last checkpoints with the same command"
        ) from None
    return ready


def task_failure(ray: ModuleType, ref) -> str | None:
    """Why a finished task's run failed (its exit status, or Ray's error: a worker lost for good, a node
    died), or None when it trained to the end."""
    try:
        status = ray.get(ref)
    except ray.exceptions.RayError as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return None if status == 0 else f"exit {status}"

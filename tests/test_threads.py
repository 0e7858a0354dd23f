"""FreeCoreThreads (compute.py): a CPU run's intra-op threads follow the cores other processes leave free,
unless the user fixed them."""

from __future__ import annotations

import os

import pytest
import torch

from offline_chunk.compute import FreeCoreThreads

LINUX = os.path.exists("/proc/stat") and hasattr(os, "sched_getaffinity")


@pytest.fixture
def threads_restored(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat")
def test_threads_are_the_cores_others_leave_free(threads_restored):
    threads = FreeCoreThreads(torch.device("cpu"), compiled=False)
    threads.cpus, threads.most = list(range(4)), 4  # four cores and threads, whatever this machine has
    threads.active = True
    # (wall s, busy s of the 4 cores, own CPU s): over 10 s the cores were busy 25 s, 13 of them ours, so
    # others took 12 s / 10 s = 1.2 cores' worth -> 1 core left to them, 3 threads.
    readings = iter([(110.0, 75.0, 33.0), (120.0, 95.0, 53.0), (130.0, 96.0, 53.5)])
    threads.mark = (100.0, 50.0, 20.0)
    threads.read = lambda: next(readings)
    assert threads.follow() == 3
    # then 20 s busy, all ours: nobody else -> 4 threads
    assert threads.follow() == 4
    # 1 s busy in 10 s, 0.5 of it ours: others 0.05 cores, rounded to none -> still 4
    assert threads.follow() == 4


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat")
def test_others_keep_at_most_all_but_one_core(threads_restored):
    threads = FreeCoreThreads(torch.device("cpu"), compiled=False)
    threads.cpus, threads.most, threads.active = [0, 1], 2, True
    threads.mark = (0.0, 0.0, 0.0)
    threads.read = lambda: (10.0, 20.0, 0.0)  # both cores busy with others' work for the whole 10 s
    assert threads.follow() == 1


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat")
def test_a_callers_thread_count_is_a_ceiling(threads_restored):
    torch.set_num_threads(1)  # set by the caller before the run
    threads = FreeCoreThreads(torch.device("cpu"), compiled=False)
    threads.cpus, threads.active = list(range(4)), True
    threads.mark = (0.0, 0.0, 0.0)
    threads.read = lambda: (10.0, 0.0, 0.0)  # four idle cores
    assert threads.follow() == 1


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat")
def test_a_compiled_run_keeps_the_threads_it_starts_with(threads_restored):
    threads = FreeCoreThreads(torch.device("cpu"), compiled=True)
    threads.cpus = list(range(4))
    torch.set_num_threads(3)  # what it started with, say
    threads.mark = (0.0, 0.0, 0.0)
    threads.read = lambda: (10.0, 20.0, 0.0)  # others busy on 2 cores: an eager run would go to 2 threads
    assert threads.follow() == 3


def test_a_users_thread_setting_is_never_changed(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not FreeCoreThreads(torch.device("cpu"), compiled=False).active
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not FreeCoreThreads(torch.device("meta"), compiled=False).active  # not a CPU run
    before = torch.get_num_threads()
    threads = FreeCoreThreads(torch.device("meta"), compiled=False)
    assert threads.follow() == before and torch.get_num_threads() == before


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat")
def test_the_cores_busy_time_includes_this_process_s_own(threads_restored):
    """What `follow` subtracts is in what it reads: 0.3 CPU seconds of this process spinning show in the
    busy time of its cores (the kernel's tick accounting: within a few 1/CLK_TCK ticks per core), and the
    busy time never exceeds the cores' wall time."""
    threads = FreeCoreThreads(torch.device("cpu"), compiled=False)
    wall0, busy0, own0 = threads.read()
    while threads.read()[2] - own0 < 0.3:  # CPU time, not wall time: the same work on a loaded machine
        pass
    wall1, busy1, own1 = threads.read()
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert busy1 - busy0 >= own1 - own0 - 3 * tick * len(threads.cpus)
    assert busy1 - busy0 <= (wall1 - wall0) * len(threads.cpus) + 3 * tick * len(threads.cpus)

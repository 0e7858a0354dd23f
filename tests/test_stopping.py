"""Stopping on SIGINT / SIGTERM: the update under way finishes, its checkpoint resumes exactly; a second
signal stops at once and saves nothing; the benchmark passes the stop on to its runs and starts no more."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import chain_store, tiny_config

from offline_chunk.agents import AGENTS
from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.harness import benchmark
from offline_chunk.harness.benchmark import plan_runs
from offline_chunk.harness.cli import main
from offline_chunk.stopping import RunStopped
from offline_chunk.train import train


def signal_at_update(monkeypatch, agent: str, update: int, signals: int) -> None:
    """Send `signals` SIGTERMs to this process as update number `update` begins (before its losses)."""
    cls, original, calls = AGENTS[agent], AGENTS[agent].update, []

    def update_then_maybe_signal(self, batch):
        calls.append(None)
        if len(calls) == update:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(cls, "update", update_then_maybe_signal)


def test_a_stopped_run_finishes_its_update_and_resumes_from_it_bit_identically(tmp_path, monkeypatch, capsys):
    """SIGTERM as update 18 of 40 begins: update 18 completes, step_00000018.pt is written, `train` exits
    with 143 (128 + SIGTERM); resumed there, the run ends with the weights of the uninterrupted run."""
    store = chain_store(tmp_path / "chain.zarr")
    straight = train(tiny_config("td3bc", store, tmp_path / "a", "steps=40"))
    with monkeypatch.context() as patched:
        signal_at_update(patched, "td3bc", 18, signals=1)
        again = ["train", "--config", str(tmp_path / "a" / "config.yaml"), f"run_dir={tmp_path / 'b'}"]
        assert main(again) == 143
    stopped = tmp_path / "b" / "checkpoints" / "step_00000018.pt"
    assert f"SIGTERM: stopped at step 18; resume with --resume {stopped}" in capsys.readouterr().err
    assert read_checkpoint(stopped)["step"] == 18
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    assert main(["train", "--resume", str(stopped)]) == 0
    resumed = tmp_path / "b" / "checkpoints" / "final.pt"
    a, b = (read_checkpoint(path)["weights"] for path in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_stop_on_a_checkpoint_step_writes_that_checkpoint_once(tmp_path, monkeypatch):
    """checkpoint_every=20, SIGTERM as update 20 begins: the loop's step_00000020.pt is the resume point; it
    is not written a second time on the way out."""
    import offline_chunk.train as training

    store, written = chain_store(tmp_path / "chain.zarr"), []
    original = training.save_checkpoint
    monkeypatch.setattr(
        training, "save_checkpoint", lambda path, *a: written.append(path) or original(path, *a)
    )
    signal_at_update(monkeypatch, "td3bc", 20, signals=1)
    with pytest.raises(RunStopped, match="stopped at step 20; resume with --resume .*step_00000020.pt"):
        train(tiny_config("td3bc", store, tmp_path / "run", "steps=40", "checkpoint_every=20"))
    assert [path.name for path in written] == ["step_00000020.pt"]


def test_a_second_signal_stops_at_once_and_saves_nothing(tmp_path, monkeypatch):
    store = chain_store(tmp_path / "chain.zarr")
    cfg = tiny_config("td3bc", store, tmp_path / "run", "steps=40", "checkpoint_every=10")
    signal_at_update(monkeypatch, "td3bc", 18, signals=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    saved = sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == ["step_00000010.pt"]  # nothing from inside update 18


CHILD = """
import signal, sys, time, pathlib
out = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    out.with_suffix('.signal').write_text(signal.Signals(signum).name)
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
out.with_suffix('.ready').write_text('')
time.sleep(60)
"""


def test_the_benchmark_passes_a_stop_on_to_its_runs_and_starts_no_more(tmp_path, monkeypatch):
    """Three runs, two at a time: SIGTERM to the benchmark reaches each run under way once; the third never
    starts, and the benchmark raises RunStopped with SIGTERM's exit code after both have exited."""
    runs = plan_runs(tmp_path / "s.zarr", ["td3bc"], 100, [0, 1, 2], "quick", tmp_path, [], ablation=False)
    launched = []

    def launch(run, threads, quiet):
        launched.append(run.seed)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-c", CHILD, str(run.run_dir / "child")]
        return subprocess.Popen(command, start_new_session=True)

    def stop_when_ready():
        while not all((run.run_dir / "child.ready").exists() for run in runs[:2]):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(benchmark, "launch", launch)
    threading.Thread(target=stop_when_ready, daemon=True).start()
    with pytest.raises(RunStopped, match="the same command resumes") as stopped:
        benchmark.run_all(runs, jobs=2)
    assert stopped.value.exit_code == 143 and launched == [0, 1]
    for run in runs[:2]:
        assert (run.run_dir / "child.signal").read_text() == "SIGTERM"

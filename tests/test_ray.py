"""`benchmark --launcher ray`: runs as Ray tasks on a local Ray of 2 CPUs end with the weights the local
launcher trains; a worker killed mid-run is retried and its run resumes to the same weights; an unreachable
cluster is refused with one line."""

import os
import signal
import threading
import time

import pytest
import torch
from helpers import chain_store, tiny_nets

from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.errors import BenchmarkError
from offline_chunk.harness import benchmark
from offline_chunk.harness.benchmark import plan_runs
from offline_chunk.harness.cli import main
from offline_chunk.stopping import RunStopped

ray = pytest.importorskip("ray")
from offline_chunk.harness.sweep_ray import run_all_on_ray  # noqa: E402  (needs ray)

TINY_RUN = ["eval_every=0", "batch_size=32", "horizon=2", "log_every=10", *tiny_nets("td3bc")]


@pytest.fixture
def local_ray(monkeypatch):
    """A local Ray of 2 CPUs, shut down after the test with the SIGTERM handler ray.init installs put back;
    each run trains with 1 thread (OMP_NUM_THREADS)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=80 * 2**20)
    yield
    ray.shutdown()
    signal.signal(signal.SIGTERM, sigterm)


def planned(store, out_dir, steps: int, *extra: str):
    """td3bc seeds 0 and 1 with the tiny networks, no BC-only ablation."""
    return plan_runs(store, ["td3bc"], steps, [0, 1], "quick", out_dir, [*TINY_RUN, *extra], ablation=False)


def final_weights(run) -> dict[str, torch.Tensor]:
    return read_checkpoint(run.run_dir / "checkpoints" / "final.pt")["weights"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ray_tasks_train_the_runs_the_local_launcher_trains(tmp_path, local_ray):
    store = chain_store(tmp_path / "chain.zarr")
    local, on_ray = planned(store, tmp_path / "local", 20), planned(store, tmp_path / "ray", 20)
    assert benchmark.run_all(local, jobs=2) == []
    assert run_all_on_ray(on_ray, jobs=2) == []
    for by_process, by_ray in zip(local, on_ray, strict=True):
        assert_same_weights(final_weights(by_process), final_weights(by_ray))
    assert run_all_on_ray(on_ray, jobs=2) == []  # complete: reused, nothing submitted


def training_process(run_dir) -> tuple[int, int] | None:
    """(pid, parent pid) of the `train` process of the run in `run_dir` (started on its config.yaml or
    resumed from one of its checkpoints), or None."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if b"train" in command and any(part.startswith(f"{run_dir}/".encode()) for part in command):
            return int(entry), parent
    return None


@pytest.mark.slow
def test_a_run_whose_worker_is_killed_resumes_to_the_uninterrupted_runs_weights(tmp_path, local_ray):
    """SIGKILL to the Ray worker of seed 0 once its first step checkpoint (50 of 400 updates) is written:
    its run dies with it, Ray retries the task, the run resumes from step 50 (which stays as written) and
    ends with the weights the same run trains uninterrupted by the local launcher."""
    store = chain_store(tmp_path / "chain.zarr")
    steps = 400
    local = planned(store, tmp_path / "local", steps, "checkpoint_every=50")
    on_ray = planned(store, tmp_path / "ray", steps, "checkpoint_every=50")
    assert benchmark.run_all(local, jobs=2) == []
    first = on_ray[0].run_dir / "checkpoints" / "step_00000050.pt"
    killed = {}

    def kill_the_worker_at_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        found = training_process(on_ray[0].run_dir)
        if found is None:
            return
        killed["run"], killed["worker"] = found
        killed["checkpoint"] = first.stat().st_mtime_ns
        killed["finished"] = (on_ray[0].run_dir / "checkpoints" / "final.pt").exists()
        os.kill(killed["worker"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{killed['run']}") and time.monotonic() < deadline:
            time.sleep(0.02)
        killed["run_died"] = not os.path.exists(f"/proc/{killed['run']}")

    killer = threading.Thread(target=kill_the_worker_at_the_first_checkpoint)
    killer.start()
    assert run_all_on_ray(on_ray, jobs=2) == []
    killer.join()
    assert killed["worker"] != os.getpid() and not killed["finished"]  # killed mid-run
    assert killed["run_died"]  # the run went with its worker (die_with_parent)
    assert first.stat().st_mtime_ns == killed["checkpoint"]  # resumed from it, not trained again
    for by_process, by_ray in zip(local, on_ray, strict=True):
        assert_same_weights(final_weights(by_process), final_weights(by_ray))


@pytest.mark.slow
def test_a_stop_cancels_the_tasks_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    """On the benchmark's own local Ray (on this process's cores), SIGINT once both runs wrote step 50 of
    2,000: RunStopped (exit 130), no run left training, each run's step checkpoint kept for the same
    command to resume from, Ray shut down and the SIGTERM handler put back."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sigterm = signal.getsignal(signal.SIGTERM)
    store = chain_store(tmp_path / "chain.zarr")
    runs = planned(store, tmp_path / "ray", 2000, "checkpoint_every=50")
    first = [run.run_dir / "checkpoints" / "step_00000050.pt" for run in runs]

    def stop_at_the_first_checkpoints():
        deadline = time.monotonic() + 300
        while not all(path.exists() for path in first) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=stop_at_the_first_checkpoints, daemon=True).start()
    with pytest.raises(RunStopped, match="SIGINT: stopped; the same command resumes") as stopped:
        run_all_on_ray(runs, jobs=2)
    assert stopped.value.exit_code == 130
    deadline = time.monotonic() + 10
    while any(training_process(run.run_dir) for run in runs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(training_process(run.run_dir) for run in runs)
    assert all(path.exists() for path in first)
    assert not any((run.run_dir / "checkpoints" / "final.pt").exists() for run in runs)
    assert not ray.is_initialized() and signal.getsignal(signal.SIGTERM) is sigterm


def test_an_unreachable_cluster_is_one_line_and_nothing_trains(tmp_path, monkeypatch, capsys):
    store = chain_store(tmp_path / "chain.zarr")
    monkeypatch.setattr(benchmark, "ensure_store", lambda *args: store)
    assert not ray.is_initialized()
    started = time.monotonic()
    with pytest.raises(BenchmarkError, match=r"no Ray cluster at 127\.0\.0\.1:1 \(Connection refused\)"):
        run_all_on_ray(planned(store, tmp_path / "runs", 20), jobs=1, address="127.0.0.1:1")
    command = ["benchmark", "--agent", "td3bc", "--steps", "20", "--no-ablation", "--out", str(tmp_path)]
    assert main([*command, "--launcher", "ray", "--address", "127.0.0.1:1", *TINY_RUN]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no Ray cluster at 127.0.0.1:1") and error.count("\n") == 1
    assert time.monotonic() - started < 10 and not ray.is_initialized()
    assert not any(tmp_path.glob("*seed*"))  # nothing trained


def test_the_loss_of_the_whole_cluster_is_one_line_that_keeps_the_finished_runs(
    tmp_path, local_ray, monkeypatch
):
    """The head (or the connection to it) lost mid-sweep: ray.wait raises RaySystemError. The benchmark
    stops with one line saying what is kept; the run that had finished keeps its final checkpoint."""
    store = chain_store(tmp_path / "chain.zarr")
    runs = planned(store, tmp_path / "ray", 20)
    real_wait, calls = ray.wait, []

    def wait_then_lose_the_cluster(refs, **kwargs):
        ready, rest = real_wait(refs, **kwargs)
        calls.append(len(ready))
        if sum(calls) >= 1 and len(refs) < len(runs):  # one run finished: now the cluster goes
            raise ray.exceptions.RaySystemError("the GCS at 10.0.0.1:6379 is unreachable")
        return ready, rest

    monkeypatch.setattr(ray, "wait", wait_then_lose_the_cluster)
    with pytest.raises(BenchmarkError) as lost:
        run_all_on_ray(runs, jobs=2)
    message = str(lost.value)
    assert message.startswith("lost the local Ray (RaySystemError: ") and "\n" not in message
    assert "1 run(s) had finished and are kept" in message
    finished = [run for run in runs if (run.run_dir / "checkpoints" / "final.pt").exists()]
    assert len(finished) >= 1

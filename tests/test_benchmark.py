"""Benchmark tables: task naming, the paper's reference figures, seed means and the headline."""

from contextlib import nullcontext
from pathlib import Path

import pytest
import yaml

from offline_chunk.errors import BenchmarkError
from offline_chunk.harness import benchmark
from offline_chunk.harness.benchmark import (
    Evaluation,
    headline,
    load_reference,
    markdown_table,
    paper_value,
    parse_task,
    plan_runs,
    reward_line,
    summarize,
    training_reward,
)


def test_parse_task_maps_names_and_reward_protocol():
    assert parse_task("scene-play-singletask-task2-v0") == ("scene-play-task2", "sparse")
    assert parse_task("puzzle-3x3-play-singletask-task1-v0") == ("puzzle-3x3-play-task1", "sparse")
    assert parse_task("cube-double-play-singletask-task5-v0") == ("cube-double-play-task5", "ogbench")
    with pytest.raises(ValueError, match="unknown task"):
        parse_task("hopper-medium-v2")


def test_training_reward_is_the_presets_or_the_papers_and_the_report_says_which():
    scene, cube = "scene-play-singletask-task1-v0", "cube-double-play-singletask-task2-v0"
    assert training_reward(scene, "quick") == "ogbench"  # the quick preset's, for every task
    assert training_reward(scene, "paper") == "sparse" and training_reward(cube, "paper") == "ogbench"  # QC's
    assert training_reward(scene, "quick", "paper") == "sparse"
    assert training_reward(cube, "paper", "sparse") == "sparse"
    with pytest.raises(ValueError, match="unknown reward 'dense'"):
        training_reward(scene, "quick", "dense")
    assert reward_line(scene, "ogbench") == (
        "Trained on OGBench's reward (minus the subtasks unsolved); the paper's figures used QC's sparse "
        "reward (-1 until every subtask is solved, then 0)."
    )
    assert reward_line(cube, "ogbench").endswith("; as the paper's figures.")


def test_reference_values_are_the_published_ones():
    reference = load_reference()
    # The reference README quotes these figures (rounded to two decimals) at 1M steps ...
    two_decimals = pytest.approx
    assert paper_value(reference, "scene-play-task1", "QC", 1_000_000) == (
        two_decimals(0.99, abs=0.005 + 1e-9),
        1.0,
    )
    assert paper_value(reference, "cube-double-play-task1", "QC", 1_000_000) == (
        two_decimals(0.83, abs=0.005 + 1e-9),
        1.0,
    )
    assert paper_value(reference, "cube-double-play-task1", "FQL", 1_000_000) == (
        two_decimals(0.64, abs=0.005 + 1e-9),
        1.0,
    )
    # ... and at 100k: QC 0.98 on scene task 1; the nearest reference step to 120k is 0.1M.
    assert paper_value(reference, "scene-play-task1", "QC", 120_000) == (
        two_decimals(0.98, abs=0.005 + 1e-9),
        0.1,
    )
    assert paper_value(reference, "scene-play-task1", "QC", 0) == (0.0, 0.0)  # untrained, as asked
    assert paper_value(reference, "scene-play-task1", "nonexistent", 1) is None


def test_summary_means_over_seeds_and_headline_is_last_three():
    evaluations = [
        Evaluation("cpql", seed, step, wall_s=step / 100 + seed, success=success)
        for seed, successes in ((0, [0.0, 0.2, 0.4, 0.6]), (1, [0.2, 0.4, 0.6, 1.0]))
        for step, success in zip((1000, 2000, 3000, 4000), successes, strict=True)
    ]
    rows = summarize(evaluations)
    assert [r["step"] for r in rows] == [1000, 2000, 3000, 4000]
    assert [r["success"] for r in rows] == pytest.approx([0.1, 0.3, 0.5, 0.8])
    assert rows[0]["seeds"] == 2 and rows[0]["wall_s"] == pytest.approx(10.5)
    assert headline(rows, "cpql") == pytest.approx((0.3 + 0.5 + 0.8) / 3)
    table = markdown_table(rows, "scene-play-task1", load_reference())
    assert "| 4,000 | 0.800 (40) n=2 |" in table
    # 4k updates lie nearer the paper's untrained point 0 (where all score 0) than its first one, 0.1M:
    # they are shown beside 0.1M, QC's 0.985 on scene task 1 (the reference csv)
    assert "| 0.985 @0.1M |" in table and "@0.0M" not in table
    assert "cpql 0.533" in table


# --------------------------------------------------------------------------- planning and running runs


def test_plan_has_each_seed_of_the_agent_and_of_its_bc_only_ablation(tmp_path):
    runs = plan_runs(tmp_path / "store.zarr", ["td3bc"], None, [0, 1], "quick", tmp_path, [])
    assert [(r.label, r.seed) for r in runs] == [
        ("td3bc", 0),
        ("td3bc", 1),
        ("td3bc BC-only", 0),
        ("td3bc BC-only", 1),
    ]
    assert (runs[0].cfg.agent.alpha, runs[2].cfg.agent.alpha) == (2.5, 0)  # no Q term
    assert not any(run.bc_only_from_checkpoints for run in runs)
    assert runs[3].run_dir == tmp_path / "td3bc-BC-only-seed1"
    assert plan_runs(tmp_path / "s.zarr", ["cpql"], 500, [0], "quick", tmp_path, [])[0].cfg.steps == 500
    alone = plan_runs(tmp_path / "s.zarr", ["td3bc"], None, [0, 1], "quick", tmp_path, [], ablation=False)
    assert [(r.label, r.seed) for r in alone] == [("td3bc", 0), ("td3bc", 1)]


def test_an_agent_trained_with_eta_0_is_its_own_bc_only_ablation(tmp_path):
    """QC mode (the quick preset) and the qc recipe: the actor never sees Q, so the BC-only column is the
    agent's own checkpoints acting by one candidate, with no second training run."""
    for preset in ("quick", "qc-cpu"):
        runs = plan_runs(tmp_path / "store.zarr", ["cpql"], None, [0, 1], preset, tmp_path, [])
        assert [(r.label, r.seed, r.bc_only_from_checkpoints) for r in runs] == [
            ("cpql", 0, True),
            ("cpql", 1, True),
        ]
        assert runs[0].cfg.agent.eta == 0 and runs[0].cfg.agent.act.candidates > 1
    settings = benchmark.run_settings(runs).splitlines()
    assert settings[0].startswith("- cpql: preset qc_cpu, 20,000 updates, batch 256, H = 5, seeds 0,1")
    assert (
        "50 evaluation episodes per point; eta = 0, plain Bellman targets; acts by best of 8" in settings[0]
    )
    assert settings[1].startswith("- cpql BC-only: the cpql checkpoints above")
    # an agent with a Q term trains its ablation
    with_q = plan_runs(tmp_path / "s.zarr", ["cpql"], None, [0], "quick", tmp_path, ["agent.eta=1"])
    assert [(r.label, r.bc_only_from_checkpoints) for r in with_q] == [
        ("cpql", False),
        ("cpql BC-only", False),
    ]
    assert with_q[1].cfg.agent.act.candidates == 1


def test_one_candidate_evaluations_use_each_evaluated_checkpoint_once(tmp_path, monkeypatch):
    import offline_chunk.harness.evaluation as evaluate_module

    (run,) = plan_runs(tmp_path / "s.zarr", ["cpql"], None, [3], "quick", tmp_path, [])
    run.run_dir.mkdir()
    (run.run_dir / "evaluations.csv").write_text(
        "step,train_seconds,success_rate\n1500,10.0,0.4\n3000,20.0,0.6\n"
    )
    calls = []

    def fake_evaluate(checkpoint, **kwargs):
        calls.append((Path(checkpoint).name, kwargs["candidates"], kwargs["seed"], kwargs["episodes"]))
        return {"success_rate": 0.1 * len(calls)}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    first = benchmark.evaluate_one_candidate(run)
    assert calls == [("step_00001500.pt", 1, 3, 10), ("step_00003000.pt", 1, 3, 10)]
    assert [(e.label, e.seed, e.step, e.wall_s, e.success) for e in first] == [
        ("cpql BC-only", 3, 1500, 10.0, 0.1),
        ("cpql BC-only", 3, 3000, 20.0, 0.2),
    ]
    assert benchmark.evaluate_one_candidate(run) == first and len(calls) == 2  # kept, not evaluated again


class FakeTrain:
    """Stands in for the train subprocess: writes what a finished run leaves, or fails."""

    def __init__(self, run, fail: bool):
        self.returncode = 1 if fail else 0
        if not fail:
            (run.run_dir / "config.yaml").write_text(yaml.safe_dump(run.cfg.model_dump()))
            (run.run_dir / "checkpoints").mkdir(exist_ok=True)
            (run.run_dir / "checkpoints" / "final.pt").write_bytes(b"")
            (run.run_dir / "evaluations.csv").write_text("step,train_seconds,success_rate\n100,5.0,0.5\n")

    def poll(self):
        return self.returncode


def test_run_all_reuses_complete_runs_keeps_changed_ones_and_reports_failures(tmp_path, monkeypatch):
    launched = []

    def fake_launch(run, threads, quiet):
        launched.append((run.label, run.seed, threads, quiet))
        run.run_dir.mkdir(parents=True, exist_ok=True)
        return FakeTrain(run, fail=run.seed == 2)

    monkeypatch.setattr(benchmark, "launch", fake_launch)
    runs = plan_runs(tmp_path / "s.zarr", ["td3bc"], 100, [0, 1, 2], "quick", tmp_path, [])
    failed = benchmark.run_all(runs, jobs=2)
    assert [(r.label, r.seed) for r in failed] == [("td3bc", 2), ("td3bc BC-only", 2)]
    assert len(launched) == 6 and {quiet for *_, quiet in launched} == {True}
    assert all(r.is_complete() for r in runs if r.seed != 2)

    launched.clear()
    changed = plan_runs(tmp_path / "s.zarr", ["td3bc"], 200, [0], "quick", tmp_path, [])
    again = plan_runs(tmp_path / "s.zarr", ["td3bc"], 100, [0, 1], "quick", tmp_path, [])
    assert benchmark.run_all(again, jobs=1) == [] and launched == []  # all four complete: nothing trained
    with pytest.raises(BenchmarkError, match=r"2 finished runs .*td3bc-seed0 \(differs in steps\)"):
        benchmark.run_all(changed, jobs=1)  # 200 steps instead of 100: the finished runs are not replaced
    assert launched == [] and all(r.run_dir.exists() for r in changed)
    elsewhere = plan_runs(tmp_path / "s.zarr", ["td3bc"], 200, [0], "quick", tmp_path / "other", [])
    assert benchmark.run_all(elsewhere, jobs=1) == []  # another --out: trained there
    assert [(label, seed) for label, seed, *_ in launched] == [("td3bc", 0), ("td3bc BC-only", 0)]


def test_an_unfinished_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(benchmark.subprocess, "Popen", lambda command, **kwargs: started.append(command))
    (run,) = plan_runs(tmp_path / "s.zarr", ["td3bc"], 100, [0], "quick", tmp_path, [], ablation=False)
    (run.run_dir / "checkpoints").mkdir(parents=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(run.cfg.model_dump()))
    for step in (100, 200):
        (run.run_dir / "checkpoints" / f"step_{step:08d}.pt").write_bytes(b"")
    (run.run_dir / "evaluations.csv").write_text(
        "step,train_seconds,success_rate\n100,1,0\n200,2,0\n300,3,0\n"
    )
    benchmark.launch(run, threads=1, quiet=True)
    assert started[-1][-2:] == ["--resume", str(run.run_dir / "checkpoints" / "step_00000200.pt")]
    assert (
        run.run_dir / "evaluations.csv"
    ).read_text() == "step,train_seconds,success_rate\n100,1,0\n200,2,0\n"
    # an attempt with another configuration starts over
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({**run.cfg.model_dump(), "steps": 50}))
    benchmark.launch(run, threads=1, quiet=True)
    assert started[-1][-2] == "--config" and not (run.run_dir / "checkpoints").exists()


def test_runs_take_the_users_thread_count_else_share_the_cores_they_may_run_on(monkeypatch):
    """OMP_NUM_THREADS set by the user is each run's thread count as given (a benchmark beside other work
    took 2 threads of 2 cores under OMP_NUM_THREADS=1 and ran 10x slower); unset, the CPUs of the process's
    affinity mask (4 here) are shared between the jobs."""
    monkeypatch.setattr(benchmark.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [benchmark.run_threads(jobs) for jobs in (1, 2, 3, 8)] == [4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert [benchmark.run_threads(jobs) for jobs in (1, 2)] == [1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(BenchmarkError, match="OMP_NUM_THREADS='two'"):
        benchmark.run_threads(1)


def test_a_run_bound_to_its_parent_dies_with_it():
    """die_with_parent (the Ray launcher's runs): the kernel kills the child when its parent is SIGKILLed, as
    a Ray worker lost mid-run is, so no orphan trains on in the run directory the retried task resumes."""
    import subprocess
    import sys
    import time

    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, time; from offline_chunk.harness.benchmark import die_with_parent; "
            "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent()); "
            "print(child.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())

    def alive(pid: int) -> bool:  # a zombie, killed and not yet reaped, is not
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    assert alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)


def test_ray_options_without_the_ray_launcher_are_refused_before_anything_runs(tmp_path, capsys):
    from offline_chunk.harness.cli import main

    out = ["benchmark", "--task", "scene-play-singletask-task1-v0", "--out", str(tmp_path / "b")]
    for options, message in (
        (["--launcher", "slurm"], "invalid choice: 'slurm'"),
        (["--address", "head:6379"], "--address and --gpus-per-run place runs on Ray: add --launcher ray"),
        (["--gpus-per-run", "0.25"], "--address and --gpus-per-run place runs on Ray: add --launcher ray"),
    ):
        with pytest.raises(SystemExit) if options[0] == "--launcher" else nullcontext():
            assert main([*out, *options]) == 2
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

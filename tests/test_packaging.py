"""A non-editable install: the wheel carries the presets and the reference figures, and
trains from a directory that is not the checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers import TINY_NETS, chain_store

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_trains_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
    ]
    subprocess.run([*build, str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("offline_chunk-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    for data in (
        "configs/train/qc.yaml",
        "configs/train/default.yaml",
        "configs/benchmark/qc-cpu.yaml",
        "harness/reference/qc_ogbench_offline.csv",
    ):
        assert (site / "offline_chunk" / data).is_file(), data  # a copy of the checkout's configs/
        assert not (site / "offline_chunk" / data).is_symlink(), data

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import offline_chunk; print(offline_chunk.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the checkout
    store = chain_store(tmp_path / "chain.zarr")
    train = [sys.executable, "-m", "offline_chunk", "train", "--agent", "cpql", "--dataset", str(store)]
    train += ["--steps", "2", "--run", str(tmp_path / "run"), "--preset", "quick", "horizon=2", *TINY_NETS]
    result = subprocess.run(train, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()

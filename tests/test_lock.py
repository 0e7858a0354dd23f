"""The dependency lock (scripts/lock.py): what `make lock` writes and what `make install` checks."""

import importlib.util
from importlib import metadata
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lock.py"
spec = importlib.util.spec_from_file_location("lock", SCRIPT)
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def test_freeze_pins_everything_but_the_torch_build_and_the_project():
    frozen = [
        "# editable install with no version control (offline-chunk==0.1.0)\n",
        "-e /work/main\n",
        "Zarr==3.1.6\n",
        "torch==2.13.0+cpu\n",
        "nvidia-cublas-cu12==12.8.4.1\n",
        "triton==3.5.0\n",
        "typing_extensions==4.15.0\n",
        "offline_chunk==0.1.0\n",
        "pip==26.3\n",
    ]
    pins = [line for line in lock.freeze(frozen).splitlines() if not line.startswith("#")]
    assert pins == ["pip==26.3", "typing-extensions==4.15.0", "zarr==3.1.6"]


def test_check_names_each_version_that_differs_and_passes_the_installed_ones(tmp_path):
    numpy, zarr = metadata.version("numpy"), metadata.version("zarr")
    good = tmp_path / "good.lock"
    installed = {lock.canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    good.write_text("".join(f"{name}=={version}\n" for name, version in installed.items()))
    assert lock.check(good) == []
    bad = tmp_path / "bad.lock"
    bad.write_text(
        good.read_text().replace(f"zarr=={zarr}\n", "zarr==0.0.1\n").replace(f"numpy=={numpy}\n", "")
    )
    assert lock.check(bad) == [
        f"zarr: locked 0.0.1, installed {zarr}",
        f"numpy {numpy}: installed but not in the lock",
    ]

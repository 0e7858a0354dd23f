"""Headless MuJoCo rendering: the GL backend that works on this machine (EGL, or OSMesa in software), for
evaluation GIFs and for OGBench's visual datasets and environments. MuJoCo reads MUJOCO_GL when it is first
imported, so the backend is set in a process before mujoco is imported there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable

GL_BACKENDS = ("egl", "osmesa")  # headless MuJoCo rendering: GPU (or Mesa) EGL, then software OSMesa
GL_PROBE = (
    "import mujoco; model = mujoco.MjModel.from_xml_string('<mujoco/>'); "
    "renderer = mujoco.Renderer(model, 8, 8); renderer.update_scene(mujoco.MjData(model)); renderer.render()"
)
GL_PROBE_TIMEOUT_S = 60
GL_HELP = "install EGL (Debian: libegl1) or OSMesa (libosmesa6), or set MUJOCO_GL to a backend that works"


def find_gl_backend() -> tuple[str | None, str]:
    """A MuJoCo GL backend that renders here, tried by rendering one frame in a subprocess (a failing backend
    can abort the process that tries it): the user's MUJOCO_GL, else egl, then osmesa.
    Returns (backend, "") or (None, why none works)."""
    candidates = [os.environ["MUJOCO_GL"]] if os.environ.get("MUJOCO_GL") else list(GL_BACKENDS)
    failures = []
    for backend in candidates:
        try:
            probe = subprocess.run(
                [sys.executable, "-c", GL_PROBE],
                env={**os.environ, "MUJOCO_GL": backend},
                capture_output=True,
                text=True,
                timeout=GL_PROBE_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            failures.append(f"{backend}: no frame in {GL_PROBE_TIMEOUT_S} s")
            continue
        if probe.returncode == 0:
            return backend, ""
        last_line = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        failures.append(f"{backend}: {last_line[:160]}")
    return None, "no MuJoCo GL backend renders here (" + "; ".join(failures) + ")"


def require_gl_backend(refuse: Callable[[str], Exception]) -> str:
    """The backend, for work that cannot run without rendering (visual datasets and environments); where
    none works, raises refuse(why), the caller's error for its input."""
    backend, why = find_gl_backend()
    if backend is None:
        raise refuse(f"renders its observations, and {why}: {GL_HELP}")
    return backend


GL_PACKAGES = ("libegl1", "libosmesa6")  # Debian's EGL and OSMesa runtime libraries
APT_TIMEOUT_S = 600


def install_gl_libraries() -> tuple[bool, str]:
    """Install GL_PACKAGES with apt-get where this process may (root, apt-get present): (installed, what
    happened)."""
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "not installed: needs apt-get as root"
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *GL_PACKAGES]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"apt-get install {' '.join(GL_PACKAGES)} took over {APT_TIMEOUT_S} s"
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"apt-get install {' '.join(GL_PACKAGES)} failed: {last_line}"
    return True, f"installed {' '.join(GL_PACKAGES)}"


def report() -> None:
    """What `make install` prints: the backend found; where none works, it installs EGL and OSMesa with
    apt-get if it may, and says what is missing if it cannot (visual datasets, visual evaluation and GIFs
    need a backend; everything else runs without)."""
    backend, why = find_gl_backend()
    if backend is None:
        installed, attempt = install_gl_libraries()
        if installed:  # probe again only when something changed (a failed probe can take a minute)
            backend, why = find_gl_backend()
        why = f"{why}; {attempt}"
    if backend is not None:
        print(f"MuJoCo rendering: {backend} (OGBench visual datasets, visual evaluation and GIFs)")
    else:
        print(f"MuJoCo rendering: none, {why}. OGBench visual datasets, visual evaluation and GIFs need it:")
        print(f"  {GL_HELP}")

"""What `make install` says about MuJoCo rendering (offline_chunk/rendering.py)."""

import offline_chunk.rendering as gl


def test_without_a_backend_and_without_apt_the_report_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(gl, "find_gl_backend", lambda: (None, "no MuJoCo GL backend renders here (egl: x)"))
    monkeypatch.setattr(gl.shutil, "which", lambda name: None)
    gl.report()
    out = capsys.readouterr().out
    assert (
        "MuJoCo rendering: none, no MuJoCo GL backend renders here (egl: x); not installed: needs apt-get"
        in out
    )
    assert "libegl1" in out and "libosmesa6" in out


def test_a_failed_apt_install_is_reported_with_its_last_line(monkeypatch):
    class Done:
        returncode, stderr = 100, "Reading package lists...\nE: Unable to locate package libegl1"

    monkeypatch.setattr(gl.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(gl.os, "geteuid", lambda: 0)
    monkeypatch.setattr(gl.subprocess, "run", lambda *a, **k: Done())
    assert gl.install_gl_libraries() == (
        False,
        "apt-get install libegl1 libosmesa6 failed: E: Unable to locate package libegl1",
    )


def test_visual_datasets_and_environments_without_a_backend_are_refused_in_their_callers_terms(
    monkeypatch, tmp_path
):
    """Generating a visual dataset is a DataError naming the dataset; evaluating in a visual environment a
    ConfigError naming the environment; both say why no backend works and what to install."""
    import pytest

    from offline_chunk.data.sources import convert
    from offline_chunk.errors import ConfigError, DataError
    from offline_chunk.harness.evaluation.settings import gl_backend_for

    monkeypatch.setattr(gl, "find_gl_backend", lambda: (None, "no MuJoCo GL backend renders here (egl: x)"))
    renders = r"renders its observations, and no MuJoCo GL backend renders here \(egl: x\): install EGL"
    with pytest.raises(ConfigError, match=f"^visual-scene-singletask-task1-v0 {renders}"):
        gl_backend_for(0, "visual-scene-singletask-task1-v0")
    with pytest.raises(DataError, match=f"^visual-scene-play-singletask-task1-v0: {renders}"):
        convert(
            "ogbench:visual-scene-play-singletask-task1-v0?episodes=1&steps=5&workers=1",
            out=tmp_path / "never.zarr",
            progress=False,
        )

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

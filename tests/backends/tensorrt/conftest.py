"""The fake trtexec on PATH, shared by the TensorRT tests."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture
def fake_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `trtexec` on PATH replaying recorded real output (fake_trtexec.py); returns the argv log file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "trtexec"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_trtexec.py"}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "argv.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("EDGEMATRIX_TRTEXEC", raising=False)
    monkeypatch.setenv("FAKE_TRTEXEC_DATA", str(HERE / "data"))
    monkeypatch.setenv("FAKE_TRTEXEC_LOG", str(log))
    return log

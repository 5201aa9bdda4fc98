"""The noxfile: one session per matrix cell, listed with descriptions; unreachable cells fail fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _nox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_nox_lists_every_cell_with_description_and_tags() -> None:
    proc = _nox("-l")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for cell in ("x86_cpu_fp32", "x86_cpu_int8", "jetson_fp16", "jetson_int8", "ti_fx8", "driveos_int8"):
        assert f"- {cell} [" in out, cell
    assert "x86_cpu_int8 [x86_cpu,int8,ufld_r18,cells] -> INT8 PTQ" in out
    assert "* tests ->" in out and "* lint ->" in out


def test_tags_select_cells() -> None:
    proc = _nox("-l", "-t", "int8")
    assert proc.returncode == 0, proc.stderr
    selected = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("* ")]
    # the cells whose recipe is the INT8 PTQ recipe `int8`, whatever cells matrix/ adds
    from edgematrix.matrix.listing import list_sessions

    assert sorted(selected) == sorted(i.name for i in list_sessions(REPO / "matrix") if i.recipe == "int8")
    assert {"x86_cpu_int8", "jetson_int8", "driveos_int8", "x86_gpu_int8"} <= set(selected)
    assert "x86_cpu_fp32" not in selected and "x86_cpu_int8_qat" not in selected


@pytest.mark.parametrize("ci", ["", "true"])
def test_unreachable_cell_fails_before_installing(ci: str) -> None:
    proc = _nox("-s", "jetson_int8", "--no-venv", env={"CI": ci})
    assert proc.returncode != 0
    err = proc.stderr
    assert "cannot run on this host" in err
    assert "jetson-orin" in err  # how to provide it: the runner label
    assert "pip install" not in err


# -- every session installs with the lock ---------------------------------------------------------


class _Quit(Exception):
    """session.error() of the fake session."""


class _Recorder:
    """Stands in for nox.Session: records installs and commands instead of running them."""

    def __init__(self, posargs: list[str] | None = None, outputs: dict[str, str] | None = None) -> None:
        self.posargs = posargs or []
        self.installs: list[tuple[str, ...]] = []
        self.runs: list[tuple[str, ...]] = []
        self.outputs = outputs or {}

    def install(self, *args: str, **kwargs: object) -> None:
        self.installs.append(args)

    def run(self, *args: str, **kwargs: object) -> str:
        self.runs.append(args)
        return next((out for key, out in self.outputs.items() if key in args), "")

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def error(self, *args: object) -> None:
        raise _Quit(" ".join(map(str, args)))


@pytest.fixture(scope="module")
def noxfile_sessions() -> tuple[object, dict[str, object]]:
    import importlib.util

    import nox.registry

    spec = importlib.util.spec_from_file_location("edgematrix_noxfile_under_test", REPO / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, dict(nox.registry.get())


def _call(sessions: dict[str, object], name: str, session: _Recorder) -> str:
    try:
        sessions[name](session)  # type: ignore[operator]
    except _Quit as e:
        return str(e)
    return ""


def test_every_session_installs_with_the_lock(noxfile_sessions: tuple[object, dict[str, object]]) -> None:
    _module, sessions = noxfile_sessions
    lock = str(REPO / "matrix" / "constraints.txt")
    tools = {"tests", "lint", "images", "update_baselines", "report", "validate"}
    assert set(sessions) >= {*tools, "lock", "x86_cpu_int8", "jetson_int8"}
    runs = [(name, []) for name in sessions if name != "lock"]
    # the other runners of a cell install other things: each with the lock too
    runs += [("x86_cpu_int8", ["--runner", "docker"]), ("jetson_int8", ["--runner", "emulated"])]
    runs += [("update_baselines", ["x86_cpu_int8"])]
    installed = set()
    for name, posargs in runs:
        rec = _Recorder(posargs)
        quit_reason = _call(sessions, name, rec)
        for args in rec.installs:
            assert args[:2] == ("-c", lock), f"nox -s {name} {' '.join(posargs)}: pip install {' '.join(args)}"
        if rec.installs:
            installed.add(name)
        else:  # a session that installs nothing stopped before installing: a cell this host cannot run
            assert "cannot run on this host" in quit_reason or "does not offer" in quit_reason, (name, quit_reason)
    assert {*tools, "x86_cpu_int8", "jetson_int8"} <= installed


def test_lock_session_resolves_afresh_and_writes_a_readable_lock(
    noxfile_sessions: tuple[object, dict[str, object]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgematrix.core.toolchain import read_lock

    module, sessions = noxfile_sessions
    monkeypatch.setattr(module, "LOCK", tmp_path / "constraints.txt")
    freeze = "numpy==2.4.6\nonnxruntime==1.31.1\ntorch==2.13.0+cpu\n"
    rec = _Recorder(outputs={"freeze": freeze, "-c": "3.11\nlinux x86_64\nglibc 2.36\n"})
    assert _call(sessions, "lock", rec) == ""
    # resolved from the runtime pins, never from the lock it replaces; every coexisting extra and group
    (install,) = rec.installs
    assert install[:2] == ("-c", str(REPO / "docker" / "x86_cpu" / "requirements.txt"))
    assert "-e" in install and ".[cpu,openvino,docker,optimize,demo]" in install
    assert any(a.startswith("hypothesis") for a in install) and any(a.startswith("ruff") for a in install)
    assert sessions["lock"].reuse_venv is False  # type: ignore[attr-defined]
    lock = read_lock(tmp_path / "constraints.txt")
    assert (lock.python, lock.platform) == ("3.11", "linux x86_64")
    assert lock.pins == {"numpy": "2.4.6", "onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1", "torch": "2.13.0"}
    text = (tmp_path / "constraints.txt").read_text()
    assert "nox -s lock" in text and "docker/x86_cpu/requirements.txt" in text and "# libc: glibc 2.36" in text

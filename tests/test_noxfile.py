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
    assert sorted(selected) == [
        "driveos_int8",
        "jetson_int8",
        "x86_cpu_int8",
        "x86_cpu_multitask_int8",
        "x86_cpu_ssdlite_int8",
        "x86_gpu_int8",
    ]


@pytest.mark.parametrize("ci", ["", "true"])
def test_unreachable_cell_fails_before_installing(ci: str) -> None:
    proc = _nox("-s", "jetson_int8", "--no-venv", env={"CI": ci})
    assert proc.returncode != 0
    err = proc.stderr
    assert "cannot run on this host" in err
    assert "jetson-orin" in err  # how to provide it: the runner label
    assert "pip install" not in err

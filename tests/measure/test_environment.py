"""capture_environment: stable keys, plain JSON values, container / CI detection."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest

from edgematrix.measure import environment
from edgematrix.measure.environment import RELEVANT_CPU_FLAGS, capture_environment

KEYS = {
    "cpu_model",
    "cpu_flags",
    "arch",
    "logical_cores",
    "affinity_cores",
    "physical_cores",
    "os",
    "kernel",
    "python",
    "versions",
    "container",
    "ci",
    "ci_run_id",
}


def test_keys_present_and_json_serialisable() -> None:
    env = capture_environment()
    assert set(env) >= KEYS
    assert json.loads(json.dumps(env, allow_nan=False)) == env
    assert env["arch"] == platform.machine()
    assert env["python"] == platform.python_version()
    assert 1 <= env["physical_cores"] <= env["affinity_cores"] <= env["logical_cores"]
    assert env["affinity_cores"] == len(os.sched_getaffinity(0))
    assert set(env["cpu_flags"]) <= set(RELEVANT_CPU_FLAGS)
    assert env["versions"]["numpy"] == __import__("numpy").__version__
    assert set(env["versions"]) >= {"numpy", "onnxruntime", "onnx", "torch"}
    assert isinstance(env["container"], bool) and isinstance(env["ci"], bool)


def test_cpu_model_and_flags_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512_vnni amx_tile\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n"
    )
    monkeypatch.setattr(environment, "CPUINFO_PATH", str(cpuinfo))
    env = capture_environment()
    assert env["cpu_model"] == "Test CPU 9000"
    assert env["cpu_flags"] == ["sse4_2", "avx", "avx2", "avx512f", "avx512_vnni", "amx_tile"]


def test_arm_features_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU implementer\t: 0x41\n")
    monkeypatch.setattr(environment, "CPUINFO_PATH", str(cpuinfo))
    assert capture_environment()["cpu_flags"] == ["asimd", "asimddp", "i8mm"]


def test_container_and_ci_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "dockerenv"
    marker.touch()
    monkeypatch.setattr(environment, "CONTAINER_MARKERS", {str(marker): "docker"})
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("GITHUB_RUN_ID", "12345")
    env = capture_environment()
    assert env["container"] is True and env["container_kind"] == "docker"
    assert env["ci"] is True and env["ci_run_id"] == "12345" and env["ci_provider"] == "github-actions"

    monkeypatch.setattr(environment, "CONTAINER_MARKERS", {str(tmp_path / "absent"): "docker"})
    monkeypatch.setattr(environment, "CGROUP_PATH", str(tmp_path / "no-cgroup"))
    for var in ("CI", "GITHUB_RUN_ID", "GITHUB_ACTIONS", "GITLAB_CI", "CI_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    env = capture_environment()
    assert env["container"] is False and env["container_kind"] is None
    assert env["ci"] is False and env["ci_run_id"] is None


def test_extra_is_merged_and_must_be_json() -> None:
    env = capture_environment({"device": "jetson-orin", "gpu_clock_mhz": 1300})
    assert env["device"] == "jetson-orin" and env["gpu_clock_mhz"] == 1300
    with pytest.raises(TypeError, match="plain JSON"):
        capture_environment({"bad": object()})

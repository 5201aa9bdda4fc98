"""Facts about the host a measurement ran on, as plain JSON values (for ``machine_info``).

Cheap by design: reads ``/proc`` and ``/sys`` and package metadata; imports no runtime.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from typing import Any

#: CPU flags that decide which kernels a runtime can use (x86: AVX2/AVX-512/VNNI/AMX; Arm: NEON)
RELEVANT_CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "asimdhp",
    "asimddp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
)

#: distribution names whose versions matter for a measurement (module name → candidates)
VERSIONED_PACKAGES = {
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": (
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-openvino",
        "onnxruntime-directml",
        "onnxruntime-qnn",
    ),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "openvino": ("openvino",),
    "pytest-benchmark": ("pytest-benchmark",),
    "edgematrix": ("edgematrix",),
}

CPUINFO_PATH = "/proc/cpuinfo"
MEMINFO_PATH = "/proc/meminfo"
CONTAINER_MARKERS = {"/.dockerenv": "docker", "/run/.containerenv": "podman"}
CGROUP_PATH = "/proc/1/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, relevant flags present) from /proc/cpuinfo, falling back to platform."""
    model = ""
    flags: set[str] = set()
    text = _read(CPUINFO_PATH) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if not model:
        model = platform.processor() or platform.machine()
    return model, [f for f in RELEVANT_CPU_FLAGS if f in flags]


def _mem_total_bytes() -> int | None:
    for line in (_read(MEMINFO_PATH) or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _version(candidates: tuple[str, ...]) -> str | None:
    for dist in candidates:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _versions() -> dict[str, str | None]:
    versions = {name: _version(dists) for name, dists in VERSIONED_PACKAGES.items()}
    if versions["edgematrix"] is None:  # running from a source tree (PYTHONPATH=src)
        from edgematrix import __version__

        versions["edgematrix"] = f"{__version__}+src"
    return versions


def _container() -> str | None:
    for marker, kind in CONTAINER_MARKERS.items():
        if os.path.exists(marker):
            return kind
    cgroup = _read(CGROUP_PATH) or ""
    for needle in ("docker", "kubepods", "containerd", "libpod", "lxc"):
        if needle in cgroup:
            return needle
    return None


def _ci() -> dict[str, Any]:
    env = os.environ
    ci = env.get("CI", "").strip().lower() in ("1", "true", "yes")
    provider = None
    if env.get("GITHUB_ACTIONS") == "true" or env.get("GITHUB_RUN_ID"):
        provider = "github-actions"
    elif env.get("GITLAB_CI"):
        provider = "gitlab"
    return {
        "ci": ci or provider is not None,
        "ci_provider": provider,
        "ci_run_id": env.get("GITHUB_RUN_ID") or env.get("CI_PIPELINE_ID"),
        "ci_runner": env.get("RUNNER_NAME"),
    }


def capture_environment(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Host facts for a benchmark's ``machine_info``; ``extra`` (JSON values) is merged last."""
    model, flags = _cpuinfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    try:
        load_1m: float | None = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load_1m = None
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    container = _container()
    env: dict[str, Any] = {
        "cpu_model": model,
        "cpu_flags": flags,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count() or 1,
        "affinity_cores": affinity,
        "physical_cores": usable_physical_cores(),
        "cpu_governor": governor.strip() if governor else None,
        "mem_total_bytes": _mem_total_bytes(),
        "load_avg_1m": load_1m,
        "os": platform.system(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "versions": _versions(),
        "container": container is not None,
        "container_kind": container,
        "container_image": os.environ.get("EDGEMATRIX_IMAGE"),  # set by edgematrix's Docker runner
        **_ci(),
    }
    if extra:
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"capture_environment(extra=...) must hold plain JSON values: {exc}") from None
        env.update(extra)
    return env


def usable_physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-thread siblings counted once).

    Falls back to the number of affinity-allowed logical CPUs when the topology is not readable.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    for cpu in allowed:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topo}/physical_package_id") as pkg, open(f"{topo}/core_id") as core:
                cores.add((pkg.read().strip(), core.read().strip()))
        except OSError:
            return len(allowed) or 1
    return len(cores) or len(allowed) or 1

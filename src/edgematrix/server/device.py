"""Facts about the device a measurement ran on, as flat plain values (``str`` / ``int`` / ``float``).

Read from files and commands present on Jetson / DRIVE boards and on ordinary Linux hosts; a fact
that cannot be read is left out, never guessed. Sources:

==========================  ====================================================================
fact                        source
==========================  ====================================================================
``device_model``            ``/proc/device-tree/model`` (Jetson, Arm boards), else DMI product name
``os``                      ``PRETTY_NAME`` of ``/etc/os-release``
``l4t_release``             ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 3.0`` → ``R36.3.0``)
``jetpack``                 ``dpkg-query`` version of ``nvidia-jetpack`` when installed
``tensorrt_version``...     Python package metadata, else the ``tensorrt`` / ``libnvinfer*`` dpkg version
``power_mode``              first line of ``nvpmodel -q`` (``NV Power Mode: MAXN`` → ``MAXN``), id on the second
``cpu0_cur_mhz`` ...        ``/sys/devices/system/cpu/cpu*/cpufreq/scaling_{cur,max}_freq`` (kHz)
``devfreq_<dev>_cur_mhz``   ``/sys/class/devfreq/*/{cur,max}_freq`` (Hz): the Jetson GPU (``*.ga10b`` ...)
``temp_<zone>_c``           ``/sys/class/thermal/thermal_zone*/{type,temp}`` (millidegrees C)
==========================  ====================================================================

Every path is relative to ``root`` and commands go through ``run``, so tests feed recorded files.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from edgematrix.backends.base import Fact

#: runs a command, returns its stdout or None (missing, failed, timed out)
CommandRunner = Callable[[Sequence[str]], str | None]

_TEGRA_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")
_PACKAGES = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs"),
    "numpy": ("numpy",),
}
_DPKG_TENSORRT = ("tensorrt", "libnvinfer-bin", "libnvinfer10", "libnvinfer8")


def run_command(cmd: Sequence[str], timeout_s: float = 5.0) -> str | None:
    """stdout of ``cmd`` if it exists and exits 0 within ``timeout_s``, else None."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _read(root: Path, path: str) -> str | None:
    try:
        return (root / path.lstrip("/")).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_int(root: Path, path: str) -> int | None:
    text = _read(root, path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unnamed"


def parse_tegra_release(text: str) -> str | None:
    """``# R35 (release), REVISION: 4.1, ...`` → ``R35.4.1``; None when the line is not recognised."""
    match = _TEGRA_RELEASE.search(text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def parse_nvpmodel(text: str) -> tuple[str, int | None] | None:
    """Output of ``nvpmodel -q`` → (mode name, mode id); warning lines before it are skipped."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("NV Power Mode:"):
            name = line.split(":", 1)[1].strip()
            mode_id = int(lines[i + 1]) if i + 1 < len(lines) and lines[i + 1].isdigit() else None
            return name, mode_id
    return None


def static_facts(root: str | Path = "/", run: CommandRunner = run_command) -> dict[str, Fact]:
    """Facts that do not change while the server runs: model, OS, L4T / JetPack, runtime versions."""
    root = Path(root)
    facts: dict[str, Fact] = {}
    model = _read(root, "/proc/device-tree/model")
    if model is None:
        model = _read(root, "/sys/devices/virtual/dmi/id/product_name")
    facts["device_model"] = model.strip("\x00 \n") if model and model.strip("\x00 \n") else platform.node()
    facts["arch"] = platform.machine()
    facts["kernel"] = platform.release()
    for line in (_read(root, "/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            facts["os"] = line.split("=", 1)[1].strip().strip('"')
    tegra = _read(root, "/etc/nv_tegra_release")
    if tegra is not None:
        facts["nv_tegra_release"] = tegra.splitlines()[0].strip() if tegra.strip() else ""
        release = parse_tegra_release(tegra)
        if release:
            facts["l4t_release"] = release
        jetpack = run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
        if jetpack:
            facts["jetpack"] = jetpack.strip()
    for name, dists in _PACKAGES.items():
        for dist in dists:
            try:
                facts[f"{name}_version"] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if "tensorrt_version" not in facts:
        for pkg in _DPKG_TENSORRT:
            version = run(["dpkg-query", "-W", "-f=${Version}", pkg])
            if version and version.strip():
                facts["tensorrt_version"] = version.strip()
                break
    return facts


def dynamic_facts(root: str | Path = "/", run: CommandRunner = run_command) -> dict[str, Fact]:
    """A snapshot of what changes: power mode, CPU / devfreq clocks, temperatures."""
    root = Path(root)
    facts: dict[str, Fact] = {}
    nvp = run(["nvpmodel", "-q"])
    parsed = parse_nvpmodel(nvp) if nvp else None
    if parsed:
        facts["power_mode"] = parsed[0]
        if parsed[1] is not None:
            facts["power_mode_id"] = parsed[1]
    cpu_dir = root / "sys/devices/system/cpu"
    cpus = sorted(cpu_dir.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])) if cpu_dir.is_dir() else []
    for cpu in cpus:
        rel = f"/sys/devices/system/cpu/{cpu.name}/cpufreq"
        for key, file in (("cur", "scaling_cur_freq"), ("max", "scaling_max_freq")):
            khz = _read_int(root, f"{rel}/{file}")
            if khz is not None:
                facts[f"{cpu.name}_{key}_mhz"] = round(khz / 1000.0, 1)
    governor = _read(root, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        facts["cpu_governor"] = governor.strip()
    devfreq = root / "sys/class/devfreq"
    for dev in sorted(devfreq.iterdir()) if devfreq.is_dir() else []:
        for key in ("cur", "max"):
            hz = _read_int(root, f"/sys/class/devfreq/{dev.name}/{key}_freq")
            if hz is not None:
                facts[f"devfreq_{_slug(dev.name)}_{key}_mhz"] = round(hz / 1e6, 1)
    thermal = root / "sys/class/thermal"
    zones = sorted(thermal.glob("thermal_zone[0-9]*"), key=lambda p: int(p.name[12:])) if thermal.is_dir() else []
    for zone in zones:
        kind = _read(root, f"/sys/class/thermal/{zone.name}/type")
        milli = _read_int(root, f"/sys/class/thermal/{zone.name}/temp")
        if kind and milli is not None and milli > -200000:  # offline Jetson sensors read -256 C
            facts[f"temp_{_slug(kind.strip())}_c"] = round(milli / 1000.0, 1)
    return facts

"""Device facts from a recorded Jetson AGX Orin file tree (JetPack 6 / L4T R36.3) and recorded command output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from edgematrix.server.device import dynamic_facts, parse_nvpmodel, parse_tegra_release, static_facts

ORIN_FILES = {
    "proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit\x00",
    "etc/nv_tegra_release": (
        "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19 23:24:25 UTC 2024\n"
        "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\nTARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
    ),
    "etc/os-release": 'NAME="Ubuntu"\nVERSION_ID="22.04"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n',
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "2201600\n",
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq": "2201600\n",
    "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "schedutil\n",
    "sys/devices/system/cpu/cpu11/cpufreq/scaling_cur_freq": "729600\n",
    "sys/class/devfreq/17000000.ga10b/cur_freq": "1300500000\n",
    "sys/class/devfreq/17000000.ga10b/max_freq": "1300500000\n",
    "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
    "sys/class/thermal/thermal_zone0/temp": "45312\n",
    "sys/class/thermal/thermal_zone1/type": "gpu-thermal\n",
    "sys/class/thermal/thermal_zone1/temp": "43875\n",
    "sys/class/thermal/thermal_zone9/type": "tj-thermal\n",
    "sys/class/thermal/thermal_zone9/temp": "-256000\n",  # offline sensors read -256 C (tegrastats: cv0@-256C)
}
COMMANDS = {
    ("nvpmodel", "-q"): "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n",
    ("dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"): "6.0+b106",
    ("dpkg-query", "-W", "-f=${Version}", "tensorrt"): "10.3.0.30-1+cuda12.5",
}


def fake_run(cmd: Sequence[str]) -> str | None:
    return COMMANDS.get(tuple(cmd))


@pytest.fixture
def orin_root(tmp_path: Path) -> Path:
    for rel, text in ORIN_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_static_facts_of_a_jetson(orin_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgematrix.server import device

    monkeypatch.setitem(device._PACKAGES, "tensorrt", ("no-such-dist",))  # as on a board: TensorRT from apt
    facts = static_facts(orin_root, fake_run)
    assert facts["device_model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert facts["l4t_release"] == "R36.3.0"
    assert facts["nv_tegra_release"].startswith("# R36 (release), REVISION: 3.0")
    assert facts["jetpack"] == "6.0+b106"
    assert facts["tensorrt_version"] == "10.3.0.30-1+cuda12.5"
    assert facts["os"] == "Ubuntu 22.04.4 LTS"


def test_dynamic_facts_of_a_jetson(orin_root: Path) -> None:
    facts = dynamic_facts(orin_root, fake_run)
    assert facts["power_mode"] == "MAXN" and facts["power_mode_id"] == 0
    assert facts["cpu0_cur_mhz"] == 2201.6 and facts["cpu0_max_mhz"] == 2201.6 and facts["cpu11_cur_mhz"] == 729.6
    assert facts["cpu_governor"] == "schedutil"
    assert facts["devfreq_17000000_ga10b_cur_mhz"] == 1300.5
    assert facts["temp_cpu_thermal_c"] == 45.3 and facts["temp_gpu_thermal_c"] == 43.9
    assert "temp_tj_thermal_c" not in facts


def test_plain_host_has_no_jetson_facts(tmp_path: Path) -> None:
    facts = {**static_facts(tmp_path, lambda cmd: None), **dynamic_facts(tmp_path, lambda cmd: None)}
    assert "l4t_release" not in facts and "power_mode" not in facts and "jetpack" not in facts
    assert facts["device_model"] and facts["arch"]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 2023",
            "R35.4.1",
        ),
        ("# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64", "R32.7.4"),
        ("garbage", None),
    ],
)
def test_parse_tegra_release(text: str, want: str | None) -> None:
    assert parse_tegra_release(text) == want


def test_parse_nvpmodel() -> None:
    assert parse_nvpmodel("NV Power Mode: 15W\n0\n") == ("15W", 0)
    assert parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == ("MAXN_SUPER", 2)
    assert parse_nvpmodel("nothing here") is None

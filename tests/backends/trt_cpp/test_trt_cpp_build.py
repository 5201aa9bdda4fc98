"""Building trt_runner: native and aarch64 cross builds, the ELF header, the source-hash cache, toolchain errors."""

from __future__ import annotations

import shutil
import struct
import time
from pathlib import Path

import pytest

from edgematrix.backends.trt_cpp import BuiltRunner, build, build_runner, default_source_dir, elf_machine, source_hash
from edgematrix.backends.trt_cpp.build import host_machine
from edgematrix.errors import BackendError, EdgeMatrixError, RunnerUnavailableError

EM_AARCH64 = 183


def test_cross_build_is_an_aarch64_elf(aarch64_runner: BuiltRunner) -> None:
    header = aarch64_runner.path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert header[4] == 2  # ELFCLASS64
    assert header[5] == 1  # little-endian
    assert struct.unpack_from("<H", header, 16)[0] == 2  # ET_EXEC: a static executable, not PIE
    assert struct.unpack_from("<H", header, 18)[0] == EM_AARCH64
    assert elf_machine(aarch64_runner.path) == "aarch64"
    assert aarch64_runner.machine == "aarch64"
    assert aarch64_runner.static
    assert not aarch64_runner.tensorrt
    assert aarch64_runner.source_hash == source_hash()


def test_native_build_matches_the_host(native_runner: BuiltRunner) -> None:
    assert native_runner.machine == host_machine() == elf_machine(native_runner.path)
    assert not native_runner.static
    assert not native_runner.tensorrt


def test_second_build_is_a_cache_hit(aarch64_runner: BuiltRunner, runner_cache: Path) -> None:
    t0 = time.perf_counter()
    again = build_runner("aarch64", cache_dir=runner_cache)
    assert time.perf_counter() - t0 < 1.0
    assert again.cache_hit
    assert again.path == aarch64_runner.path
    assert again.build_dir.name.startswith("aarch64-")
    assert not any(p.name.startswith(".") for p in runner_cache.iterdir())  # no temporary build left behind


def test_source_hash_follows_the_sources(tmp_path: Path) -> None:
    copy = tmp_path / "trt_runner"
    shutil.copytree(default_source_dir(), copy)
    original = source_hash(copy)
    assert original == source_hash(default_source_dir())
    (copy / "README.txt").write_text("not a source file")
    assert source_hash(copy) == original
    stats = copy / "src" / "stats.cpp"
    stats.write_text(stats.read_text() + "\n// changed\n")
    assert source_hash(copy) != original


def test_missing_sources_say_where_they_belong(tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"docker/driveos/trt_runner"):
        source_hash(tmp_path)


def test_missing_cross_compiler_names_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        build.shutil, "which", lambda name: None if name == "aarch64-linux-gnu-g++" else real_which(name)
    )
    with pytest.raises(RunnerUnavailableError, match=r"g\+\+-aarch64-linux-gnu.*docker/base/host-tools\.sh"):
        build_runner("aarch64", cache_dir=tmp_path)


def test_missing_cmake_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(build.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    with pytest.raises(RunnerUnavailableError, match=r"`cmake`.*apt-get install cmake"):
        build_runner("native", cache_dir=tmp_path, tensorrt="OFF")


def test_tensorrt_on_without_tensorrt_fails_at_configure(tmp_path: Path) -> None:
    # No TensorRT for aarch64 on this host: ON must fail loudly, naming what was not found.
    with pytest.raises(BackendError, match=r"(?s)configure failed.*TRT_RUNNER_NVINFER_INCLUDE.*DriveOS image"):
        build_runner("aarch64", cache_dir=tmp_path, tensorrt="ON", static=False)
    assert not list(tmp_path.iterdir())  # the failed build left nothing in the cache


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"unknown trt_runner target 'riscv64'"):
        build_runner("riscv64", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(EdgeMatrixError, match=r"static trt_runner cannot link TensorRT"):
        build_runner("aarch64", cache_dir=tmp_path, tensorrt="AUTO", static=True)


def test_elf_machine_rejects_other_files(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(BackendError, match=r"not an ELF executable"):
        elf_machine(script)

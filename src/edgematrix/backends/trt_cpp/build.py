"""Configure and build trt_runner with CMake, natively or for aarch64, cached by a hash of its sources.

A build lands in ``<cache_dir>/<target>-<key>/`` where ``key`` hashes the sources and the build
options, so an unchanged runner is built once; a build happens in a temporary folder that is
renamed into place only when it succeeded, so the cache never holds half a build.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgematrix.errors import BackendError, EdgeMatrixError, RunnerUnavailableError

Target = Literal["native", "aarch64"]
TensorRTMode = Literal["AUTO", "ON", "OFF"]

SOURCE_DIR_ENV = "EDGEMATRIX_TRT_RUNNER_SRC"
BINARY_NAME = "trt_runner"
_STAMP = "edgematrix-build.json"
_CROSS_PREFIX = "aarch64-linux-gnu-"
#: ELF e_machine values (System V ABI) of the architectures edgematrix builds for
_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64"}
_SOURCE_GLOBS = ("CMakeLists.txt", "cmake/*.cmake", "src/*.cpp", "src/*.h")


@dataclass(frozen=True)
class BuiltRunner:
    """A compiled trt_runner and how it was built."""

    path: Path
    target: Target
    machine: str  # ELF machine of the binary: "x86_64", "aarch64", ...
    source_hash: str
    static: bool
    tensorrt: bool  # whether the TensorRT engine was compiled in
    build_dir: Path
    cache_hit: bool


def normalize_machine(name: str) -> str:
    """``platform.machine()`` spellings → ELF names (``arm64`` → ``aarch64``, ``AMD64`` → ``x86_64``)."""
    lowered = name.lower()
    return {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}.get(lowered, lowered)


def host_machine() -> str:
    return normalize_machine(platform.machine())


def default_source_dir() -> Path:
    """``$EDGEMATRIX_TRT_RUNNER_SRC``, else ``docker/driveos/trt_runner`` of this checkout."""
    env = os.environ.get(SOURCE_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "docker" / "driveos" / "trt_runner"


def _source_files(source_dir: Path) -> list[Path]:
    if not (source_dir / "CMakeLists.txt").is_file():
        raise EdgeMatrixError(
            f"trt_runner sources not found in {source_dir} (no CMakeLists.txt). A checkout of edgematrix has them "
            f"under docker/driveos/trt_runner; pass source_dir= or set {SOURCE_DIR_ENV}"
        )
    files = {p for pattern in _SOURCE_GLOBS for p in source_dir.glob(pattern) if p.is_file()}
    return sorted(files, key=lambda p: p.relative_to(source_dir).as_posix())


def source_hash(source_dir: Path | None = None) -> str:
    """SHA-256 over the runner's sources (relative path and bytes of each file, in path order)."""
    source_dir = Path(source_dir) if source_dir is not None else default_source_dir()
    digest = hashlib.sha256()
    for path in _source_files(source_dir):
        rel = path.relative_to(source_dir).as_posix().encode()
        data = path.read_bytes()
        digest.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def elf_machine(path: Path) -> str:
    """The architecture an ELF executable is for, read from its header (``e_machine``)."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise BackendError(f"{path} is not an ELF executable (header {header[:4]!r})")
    byteorder: Literal["little", "big"] = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], byteorder)
    return _ELF_MACHINES.get(machine, f"e_machine={machine}")


def _require_tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RunnerUnavailableError(f"building trt_runner needs `{name}` on PATH, and it is not there; {hint}")
    return found


def _check_toolchain(target: Target) -> None:
    _require_tool("cmake", "install CMake >= 3.16 (Debian: apt-get install cmake)")
    if target == "aarch64":
        _require_tool(
            f"{_CROSS_PREFIX}g++",
            "install the aarch64 cross compiler (Debian package g++-aarch64-linux-gnu; "
            "docker/base/host-tools.sh installs it), or build in the DriveOS image (docker/driveos/Dockerfile)",
        )
    elif shutil.which("c++") is None and shutil.which("g++") is None:
        raise RunnerUnavailableError(
            "building trt_runner needs a C++17 compiler (`c++` or `g++`) on PATH; install g++ (Debian: apt-get install g++)"
        )


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_step(cmd: list[str], what: str, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackendError(
            f"trt_runner {what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{_tail(proc.stdout + proc.stderr)}"
        )


def _tensorrt_compiled_in(build_dir: Path) -> bool:
    cache = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    return any(
        line.startswith("TRT_RUNNER_NVINFER_LIB:") and not line.endswith("-NOTFOUND") for line in cache.splitlines()
    )


def build_runner(
    target: Target = "native",
    *,
    source_dir: Path | None = None,
    cache_dir: Path | None = None,
    tensorrt: TensorRTMode | None = None,
    static: bool | None = None,
    build_type: str = "Release",
    cmake_args: Sequence[str] = (),
) -> BuiltRunner:
    """Build trt_runner (or reuse the cached build of the same sources and options).

    ``target="aarch64"`` cross-compiles with ``aarch64-linux-gnu-g++`` and the toolchain file
    ``cmake/aarch64-linux-gnu.cmake``. ``tensorrt`` defaults to ``"OFF"`` for aarch64 (the
    distribution's cross toolchain has no TensorRT; the DriveOS image builds that variant) and
    ``"AUTO"`` natively. ``static`` defaults to on for an aarch64 build without TensorRT, so it
    runs under qemu-user with no aarch64 sysroot.
    """
    if target not in ("native", "aarch64"):
        raise EdgeMatrixError(f"unknown trt_runner target {target!r}; known: 'native', 'aarch64'")
    mode: TensorRTMode = tensorrt if tensorrt is not None else ("OFF" if target == "aarch64" else "AUTO")
    if mode not in ("AUTO", "ON", "OFF"):
        raise EdgeMatrixError(f"tensorrt must be 'AUTO', 'ON' or 'OFF', got {mode!r}")
    is_static = static if static is not None else (target == "aarch64" and mode == "OFF")
    if is_static and mode != "OFF":
        raise EdgeMatrixError("a static trt_runner cannot link TensorRT's shared libraries; use tensorrt='OFF'")
    source_dir = Path(source_dir) if source_dir is not None else default_source_dir()
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(".cache/edgematrix/trt_runner")
    src_hash = source_hash(source_dir)
    options = {
        "target": target,
        "tensorrt": mode,
        "static": is_static,
        "build_type": build_type,
        "cmake_args": list(cmake_args),
        "host": host_machine(),
    }
    key = hashlib.sha256(json.dumps({"sources": src_hash, **options}, sort_keys=True).encode()).hexdigest()[:16]
    build_dir = (cache_dir / f"{target}-{key}").resolve()
    expected_machine = "aarch64" if target == "aarch64" else host_machine()

    binary = build_dir / BINARY_NAME
    stamp = build_dir / _STAMP
    if binary.is_file() and stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except (OSError, json.JSONDecodeError):
            recorded = {}  # a damaged stamp: rebuild
        if (
            isinstance(recorded, dict)
            and recorded.get("source_hash") == src_hash
            and recorded.get("options") == options
            and isinstance(recorded.get("tensorrt"), bool)
        ):
            return BuiltRunner(
                binary, target, elf_machine(binary), src_hash, is_static, recorded["tensorrt"], build_dir, True
            )

    _check_toolchain(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target}-{key}-", dir=cache_dir))
    try:
        configure = [
            "cmake",
            "-S",
            str(source_dir.resolve()),
            "-B",
            str(work),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DTRT_RUNNER_TENSORRT={mode}",
            f"-DTRT_RUNNER_STATIC={'ON' if is_static else 'OFF'}",
            f"-DTRT_RUNNER_SOURCE_HASH={src_hash}",
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        if target == "aarch64":
            configure.append(f"-DCMAKE_TOOLCHAIN_FILE={(source_dir / 'cmake' / 'aarch64-linux-gnu.cmake').resolve()}")
        configure += list(cmake_args)
        _run_step(configure, "configure", work)
        _run_step(["cmake", "--build", str(work), "--parallel", str(os.cpu_count() or 1)], "build", work)
        built = work / BINARY_NAME
        if not built.is_file():
            raise BackendError(f"trt_runner build finished but {built} is missing")
        machine = elf_machine(built)
        if machine != expected_machine:
            raise BackendError(
                f"trt_runner for target {target!r} was built for {machine}, expected {expected_machine}; "
                "check the compiler CMake picked (CMAKE_CXX_COMPILER in CMakeCache.txt)"
            )
        with_trt = _tensorrt_compiled_in(work)
        (work / _STAMP).write_text(
            json.dumps({"source_hash": src_hash, "options": options, "tensorrt": with_trt}, indent=2)
        )
        if build_dir.exists():  # a stale or foreign build under the same key
            shutil.rmtree(build_dir)
        work.rename(build_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    # CMake wrote absolute paths into the cache; the binary itself does not depend on them.
    return BuiltRunner(build_dir / BINARY_NAME, target, machine, src_hash, is_static, with_trt, build_dir, False)

"""Run trt_runner (natively, or under qemu-user for an aarch64 binary on another host) and parse its JSON.

The runner writes the statistics of :class:`~edgematrix.measure.meter.LatencyReport` under the
same keys (``backend``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``, ``rounds``,
``samples_ms``, ``facts``), plus ``stddev_ms`` (ddof=1), ``host_samples_ms``, ``elapsed_s``,
``config`` and a ``schema`` tag; :func:`parse_result` validates all of it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.backends.base import Fact
from edgematrix.backends.trt_cpp.build import BuiltRunner, elf_machine, host_machine
from edgematrix.errors import BackendError, EdgeMatrixError, ModelError, RunnerUnavailableError
from edgematrix.measure.harness import LatencyConfig
from edgematrix.measure.meter import LatencyReport

RESULT_SCHEMA = "edgematrix.trt_runner/1"

# Exit codes of trt_runner (docker/driveos/trt_runner/src/errors.h).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_ENGINE_FILE = 3
EXIT_NO_TENSORRT = 4
EXIT_RUNTIME = 5
EXIT_OUTPUT = 6

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU_SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's aarch64 libraries (libc6-arm64-cross), for dynamic builds
_QEMU_HINT = (
    "install qemu-user-static (>= 8; on Debian 12 from bookworm-backports, since bookworm's 7.2 crashes on "
    "onnxruntime for aarch64) and register it with binfmt_misc: docker/base/host-tools.sh does both"
)


@dataclass(frozen=True)
class RunnerResult:
    """A parsed trt_runner result: the report plus what LatencyReport has no field for."""

    report: LatencyReport
    stddev_ms: float
    host_samples_ms: tuple[float, ...]
    elapsed_s: float
    config: LatencyConfig
    raw: dict[str, Any] = field(repr=False, compare=False)


def _fail(msg: str) -> BackendError:
    return BackendError(f"trt_runner result is malformed: {msg}")


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(f"{key!r} must be a finite number, got {value!r}")
    return float(value)


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{key!r} must be an integer, got {value!r}")
    return value


def _numbers(data: Mapping[str, Any], key: str) -> tuple[float, ...]:
    values = data.get(key)
    if not isinstance(values, list):
        raise _fail(f"{key!r} must be a list of numbers, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _fail(f"{key}[{i}] must be a finite number, got {v!r}")
        out.append(float(v))
    return tuple(out)


def parse_result(data: Mapping[str, Any] | str | bytes) -> RunnerResult:
    """Validate a trt_runner result (a mapping or its JSON text) and turn it into a :class:`RunnerResult`."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise _fail(f"not JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise _fail(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != RESULT_SCHEMA:
        raise _fail(f"schema is {data.get('schema')!r}, this edgematrix reads {RESULT_SCHEMA!r}; rebuild the runner")
    backend = data.get("backend")
    if not isinstance(backend, str) or not backend:
        raise _fail(f"'backend' must be a non-empty string, got {backend!r}")
    rounds = _integer(data, "rounds")
    samples = _numbers(data, "samples_ms")
    host_samples = _numbers(data, "host_samples_ms")
    if rounds < 1 or len(samples) != rounds or len(host_samples) != rounds:
        raise _fail(
            f"rounds={rounds} but {len(samples)} samples_ms and {len(host_samples)} host_samples_ms; "
            "expected one of each per round"
        )
    facts_raw = data.get("facts")
    if not isinstance(facts_raw, Mapping):
        raise _fail(f"'facts' must be an object, got {type(facts_raw).__name__}")
    facts: dict[str, Fact] = {}
    for key, value in facts_raw.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _fail(f"fact {key!r} must be a string or number, got {value!r}")
        facts[str(key)] = value
    config_raw = data.get("config")
    if not isinstance(config_raw, Mapping):
        raise _fail(f"'config' must be an object, got {type(config_raw).__name__}")
    try:
        config = LatencyConfig(
            warmup=_integer(config_raw, "warmup"),
            min_rounds=_integer(config_raw, "min_rounds"),
            max_rounds=_integer(config_raw, "max_rounds"),
            min_time_s=_number(config_raw, "min_time_s"),
            max_time_s=_number(config_raw, "max_time_s"),
        )
    except ValueError as exc:
        raise _fail(f"config is invalid: {exc}") from None
    report = LatencyReport(
        backend=backend,
        p50_ms=_number(data, "p50_ms"),
        p90_ms=_number(data, "p90_ms"),
        p99_ms=_number(data, "p99_ms"),
        mean_ms=_number(data, "mean_ms"),
        rounds=rounds,
        samples_ms=samples,
        facts=facts,
    )
    return RunnerResult(
        report=report,
        stddev_ms=_number(data, "stddev_ms"),
        host_samples_ms=host_samples,
        elapsed_s=_number(data, "elapsed_s"),
        config=config,
        raw=dict(data),
    )


def report_from_json(data: Mapping[str, Any] | str | bytes | Path) -> LatencyReport:
    """The :class:`LatencyReport` of a trt_runner result (a mapping, JSON text, or a JSON file)."""
    if isinstance(data, Path):
        data = data.read_text()
    return parse_result(data).report


def _binfmt_handles(machine: str) -> bool:
    entry = BINFMT_DIR / f"qemu-{machine}"
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def emulator_for(machine: str) -> list[str]:
    """The command prefix that runs a ``machine`` binary here: ``[]`` when it runs directly
    (same architecture, or binfmt_misc hands it to qemu), else ``["qemu-aarch64-static"]``."""
    host = host_machine()
    if machine == host:
        return []
    if machine != "aarch64":
        raise RunnerUnavailableError(f"cannot run a {machine} trt_runner on this {host} host; build it for {host}")
    if _binfmt_handles(machine):
        return []
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(name)
        if found:
            return [found]
    raise RunnerUnavailableError(
        f"running the aarch64 trt_runner on this {host} host needs qemu-user: binfmt_misc has no enabled "
        f"qemu-aarch64 entry ({BINFMT_DIR / 'qemu-aarch64'}) and qemu-aarch64-static is not on PATH; {_QEMU_HINT}"
    )


def launch_prefix(binary: Path) -> tuple[list[str], dict[str, str]]:
    """The command prefix (qemu-user or nothing) and environment that run ``binary`` on this host."""
    machine = elf_machine(binary)
    prefix = emulator_for(machine)
    env = dict(os.environ)
    if machine != host_machine() and QEMU_SYSROOT.is_dir():
        env.setdefault("QEMU_LD_PREFIX", str(QEMU_SYSROOT))  # lets a dynamically linked aarch64 build find its libc
    return prefix, env


def error_for(code: int, message: str, binary: Path) -> EdgeMatrixError:
    """The edgematrix error of a trt_runner exit code (3 ModelError, 4 RunnerUnavailableError, else BackendError)."""
    return _error_for(code, message, binary)


def _error_for(code: int, message: str, binary: Path) -> EdgeMatrixError:
    if code == EXIT_ENGINE_FILE:
        return ModelError(message)
    if code == EXIT_NO_TENSORRT:
        return RunnerUnavailableError(message)
    if code < 0:
        return BackendError(f"trt_runner ({binary}) was killed by signal {-code}: {message}")
    return BackendError(f"trt_runner ({binary}) failed with exit code {code}: {message}")


def run_runner(
    runner: BuiltRunner | Path,
    *,
    engine: Path | None = None,
    selftest: bool = False,
    config: LatencyConfig | None = None,
    args: Sequence[str] = (),
    out: Path | None = None,
    timeout_s: float | None = None,
) -> RunnerResult:
    """Run trt_runner on ``engine`` (a serialized TensorRT engine) or its ``--cpu-selftest``.

    ``config`` sets the harness's warm-up and stop rule (``disable_gc`` has no meaning in C++).
    ``args`` are further runner arguments (``--shape``, ``--input``, ``--selftest-size`` ...).
    The JSON goes to ``out`` (kept) or a temporary file. An aarch64 binary on another host runs
    under qemu-user (:func:`emulator_for`). ``timeout_s`` defaults to three times
    ``config.max_time_s`` plus two minutes for loading and warm-up.
    """
    if (engine is None) == (not selftest):
        raise EdgeMatrixError("run_runner needs exactly one of engine= or selftest=True")
    binary = runner.path if isinstance(runner, BuiltRunner) else Path(runner)
    if not binary.is_file():
        raise EdgeMatrixError(f"trt_runner binary {binary} does not exist; build it with build_runner()")
    config = config if config is not None else LatencyConfig()
    prefix, env = launch_prefix(binary)
    timeout = timeout_s if timeout_s is not None else 3 * config.max_time_s + 120

    with tempfile.TemporaryDirectory(prefix="trt_runner-") as tmp:
        out_path = Path(out) if out is not None else Path(tmp) / "result.json"
        cmd = [*prefix, str(binary)]
        cmd += ["--engine", str(engine)] if engine is not None else ["--cpu-selftest"]
        cmd += [
            "--warmup",
            str(config.warmup),
            "--min-rounds",
            str(config.min_rounds),
            "--max-rounds",
            str(config.max_rounds),
            "--min-time-s",
            repr(float(config.min_time_s)),
            "--max-time-s",
            repr(float(config.max_time_s)),
            "--out",
            str(out_path),
            *args,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BackendError(
                f"trt_runner did not finish within {timeout:.0f} s ({' '.join(cmd)}); lower max_time_s / "
                "max_rounds or pass a larger timeout_s"
            ) from None
        if proc.returncode != EXIT_OK:
            message = proc.stderr.strip().removeprefix("trt_runner: error: ") or "(no message)"
            raise _error_for(proc.returncode, message, binary)
        try:
            text = out_path.read_text()
        except OSError as exc:
            raise BackendError(f"trt_runner exited 0 but its result {out_path} cannot be read: {exc}") from None
        return parse_result(text)


@dataclass
class TrtCppMeter:
    """A :class:`~edgematrix.measure.meter.LatencyMeter` over trt_runner: ``measure(engine_file)``.

    ``options``: ``shapes`` ({input: [dims]}), ``inputs`` ({input: raw file}), ``device`` (int).
    """

    runner: BuiltRunner | Path
    config: LatencyConfig = field(default_factory=lambda: LatencyConfig(warmup=10, min_rounds=50, min_time_s=2.0))

    _OPTIONS = ("device", "inputs", "shapes")

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(self._OPTIONS))
        if unknown:
            raise EdgeMatrixError(f"unknown trt_runner option(s) {unknown!r}; known: {list(self._OPTIONS)!r}")
        args: list[str] = []
        for name, dims in dict(opts.get("shapes", {})).items():
            args += ["--shape", f"{name}={'x'.join(str(int(d)) for d in dims)}"]
        for name, path in dict(opts.get("inputs", {})).items():
            args += ["--input", f"{name}={Path(path)}"]
        if "device" in opts:
            args += ["--device", str(int(opts["device"]))]
        return run_runner(self.runner, engine=Path(model), config=self.config, args=args).report

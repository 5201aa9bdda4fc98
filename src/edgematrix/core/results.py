"""pytest-benchmark compatible ``benchmark.json``: write (atomically) and read back (validated).

The file is what ``pytest --benchmark-json`` writes, with per-round ``data`` always included, so
``pytest-benchmark compare`` and any tool reading pytest-benchmark JSON read ours.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, model_validator

from edgematrix.errors import EdgeMatrixError
from edgematrix.fileio import atomic_write_text


class LatencyOptions(Protocol):
    """The settings of a latency measurement that go into each benchmark's ``options``
    (:class:`edgematrix.measure.harness.LatencyConfig` is one)."""

    @property
    def disable_gc(self) -> bool: ...

    @property
    def min_rounds(self) -> int: ...

    @property
    def max_time_s(self) -> float: ...

    @property
    def min_time_s(self) -> float: ...

    @property
    def warmup(self) -> int: ...


ExtraValue = float | int | str


@dataclass
class BenchmarkEntry:
    """One benchmark: a runner's per-round wall times (seconds) and its plain ``extra_info``."""

    name: str
    group: str
    samples_s: list[float]
    extra_info: dict[str, ExtraValue]
    params: dict[str, Any] | None = None


def check_extra_info(extra_info: dict[str, Any], where: str = "extra_info") -> None:
    """Raise ``TypeError`` naming the key unless every value is a plain float / int / str."""
    for key, value in extra_info.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: key {key!r} must be a str, not {type(key).__name__}")
        if type(value) not in (float, int, str):  # exact types: no bool, numpy scalar, None, list
            raise TypeError(
                f"{where}[{key!r}] is {type(value).__name__} ({value!r}); extra_info holds plain "
                "float/int/str only: convert with float()/int()/str()"
            )
        if type(value) is float and not math.isfinite(value):
            raise ValueError(f"{where}[{key!r}] is {value}; JSON has no NaN/inf, leave the key out instead")


def _options(config: LatencyOptions) -> dict[str, Any]:
    # The keys of pytest-benchmark's own "options" (fixture._make_stats), values from our config.
    return {
        "disable_gc": config.disable_gc,
        "timer": "perf_counter",
        "min_rounds": config.min_rounds,
        "max_time": config.max_time_s,
        "min_time": config.min_time_s,
        "precision": None,
        "confidence": None,
        "warmup": config.warmup,
    }


def _benchmark_dict(entry: BenchmarkEntry, config: LatencyOptions | None) -> dict[str, Any]:
    from pytest_benchmark.stats import Stats

    where = f"benchmark {entry.name!r}"
    check_extra_info(entry.extra_info, f"{where} extra_info")
    if not entry.samples_s:
        raise ValueError(f"{where} has no samples")
    stats = Stats()
    for sample in entry.samples_s:
        value = float(sample)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: sample {sample!r} is not a finite non-negative number of seconds")
        stats.update(value)
    stats_dict = stats.as_dict()
    stats_dict["data"] = list(stats.data)
    stats_dict["iterations"] = 1
    param = None if entry.params is None else "-".join(str(v) for v in entry.params.values())
    return {
        "group": entry.group,
        "name": entry.name,
        "fullname": f"edgematrix/{entry.group}::{entry.name}",
        "params": entry.params,
        "param": param,
        "extra_info": dict(entry.extra_info),
        "options": _options(config) if config is not None else {},
        "stats": stats_dict,
    }


@functools.cache
def _machine_info() -> dict[str, Any]:
    """pytest-benchmark's machine_info (py-cpuinfo takes ~0.2 s, so once per process)."""
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info

    return pytest_benchmark_generate_machine_info()


def write_benchmark_json(
    path: str | os.PathLike[str],
    entries: Sequence[BenchmarkEntry],
    *,
    machine_extra: dict[str, Any] | None = None,
    latency_config: LatencyOptions | None = None,
) -> dict[str, Any]:
    """Write ``entries`` as pytest-benchmark JSON to ``path`` (atomically) and return the document.

    ``machine_extra`` (e.g. :func:`edgematrix.measure.environment.capture_environment`) is merged
    into pytest-benchmark's ``machine_info``; ``latency_config`` fills each benchmark's ``options``.
    """
    from pytest_benchmark import __version__ as pytest_benchmark_version
    from pytest_benchmark.utils import get_commit_info

    config = latency_config
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"benchmark names must be unique in one file; repeated: {duplicates!r}")
    benchmarks = [_benchmark_dict(entry, config) for entry in entries]
    machine_info = copy.deepcopy(_machine_info())
    if machine_extra:
        machine_info.update(machine_extra)
    document = {
        "machine_info": machine_info,
        "commit_info": get_commit_info(),
        "benchmarks": benchmarks,
        "datetime": datetime.now(UTC).isoformat(),
        "version": pytest_benchmark_version,
    }
    try:
        text = json.dumps(document, indent=4, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"benchmark JSON for {str(path)!r} is not plain JSON (check machine_extra): {exc}") from None
    atomic_write_text(Path(path), text + "\n")
    return json.loads(text)  # what was written (tuples in machine_info became lists)


def _fail(path: Path, where: str, problem: str) -> EdgeMatrixError:
    return EdgeMatrixError(
        f"{str(path)!r} is not a valid edgematrix benchmark.json: {where}: {problem}. "
        "Regenerate it with the cell's run (or pytest --benchmark-json with per-round data)"
    )


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def read_benchmark_json(path: str | os.PathLike[str], *, require_data: bool = True) -> dict[str, Any]:
    """Load and validate a benchmark.json; raise :class:`EdgeMatrixError` saying what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeMatrixError(f"benchmark file {str(path)!r} does not exist; run the cell first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeMatrixError(f"cannot read benchmark file {str(path)!r}: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"line {exc.lineno} column {exc.colno}", f"not JSON ({exc.msg})") from None

    if not isinstance(doc, dict):
        raise _fail(path, "top level", f"expected an object, found {type(doc).__name__}")
    for key, kind in (("machine_info", dict), ("commit_info", dict), ("benchmarks", list), ("datetime", str)):
        if key not in doc:
            raise _fail(path, "top level", f"missing {key!r}")
        if not isinstance(doc[key], kind):
            raise _fail(path, key, f"expected {kind.__name__}, found {type(doc[key]).__name__}")
    if not doc["benchmarks"]:
        raise _fail(path, "benchmarks", "empty list")

    for i, bench in enumerate(doc["benchmarks"]):
        where = f"benchmarks[{i}]"
        if not isinstance(bench, dict):
            raise _fail(path, where, f"expected an object, found {type(bench).__name__}")
        if not isinstance(bench.get("name"), str):
            raise _fail(path, f"{where}.name", "missing or not a string")
        where = f"benchmarks[{i}] ({bench['name']})"
        if not isinstance(bench.get("extra_info", {}), dict):
            raise _fail(path, f"{where}.extra_info", "not an object")
        try:
            check_extra_info(bench.get("extra_info", {}), f"{where}.extra_info")
        except (TypeError, ValueError) as exc:
            raise _fail(path, f"{where}.extra_info", str(exc)) from None
        stats = bench.get("stats")
        if not isinstance(stats, dict):
            raise _fail(path, f"{where}.stats", "missing or not an object")
        for key in ("min", "max", "mean", "median", "stddev"):
            if not _is_number(stats.get(key)):
                raise _fail(path, f"{where}.stats.{key}", f"missing or not a finite number ({stats.get(key)!r})")
        if not isinstance(stats.get("rounds"), int) or stats["rounds"] < 1:
            raise _fail(path, f"{where}.stats.rounds", f"expected a positive integer, found {stats.get('rounds')!r}")
        data = stats.get("data")
        if data is None:
            if require_data:
                raise _fail(path, f"{where}.stats.data", "no per-round samples (needed for latency gates)")
            continue
        if not isinstance(data, list) or not all(_is_number(x) and x >= 0 for x in data):
            raise _fail(path, f"{where}.stats.data", "expected a list of non-negative numbers (seconds)")
        if len(data) != stats["rounds"]:
            raise _fail(path, f"{where}.stats.data", f"{len(data)} samples but rounds = {stats['rounds']}")
    return doc


# ----------------------------------------------------------------------------------------------
# typed records: one writer (the pipeline's publish stage) and one reader for every consumer


class BenchmarkInfo(BaseModel):
    """The ``extra_info`` of one benchmark of a cell run, typed.

    pytest-benchmark keeps ``extra_info`` flat, with plain values; the named fields are the contract
    every consumer reads (reports, plots, history, gate compare, sweeps, the demo). Task extras (``fp``,
    ``map50`` ...), recipe facts (``prune_ratio`` ...) and contention figures are further plain fields
    (``extra="allow"``, validated as float / int / str). Fields missing in older files take their
    defaults, so a reader never guesses with ``.get``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    role: str = "candidate"  # reference | candidate | base | a recipe step's role (unpruned, ptq ...)
    backend: str = ""
    primary_backend: str = ""  # the backend of record of the run ("" in files older than the field)
    precision: str = ""
    recipe: str = ""
    cell: str = ""
    target: str = ""
    model: str = ""
    backend_version: str = ""
    inference_precision: str = ""
    accuracy: float | None = None  # the task metric of record
    metric: str = "accuracy"
    metric_direction: Literal["higher", "lower"] = "higher"
    model_kind: Literal["onnx", "split", "module", "engine"] = "onnx"
    model_bytes: int = 0
    input_shape: str = ""
    artifact_sha256: str = ""
    threads: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    speedup_vs_reference: float | None = None
    max_rel_diff_vs_reference: float = 0.0
    selected_backend: str = ""
    runner: str = ""
    executor: str = ""
    device: str = ""
    latency_kind: str = "local"
    accuracy_source: str = "local"
    dataset: str = ""

    @model_validator(mode="after")
    def _plain_extras(self) -> BenchmarkInfo:
        for key, value in (self.model_extra or {}).items():
            if type(value) not in (float, int, str):
                raise ValueError(f"extra_info[{key!r}] is {type(value).__name__}; extra_info holds float/int/str only")
        return self

    @property
    def is_primary(self) -> bool:
        """Measured on the run's backend of record (older files: benchmark names without ``@backend``)."""
        return not self.primary_backend or self.backend == self.primary_backend

    def extras(self) -> dict[str, float | int | str]:
        """The fields beyond the named ones: task extras, recipe facts, contention figures."""
        return dict(self.model_extra or {})

    def extra_info(self) -> dict[str, ExtraValue]:
        """Plain values for pytest-benchmark's ``extra_info`` (``None`` fields are left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of a results file: its name, typed info and per-round samples (seconds)."""

    name: str
    group: str
    info: BenchmarkInfo
    samples_s: tuple[float, ...]


@dataclass(frozen=True)
class CellResults:
    """A cell run's ``benchmark.json``, typed."""

    path: Path
    benchmarks: tuple[Benchmark, ...]
    machine_info: dict[str, Any]
    commit_info: dict[str, Any]

    @property
    def primary_backend(self) -> str:
        for b in self.benchmarks:
            if b.info.primary_backend:
                return b.info.primary_backend
        first = next((b for b in self.benchmarks if "@" not in b.name), None)
        return first.info.backend if first else ""

    def of(self, role: str, backend: str | None = None) -> Benchmark | None:
        """The benchmark of ``role`` on ``backend`` (default: the primary backend)."""
        backend = backend or self.primary_backend
        return next((b for b in self.benchmarks if b.info.role == role and b.info.backend == backend), None)


def read_results(path: str | os.PathLike[str], *, require_data: bool = False) -> CellResults:
    """Read and validate a cell's ``benchmark.json`` (or its results folder) into typed records; a file
    that does not hold them is an :class:`EdgeMatrixError` naming the benchmark and the field."""
    from pydantic import ValidationError

    path = Path(path)
    if path.is_dir():
        path = path / "benchmark.json"
    doc = read_benchmark_json(path, require_data=require_data)
    out = []
    for i, bench in enumerate(doc["benchmarks"]):
        try:
            info = BenchmarkInfo.model_validate(bench.get("extra_info", {}))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "extra_info"
            raise _fail(path, f"benchmarks[{i}] ({bench['name']}).extra_info.{where}", first["msg"]) from None
        data = bench["stats"].get("data") or ()
        out.append(Benchmark(bench["name"], str(bench.get("group") or ""), info, tuple(float(x) for x in data)))
    return CellResults(path, tuple(out), dict(doc["machine_info"]), dict(doc["commit_info"]))


class RunnerRecord(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = "local"
    reason: str = ""
    host: str = ""
    remote: str | None = None


class CellConfig(BaseModel):
    """``results/<cell>/config.json``: the fully resolved cell and where it ran (one writer: the pipeline)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    cell: str
    description: str = ""
    target: dict[str, Any]
    model: dict[str, Any]
    recipe: dict[str, Any]
    gates: dict[str, Any] = {}
    runner: RunnerRecord = RunnerRecord()
    executor: str = "local"
    backends: list[str] = []
    steps: list[str] = []
    started: str = ""


def write_config(path: str | os.PathLike[str], config: CellConfig) -> None:
    atomic_write_text(Path(path), config.model_dump_json(indent=2) + "\n")


def read_config(path: str | os.PathLike[str]) -> CellConfig:
    """Read ``config.json`` (or a results folder's); a file that is not one is an :class:`EdgeMatrixError`."""
    from pydantic import ValidationError

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        return CellConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeMatrixError(
            f"{path} is missing: the cell has not finished a run; run it (`nox -s {path.parent.name}`)"
        ) from None
    except UnicodeDecodeError as e:
        raise EdgeMatrixError(
            f"{path} is not UTF-8 ({e.reason}); run the cell again (`nox -s {path.parent.name}`)"
        ) from None
    except ValidationError as e:
        what = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()[:4]
        )
        raise EdgeMatrixError(
            f"{path} is not a cell's config.json ({what}); run the cell again (`nox -s {path.parent.name}`)"
        ) from None

"""An append-only store of results over time: one JSON object per line (JSON Lines).

Each run of the report appends one record per (cell, backend, role)::

    {"v": 1, "cell": "x86_cpu_int8", "backend": "onnxruntime", "role": "candidate", "precision": "int8",
     "accuracy": 89.38, "p50_ms": 13.24, "p90_ms": 15.07, "p99_ms": 16.05, "speedup_vs_reference": 2.96,
     "commit": "d00878e...", "dirty": false, "timestamp": "2026-11-21T07:30:00+00:00",
     "measured_at": "2026-11-21T07:19:02+00:00", "machine": "AMD EPYC (x86_64, 2 cores)", "host": "vm",
     "metric": "TuSimple accuracy", "metric_direction": "higher",
     "gates": {"accuracy_drop_vs_reference": 0.5, "min_accuracy": 85.0, ...},
     "verdicts": {"accuracy_vs_reference": "passed", "latency_vs_baseline": "failed", ...},
     "baseline": {"accuracy": 89.381, "p50_ratio": 0.3399, "device": "AMD EPYC"}}

``metric`` and ``metric_direction`` are on every record; ``gates`` (the cell's resolved gates, from
its ``config.json``), ``verdicts`` (this backend's gate verdicts, from its ``junit.xml``, names
without the ``[backend]`` suffix) and ``baseline`` (the reviewed baseline record of this backend,
precision and device, when ``baselines_dir`` is given and has one) only on candidate records, and
only where the results folder has them. Records written before these keys existed lack them; every
reader treats them as optional (the history dashboard, :mod:`edgematrix.report.dashboard`, draws
what a record has).

Appends are atomic: under an exclusive ``fcntl`` lock on ``<file>.lock``, the existing bytes plus
the new lines are written to a temporary file in the same folder, fsynced and renamed over the
store. A reader therefore sees the old file or the new one, never half a record, and lines already
there are copied byte for byte. Two processes appending at once both land (the lock serialises
them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError
from edgematrix.fileio import atomic_write_bytes

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("cell", "backend", "role", "timestamp")


class TruncatedHistoryWarning(UserWarning):
    """The last line of a history file is incomplete (an interrupted writer); it was skipped."""


def _machine(machine_info: dict[str, Any]) -> str:
    cpu = machine_info.get("cpu_model") or (machine_info.get("cpu") or {}).get("brand_raw") or "unknown CPU"
    arch = machine_info.get("arch") or machine_info.get("machine") or ""
    cores = machine_info.get("logical_cores")
    detail = ", ".join(x for x in (str(arch), f"{cores} cores" if cores else "") if x)
    return f"{cpu} ({detail})" if detail else str(cpu)


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


#: the gate settings a record keeps (the thresholds the dashboard draws)
GATE_KEYS = ("accuracy_drop_vs_reference", "accuracy_drop_vs_baseline", "latency_regression", "min_accuracy")


def _cell_gates(cell_dir: Path) -> dict[str, float]:
    """The cell's resolved gates from its ``config.json`` (``{}`` without one)."""
    path = cell_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        gates = json.loads(path.read_text(encoding="utf-8")).get("gates") or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise EdgeMatrixError(f"{path} is not the cell's config JSON ({exc}); re-run the cell") from None
    return {k: float(gates[k]) for k in GATE_KEYS if type(gates.get(k)) in (int, float)}


def _cell_verdicts(cell_dir: Path) -> dict[str, dict[str, str]]:
    """The gate verdicts of ``junit.xml`` by backend suffix (``""``: the primary backend)."""
    from edgematrix.report.merge import read_gates

    if not (cell_dir / "junit.xml").is_file():
        return {}
    out: dict[str, dict[str, str]] = {}
    for g in read_gates(cell_dir):
        suffix = g.backend_suffix
        name = g.gate[: -len(suffix) - 2] if suffix else g.gate
        out.setdefault(suffix, {})[name] = g.status
    return out


def _baseline(
    baselines_dir: Path, cell: str, backend: str, primary: str, precision: str, device: str
) -> dict[str, Any] | None:
    """The reviewed baseline record of this backend and precision: this device's (latency and accuracy),
    else another device's (accuracy only: latency is compared on the device it was recorded on)."""
    from edgematrix.gates.baseline import baseline_key, load_baselines

    records = [
        b
        for b in load_baselines(baselines_dir, baseline_key(cell, backend, primary or backend))
        if b.backend == backend and b.precision == precision
    ]
    same = [b for b in records if b.cpu == device]
    if same:
        return {"accuracy": same[0].accuracy, "p50_ratio": same[0].p50_ratio, "device": same[0].cpu}
    if records:
        return {"accuracy": records[0].accuracy, "device": records[0].cpu}
    return None


def records_from_results(
    results_dir: str | os.PathLike[str],
    *,
    commit: str | None = None,
    timestamp: str | None = None,
    baselines_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """The history records of every cell's ``benchmark.json`` under ``results_dir`` (with its
    ``config.json``'s gates and ``junit.xml``'s verdicts, and ``baselines_dir``'s baselines)."""
    from edgematrix.core.results import read_benchmark_json
    from edgematrix.report.merge import find_cells

    stamp = timestamp or datetime.now(UTC).isoformat(timespec="seconds")
    records = []
    for cell_dir in find_cells(results_dir):
        path = cell_dir / "benchmark.json"
        if not path.is_file():
            raise EdgeMatrixError(f"{str(path)!r} is missing: the cell's run did not write its benchmark; re-run it")
        doc = read_benchmark_json(path, require_data=False)
        info = doc.get("commit_info") or {}
        machine_info = doc.get("machine_info") or {}
        gates = _cell_gates(cell_dir)
        verdicts = _cell_verdicts(cell_dir)
        benches = doc["benchmarks"]
        primary = next((str(b.get("extra_info", {}).get("primary_backend") or "") for b in benches), "")
        primary = primary or next((str(b.get("extra_info", {}).get("backend", "")) for b in benches), "")
        for bench in benches:
            extra = bench.get("extra_info", {})
            backend = str(extra.get("backend", ""))
            record: dict[str, Any] = {
                "v": SCHEMA_VERSION,
                "cell": str(extra.get("cell") or cell_dir.name),
                "backend": str(extra.get("backend", "")),
                "role": str(extra.get("role", "")),
                "precision": str(extra.get("precision", "")),
                "accuracy": _number(extra.get("accuracy")),
                "p50_ms": _number(extra.get("p50_ms")),
                "p90_ms": _number(extra.get("p90_ms")),
                "p99_ms": _number(extra.get("p99_ms")),
                "speedup_vs_reference": _number(extra.get("speedup_vs_reference")),
                "backend_version": str(extra.get("backend_version", "")),
                "commit": commit if commit is not None else info.get("id"),
                "dirty": bool(info.get("dirty", False)),
                "timestamp": stamp,
                "measured_at": doc.get("datetime"),
                "machine": _machine(machine_info),
                "host": str(machine_info.get("node", "")),
                "metric": str(extra.get("metric", "accuracy")),
                "metric_direction": "lower" if extra.get("metric_direction") == "lower" else "higher",
            }
            if record["role"] == "candidate":
                if gates:
                    record["gates"] = gates
                ours = verdicts.get("" if backend == primary else backend)
                if ours:
                    record["verdicts"] = ours
                if baselines_dir is not None:
                    device = str(
                        extra.get("device")
                        or machine_info.get("cpu_model")
                        or (machine_info.get("cpu") or {}).get("brand_raw")
                        or ""
                    )
                    base = _baseline(Path(baselines_dir), record["cell"], backend, primary, record["precision"], device)
                    if base is not None:
                        record["baseline"] = base
            records.append(record)
    return records


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (a separate file: the store itself is replaced, new inode)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_records(history_path: str | os.PathLike[str], records: list[dict[str, Any]]) -> int:
    """Append ``records`` to the store atomically; return how many were appended."""
    path = Path(history_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = b"".join(json.dumps(r, sort_keys=True, allow_nan=False).encode() + b"\n" for r in records)
    with _locked(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            n = old.count(b"\n") + 1
            raise EdgeMatrixError(
                f"{path}:{n}: the last line is truncated (no newline at the end); appending after it would "
                "corrupt the store. Look at that line, then remove it (or complete it) and append again"
            )
        if records:
            atomic_write_bytes(path, old + lines)
    return len(records)


def append_run(
    history_path: str | os.PathLike[str],
    results_dir: str | os.PathLike[str],
    *,
    commit: str | None = None,
    timestamp: str | None = None,
    baselines_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Append one record per (cell, backend, role) of ``results_dir`` to ``history_path``.

    ``commit`` defaults to each benchmark's ``commit_info.id``; ``timestamp`` (ISO 8601) to now,
    in UTC; ``baselines_dir`` (e.g. ``matrix/baselines``) adds each candidate's reviewed baseline.
    Returns the number of records appended.
    """
    if timestamp is not None:
        try:
            datetime.fromisoformat(timestamp)
        except ValueError:
            raise EdgeMatrixError(f"timestamp {timestamp!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00+00:00)") from None
    records = records_from_results(results_dir, commit=commit, timestamp=timestamp, baselines_dir=baselines_dir)
    return append_records(history_path, records)


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of the store, in order.

    A truncated last line (an interrupted writer of another tool) is skipped with a
    :class:`TruncatedHistoryWarning`; a corrupt line anywhere else raises :class:`EdgeMatrixError`
    naming ``file:line``. Blank lines are ignored.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgeMatrixError(
            f"history file {str(path)!r} does not exist; `edgematrix report --history FILE` creates it"
        ) from None
    except OSError as exc:
        raise EdgeMatrixError(f"cannot read history file {str(path)!r}: {exc}") from None
    raw_lines = data.split(b"\n")
    complete = data.endswith(b"\n") or not data
    if complete:
        raw_lines = raw_lines[:-1]  # the empty string after the final newline
    records = []
    last = len(raw_lines)
    for lineno, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            problem = "" if isinstance(record, dict) else f"expected a JSON object, found {type(record).__name__}"
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            record, problem = None, f"not valid JSON ({exc})"
        if not problem:
            missing = [k for k in REQUIRED_KEYS if k not in record]
            problem = f"missing {', '.join(missing)}" if missing else ""
        if problem:
            if lineno == last and not complete:
                warnings.warn(
                    f"{path}:{lineno}: the last line is truncated ({len(raw)} bytes, no newline) and was skipped",
                    TruncatedHistoryWarning,
                    stacklevel=2,
                )
                continue
            raise EdgeMatrixError(
                f"{path}:{lineno}: corrupt history record: {problem}. The store is append-only; restore the "
                "file from version control or remove that line"
            )
        records.append(record)
    return records

"""Reviewed baselines, one JSON file per cell and backend under ``matrix/baselines/``.

A file holds one record per device it was measured on (``{"records": [...]}``): CI machines of one
class may come with different CPUs, and a board is another device again. A record is keyed by its
toolchain: backend and version, precision, the CPU/device model, the
device's power mode where known, and the *environment key* of the run that recorded it
(:func:`edgematrix.core.toolchain.current_environment`: Python major.minor, architecture and the
exact version of every installed numeric package, which the lock ``matrix/constraints.txt`` fixes).
A run on another toolchain is not compared with it (the gate names every difference);
pytest-benchmark's ``machine_id`` is not used because it does not tell an arm64 board from an x86
host reliably.

Accuracy does not depend on the device: ``accuracy_vs_baseline`` uses a record of the same
backend, precision and environment recorded on any device (this device's when there is one), while
``latency_vs_baseline`` needs a record of this very device and power mode (:func:`pick_baselines`).

Where a run happened is not part of the key: a local run and a container run (``--runner docker
[--offline-base]``) with the lock's packages share ``<cell>.json``; ``image`` only records where the
baseline was measured (``local`` or the image tag), and ``libc`` the C library, for the reader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgematrix.core.toolchain import ENVIRONMENT_FACTS, current_environment, libc
from edgematrix.errors import EdgeMatrixError
from edgematrix.fileio import atomic_write_text

__all__ = [
    "Baseline",
    "baseline_key",
    "baseline_path",
    "compare_toolchains",
    "current_environment",
    "environment_toolchain",
    "libc",
    "load_baselines",
    "pick_baselines",
    "write_baseline",
]

ABSENT = "absent"

#: what to do when the environment differs from a baseline's
LOCK_HINT = (
    "the lock matrix/constraints.txt installs the baselines' toolchain: run the cell through `nox -s <cell>`; "
    "a new toolchain needs `nox -s lock` and `nox -s update_baselines` in one reviewed PR (README)"
)


def environment_toolchain(environment: Mapping[str, str]) -> dict[str, str]:
    """The toolchain entries of an environment key: ``python``, ``arch``, then one per package.

    A package that only one side has installed shows as ``absent`` on the other side when compared
    (:func:`compare_toolchains`); an empty key (a baseline recorded before keys existed) is
    ``environment: (not recorded)``.
    """
    if not environment:
        return {"environment": "(not recorded)"}
    facts = {k: environment[k] for k in ENVIRONMENT_FACTS if k in environment}
    packages = {f"package {k}": v for k, v in sorted(environment.items()) if k not in ENVIRONMENT_FACTS}
    return {**facts, **packages}


def compare_toolchains(theirs: Mapping[str, str], ours: Mapping[str, str]) -> list[str]:
    """The keys on which two toolchains differ (a key missing on one side counts as ``absent``)."""
    keys = list(dict.fromkeys([*theirs, *ours]))
    return [k for k in keys if theirs.get(k, ABSENT) != ours.get(k, ABSENT)]


@dataclass(frozen=True)
class Baseline:
    cell: str
    precision: str
    backend: str
    backend_version: str
    accuracy: float
    reference_accuracy: float
    p50_ratio: float  # candidate p50 / reference p50, same run
    candidate_p50_ms: float
    reference_p50_ms: float
    artifact_sha256: str
    cpu: str
    created: str
    image: str = "local"  # where it was measured: "local" or the container image's tag (not keyed)
    power_mode: str = ""  # e.g. nvpmodel MAXN on Jetson; "" where not applicable or unknown
    ratio_samples: list[float] = field(default_factory=list)  # per-round candidate/reference, same run
    environment: dict[str, str] = field(default_factory=dict)  # the environment key (core/toolchain.py)
    libc: str = ""  # the C library of the recording run, e.g. "glibc 2.36" (informational, not keyed)

    def toolchain(self) -> dict[str, str]:
        """What must match for a latency comparison (the accuracy comparison drops the device entries)."""
        return {
            "backend": self.backend,
            "backend version": self.backend_version,
            "precision": self.precision,
            "device": self.cpu,
            "power mode": self.power_mode,
            **environment_toolchain(self.environment),
        }


#: toolchain entries of the device itself: latency depends on them, accuracy does not
DEVICE_KEYS = ("device", "power mode")


def accuracy_toolchain(toolchain: Mapping[str, str]) -> dict[str, str]:
    """A toolchain without its device entries: what must match for an accuracy comparison."""
    return {k: v for k, v in toolchain.items() if k not in DEVICE_KEYS}


@dataclass(frozen=True)
class BaselineChoice:
    """The records of a cell's baseline file that gate this run, and why others do not."""

    accuracy: Baseline | None  # same backend, precision and environment; this device's when there is one
    latency: Baseline | None  # the record of this very toolchain and device
    differences: list[str]  # toolchain keys on which the closest record differs (when accuracy is None)
    closest: Baseline | None
    devices: list[str]  # devices the file has records of


def pick_baselines(records: Sequence[Baseline], toolchain: Mapping[str, str]) -> BaselineChoice:
    """Choose the records that gate a run of ``toolchain`` (``RunFigures.toolchain()``)."""
    ours_acc = accuracy_toolchain(toolchain)
    latency = next((b for b in records if not compare_toolchains(b.toolchain(), toolchain)), None)
    same_env = [b for b in records if not compare_toolchains(accuracy_toolchain(b.toolchain()), ours_acc)]
    accuracy = latency or (same_env[0] if same_env else None)
    closest = min(records, key=lambda b: len(compare_toolchains(b.toolchain(), toolchain)), default=None)
    differences = compare_toolchains(closest.toolchain(), toolchain) if closest is not None else []
    return BaselineChoice(accuracy, latency, differences, closest, sorted({b.cpu for b in records}))


def baseline_key(cell: str, backend: str, primary: str) -> str:
    """File stem of a cell's baseline for one backend: ``<cell>`` for the primary, ``<cell>.<backend>``."""
    return cell if backend == primary else f"{cell}.{backend}"


def baseline_path(baselines_dir: Path, key: str) -> Path:
    return baselines_dir / f"{key}.json"


def _record(data: object) -> Baseline:
    if not isinstance(data, dict):
        raise TypeError(f"a record must be an object, got {type(data).__name__}")
    known = {f.name for f in fields(Baseline)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"unknown field(s) {unknown}")
    env = data.get("environment", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise TypeError(f"environment must map names to version strings, got {env!r}")
    return Baseline(**data)


def load_baselines(baselines_dir: Path, key: str) -> list[Baseline]:
    """Every record of a cell's baseline file (``[]`` when there is none)."""
    path = baseline_path(baselines_dir, key)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("records"), list) or set(data) != {"records"}:
            raise KeyError('the file must be {"records": [one object per device]}')
        return [_record(r) for r in data["records"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise EdgeMatrixError(
            f"baseline {path} is malformed ({type(e).__name__}: {e}); regenerate it with "
            f"`nox -s {key.split('.')[0]} -- --update-baseline` and review the diff"
        ) from None


def write_baseline(baselines_dir: Path, baseline: Baseline, key: str | None = None) -> Path:
    """Record ``baseline`` in its file: it replaces the record of the same device and power mode (whatever
    environment that one had: a new lock supersedes it), and the records of other devices stay."""
    key = key or baseline.cell
    path = baseline_path(baselines_dir, key)
    same = (baseline.backend, baseline.precision, baseline.cpu, baseline.power_mode)
    records = [b for b in load_baselines(baselines_dir, key) if (b.backend, b.precision, b.cpu, b.power_mode) != same]
    records = sorted([*records, baseline], key=lambda b: (b.cpu, b.power_mode, b.created))
    doc = {"records": [asdict(b) for b in records]}
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path

"""Reviewed baselines, one JSON file per cell and backend under ``matrix/baselines/``.

A baseline is keyed by its toolchain: backend and version, precision, the CPU/device model, the
container image (digest, or ``local``) and the device's power mode where known. A run on another
toolchain is not compared with it (the gate says so); pytest-benchmark's ``machine_id`` is not used
because it does not tell an arm64 board from an x86 host reliably.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgematrix.errors import EdgeMatrixError
from edgematrix.fileio import atomic_write_text


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
    image: str = "local"  # container image digest the cell ran in, or "local"
    power_mode: str = ""  # e.g. nvpmodel MAXN on Jetson; "" where not applicable or unknown
    ratio_samples: list[float] = field(default_factory=list)  # per-round candidate/reference, same run

    def toolchain(self) -> dict[str, str]:
        """What must match for a comparison."""
        return {
            "backend": self.backend,
            "backend version": self.backend_version,
            "precision": self.precision,
            "device": self.cpu,
            "image": self.image,
            "power mode": self.power_mode,
        }


def baseline_key(cell: str, backend: str, primary: str) -> str:
    """File stem of a cell's baseline for one backend: ``<cell>`` for the primary, ``<cell>.<backend>``."""
    return cell if backend == primary else f"{cell}.{backend}"


def baseline_path(baselines_dir: Path, key: str) -> Path:
    return baselines_dir / f"{key}.json"


def load_baseline(baselines_dir: Path, key: str) -> Baseline | None:
    path = baseline_path(baselines_dir, key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(Baseline)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KeyError(f"unknown field(s) {unknown}")
        return Baseline(**data)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EdgeMatrixError(
            f"baseline {path} is malformed ({type(e).__name__}: {e}); regenerate it with "
            f"`nox -s {key.split('.')[0]} -- --update-baseline` and review the diff"
        ) from None


def write_baseline(baselines_dir: Path, baseline: Baseline, key: str | None = None) -> Path:
    path = baseline_path(baselines_dir, key or baseline.cell)
    atomic_write_text(path, json.dumps(asdict(baseline), indent=2, sort_keys=True) + "\n")
    return path

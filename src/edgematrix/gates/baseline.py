"""Reviewed baselines, one JSON file per cell under ``matrix/baselines/``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edgematrix.errors import EdgeMatrixError


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

    def toolchain(self) -> tuple[str, str, str]:
        """What must match for a comparison: backend, its version, and the CPU/device model."""
        return (self.backend, self.backend_version, self.cpu)


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
        return Baseline(**{k: data[k] for k in Baseline.__dataclass_fields__})
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EdgeMatrixError(
            f"baseline {path} is malformed ({type(e).__name__}: {e}); regenerate it with "
            f"`nox -s {key.split('.')[0]} -- --update-baseline` and review the diff"
        ) from None


def write_baseline(baselines_dir: Path, baseline: Baseline, key: str | None = None) -> Path:
    path = baseline_path(baselines_dir, key or baseline.cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(baseline), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path

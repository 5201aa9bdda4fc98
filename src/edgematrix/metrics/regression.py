"""Regression metrics: mean squared and mean absolute error (steering angle, depth ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgematrix.errors import EdgeMatrixError


@dataclass(frozen=True)
class RegressionScore:
    mse: float
    mae: float
    count: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mse": self.mse, "mae": self.mae, "count": self.count}


def _arrays(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if p.size != t.size:
        raise EdgeMatrixError(f"{p.size} predictions for {t.size} targets; pass one prediction per target")
    if p.size == 0:
        raise EdgeMatrixError("no predictions to score")
    bad = [name for name, a in (("predictions", p), ("targets", t)) if not np.all(np.isfinite(a))]
    if bad:
        raise EdgeMatrixError(f"non-finite values (NaN/inf) in the {' and '.join(bad)}; the model or data is broken")
    return p, t


def mse(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> float:
    """Mean squared error."""
    p, t = _arrays(pred, target)
    return float(np.mean(np.square(p - t)))


def mae(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> float:
    """Mean absolute error."""
    p, t = _arrays(pred, target)
    return float(np.mean(np.abs(p - t)))


def score(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray) -> RegressionScore:
    """MSE and MAE together (predictions flattened: ``(N, 1)`` model outputs are fine)."""
    p, t = _arrays(pred, target)
    d = p - t
    return RegressionScore(float(np.mean(np.square(d))), float(np.mean(np.abs(d))), int(p.size))

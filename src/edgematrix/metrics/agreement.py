"""Agreement of a model's outputs with a reference's (the FP32 model), per output: the metric of a model
without labels (the ``outputs`` task).

Per output, over the samples (sample i of the candidate against sample i of the reference, both flattened):

- ``cosine``: the mean over samples of the cosine similarity (1 = same direction; two all-zero samples
  agree: 1, one all-zero: 0); ``cosine_min`` the worst sample's;
- ``snr_db``: ``10·log10(Σ ref² / Σ (cand − ref)²)`` over every element of every sample, capped at
  :data:`SNR_CAP_DB` (identical outputs);
- ``max_abs``: ``max |cand − ref|``; ``max_rel``: ``max_abs / max |ref|`` (relative to the output's range,
  as :mod:`edgematrix.core.compare` measures it: robust to elements near zero).

A non-finite candidate element makes that sample's cosine 0 and the output's SNR :data:`-SNR_CAP_DB`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgematrix.errors import EdgeMatrixError

#: the SNR of identical outputs (an infinite ratio, reported as this many dB)
SNR_CAP_DB = 200.0


@dataclass(frozen=True)
class OutputAgreement:
    name: str
    cosine: float
    cosine_min: float
    snr_db: float
    max_abs: float
    max_rel: float
    per_sample_cosine: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "cosine": self.cosine, "cosine_min": self.cosine_min, "snr_db": self.snr_db, "max_abs": self.max_abs,
            "max_rel": self.max_rel, "per_sample_cosine": list(self.per_sample_cosine),
        }  # fmt: skip


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    if not np.isfinite(c).all():
        return 0.0
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if nr == 0.0 and nc == 0.0:
        return 1.0
    if nr == 0.0 or nc == 0.0:
        return 0.0
    return float(np.clip(np.dot(r, c) / (nr * nc), -1.0, 1.0))


def output_agreement(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    names: Sequence[str] | None = None,
) -> list[OutputAgreement]:
    """Agreement of ``candidate``'s outputs with ``reference``'s for each of ``names`` (default: every output
    of the reference), over the first ``len(candidate)`` samples (the reference must have as many)."""
    n = len(candidate)
    if n == 0:
        raise EdgeMatrixError("no outputs to compare: the candidate produced none")
    if len(reference) < n:
        raise EdgeMatrixError(f"{n} candidate samples but only {len(reference)} reference samples to compare with")
    names = list(names or reference[0])
    out = []
    for name in names:
        cosines, signal, noise, worst, scale, finite = [], 0.0, 0.0, 0.0, 0.0, True
        for i in range(n):
            if name not in reference[i] or name not in candidate[i]:
                side = "reference" if name not in reference[i] else "candidate"
                raise EdgeMatrixError(f"output {name!r} is missing in sample {i} of the {side}")
            r = np.asarray(reference[i][name], np.float64).reshape(-1)
            c = np.asarray(candidate[i][name], np.float64).reshape(-1)
            if r.shape != c.shape:
                raise EdgeMatrixError(
                    f"output {name!r} of sample {i} has {c.size} elements, the reference's {r.size}: not the same model"
                )
            cosines.append(_cosine(r, c))
            if not np.isfinite(c).all():
                finite = False
                continue
            d = c - r
            signal += float(np.dot(r, r))
            noise += float(np.dot(d, d))
            if r.size:
                worst = max(worst, float(np.abs(d).max()))
                scale = max(scale, float(np.abs(r).max()))
        if not finite:
            snr, worst = -SNR_CAP_DB, math.inf
        elif noise == 0.0:
            snr = SNR_CAP_DB
        elif signal == 0.0:
            snr = -SNR_CAP_DB
        else:
            snr = float(np.clip(10.0 * math.log10(signal / noise), -SNR_CAP_DB, SNR_CAP_DB))
        rel = worst / scale if scale > 0 else (0.0 if worst == 0 else math.inf)
        out.append(OutputAgreement(name, float(np.mean(cosines)), float(min(cosines)), snr, worst, rel, tuple(cosines)))
    return out

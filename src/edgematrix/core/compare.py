"""Compare the outputs of two runs of a model: per output, over samples, with per-output tolerances.

In the spirit of Polygraphy's ``Comparator.compare_accuracy``: the result is structured (one
:class:`OutputDiff` per output, each with its own tolerance and verdict) rather than one number, so a
gate names the output that disagreed. The relative error of an output is
``max |candidate - reference| / max |reference|`` over every element of every sample (a range-relative
error: robust to outputs near zero, where an element-wise relative error explodes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgematrix.errors import EdgeMatrixError

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float  # max |cand - ref| / max |ref|
    tolerance: float  # on max_rel

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[OutputDiff, ...]
    samples: int

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def worst(self) -> OutputDiff | None:
        return max(self.outputs, key=lambda o: o.max_rel / o.tolerance if o.tolerance else math.inf, default=None)

    def summary(self) -> str:
        parts = [
            f"{o.name} {o.max_rel:.2e} (tolerance {o.tolerance:g}{'' if o.passed else ', FAILED'})"
            for o in self.outputs
        ]
        return f"max relative difference over {self.samples} sample(s): " + ", ".join(parts)


def compare_outputs(
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
    *,
    names: Sequence[str] | None = None,
    tolerance: float | Mapping[str, float] = 1e-3,
) -> Comparison:
    """Compare per-sample outputs (sample i at index i in both; the shorter sequence sets the count).

    ``names``: the outputs to compare (default: every output of the first reference sample);
    ``tolerance``: on the relative error, one for all outputs or per output name.
    """
    n = min(len(reference), len(candidate))
    if n == 0:
        raise EdgeMatrixError("no samples to compare: one of the runs produced no outputs")
    names = list(names or reference[0])
    out = []
    for name in names:
        worst_abs, scale = 0.0, 0.0
        for i in range(n):
            if name not in reference[i] or name not in candidate[i]:
                raise EdgeMatrixError(
                    f"output {name!r} missing in sample {i} of the {'reference' if name not in reference[i] else 'candidate'}"
                )
            r = np.asarray(reference[i][name], np.float64)
            c = np.asarray(candidate[i][name], np.float64)
            if r.shape != c.shape:
                raise EdgeMatrixError(f"output {name!r} of sample {i}: shape {c.shape} vs the reference's {r.shape}")
            if r.size:
                worst_abs = max(worst_abs, float(np.abs(c - r).max()))
                scale = max(scale, float(np.abs(r).max()))
        rel = worst_abs / scale if scale > 0 else (0.0 if worst_abs == 0 else math.inf)
        tol = tolerance if isinstance(tolerance, int | float) else float(tolerance.get(name, 1e-3))
        out.append(OutputDiff(name, worst_abs, rel, float(tol)))
    return Comparison(tuple(out), n)

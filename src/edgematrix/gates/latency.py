"""Statistical latency gate: is a candidate's latency really different from a base's, and by enough?

Input is per-round samples in seconds (pytest-benchmark's ``stats.data``). Latency on a shared CI
runner is noisy and skewed (long right tail from preemption), so the gate works on medians and
ranks, never on means:

* ``ratio`` — median(candidate) / median(base); the effect size.
* ``ci_low``..``ci_high`` — a percentile bootstrap confidence interval of that ratio. Base and
  candidate are resampled independently (they may come from different runs), ``n_boot`` times,
  vectorised and seeded, so the same samples always give the same verdict.
* ``p_value`` — two-sided Mann–Whitney U test of candidate vs base (``scipy.stats.mannwhitneyu``).

The decision rule (``m`` = ``min_effect``, ``alpha`` = 1 − ``confidence``)::

    significant  = the CI excludes 1  and  p_value < alpha
    regression   = significant and ci_low > 1  and  ratio > 1 + m
    improvement  = significant and ci_high < 1 and  ratio < 1 − m
    within noise = anything else

A verdict needs *both* a statistically significant change (the whole interval on one side of 1,
confirmed by the rank test, so one skewed median alone cannot raise an alarm) *and* a point
estimate beyond the minimum effect. Significance alone is not enough: two ONNX Runtime sessions of
the *same* 1 ms model measured interleaved differed by a significant 1.5-2% here (p < 1e-3), a
systematic offset no bootstrap can remove; the minimum effect absorbs it.

The stricter alternative — the whole interval beyond ``1 + m`` — holds the false-alarm rate at
``alpha/2`` even for a true change of exactly ``m`` (this rule flags such a change about half the
time), but its power collapses once noise widens the interval: on synthetic lognormal samples
(sigma 0.1, 60 rounds, interval about +-4.7%, 40 seeds) it flagged a true 10% slowdown 17/40
times, this rule 38/40, with a true 3% change flagged 3/40 and identical distributions 0/40. A
gate that misses half of the 10% regressions on a noisy runner does not hold; one that flags
changes near ``m`` about half the time is what a minimum effect means. Measured with real runs
(``benchmarks/gate_power.py``: A/A, injected +10% and +3% slowdowns), both rules agreed here
because the intervals were +-0.5-1%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgematrix.errors import EdgeMatrixError

MIN_SAMPLES = 5
#: bootstrap resamples are drawn in blocks of at most this many values, to bound memory
_BLOCK_VALUES = 4_000_000

Status = Literal["regression", "improvement", "within noise"]


@dataclass(frozen=True)
class LatencyVerdict:
    """The latency gate's verdict on one candidate vs its base."""

    status: Status
    ratio: float  # median(candidate) / median(base)
    ci_low: float  # bootstrap confidence interval of the median ratio
    ci_high: float
    p_value: float  # two-sided Mann-Whitney U
    min_effect: float
    confidence: float
    message: str

    @property
    def failed(self) -> bool:
        """A latency gate fails on a regression only."""
        return self.status == "regression"

    @property
    def significant(self) -> bool:
        return _significant(self.ci_low, self.ci_high, self.p_value, self.confidence)


def _significant(ci_low: float, ci_high: float, p_value: float, confidence: float) -> bool:
    return (ci_low > 1.0 or ci_high < 1.0) and p_value < 1.0 - confidence


def _samples(values: Sequence[float] | np.ndarray, which: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise EdgeMatrixError(
            f"{which} latency samples must be numbers (seconds per round); got {type(values).__name__}"
        ) from None
    if arr.ndim != 1:
        raise EdgeMatrixError(f"{which} latency samples must be a flat list of seconds; got shape {arr.shape}")
    if arr.size < MIN_SAMPLES:
        raise EdgeMatrixError(
            f"{which} has {arr.size} latency sample(s); the latency gate needs at least {MIN_SAMPLES} "
            "per-round samples: measure more rounds (min_rounds)"
        )
    bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
    if bad.size:
        i = int(bad[0])
        raise EdgeMatrixError(
            f"{which} latency sample [{i}] is {float(arr[i])!r}: samples must be finite, positive seconds "
            f"({bad.size} bad of {arr.size})"
        )
    return arr


def _check_params(min_effect: float, confidence: float, n_boot: int) -> None:
    if not (isinstance(min_effect, int | float) and math.isfinite(min_effect) and 0 <= min_effect < 1):
        raise EdgeMatrixError(f"min_effect must be a fraction in [0, 1) (0.05 = 5%); got {min_effect!r}")
    if not (isinstance(confidence, int | float) and 0.5 <= confidence < 1):
        raise EdgeMatrixError(f"confidence must be in [0.5, 1) (e.g. 0.95); got {confidence!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise EdgeMatrixError(f"n_boot must be an integer >= 100; got {n_boot!r}")


def _bootstrap_medians(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``n_boot`` resamples (with replacement) of ``x``, in blocks of bounded size."""
    out = np.empty(n_boot)
    block = max(1, _BLOCK_VALUES // x.size)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = np.median(x[idx], axis=1)
    return out


def _pct(ratio: float) -> str:
    return f"{(ratio - 1.0) * 100:+.1f}%"


def _message(status: Status, ratio: float, lo: float, hi: float, p: float, m: float, confidence: float) -> str:
    direction = "slower" if ratio >= 1 else "faster"
    head = f"{_pct(ratio)} {direction} ({confidence:.0%} CI {_pct(lo)}..{_pct(hi)}, p={p:.2g})"
    effect = f"{m * 100:g}% minimum effect"
    if status != "within noise":
        return f"{head}: {status} beyond the {effect}"
    if _significant(lo, hi, p, confidence):
        return f"{head}: within noise, significant but not beyond the {effect}"
    return f"{head}: within noise, not significant at {confidence:.0%}"


def compare_latency(
    base_s: Sequence[float] | np.ndarray,
    cand_s: Sequence[float] | np.ndarray,
    *,
    min_effect: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> LatencyVerdict:
    """Compare per-round latency samples (seconds) of a candidate with its base.

    Returns a :class:`LatencyVerdict` (rule in the module docstring). Raises
    :class:`EdgeMatrixError` for fewer than 5 samples, non-finite or non-positive samples, or
    parameters out of range.
    """
    base = _samples(base_s, "base")
    cand = _samples(cand_s, "candidate")
    _check_params(min_effect, confidence, n_boot)
    return _compare_latency_impl(base, cand, float(min_effect), float(confidence), n_boot, seed)


def _compare_latency_impl(
    base: np.ndarray, cand: np.ndarray, min_effect: float, confidence: float, n_boot: int, seed: int
) -> LatencyVerdict:
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        raise EdgeMatrixError("the latency gate needs scipy (Mann-Whitney U test): pip install scipy") from None

    ratio = float(np.median(cand) / np.median(base))
    rng = np.random.default_rng(seed)
    boot = _bootstrap_medians(cand, n_boot, rng) / _bootstrap_medians(base, n_boot, rng)
    tail = (1.0 - confidence) / 2.0
    lo, hi = (float(v) for v in np.quantile(boot, [tail, 1.0 - tail]))
    if np.ptp(np.concatenate([base, cand])) == 0.0:
        p_value = 1.0  # all samples equal: no evidence of any difference (the U test is undefined)
    else:
        p_value = float(mannwhitneyu(cand, base, alternative="two-sided").pvalue)

    significant = _significant(lo, hi, p_value, confidence)
    status: Status = "within noise"
    if significant and lo > 1.0 and ratio > 1.0 + min_effect:
        status = "regression"
    elif significant and hi < 1.0 and ratio < 1.0 - min_effect:
        status = "improvement"
    return LatencyVerdict(
        status=status,
        ratio=ratio,
        ci_low=lo,
        ci_high=hi,
        p_value=p_value,
        min_effect=min_effect,
        confidence=confidence,
        message=_message(status, ratio, lo, hi, p_value, min_effect, confidence),
    )

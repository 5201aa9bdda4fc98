"""The statistical latency gate on synthetic samples with known effects (seeded lognormal noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.latency import LatencyVerdict, compare_latency

BASE_S = 3e-3  # 3 ms per round
SIGMA = 0.05  # lognormal noise: ~5% spread per round, a long right tail like a busy runner
ROUNDS = 60


def samples(seed: int, scale: float = 1.0, n: int = ROUNDS, sigma: float = SIGMA) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return BASE_S * scale * np.exp(rng.normal(0.0, sigma, n))


def test_ten_percent_slowdown_is_a_regression() -> None:
    v = compare_latency(samples(1), samples(2, 1.10))
    assert isinstance(v, LatencyVerdict)
    assert v.status == "regression" and v.failed
    assert v.ratio == pytest.approx(float(np.median(samples(2, 1.10)) / np.median(samples(1))))
    assert 1.0 < v.ci_low < v.ratio < v.ci_high
    assert v.p_value < 1e-6
    assert (v.min_effect, v.confidence) == (0.05, 0.95)
    assert v.message.startswith(f"{(v.ratio - 1) * 100:+.1f}% slower (95% CI +")
    assert v.message.endswith("regression beyond the 5% minimum effect")
    assert "\n" not in v.message


def test_ten_percent_speedup_is_an_improvement() -> None:
    v = compare_latency(samples(1), samples(2, 0.90))
    assert v.status == "improvement" and not v.failed
    assert v.ci_low < v.ratio < v.ci_high < 1.0
    assert "faster" in v.message and "improvement beyond the 5% minimum effect" in v.message


def test_identical_distributions_are_within_noise() -> None:
    v = compare_latency(samples(1), samples(2))
    assert v.status == "within noise" and not v.failed
    assert v.ci_low < 1.0 < v.ci_high
    assert v.p_value > 0.05
    assert "not significant at 95%" in v.message


def test_three_percent_is_significant_but_within_noise() -> None:
    v = compare_latency(samples(1), samples(2, 1.03), min_effect=0.05)
    assert v.status == "within noise"
    assert v.significant and v.ci_low > 1.0
    assert "significant but not beyond the 5% minimum effect" in v.message
    # the same change is a regression when the minimum effect is below it
    assert compare_latency(samples(1), samples(2, 1.03), min_effect=0.01).status == "regression"


@pytest.mark.parametrize(
    ("scale", "expected", "at_least"),
    [(1.10, "regression", 19), (1.00, "within noise", 19), (1.03, "within noise", 19), (0.90, "improvement", 19)],
)
def test_rates_over_seeds(scale: float, expected: str, at_least: int) -> None:
    """Over 20 seeded pairs the verdict is the expected one in at least 19 (noise sigma 0.05)."""
    verdicts = [compare_latency(samples(2 * s), samples(2 * s + 1, scale), n_boot=500).status for s in range(20)]
    assert sum(v == expected for v in verdicts) >= at_least, verdicts


def test_outliers_do_not_make_a_regression() -> None:
    """A few preempted rounds (10x slower) in the candidate move neither median nor verdict."""
    cand = samples(2).copy()
    cand[::12] *= 10.0  # 5 of 60 rounds
    v = compare_latency(samples(1), cand)
    assert v.status == "within noise"
    assert v.ratio < 1.05


def test_seeded_and_deterministic() -> None:
    a, b = samples(1), samples(2, 1.04)
    assert compare_latency(a, b, seed=7) == compare_latency(a, b, seed=7)
    assert compare_latency(list(a), list(b)) == compare_latency(a, b)  # lists and arrays alike


def test_ci_narrows_with_confidence() -> None:
    a, b = samples(1), samples(2, 1.04)
    wide, narrow = compare_latency(a, b, confidence=0.99), compare_latency(a, b, confidence=0.80)
    assert wide.ci_low < narrow.ci_low and narrow.ci_high < wide.ci_high
    assert "99% CI" in wide.message


def test_identical_constant_samples() -> None:
    v = compare_latency([0.002] * 10, [0.002] * 10)
    assert (v.status, v.ratio, v.ci_low, v.ci_high, v.p_value) == ("within noise", 1.0, 1.0, 1.0, 1.0)


def test_large_inputs_use_bounded_blocks() -> None:
    v = compare_latency(samples(1, n=5000), samples(2, 1.10, n=5000), n_boot=1000)
    assert v.status == "regression"
    assert v.ci_high - v.ci_low < 0.02  # 5000 rounds: a tight interval


@pytest.mark.parametrize(
    ("base", "cand", "needle"),
    [
        ([1e-3] * 4, [1e-3] * 10, "base has 4 latency sample(s); the latency gate needs at least 5"),
        ([1e-3] * 10, [], "candidate has 0 latency sample(s)"),
        ([1e-3] * 9 + [math.nan], [1e-3] * 10, "base latency sample [9] is nan"),
        ([1e-3] * 10, [1e-3] * 9 + [math.inf], "candidate latency sample [9] is inf"),
        ([1e-3] * 10, [1e-3, 0.0] * 5, "candidate latency sample [1] is 0.0: samples must be finite, positive"),
        ([-1e-3] * 10, [1e-3] * 10, "base latency sample [0] is -0.001"),
        ([[1e-3] * 5] * 2, [1e-3] * 10, "flat list"),
        (["fast"] * 5, [1e-3] * 10, "must be numbers"),
    ],
)
def test_rejects_bad_samples(base: list, cand: list, needle: str) -> None:
    with pytest.raises(EdgeMatrixError) as exc:
        compare_latency(base, cand)
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"min_effect": -0.1}, "min_effect must be a fraction in [0, 1)"),
        ({"min_effect": 5}, "min_effect must be a fraction in [0, 1)"),
        ({"min_effect": math.nan}, "min_effect"),
        ({"confidence": 95}, "confidence must be in [0.5, 1)"),
        ({"confidence": 1.0}, "confidence must be in [0.5, 1)"),
        ({"n_boot": 10}, "n_boot must be an integer >= 100"),
        ({"n_boot": 1000.0}, "n_boot must be an integer >= 100"),
    ],
)
def test_rejects_bad_parameters(kwargs: dict, needle: str) -> None:
    with pytest.raises(EdgeMatrixError) as exc:
        compare_latency(samples(1), samples(2), **kwargs)
    assert needle in str(exc.value)

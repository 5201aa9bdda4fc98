"""The statistical latency gate on synthetic samples with known effects (seeded lognormal noise).

The family-wise promise (a change below the minimum effect stays "within noise" however many
benchmarks a comparison holds) and the busy-machine verdict are tested here; the same rule on real
measured rounds is ``benchmarks/gate_power.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.latency import (
    BUSY_PREFIX,
    LatencyVerdict,
    compare_latency,
    latency_difference,
    select_fastest,
)

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
    assert v.message.endswith("regression, the whole interval beyond the 5% minimum effect")
    assert v.ci_low > 1.05 and v.level == 0.95 and v.comparisons == 1 and v.busy == ()
    assert "\n" not in v.message


def test_ten_percent_speedup_is_an_improvement() -> None:
    v = compare_latency(samples(1), samples(2, 0.90))
    assert v.status == "improvement" and not v.failed
    assert v.ci_low < v.ratio < v.ci_high < 1.0
    assert "faster" in v.message and "improvement, the whole interval beyond the 5% minimum effect" in v.message


def test_identical_distributions_are_within_noise() -> None:
    v = compare_latency(samples(1), samples(2))
    assert v.status == "within noise" and not v.failed
    assert v.ci_low < 1.0 < v.ci_high
    assert v.p_value > 0.05
    assert "not significant at 95%" in v.message


def test_three_percent_is_significant_but_within_noise() -> None:
    base, cand = samples(1, n=300), samples(2, 1.03, n=300)
    v = compare_latency(base, cand, min_effect=0.05)
    assert v.status == "within noise"
    assert v.significant and v.ci_low > 1.0 and v.ci_high < 1.05
    assert "significant but inside the 5% minimum effect" in v.message
    # the same change is a regression when the minimum effect is below the whole interval
    assert compare_latency(base, cand, min_effect=0.01).status == "regression"


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
        ({"comparisons": 0}, "comparisons must be an integer >= 1"),
        ({"comparisons": True}, "comparisons must be an integer >= 1"),
        ({"comparisons": 2.0}, "comparisons must be an integer >= 1"),
        ({"busy": "machine busy"}, "busy must be a list of reasons"),
        ({"busy": [3]}, "busy must be a list of reasons"),
    ],
)
def test_rejects_bad_parameters(kwargs: dict, needle: str) -> None:
    with pytest.raises(EdgeMatrixError) as exc:
        compare_latency(samples(1), samples(2), **kwargs)
    assert needle in str(exc.value)


# -- family-wise: the promise per comparison ---------------------------------------------------


def family(seed: int, scales: list[float], sigma: float, n: int = 50) -> list[tuple[np.ndarray, np.ndarray]]:
    """One comparison: base and candidate rounds of len(scales) benchmarks, candidate i slowed by scales[i]."""
    rng = np.random.default_rng(seed)
    return [
        (BASE_S * np.exp(rng.normal(0.0, sigma, n)), BASE_S * scale * np.exp(rng.normal(0.0, sigma, n)))
        for scale in scales
    ]


def test_a_change_below_the_min_effect_stays_within_noise_however_many_benchmarks() -> None:
    """Five benchmarks all 4% slower (below 5%), noisy rounds (sigma 0.08): the point-estimate rule
    flags most comparisons, the family-wise interval rule none (its bound: alpha/2 = 2.5%)."""
    k, families = 5, 20
    new = old = 0
    for seed in range(families):
        verdicts = [compare_latency(b, c, comparisons=k) for b, c in family(seed, [1.04] * k, sigma=0.08)]
        new += any(v.failed for v in verdicts)
        single = [compare_latency(b, c) for b, c in family(seed, [1.04] * k, sigma=0.08)]
        old += any(v.significant and v.ratio > 1.05 for v in single)  # the previous rule, per benchmark
    assert new == 0
    assert old >= 8, "the previous rule should show the defect the family-wise rule removes"


def test_a_ten_percent_slowdown_of_one_benchmark_of_five_is_caught() -> None:
    """One benchmark of five 10% slower, rounds as noisy as a quiet cell here (IQR ~4%: sigma 0.03)."""
    caught = 0
    for seed in range(20):
        scales = [1.0] * 5
        scales[seed % 5] = 1.10
        verdicts = [compare_latency(b, c, comparisons=5) for b, c in family(100 + seed, scales, sigma=0.03)]
        caught += [v.failed for v in verdicts] == [s > 1 for s in scales]
    assert caught >= 19


def test_comparisons_widen_the_interval_and_are_named() -> None:
    a, b = samples(1), samples(2, 1.07)
    one, five = compare_latency(a, b), compare_latency(a, b, comparisons=5)
    assert five.level == pytest.approx(0.99) and one.level == pytest.approx(0.95)
    assert five.ci_low < one.ci_low and one.ci_high < five.ci_high
    assert five.ratio == one.ratio and five.p_value == one.p_value
    assert "(99% CI" in five.message and "5 comparisons)" in five.message
    assert "97.5% CI" in compare_latency(a, b, comparisons=2).message


def test_an_interval_that_spans_the_min_effect_is_within_noise_and_says_so() -> None:
    a, b = samples(1, n=12, sigma=0.10), samples(2, 1.08, n=12, sigma=0.10)
    v = compare_latency(a, b)
    assert v.ci_low < 1.05 < v.ci_high
    assert v.status == "within noise" and not v.failed
    assert "not shown beyond the 5% minimum effect (the interval spans it; more rounds would tell)" in v.message


# -- a busy machine ----------------------------------------------------------------------------


def test_busy_machine_is_inconclusive_not_a_regression() -> None:
    reasons = ("candidate: other processes' CPU 61% (limit 3%)",)
    v = compare_latency(samples(1), samples(2, 1.30), busy=reasons)
    assert v.status == "inconclusive" and v.inconclusive and not v.failed
    assert v.busy == reasons
    assert v.ratio == pytest.approx(float(np.median(samples(2, 1.30)) / np.median(samples(1))))
    assert v.message.startswith(f"{BUSY_PREFIX} — re-measure (candidate: other processes' CPU 61% (limit 3%))")
    assert "measured +" in v.message and "slower (95% CI" in v.message
    # a quiet machine, the same samples: a regression
    assert compare_latency(samples(1), samples(2, 1.30)).status == "regression"
    # and a false pass is not given either
    assert compare_latency(samples(1), samples(2), busy=reasons).status == "inconclusive"


def test_bootstrap_resamples_grow_with_the_family() -> None:
    from edgematrix.gates import latency

    assert latency._resamples(500, 0.95) == 2000  # 50 resamples in each 2.5% tail
    assert latency._resamples(2000, 0.99) == 10000  # ... and in each 0.5% tail
    assert latency._resamples(20000, 0.99) == 20000


# -- choosing among candidates measured in the same rounds ------------------------------------


def paired(seed: int, speeds: dict[str, float], drift: float = 0.5, sigma: float = 0.02, n: int = 60) -> dict:
    """Rounds of several candidates measured together: a strong common drift per round, small own noise."""
    rng = np.random.default_rng(seed)
    common = BASE_S * np.exp(rng.normal(0.0, drift, n))
    return {name: common * speed * np.exp(rng.normal(0.0, sigma, n)) for name, speed in speeds.items()}


def test_latency_difference_uses_the_pairing_of_rounds() -> None:
    s = paired(1, {"openvino": 0.85, "onnxruntime": 1.0})
    d = latency_difference("openvino", s["openvino"], "onnxruntime", s["onnxruntime"])
    assert d.decidable and d.faster == "openvino"
    assert d.ratio == pytest.approx(float(np.median(s["openvino"] / s["onnxruntime"])))
    assert d.ci_high < 0.95 and d.level == 0.95
    assert d.message.endswith("openvino faster beyond the 5% minimum effect")
    # unpaired, the same medians are not separable: the common drift (sigma 0.5) swamps 15%
    assert compare_latency(s["onnxruntime"], s["openvino"]).status == "within noise"
    reverse = latency_difference("onnxruntime", s["onnxruntime"], "openvino", s["openvino"])
    assert reverse.faster == "openvino" and reverse.ci_low > 1 / 0.95


def test_latency_difference_below_the_min_effect_is_not_decidable() -> None:
    s = paired(2, {"openvino": 0.98, "onnxruntime": 1.0})
    d = latency_difference("openvino", s["openvino"], "onnxruntime", s["onnxruntime"])
    assert not d.decidable and d.faster is None
    assert d.message.endswith("not decidably different beyond the 5% minimum effect")
    assert latency_difference("openvino", s["openvino"], "onnxruntime", s["onnxruntime"], min_effect=0.0).decidable


def test_latency_difference_on_a_busy_machine_is_not_decidable() -> None:
    s = paired(1, {"openvino": 0.70, "onnxruntime": 1.0})
    d = latency_difference(
        "openvino", s["openvino"], "onnxruntime", s["onnxruntime"], busy=["CPU steal 12% (limit 3%)"]
    )
    assert not d.decidable and d.busy == ("CPU steal 12% (limit 3%)",)
    assert f"not decided, {BUSY_PREFIX} — re-measure (CPU steal 12% (limit 3%))" in d.message


def test_latency_difference_needs_the_same_rounds() -> None:
    with pytest.raises(EdgeMatrixError, match="openvino has 60 rounds and onnxruntime 59: a paired comparison"):
        latency_difference("openvino", samples(1), "onnxruntime", samples(2)[:59])


def test_select_fastest_decides_keeps_the_preferred_or_abstains() -> None:
    clear = paired(3, {"onnxruntime": 1.0, "openvino": 0.80})
    sel = select_fastest(clear, preferred=["onnxruntime"])
    assert (sel.selected, sel.status) == ("openvino", "decided")
    assert sel.message.startswith("openvino selected over onnxruntime: openvino/onnxruntime per-round ratio 0.8")
    (decision,) = sel.decisions
    assert decision.faster == "openvino"

    close = paired(4, {"onnxruntime": 1.0, "openvino": 0.98})  # the faster by p50, but not beyond 5%
    assert float(np.median(close["openvino"])) < float(np.median(close["onnxruntime"]))
    kept = select_fastest(close, preferred=["onnxruntime"])
    assert (kept.selected, kept.status) == ("onnxruntime", "kept preferred")
    assert "onnxruntime kept: no other backend decidably faster" in kept.message

    busy = select_fastest(clear, preferred=["onnxruntime"], busy=["other runnable tasks per CPU 1.05 (limit 0.50)"])
    assert (busy.selected, busy.status, busy.decisions) == ("", "machine busy", ())
    assert (
        busy.message
        == f"no backend selected: {BUSY_PREFIX} — re-measure (other runnable tasks per CPU 1.05 (limit 0.50))"
    )

    only = select_fastest({"openvino": clear["openvino"]}, preferred=["onnxruntime"])
    assert (only.selected, only.status) == ("openvino", "only one")


def test_select_fastest_among_three_is_family_wise_and_picks_the_fastest_winner() -> None:
    s = paired(5, {"onnxruntime": 1.0, "openvino": 0.80, "tensorrt": 0.60})
    sel = select_fastest(s, preferred=["onnxruntime", "openvino"])
    assert sel.selected == "tensorrt" and sel.status == "decided"
    assert [d.a for d in sel.decisions] == ["openvino", "tensorrt"]
    assert all(d.level == pytest.approx(0.975) for d in sel.decisions)
    # without a preference the first candidate is the default
    assert select_fastest(s).selected == "tensorrt"
    with pytest.raises(EdgeMatrixError, match="at least one candidate"):
        select_fastest({})

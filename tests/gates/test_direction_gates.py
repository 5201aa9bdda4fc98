"""Accuracy gates of a lower-is-better metric (a steering MSE): the budgets are how much it may rise, in its
own units; the floor of a higher-is-better metric does not apply; messages name the metric and direction.
Both the cell gates (evaluate_gates) and `edgematrix gate compare`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.gates.baseline import Baseline
from edgematrix.gates.compare import compare_benchmark_files
from edgematrix.gates.verdicts import RunFigures, evaluate_gates, metric_loss, metric_text
from edgematrix.matrix.schema import Gates

GATES = Gates(accuracy_drop_vs_reference=1e-4, accuracy_drop_vs_baseline=5e-5, min_accuracy=85.0)


def _figs(mse: float, precision: str = "int8") -> RunFigures:
    return RunFigures(mse, 0.3, "onnxruntime", "1.31.1", "test cpu", precision, metric="MSE", direction="lower")


def _by_gate(verdicts):
    return {v.gate: v for v in verdicts}


def _baseline(mse: float, cpu: str = "test cpu") -> Baseline:
    return Baseline(
        cell="x86_cpu_pilotnet_static_int8", precision="int8", backend="onnxruntime", backend_version="1.31.1",
        accuracy=mse, reference_accuracy=3.38e-4, p50_ratio=0.7, candidate_p50_ms=0.3, reference_p50_ms=0.43,
        artifact_sha256="0" * 64, cpu=cpu, created="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def test_loss_and_text_follow_the_direction() -> None:
    assert metric_loss(95.0, 94.6, "higher") == pytest.approx(0.4)  # points lost
    assert metric_loss(3.38e-4, 3.5e-4, "lower") == pytest.approx(1.2e-5)  # MSE risen
    assert metric_loss(3.38e-4, 3.0e-4, "lower") < 0  # an MSE that fell is better, not a loss
    assert (metric_text(89.1234), metric_text(3.3812e-4, "lower")) == ("89.12", "0.0003381")
    with pytest.raises(ValueError, match="sideways"):
        metric_loss(1.0, 1.0, "sideways")
    with pytest.raises(ValueError, match="neither of higher, lower"):
        RunFigures(1.0, 1.0, "b", "v", "d", direction="up")


def test_an_mse_that_rises_within_the_budget_passes() -> None:
    v = _by_gate(
        evaluate_gates(GATES, _figs(3.38e-4, "fp32"), _figs(3.9e-4), None, same_artifact=False, baseline_hint="h")
    )
    ref = v["accuracy_vs_reference"]
    assert ref.status == "passed"
    assert ref.message == (
        "candidate MSE 0.00039 vs reference 0.000338: change +5.2e-05 (MSE is lower-is-better: it may rise by at "
        "most 0.0001)"
    )
    # the floor of a higher-is-better metric: an MSE of 0.00039 is not "below 85 points"
    assert v["min_accuracy"].status == "not applicable"
    assert "MSE is lower-is-better: min_accuracy (configured 85) is a floor" in v["min_accuracy"].message


def test_an_mse_that_rises_beyond_the_budget_fails_and_one_that_falls_passes() -> None:
    v = _by_gate(
        evaluate_gates(GATES, _figs(3.38e-4, "fp32"), _figs(4.5e-4), None, same_artifact=False, baseline_hint="h")
    )
    assert v["accuracy_vs_reference"].failed and "change +0.000112" in v["accuracy_vs_reference"].message
    # read as higher-is-better (the old gate), the same figures would have passed: a "gain" of 0.000112 points
    old = RunFigures(4.5e-4, 0.3, "onnxruntime", "1.31.1", "test cpu", "int8")
    ref_old = RunFigures(3.38e-4, 0.3, "onnxruntime", "1.31.1", "test cpu", "fp32")
    assert not _by_gate(evaluate_gates(GATES, ref_old, old, None, same_artifact=False, baseline_hint="h"))[
        "accuracy_vs_reference"
    ].failed
    better = _by_gate(
        evaluate_gates(GATES, _figs(3.38e-4, "fp32"), _figs(2.0e-4), None, same_artifact=False, baseline_hint="h")
    )
    assert (
        better["accuracy_vs_reference"].status == "passed"
        and "change -0.000138" in better["accuracy_vs_reference"].message
    )


def test_the_baseline_gate_is_in_the_metric_units_too() -> None:
    ok = _by_gate(evaluate_gates(GATES, _figs(3.38e-4, "fp32"), _figs(3.4e-4), _baseline(3.0e-4, "other cpu"),
                                 same_artifact=False, baseline_hint="h"))  # fmt: skip
    acc = ok["accuracy_vs_baseline"]
    assert acc.status == "passed"
    assert acc.message == (
        "candidate MSE 0.00034 vs baseline 0.0003 (recorded on other cpu): change +4e-05 (MSE is lower-is-better: "
        "it may rise by at most 5e-05)"
    )
    worse = _by_gate(evaluate_gates(GATES, _figs(3.38e-4, "fp32"), _figs(3.6e-4), _baseline(3.0e-4),
                                    same_artifact=False, baseline_hint="h"))  # fmt: skip
    assert worse["accuracy_vs_baseline"].failed


def test_reference_and_candidate_of_different_metrics_are_refused() -> None:
    lane = RunFigures(95.0, 80.0, "onnxruntime", "1.31.1", "test cpu", "fp32")
    with pytest.raises(ValueError, match="different metrics"):
        evaluate_gates(GATES, lane, _figs(3.4e-4), None, same_artifact=False, baseline_hint="h")


def _write(path: Path, mse: float, seed: int, direction: str = "lower") -> Path:
    rng = np.random.default_rng(seed)
    samples = [float(x) for x in 3e-4 * np.exp(rng.normal(0.0, 0.05, 60))]
    info = {"role": "candidate", "precision": "int8", "backend": "onnxruntime", "backend_version": "1.31.1",
            "accuracy": mse, "metric": "MSE", "metric_direction": direction}  # fmt: skip
    write_benchmark_json(path, [BenchmarkEntry("x86_cpu_pilotnet_static_int8[candidate]", "g", samples, info)])
    return path


def test_gate_compare_holds_an_mse_to_its_rise(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.json", 3.4e-4, 1)
    within = compare_benchmark_files(base, _write(tmp_path / "a.json", 3.45e-4, 2), accuracy_budget=1e-4)
    (row,) = within.rows
    assert row.accuracy_status == "passed" and "MSE 0.000345 vs base 0.00034: +5e-06" in row.accuracy_message
    assert "MSE is lower-is-better: it may rise by at most 0.0001" in row.accuracy_message
    risen = compare_benchmark_files(base, _write(tmp_path / "b.json", 5.0e-4, 3), accuracy_budget=1e-4)
    assert risen.failed and risen.rows[0].accuracy_status == "failed"
    assert risen.rows[0].accuracy_message.startswith("MSE rose by 0.00016, more than the budget of 0.0001")
    fell = compare_benchmark_files(base, _write(tmp_path / "c.json", 1.0e-4, 4), accuracy_budget=1e-4)
    assert not fell.failed  # a lower MSE is better
    other = compare_benchmark_files(base, _write(tmp_path / "d.json", 90.0, 5, "higher"), accuracy_budget=1e-4)
    assert other.rows[0].accuracy_status == "not applicable" and "different metrics" in other.rows[0].accuracy_message

"""Accuracy and latency gates on hand-made figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.baseline import Baseline, load_baselines, write_baseline
from edgematrix.gates.verdicts import RunFigures, evaluate_gates
from edgematrix.matrix.schema import Gates

REF = RunFigures(
    accuracy=95.0, p50_ms=80.0, backend="onnxruntime", backend_version="1.31.1", device="test cpu", precision="fp32"
)


def _baseline(**kw) -> Baseline:
    base = dict(
        cell="x86_cpu_int8",
        precision="int8",
        backend="onnxruntime",
        backend_version="1.31.1",
        accuracy=94.8,
        reference_accuracy=95.0,
        p50_ratio=0.30,
        candidate_p50_ms=24.0,
        reference_p50_ms=80.0,
        artifact_sha256="0" * 64,
        cpu="test cpu",
        created="2026-01-01T00:00:00+00:00",
    )
    return Baseline(**{**base, **kw})


def _by_gate(verdicts):
    return {v.gate: v for v in verdicts}


def test_all_pass_within_budgets() -> None:
    cand = RunFigures(94.6, 25.0, "onnxruntime", "1.31.1", "test cpu", "int8")
    v = _by_gate(evaluate_gates(Gates(min_accuracy=85), REF, cand, _baseline(), same_artifact=False, baseline_hint="h"))
    assert [x.status for x in v.values()] == ["passed"] * 4
    assert "drop +0.40 points (budget 0.50)" in v["accuracy_vs_reference"].message
    # ratio 25/80 = 0.3125 <= 0.30 * 1.1 = 0.33
    assert "0.312 vs baseline 0.300 (limit 0.330" in v["latency_vs_baseline"].message


def test_accuracy_drop_beyond_budget_fails() -> None:
    cand = RunFigures(94.4, 25.0, "onnxruntime", "1.31.1", "test cpu", "int8")
    v = _by_gate(evaluate_gates(Gates(), REF, cand, _baseline(), same_artifact=False, baseline_hint="h"))
    assert v["accuracy_vs_reference"].failed  # 0.6 > 0.5
    assert not v["accuracy_vs_baseline"].failed  # 94.8 - 94.4 = 0.4


def test_latency_ratio_regression_fails() -> None:
    cand = RunFigures(95.0, 27.0, "onnxruntime", "1.31.1", "test cpu", "int8")  # 0.3375 > 0.33
    v = _by_gate(evaluate_gates(Gates(), REF, cand, _baseline(), same_artifact=False, baseline_hint="h"))
    assert v["latency_vs_baseline"].failed
    assert "speedup 2.96x vs baseline 3.33x" in v["latency_vs_baseline"].message


def test_min_accuracy_floor() -> None:
    cand = RunFigures(84.0, 25.0, "onnxruntime", "1.31.1", "test cpu", "int8")
    v = _by_gate(
        evaluate_gates(
            Gates(min_accuracy=85, accuracy_drop_vs_reference=20),
            REF,
            cand,
            None,
            same_artifact=False,
            baseline_hint="h",
        )
    )
    assert v["min_accuracy"].failed


def test_no_baseline_and_other_toolchain_are_not_applicable_with_reason() -> None:
    cand = RunFigures(94.9, 25.0, "onnxruntime", "1.31.1", "test cpu", "int8")
    v = _by_gate(evaluate_gates(Gates(), REF, cand, None, same_artifact=False, baseline_hint="run X"))
    assert v["accuracy_vs_baseline"].status == "not applicable" and "run X" in v["accuracy_vs_baseline"].message
    v = _by_gate(
        evaluate_gates(Gates(), REF, cand, _baseline(backend_version="1.20.0"), same_artifact=False, baseline_hint="h")
    )
    assert v["latency_vs_baseline"].status == "not applicable"
    assert "backend version: baseline '1.20.0', this run '1.31.1'" in v["latency_vs_baseline"].message
    assert "refused" in v["latency_vs_baseline"].message


def test_accuracy_is_compared_across_devices_latency_only_on_its_own() -> None:
    cand = RunFigures(94.9, 25.0, "onnxruntime", "1.31.1", "test cpu", "int8")
    v = _by_gate(evaluate_gates(Gates(), REF, cand, _baseline(cpu="other cpu"), same_artifact=False, baseline_hint="h"))
    assert v["accuracy_vs_baseline"].status == "passed"
    assert "(recorded on other cpu)" in v["accuracy_vs_baseline"].message
    assert v["latency_vs_baseline"].status == "not applicable"
    assert (
        "no latency baseline of this device ('test cpu'); recorded on: 'other cpu'" in v["latency_vs_baseline"].message
    )
    # with a record of this device too, latency is compared with that one
    records = [_baseline(cpu="other cpu", p50_ratio=0.9), _baseline(p50_ratio=0.31)]
    v = _by_gate(evaluate_gates(Gates(), REF, cand, records, same_artifact=False, baseline_hint="h"))
    assert v["latency_vs_baseline"].status == "passed" and "baseline 0.310" in v["latency_vs_baseline"].message
    assert "recorded on" not in v["accuracy_vs_baseline"].message


def test_a_record_per_device_in_one_file(tmp_path: Path) -> None:
    write_baseline(tmp_path, _baseline(cpu="AMD EPYC", accuracy=94.0))
    write_baseline(tmp_path, _baseline(cpu="Intel Xeon", accuracy=94.5))
    write_baseline(tmp_path, _baseline(cpu="AMD EPYC", accuracy=94.2))  # replaces the AMD record
    records = load_baselines(tmp_path, "x86_cpu_int8")
    assert [(b.cpu, b.accuracy) for b in records] == [("AMD EPYC", 94.2), ("Intel Xeon", 94.5)]


def test_reference_only_cell_has_no_ratio_gate() -> None:
    v = _by_gate(
        evaluate_gates(
            Gates(), REF, REF, _baseline(accuracy=95.0, precision="fp32"), same_artifact=True, baseline_hint="h"
        )
    )
    assert v["accuracy_vs_reference"].status == "not applicable"
    assert v["latency_vs_baseline"].status == "not applicable"
    assert v["accuracy_vs_baseline"].status == "passed"


def test_baseline_round_trip_and_malformed(tmp_path: Path) -> None:
    b = _baseline()
    write_baseline(tmp_path, b)
    assert load_baselines(tmp_path, "x86_cpu_int8") == [b]
    assert load_baselines(tmp_path, "absent") == []
    (tmp_path / "bad.json").write_text('{"records": [{"cell": "bad"}]}')
    with pytest.raises(EdgeMatrixError, match=r"baseline .*bad\.json is malformed .*--update-baseline"):
        load_baselines(tmp_path, "bad")
    (tmp_path / "old.json").write_text('{"cell": "x86_cpu_int8"}')
    with pytest.raises(EdgeMatrixError, match=r"must be \{\"records\""):
        load_baselines(tmp_path, "old")


def _ratio_baseline() -> Baseline:
    rng = np.random.default_rng(7)
    return _baseline(ratio_samples=[float(x) for x in 0.30 * np.exp(rng.normal(0.0, 0.03, 60))])


def _cand_ratios(scale: float, *, busy: tuple[str, ...] = ()) -> RunFigures:
    rng = np.random.default_rng(8)
    ratios = tuple(float(x) for x in 0.30 * scale * np.exp(rng.normal(0.0, 0.03, 60)))
    return RunFigures(94.8, 25.0, "onnxruntime", "1.31.1", "test cpu", "int8", ratio_samples=ratios, busy=busy)


def test_latency_gate_on_per_round_ratios_is_family_wise() -> None:
    slow = _by_gate(
        evaluate_gates(Gates(), REF, _cand_ratios(1.12), _ratio_baseline(), same_artifact=False, baseline_hint="h")
    )["latency_vs_baseline"]
    assert slow.failed and "regression, the whole interval beyond the 5% minimum effect" in slow.message
    two = _by_gate(
        evaluate_gates(
            Gates(), REF, _cand_ratios(1.12), _ratio_baseline(), same_artifact=False, baseline_hint="h", comparisons=2
        )
    )["latency_vs_baseline"]
    assert "97.5% CI" in two.message and "2 comparisons" in two.message
    ok = _by_gate(
        evaluate_gates(Gates(), REF, _cand_ratios(1.03), _ratio_baseline(), same_artifact=False, baseline_hint="h")
    )["latency_vs_baseline"]
    assert ok.status == "passed" and "within noise" in ok.message


def test_busy_run_makes_the_latency_gate_inconclusive() -> None:
    """+30% measured beside CPU-bound processes is neither a regression nor a pass."""
    reasons = ("other processes' CPU 58% (limit 3%)",)
    v = _by_gate(
        evaluate_gates(
            Gates(), REF, _cand_ratios(1.30, busy=reasons), _ratio_baseline(), same_artifact=False, baseline_hint="h"
        )
    )
    lat = v["latency_vs_baseline"]
    assert lat.status == "inconclusive" and not lat.failed
    assert lat.message.startswith(
        "candidate/reference ratio vs baseline's: not comparable: machine busy — re-measure "
        "(other processes' CPU 58% (limit 3%)); measured +"
    )
    assert v["accuracy_vs_baseline"].status == "passed"  # accuracy does not depend on the machine's load
    # without per-round ratios (an old baseline) a busy run is inconclusive too
    plain = RunFigures(94.8, 27.0, "onnxruntime", "1.31.1", "test cpu", "int8", busy=reasons)
    lat = _by_gate(evaluate_gates(Gates(), REF, plain, _baseline(), same_artifact=False, baseline_hint="h"))[
        "latency_vs_baseline"
    ]
    assert lat.status == "inconclusive"
    assert lat.message.startswith("not comparable: machine busy — re-measure (other processes' CPU 58% (limit 3%))")

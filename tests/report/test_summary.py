"""The markdown summary: rows per cell and backend, deltas vs a base run, verdict marks, alerts, PR comment."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import Verdict
from edgematrix.report.junit import write_junit
from edgematrix.report.merge import GateResult
from edgematrix.report.summary import (
    COMMENT_MARKER,
    MAX_COMMENT_CHARS,
    Summary,
    SummaryRow,
    build_summary,
    render_comment,
    render_summary,
    write_summary,
)


def write_cell(
    root: Path,
    cell: str,
    verdicts: list[Verdict],
    *,
    backends: tuple[str, ...] = ("onnxruntime",),
    cand_ms: float = 10.0,
    ref_ms: float = 30.0,
    accuracy: float = 90.0,
    seed: int = 0,
    rounds: int = 60,
) -> None:
    """A results/<cell>/ as a cell run writes it: benchmark.json (reference + candidate per backend) + junit.xml."""
    rng = np.random.default_rng(seed)
    entries = []
    for i, backend in enumerate(backends):
        for role, ms, acc in (("reference", ref_ms, accuracy + 0.5), ("candidate", cand_ms, accuracy)):
            samples = ms * 1e-3 * rng.lognormal(0.0, 0.03, rounds)
            extra: dict[str, float | int | str] = {
                "role": role,
                "backend": backend,
                "precision": "fp32" if role == "reference" else "int8",
                "accuracy": acc,
                "speedup_vs_reference": round(ref_ms / ms, 4),
                "selected_backend": backends[-1],
                "cell": cell,
            }
            for q in (50, 90, 99):
                extra[f"p{q}_ms"] = float(np.percentile(samples, q) * 1e3)
            name = f"{cell}[{role if i == 0 else f'{role}@{backend}'}]"
            entries.append(BenchmarkEntry(name, cell, samples.tolist(), extra))
    write_benchmark_json(root / cell / "benchmark.json", entries)
    write_junit(root / cell / "junit.xml", cell, verdicts, {"runner": "local"})


INT8_GATES = [
    Verdict("accuracy_vs_reference", "passed", "drop +0.50 points (budget 1.00)"),
    Verdict("min_accuracy", "passed", "candidate 90.00 (floor 85.00)"),
    Verdict("accuracy_vs_reference[openvino]", "failed", "drop +2.00 points | budget 1.00"),
    Verdict("min_accuracy[openvino]", "passed", "candidate 88.50 (floor 85.00)"),
]
FP32_GATES = [
    Verdict("accuracy_vs_reference", "not applicable", "the candidate is the FP32 reference itself"),
    Verdict("accuracy_vs_baseline", "not applicable", "no baseline yet"),
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    write_cell(root, "x86_cpu_int8", INT8_GATES, backends=("onnxruntime", "openvino"), accuracy=90.0)
    write_cell(root, "x86_cpu_fp32", FP32_GATES, cand_ms=30.0, accuracy=91.25, seed=1)
    return root


def _row(text: str, cell: str, backend: str) -> list[str]:
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) > 2 and cols[0] == cell and backend in cols[1]:
            return cols
    raise AssertionError(f"no row {cell}/{backend} in:\n{text}")


def test_rows_marks_and_alerts(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    paths = write_summary(results, tmp_path / "out")
    assert set(paths) == {"summary", "pr_comment"}
    text = paths["summary"].read_text(encoding="utf-8")

    summary = build_summary(results)
    assert [(r.cell, r.backend) for r in summary.rows] == [
        ("x86_cpu_fp32", "onnxruntime"),
        ("x86_cpu_int8", "onnxruntime"),
        ("x86_cpu_int8", "openvino"),
    ]
    ort, ov = summary.rows[1], summary.rows[2]
    assert ort.accuracy == 90.0 and ort.precision == "int8"
    assert ort.p50 == pytest.approx(10.0, rel=0.03) and ort.p99 is not None and ort.p99 > ort.p90 > ort.p50
    assert ort.speedup == 3.0 and ov.selected and not ort.selected
    assert [g.gate for g in ov.gates] == ["accuracy_vs_reference[openvino]", "min_accuracy[openvino]"]

    fp32 = _row(text, "x86_cpu_fp32", "onnxruntime")
    assert fp32[3] == "91.25" and fp32[4] == "—" and fp32[-1] == "➖"  # only n/a gates
    assert fp32[5] == f"{summary.rows[0].p50:.2f}"
    int8_ort = _row(text, "x86_cpu_int8", "onnxruntime")
    assert int8_ort[3] == "90.00" and int8_ort[-1] == "✅" and int8_ort[11] == "3.00×"
    int8_ov = _row(text, "x86_cpu_int8", "openvino")
    assert int8_ov[1] == "**openvino** (selected)" and int8_ov[-1] == "❌ 1 failed"

    assert text.startswith("## edgematrix: ❌ 1 gate failed in 1 of 2 cells")
    assert "6 gates: 3 passed, 1 failed, 0 inconclusive, 2 not applicable" in text
    alerts = text.split("### Regression alerts")[1].split("###")[0]
    assert alerts.strip().splitlines() == [
        "- ❌ **x86_cpu_int8** accuracy_vs_reference\\[openvino\\]: drop +2.00 points \\| budget 1.00"
    ]

    comment = paths["pr_comment"].read_text(encoding="utf-8")
    assert comment.startswith(COMMENT_MARKER + "\n")
    assert comment[len(COMMENT_MARKER) + 1 :] == text


def test_all_passed_has_no_alerts(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_cell(root, "x86_cpu_int8", INT8_GATES[:2])
    text = render_summary(build_summary(root))
    assert text.startswith("## edgematrix: ✅ all gates passed")
    assert "### Regression alerts\n\nNone: no gate failed." in text


class _FakeVerdict(types.SimpleNamespace):
    pass


def test_base_deltas_use_compare_latency(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The latency CI comes from edgematrix.gates.latency.compare_latency(base_s, cand_s)."""
    calls: list[tuple[list[float], list[float]]] = []

    def compare_latency(base_s, cand_s, **kw):  # type: ignore[no-untyped-def]
        calls.append((list(base_s), list(cand_s)))
        ratio = float(np.median(cand_s) / np.median(base_s))
        status = "regression" if ratio > 1.05 else "within noise"
        return _FakeVerdict(
            status=status, ratio=ratio, ci_low=ratio - 0.02, ci_high=ratio + 0.02, p_value=0.001,
            min_effect=0.05, confidence=0.95, message=f"p50 {ratio - 1:+.1%} ({status})",
        )  # fmt: skip

    monkeypatch.setitem(sys.modules, "edgematrix.gates.latency", types.SimpleNamespace(compare_latency=compare_latency))
    base = tmp_path / "base"
    write_cell(base, "x86_cpu_int8", INT8_GATES, backends=("onnxruntime", "openvino"), cand_ms=8.0, accuracy=90.5)
    # x86_cpu_fp32 is not in the base: a new cell

    summary = build_summary(results, base_dir=base)
    assert len(calls) == 2  # one per backend of the cell the base has
    ort = next(r for r in summary.rows if r.cell == "x86_cpu_int8" and r.backend == "onnxruntime")
    assert ort.compared_with == "base"
    assert ort.d_accuracy == pytest.approx(-0.5)
    assert ort.d_p50 == pytest.approx(0.25, abs=0.03)  # 10 ms vs 8 ms
    assert ort.p50_ci == pytest.approx((ort.d_p50 - 0.02, ort.d_p50 + 0.02))
    assert ort.d_p90 is not None and ort.d_p99 is not None
    assert ort.latency_status == "regression"
    fp32 = next(r for r in summary.rows if r.cell == "x86_cpu_fp32")
    assert fp32.compared_with == "" and fp32.d_p50 is None
    assert any("x86_cpu_fp32: not in the base run" in n for n in summary.notes)

    text = render_summary(summary)
    row = _row(text, "x86_cpu_int8", "onnxruntime")
    assert row[4] == "-0.50"
    assert row[6].startswith("+2") and "(95% CI" in row[6] and row[6].endswith("⚠️")
    assert row[12] == "base"
    alerts = text.split("### Regression alerts")[1].split("###")[0]
    assert "**x86_cpu_int8** (onnxruntime) latency vs base: p50 +2" in alerts
    assert "**x86_cpu_int8** (openvino) latency vs base" in alerts
    assert "accuracy_vs_reference\\[openvino\\]:" in alerts


def test_real_compare_latency_flags_a_slowdown_only(tmp_path: Path) -> None:
    base, same, slow = tmp_path / "base", tmp_path / "same", tmp_path / "slow"
    write_cell(base, "c", INT8_GATES[:2], cand_ms=10.0, seed=3, rounds=80)
    write_cell(same, "c", INT8_GATES[:2], cand_ms=10.0, seed=4, rounds=80)
    write_cell(slow, "c", INT8_GATES[:2], cand_ms=13.0, seed=5, rounds=80)
    quiet = build_summary(same, base_dir=base)
    assert quiet.rows[0].p50_ci is not None and quiet.rows[0].latency_status != "regression"
    assert not quiet.alerts
    loud = build_summary(slow, base_dir=base)
    assert loud.rows[0].latency_status == "regression"
    lo, hi = loud.rows[0].p50_ci  # type: ignore[misc]
    assert 0.2 < lo < loud.rows[0].d_p50 < hi < 0.4  # type: ignore[operator]
    assert len(loud.alerts) == 1 and "latency vs base" in loud.alerts[0]


def test_without_latency_module_the_summary_still_renders(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "edgematrix.gates.latency", None)  # import fails: ModuleNotFoundError
    base = tmp_path / "base"
    write_cell(base, "x86_cpu_int8", INT8_GATES, backends=("onnxruntime", "openvino"), cand_ms=8.0)
    summary = build_summary(results, base_dir=base)
    ort = next(r for r in summary.rows if r.cell == "x86_cpu_int8" and r.backend == "onnxruntime")
    assert ort.d_p50 == pytest.approx(0.25, abs=0.03) and ort.p50_ci is None
    assert sum("edgematrix.gates.latency" in n for n in summary.notes) == 1


def test_step_summary_is_appended(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = tmp_path / "step_summary.md"
    step.write_text("# earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    paths = write_summary(results, tmp_path / "out")
    assert paths["step_summary"] == step
    summary = paths["summary"].read_text(encoding="utf-8")
    assert step.read_text(encoding="utf-8") == "# earlier step\n" + summary + "\n"
    write_summary(results, tmp_path / "out")
    assert step.read_text(encoding="utf-8").count("## edgematrix:") == 2


def test_comment_is_capped_politely() -> None:
    gates = [GateResult(f"cell_{i:04d}", "min_accuracy", "passed", "ok") for i in range(3000)]
    gates.append(GateResult("cell_0007", "latency_vs_baseline", "failed", "p50 ratio 0.41 vs 0.30"))
    rows = [
        SummaryRow(f"cell_{i:04d}", "onnxruntime", False, "int8", 90.0, 10.0, 11.0, 12.0, 3.0, gates[i : i + 1])
        for i in range(3000)
    ]
    summary = Summary(rows, gates, ["❌ **cell_0007** `latency_vs_baseline`: p50 ratio 0.41 vs 0.30"])
    full = render_summary(summary)
    assert len(full) > 3 * MAX_COMMENT_CHARS
    comment = render_comment(full)
    assert comment.startswith(COMMENT_MARKER + "\n")
    assert len(comment) < MAX_COMMENT_CHARS
    assert len(comment) > MAX_COMMENT_CHARS - 1000  # uses the room it has
    assert "`latency_vs_baseline`" in comment  # the alerts come before the long table
    assert comment.rstrip().endswith("artifact._")
    assert "more lines cut to fit GitHub's comment size limit" in comment
    body = comment.split("\n\n_…")[0]
    assert all(line.startswith("| cell_") for line in body.splitlines()[-5:])  # cut between whole rows
    short = render_comment("## ok\n")
    assert short == COMMENT_MARKER + "\n## ok\n"


def test_missing_base_folder(results: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match="base results folder"):
        write_summary(results, tmp_path / "out", base_dir=tmp_path / "nope")

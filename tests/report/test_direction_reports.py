"""Reports of a lower-is-better task metric (a steering MSE, `metric_direction = "lower"` in extra_info as
the pipeline writes it): Pareto fronts, the summary table, a cell's report.md, and the strategies table
built from the cells' results folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import Verdict
from edgematrix.report.junit import write_junit
from edgematrix.report.markdown import render_report
from edgematrix.report.pareto import collect
from edgematrix.report.strategies import INT8_SIZE_LIMIT, build_table, render_table, write_table
from edgematrix.report.summary import build_summary, render_summary

FP32_BYTES = 1_012_711


def steering_cell(
    root: Path,
    recipe: str,
    *,
    mse: float,
    cand_ms: float,
    ref_ms: float = 0.45,
    precision: str = "int8",
    size: int = 270_000,
    extra_roles: dict[str, tuple[float, float, str]] | None = None,
    failed: tuple[str, ...] = (),
    openvino_ms: tuple[float, float] | None = None,
) -> str:
    """results/x86_cpu_pilotnet_<recipe>/ as the pipeline writes it: benchmark.json + junit.xml."""
    cell = f"x86_cpu_pilotnet_{recipe}"
    rng = np.random.default_rng(len(recipe))
    same = recipe == "fp32"
    rows = [("reference", "fp32", 3.38e-4, ref_ms, FP32_BYTES, "fp32sha", "onnxruntime")]
    if not same:
        rows.append(("candidate", precision, mse, cand_ms, size, f"{recipe}sha", "onnxruntime"))
    for role, (m, ms, sha) in (extra_roles or {}).items():
        rows.append((role, "int8", m, ms, 270_000, sha, "onnxruntime"))
    if openvino_ms is not None:
        rows.append(("reference", "fp32", 3.38e-4, openvino_ms[0], FP32_BYTES, "fp32sha", "openvino"))
        rows.append(("candidate", precision, mse, openvino_ms[1], size, f"{recipe}sha", "openvino"))
    if same:  # a reference-only cell: its candidate is the reference itself
        rows.append(("candidate", "fp32", 3.38e-4, ref_ms, FP32_BYTES, "fp32sha", "onnxruntime"))
    entries = []
    for role, prec, m, ms, nbytes, sha, backend in rows:
        samples = (ms * 1e-3 * rng.lognormal(0.0, 0.02, 40)).tolist()
        extra: dict[str, float | int | str] = {
            "role": role, "recipe": recipe, "precision": prec, "backend": backend, "primary_backend": "onnxruntime",
            "accuracy": m, "metric": "MSE", "metric_direction": "lower", "mae": round(m**0.5 * 0.7, 6),
            "model_bytes": nbytes, "artifact_sha256": sha, "p50_ms": float(np.percentile(samples, 50) * 1e3),
            "speedup_vs_reference": round(ref_ms / ms, 4), "cell": cell, "target": "x86_cpu", "model": "pilotnet",
            "device": "test cpu",
        }  # fmt: skip
        if role == "candidate" and recipe == "prune_int8":
            extra.update({"prune_widths": "8/16/36/48/36/60/28/4/1", "speedup_vs_unpruned": 2.05})
        name = f"{cell}[{role}]" if backend == "onnxruntime" else f"{cell}[{role}@{backend}]"
        entries.append(BenchmarkEntry(name, cell, samples, extra))
    write_benchmark_json(root / cell / "benchmark.json", entries)
    verdicts = [Verdict("accuracy_vs_reference", "failed" if "accuracy_vs_reference" in failed else "passed", "m")]
    verdicts.append(Verdict("min_accuracy", "not applicable", "MSE is lower-is-better"))
    write_junit(root / cell / "junit.xml", cell, verdicts, {})
    return cell


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    steering_cell(root, "fp32", mse=3.38e-4, cand_ms=0.45, precision="fp32", size=FP32_BYTES)
    steering_cell(root, "static_int8", mse=3.37e-4, cand_ms=0.30, openvino_ms=(0.40, 0.20))
    steering_cell(root, "dynamic_int8", mse=3.39e-4, cand_ms=2.0, size=265_000)
    steering_cell(
        root, "prune_int8", mse=6.9e-4, cand_ms=0.19, size=92_000,
        extra_roles={"unpruned": (3.37e-4, 0.31, "static_int8sha")},
    )  # fmt: skip
    return root


def test_pareto_reads_the_pipelines_metric_and_direction(results: Path) -> None:
    group = collect(results)[("pilotnet", "x86_cpu")]
    assert (group.metric, group.direction) == ("MSE", "lower")
    points = {p.label: (p.metric, on) for p, on in zip(group.points, group.front, strict=True)}
    # the FP32 artifact (every cell's reference, the fp32 cell's candidate) is one point; the unpruned INT8
    # model of prune_int8 is static_int8's file: one point, labelled by the cell that deploys it
    assert sorted(points) == [
        "dynamic_int8", "fp32 reference", "fp32 reference @openvino", "prune_int8", "static_int8",
        "static_int8 @openvino",
    ]  # fmt: skip
    # lower MSE is better: static_int8 (0.000337) beats the FP32 reference (0.000338) on both axes
    assert {k: on for k, (_, on) in points.items()} == {
        "fp32 reference": False, "fp32 reference @openvino": False, "static_int8": False,
        "static_int8 @openvino": True, "dynamic_int8": False, "prune_int8": True,
    }  # fmt: skip


def test_a_step_role_with_its_own_model_is_a_labelled_point(tmp_path: Path) -> None:
    steering_cell(tmp_path, "qat_int8", mse=3.3e-4, cand_ms=0.31, extra_roles={"ptq": (3.4e-4, 0.30, "ptqsha")})
    labels = sorted(p.label for p in collect(tmp_path)[("pilotnet", "x86_cpu")].points)
    assert labels == ["fp32 reference", "qat_int8", "qat_int8 (ptq)"]


def test_summary_prints_an_mse_with_its_name_and_direction(results: Path) -> None:
    summary = build_summary(results)
    row = next(r for r in summary.rows if r.cell == "x86_cpu_pilotnet_static_int8" and r.backend == "onnxruntime")
    assert (row.metric, row.direction, row.accuracy) == ("MSE", "lower", 3.37e-4)
    text = render_summary(summary)
    line = next(x for x in text.splitlines() if x.startswith("| x86_cpu_pilotnet_static_int8 | onnxruntime"))
    assert "| 0.000337 (MSE, lower is better) |" in line  # not "0.00"
    assert "| task metric | Δ metric |" in text
    base = results.parent / "base"
    steering_cell(base, "static_int8", mse=3.0e-4, cand_ms=0.30)
    row = next(r for r in build_summary(results, base_dir=base).rows if r.cell == "x86_cpu_pilotnet_static_int8")
    assert row.d_accuracy == pytest.approx(3.7e-5)
    line = next(
        x
        for x in render_summary(build_summary(results, base_dir=base)).splitlines()
        if x.startswith("| x86_cpu_pilotnet_static_int8 | onnxruntime")
    )
    assert "| +3.7e-05 |" in line


def test_a_cells_report_prints_the_mse_to_four_digits() -> None:
    row = {"backend": "onnxruntime", "role": "candidate", "precision": "int8", "inference_precision": "int8",
           "accuracy": 3.381e-4, "metric": "MSE", "metric_direction": "lower", "extras": {"mae": 0.01254},
           "p50_ms": 0.3, "p90_ms": 0.4, "p99_ms": 0.5, "speedup": 1.5, "model_bytes": 270_000}  # fmt: skip
    text = render_report("c", "d", [row], [], {})
    assert "| MSE (lower is better) | mae |" in text and "| 0.0003381 | 0.0125 |" in text


def test_the_strategies_table_from_the_cells_results(results: Path, tmp_path: Path) -> None:
    cells = [f"x86_cpu_pilotnet_{r}" for r in ("fp32", "static_int8", "dynamic_int8", "prune_int8", "qat_int8")]
    table = build_table(results, cells, model="pilotnet", target="x86_cpu")
    assert (table.metric, table.direction) == ("MSE", "lower")
    assert [r.recipe for r in table.rows] == ["fp32", "static_int8", "dynamic_int8", "prune_int8"]
    assert table.missing == ["x86_cpu_pilotnet_qat_int8"]
    by = {r.recipe: r for r in table.rows}
    static = by["static_int8"]
    assert static.size_ratio == pytest.approx(270_000 / FP32_BYTES)
    assert static.speedup == pytest.approx(static.reference_p50_ms / static.p50_ms)
    assert static.speedup == pytest.approx(1.5, rel=0.05)
    assert static.other_speedups["openvino"] == pytest.approx(2.0, rel=0.05)
    assert by["prune_int8"].details == "widths 8/16/36/48/36/60/28/4/1; 2.05× vs unpruned"
    gates = {v.gate: v for v in table.verdicts}
    assert set(gates) == {"int8_size[static_int8]", "int8_size[dynamic_int8]", "int8_size[prune_int8]",
                          "every_cell_measured"}  # fmt: skip
    assert all(not gates[f"int8_size[{r}]"].failed for r in ("static_int8", "dynamic_int8", "prune_int8"))
    assert (
        gates["every_cell_measured"].failed
        and "missing: x86_cpu_pilotnet_qat_int8" in gates["every_cell_measured"].message
    )
    assert table.failed == ["every_cell_measured"]

    out = tmp_path / "pilotnet_strategies"
    paths = write_table(results, table, out)
    assert sorted(paths) == ["json", "junit", "pareto", "report"]
    report = paths["report"].read_text()
    assert "| static_int8 | int8 | 0.000337 | 0.01285 | 270 kB | 0.267× |" in report
    assert "| speedup vs FP32 | speedup on openvino (vs FP32 on openvino) | cell gates | details |" in report
    assert "![Pareto plot](pareto.png)" in report and "| recipe | MSE (lower is better) |" in report
    assert paths["pareto"].read_bytes()[:4] == b"\x89PNG"
    data = json.loads(paths["json"].read_text())
    assert data["metric_direction"] == "lower" and data["int8_size_limit"] == INT8_SIZE_LIMIT
    assert [r["recipe"] for r in data["rows"]] == ["fp32", "static_int8", "dynamic_int8", "prune_int8"]
    assert '<testcase name="every_cell_measured"' in paths["junit"].read_text()


def test_the_strategies_table_fails_on_a_large_int8_file_and_names_failed_cells(tmp_path: Path) -> None:
    root = tmp_path / "results"
    cells = [
        steering_cell(root, "fp32", mse=3.38e-4, cand_ms=0.45, precision="fp32", size=FP32_BYTES),
        steering_cell(root, "static_int8", mse=9e-4, cand_ms=0.3, size=400_000, failed=("accuracy_vs_reference",)),
    ]
    table = build_table(root, cells, model="pilotnet", target="x86_cpu")
    assert table.failed == ["int8_size[static_int8]", "x86_cpu_pilotnet_static_int8: accuracy_vs_reference"]
    text = render_table(table)
    assert text.startswith("# pilotnet on x86_cpu: strategies — FAILED")
    assert "| ❌ 1 failed |" in text and "0.395× its FP32 reference" in text
    with pytest.raises(EdgeMatrixError, match="not 'other' on 'x86_cpu'"):
        build_table(root, cells, model="other", target="x86_cpu")
    with pytest.raises(EdgeMatrixError, match="no cells"):
        build_table(root, [], model="pilotnet", target="x86_cpu")

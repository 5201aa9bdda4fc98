"""Pareto fronts: dominance on constructed points (ties, both directions), grouping, PNG + markdown, report hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import Verdict
from edgematrix.report.cli_report import run_report
from edgematrix.report.junit import write_junit
from edgematrix.report.pareto import (
    ParetoGroup,
    Point,
    collect,
    pareto_front,
    pareto_markdown,
    plot_pareto,
    points_from_benchmarks,
    write_pareto_reports,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_front_higher_is_better() -> None:
    pts = [(10.0, 90.0), (5.0, 88.0), (6.0, 87.0), (20.0, 91.0), (20.0, 89.0), (3.0, 80.0)]
    # (6, 87) is beaten by (5, 88); (20, 89) by (10, 90)
    assert pareto_front(pts, higher_is_better=True) == [True, True, False, True, False, True]


def test_front_lower_is_better() -> None:
    pts = [(1.0, 0.020), (0.5, 0.030), (0.6, 0.025), (0.7, 0.031), (2.0, 0.019)]
    assert pareto_front(pts, higher_is_better=False) == [True, True, True, False, True]
    # the same points read as higher-is-better give a different front
    assert pareto_front(pts, higher_is_better=True) == [False, True, False, True, False]


def test_ties() -> None:
    # identical points do not dominate each other: both stay
    assert pareto_front([(1.0, 5.0), (1.0, 5.0)], higher_is_better=True) == [True, True]
    # same latency, better quality dominates; same quality, faster dominates
    assert pareto_front([(1.0, 5.0), (1.0, 6.0)], higher_is_better=True) == [False, True]
    assert pareto_front([(1.0, 5.0), (2.0, 5.0)], higher_is_better=False) == [True, False]
    assert pareto_front([(1.0, 5.0)], higher_is_better=True) == [True]
    with pytest.raises(EdgeMatrixError, match="not finite"):
        pareto_front([(1.0, float("nan"))], higher_is_better=True)


def _entry(name: str, ms: float, **extra: float | int | str) -> BenchmarkEntry:
    samples = list(ms * 1e-3 * np.random.default_rng(len(name)).lognormal(0, 0.02, 20))
    return BenchmarkEntry(name, "g", samples, dict(extra))


def _lane_cell(root: Path, cell: str, recipe: str, cand_ms: float, acc: float) -> None:
    write_junit(root / cell / "junit.xml", cell, [Verdict("min_accuracy", "passed", "ok")], {})
    common = {"model": "ufld_r18", "target": "x86_cpu", "backend": "onnxruntime", "recipe": recipe}
    write_benchmark_json(
        root / cell / "benchmark.json",
        [
            _entry(f"{cell}[reference]", 30.0, role="reference", precision="fp32", accuracy=95.0, p50_ms=30.0,
                   artifact_sha256="fp32sha", model_bytes=4_000_000, speedup_vs_reference=1.0, **common),
            _entry(f"{cell}[candidate]", cand_ms, role="candidate", precision="int8", accuracy=acc, p50_ms=cand_ms,
                   artifact_sha256=f"{recipe}sha", model_bytes=1_000_000, speedup_vs_reference=30.0 / cand_ms,
                   **common),
        ],
    )  # fmt: skip


def _strategies_cell(root: Path) -> None:
    write_junit(root / "pilotnet_strategies" / "junit.xml", "s", [Verdict("int8_size[x]", "passed", "ok")], {})
    common = {"model": "pilotnet", "target": "x86_cpu", "backend": "onnxruntime", "task_metric": "mse",
              "task_metric_direction": "lower"}  # fmt: skip
    rows = [("fp32", 0.6, 0.010, "reference"), ("static_int8", 0.4, 0.011, "candidate"),
            ("global_prune", 0.3, 0.014, "candidate"), ("dynamic_int8", 2.0, 0.012, "candidate")]  # fmt: skip
    write_benchmark_json(
        root / "pilotnet_strategies" / "benchmark.json",
        [_entry(f"s[{r}]", ms, role=role, recipe=r, precision="fp32", mse=mse, p50_ms=ms, artifact_sha256=r, **common)
         for r, ms, mse, role in rows],
    )  # fmt: skip


def test_grouping_dedupes_shared_references_and_reads_direction(tmp_path: Path) -> None:
    _lane_cell(tmp_path, "x86_cpu_int8", "int8", 8.0, 94.5)
    _lane_cell(tmp_path, "x86_cpu_prune_x2_int8", "prune_x2_int8", 4.0, 94.8)
    _strategies_cell(tmp_path)
    groups = collect(tmp_path)
    lane = groups[("ufld_r18", "x86_cpu")]
    assert (lane.metric, lane.direction) == ("accuracy", "higher")
    assert sorted(p.label for p in lane.points) == ["fp32 reference", "int8", "prune_x2_int8"]  # one FP32 point
    assert dict(zip([p.label for p in lane.points], lane.front, strict=True)) == {
        "fp32 reference": True, "int8": False, "prune_x2_int8": True,
    }  # fmt: skip
    drive = groups[("pilotnet", "x86_cpu")]
    assert (drive.metric, drive.direction) == ("mse", "lower")
    assert dict(zip([p.label for p in drive.points], drive.front, strict=True)) == {
        "fp32": True, "static_int8": True, "global_prune": True, "dynamic_int8": False,
    }  # fmt: skip


def test_mixed_metrics_in_one_group_are_refused() -> None:
    doc = {"benchmarks": [
        {"name": "a", "extra_info": {"model": "m", "target": "t", "accuracy": 90.0, "p50_ms": 1.0}, "stats": {}},
        {"name": "b", "extra_info": {"model": "m", "target": "t", "task_metric": "mse", "task_metric_direction": "lower",
                                     "mse": 0.1, "p50_ms": 1.0}, "stats": {}},
    ]}  # fmt: skip
    with pytest.raises(EdgeMatrixError, match="mixes quality metrics"):
        points_from_benchmarks([doc])
    doc["benchmarks"][1]["extra_info"]["task_metric_direction"] = "sideways"
    with pytest.raises(EdgeMatrixError, match="sideways"):
        points_from_benchmarks([doc])


def test_markdown_table_and_png(tmp_path: Path) -> None:
    group = ParetoGroup("pilotnet", "x86_cpu", "mse", "lower", [
        Point("fp32", 0.010, 0.6, 1_012_711, 1.0), Point("static_int8", 0.011, 0.4, 270_444, 1.5),
        Point("dynamic_int8", 0.012, 2.0, 264_509, 0.3),
    ])  # fmt: skip
    md = pareto_markdown(group).splitlines()
    assert md[0].startswith("| recipe | mse (lower is better) | p50 (ms)")
    assert md[2] == "| static_int8 | 0.011 | 0.400 | 1.50× | 270 kB | yes |"  # sorted by latency
    assert md[4] == "| dynamic_int8 | 0.012 | 2.000 | 0.30× | 265 kB | no |"
    png = plot_pareto(group, tmp_path / "p.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000


def test_report_command_writes_pareto_png_and_summary_section(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _lane_cell(results, "x86_cpu_int8", "int8", 8.0, 94.5)
    _strategies_cell(results)
    paths, md = write_pareto_reports(results, tmp_path / "plots")
    assert sorted(paths) == ["pareto:pilotnet:x86_cpu", "pareto:ufld_r18:x86_cpu"]
    assert "![pilotnet on x86_cpu](plots/pareto-pilotnet-x86_cpu.png)" in md
    written = run_report(results, tmp_path / "report")
    png = written["pareto:pilotnet:x86_cpu"]
    assert png == tmp_path / "report" / "plots" / "pareto-pilotnet-x86_cpu.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    summary = written["summary"].read_text()
    assert "### Accuracy vs latency (Pareto)" in summary and "| global_prune | 0.014 |" in summary


def test_single_point_groups_and_unlabelled_benchmarks_are_not_plotted(tmp_path: Path) -> None:
    write_benchmark_json(
        tmp_path / "c" / "benchmark.json",
        [_entry("c[x]", 1.0, role="candidate", model="m", target="t", accuracy=50.0, recipe="x"),
         _entry("c[y]", 2.0, role="candidate", accuracy=60.0, recipe="y"),  # no model / target: skipped
         _entry("c[z]", 2.0, role="candidate", model="m", target="t", recipe="z")],  # no accuracy: skipped
    )  # fmt: skip
    assert [p.label for p in collect(tmp_path)[("m", "t")].points] == ["x"]
    assert write_pareto_reports(tmp_path, tmp_path / "plots") == ({}, "")

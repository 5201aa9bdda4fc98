"""PNG plots (latency distributions, history trend) and the whole `edgematrix report` pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import Verdict
from edgematrix.report.cli_report import run_report
from edgematrix.report.history import append_run
from edgematrix.report.junit import write_junit
from edgematrix.report.plots import plot_history, plot_latency_distributions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_cell(root: Path, cell: str, *, cand_ms: float = 10.0, accuracy: float = 90.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    entries = []
    for i, backend in enumerate(("onnxruntime", "openvino")):
        for role, ms in (("reference", 30.0), ("candidate", cand_ms * (1 + 0.1 * i))):
            samples = ms * 1e-3 * rng.lognormal(0.0, 0.05, 50)
            extra: dict[str, float | int | str] = {
                "role": role,
                "backend": backend,
                "precision": "fp32" if role == "reference" else "int8",
                "accuracy": accuracy,
                "p50_ms": float(np.median(samples) * 1e3),
                "p90_ms": float(np.percentile(samples, 90) * 1e3),
                "p99_ms": float(np.percentile(samples, 99) * 1e3),
                "speedup_vs_reference": 30.0 / ms,
                "cell": cell,
            }
            name = f"{cell}[{role if i == 0 else f'{role}@{backend}'}]"
            entries.append(BenchmarkEntry(name, cell, samples.tolist(), extra))
    write_benchmark_json(root / cell / "benchmark.json", entries)
    write_junit(root / cell / "junit.xml", cell, [Verdict("min_accuracy", "passed", "ok")], {"runner": "local"})
    return root / cell / "benchmark.json"


def assert_real_png(path: Path, min_width: int = 600, min_colored: float = 0.005) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 20_000
    image = imread(str(path))
    height, width, channels = image.shape
    assert width >= min_width and height >= 300 and channels in (3, 4)
    rgb = image[..., :3]
    assert rgb.std() > 0.05  # not a blank canvas
    colored = np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max(axis=2) > 0.15
    assert colored.mean() > min_colored  # the data are drawn in colour, not only black axes and text


def test_latency_distributions(tmp_path: Path) -> None:
    bench = write_cell(tmp_path / "results", "x86_cpu_int8")
    out = plot_latency_distributions(bench, tmp_path / "plots" / "latency.png")
    assert out == tmp_path / "plots" / "latency.png"
    assert_real_png(out, min_width=1200)


def test_latency_distributions_against_a_base(tmp_path: Path) -> None:
    bench = write_cell(tmp_path / "results", "x86_cpu_int8", cand_ms=12.0)
    base = write_cell(tmp_path / "base", "x86_cpu_int8", cand_ms=10.0, seed=1)
    alone = plot_latency_distributions(bench, tmp_path / "alone.png")
    both = plot_latency_distributions(bench, tmp_path / "both.png", base_json=base)
    assert_real_png(both, min_width=1200)
    assert both.read_bytes() != alone.read_bytes()


def test_latency_plot_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "benchmark.json"
    bad.write_text("{}")
    with pytest.raises(EdgeMatrixError, match=r"benchmark\.json"):
        plot_latency_distributions(bad, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_history_trend(tmp_path: Path) -> None:
    store = tmp_path / "history.jsonl"
    for day, (ms, acc) in enumerate([(10.0, 90.0), (10.5, 90.2), (9.0, 89.5)], start=1):
        results = tmp_path / f"run{day}"
        write_cell(results, "x86_cpu_int8", cand_ms=ms, accuracy=acc, seed=day)
        write_cell(results, "x86_cpu_fp32", cand_ms=30.0, accuracy=91.0, seed=day)
        append_run(store, results, commit=f"c{day}", timestamp=f"2026-01-0{day}T12:00:00+00:00")
    assert_real_png(plot_history(store, tmp_path / "all.png"))
    one = plot_history(store, tmp_path / "one.png", cell="x86_cpu_int8")
    assert_real_png(one)
    assert one.read_bytes() != (tmp_path / "all.png").read_bytes()
    with pytest.raises(
        EdgeMatrixError, match=r"no candidate records of cell 'jetson_int8'.*x86_cpu_fp32, x86_cpu_int8"
    ):
        plot_history(store, tmp_path / "none.png", cell="jetson_int8")


def test_run_report_writes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    results, base = tmp_path / "results", tmp_path / "base"
    write_cell(results, "x86_cpu_int8", cand_ms=10.0)
    write_cell(results, "x86_cpu_fp32", cand_ms=30.0)
    write_cell(base, "x86_cpu_int8", cand_ms=10.0, seed=2)
    store = tmp_path / "history.jsonl"
    paths = run_report(results, tmp_path / "report", base_dir=base, history=store)
    assert set(paths) == {
        "junit",
        "summary",
        "pr_comment",
        "latency:x86_cpu_fp32",
        "latency:x86_cpu_int8",
        "history",
        "history_plot",
    }
    assert all(p.is_file() for p in paths.values())
    assert paths["latency:x86_cpu_int8"] == tmp_path / "report" / "plots" / "x86_cpu_int8-latency.png"
    for key in ("latency:x86_cpu_int8", "latency:x86_cpu_fp32"):
        assert_real_png(paths[key])
    assert_real_png(paths["history_plot"], min_colored=0.0003)  # one run so far: one marker per series
    assert len(store.read_text().splitlines()) == 8
    assert "x86_cpu_int8" in paths["summary"].read_text(encoding="utf-8")

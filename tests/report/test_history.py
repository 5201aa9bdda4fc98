"""The JSON-lines history store: append-only, atomic, safe under concurrent appends, strict reads."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.report.history import TruncatedHistoryWarning, append_run, read_history


def write_results(root: Path, cells: dict[str, tuple[str, ...]], *, cand_ms: float = 10.0) -> Path:
    """results/<cell>/benchmark.json with a reference and a candidate per backend."""
    rng = np.random.default_rng(0)
    for cell, backends in cells.items():
        entries = []
        for i, backend in enumerate(backends):
            for role, ms in (("reference", 30.0), ("candidate", cand_ms)):
                samples = ms * 1e-3 * rng.lognormal(0.0, 0.03, 20)
                extra: dict[str, float | int | str] = {
                    "role": role,
                    "backend": backend,
                    "precision": "fp32" if role == "reference" else "int8",
                    "accuracy": 90.0 if role == "candidate" else 90.5,
                    "p50_ms": ms,
                    "p90_ms": ms * 1.1,
                    "p99_ms": ms * 1.2,
                    "speedup_vs_reference": 30.0 / ms,
                    "cell": cell,
                }
                name = f"{cell}[{role if i == 0 else f'{role}@{backend}'}]"
                entries.append(BenchmarkEntry(name, cell, samples.tolist(), extra))
        write_benchmark_json(root / cell / "benchmark.json", entries, machine_extra={"cpu_model": "Test CPU"})
    return root


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write_results(
        tmp_path / "results", {"x86_cpu_int8": ("onnxruntime", "openvino"), "x86_cpu_fp32": ("onnxruntime",)}
    )


def test_append_writes_one_record_per_cell_backend_role(results: Path, tmp_path: Path) -> None:
    store = tmp_path / "history" / "results.jsonl"
    n = append_run(store, results, commit="abc123", timestamp="2026-01-02T03:04:05+00:00")
    assert n == 6  # int8: 2 backends x 2 roles; fp32: 1 x 2
    records = read_history(store)
    assert len(records) == 6
    keys = [(r["cell"], r["backend"], r["role"]) for r in records]
    assert keys == [
        ("x86_cpu_fp32", "onnxruntime", "reference"),
        ("x86_cpu_fp32", "onnxruntime", "candidate"),
        ("x86_cpu_int8", "onnxruntime", "reference"),
        ("x86_cpu_int8", "onnxruntime", "candidate"),
        ("x86_cpu_int8", "openvino", "reference"),
        ("x86_cpu_int8", "openvino", "candidate"),
    ]
    cand = records[3]
    assert cand["precision"] == "int8" and cand["accuracy"] == 90.0
    assert (cand["p50_ms"], cand["p90_ms"], cand["p99_ms"]) == pytest.approx((10.0, 11.0, 12.0))
    assert cand["commit"] == "abc123" and cand["timestamp"] == "2026-01-02T03:04:05+00:00"
    assert cand["machine"].startswith("Test CPU (")
    assert cand["speedup_vs_reference"] == pytest.approx(3.0)
    assert store.read_text().count("\n") == 6  # JSON lines: one object per line


def test_defaults_commit_from_benchmark_and_timestamp_now(results: Path, tmp_path: Path) -> None:
    store = tmp_path / "h.jsonl"
    append_run(store, results)
    record = read_history(store)[0]
    doc = json.loads((results / "x86_cpu_fp32" / "benchmark.json").read_text())
    assert record["commit"] == doc["commit_info"].get("id")
    assert record["timestamp"].endswith("+00:00")


def test_append_is_append_only(results: Path, tmp_path: Path) -> None:
    store = tmp_path / "h.jsonl"
    append_run(store, results, commit="first", timestamp="2026-01-01T00:00:00+00:00")
    before = store.read_bytes()
    inode = store.stat().st_ino
    slower = write_results(tmp_path / "results2", {"x86_cpu_int8": ("onnxruntime",)}, cand_ms=12.0)
    assert append_run(store, slower, commit="second", timestamp="2026-01-02T00:00:00+00:00") == 2
    after = store.read_bytes()
    assert after.startswith(before)  # the old lines are byte-identical
    assert after[len(before) :].count(b"\n") == 2
    assert store.stat().st_ino != inode  # replaced by rename, never written in place
    assert [r["commit"] for r in read_history(store)] == ["first"] * 6 + ["second"] * 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _append_many(store: str, results: str, tag: str, start, times: int) -> None:  # type: ignore[no-untyped-def]
    start.wait(10)
    for i in range(times):
        append_run(store, results, commit=f"{tag}-{i}", timestamp="2026-01-01T00:00:00+00:00")


def test_concurrent_appends_from_two_processes_all_land(results: Path, tmp_path: Path) -> None:
    store = tmp_path / "h.jsonl"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    times = 8
    procs = [ctx.Process(target=_append_many, args=(str(store), str(results), tag, start, times)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    for p in procs:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0
    records = read_history(store)
    assert len(records) == 2 * times * 6
    for tag in "ab":
        commits = [r["commit"] for r in records if r["commit"].startswith(tag)]
        assert len(commits) == times * 6
        assert commits == sorted(commits, key=lambda c: int(c.split("-")[1]))  # each writer's order kept
    # each append's six records stay together
    lines = [r["commit"] for r in records]
    assert all(len(set(lines[i : i + 6])) == 1 for i in range(0, len(lines), 6))


def test_truncated_last_line_is_reported_and_skipped(results: Path, tmp_path: Path) -> None:
    store = tmp_path / "h.jsonl"
    append_run(store, results, timestamp="2026-01-01T00:00:00+00:00")
    with store.open("ab") as fh:
        fh.write(b'{"cell": "x86_cpu_int8", "backend": "onnx')  # a writer died mid-line
    with pytest.warns(TruncatedHistoryWarning, match=r"h\.jsonl:7: the last line is truncated"):
        records = read_history(store)
    assert len(records) == 6
    # appending after it would bury the broken line in the middle: refused, with file:line
    with pytest.raises(EdgeMatrixError, match=r"h\.jsonl:7: the last line is truncated"):
        append_run(store, results)


def test_corrupt_middle_line_is_rejected_with_file_and_line(results: Path, tmp_path: Path) -> None:
    store = tmp_path / "h.jsonl"
    append_run(store, results, timestamp="2026-01-01T00:00:00+00:00")
    lines = store.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:40] + "\n"
    store.write_text("".join(lines))
    with pytest.raises(EdgeMatrixError, match=r"h\.jsonl:3: corrupt history record: not valid JSON"):
        read_history(store)
    store.write_text('{"cell": "c", "backend": "b", "role": "candidate", "timestamp": "t"}\n[1, 2]\n{}\n')
    with pytest.raises(EdgeMatrixError, match=r"h\.jsonl:2: .*expected a JSON object, found list"):
        read_history(store)
    store.write_text('{"cell": "c"}\n')
    with pytest.raises(EdgeMatrixError, match=r"h\.jsonl:1: .*missing backend, role, timestamp"):
        read_history(store)


def test_bad_inputs(results: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match="does not exist"):
        read_history(tmp_path / "missing.jsonl")
    with pytest.raises(EdgeMatrixError, match="not ISO 8601"):
        append_run(tmp_path / "h.jsonl", results, timestamp="yesterday")
    (results / "crashed").mkdir()
    (results / "crashed" / "junit.xml").write_text("<testsuites/>")
    with pytest.raises(EdgeMatrixError, match=r"crashed/benchmark\.json.*missing"):
        append_run(tmp_path / "h.jsonl", results)
    assert not (tmp_path / "h.jsonl").exists()

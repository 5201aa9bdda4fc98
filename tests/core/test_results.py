"""benchmark.json: pytest-benchmark compatible, per-round data, plain extra_info, validated reads."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytest_benchmark

from edgematrix.core.results import BenchmarkEntry, read_benchmark_json, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.environment import capture_environment
from edgematrix.measure.harness import LatencyConfig

REFERENCE = [0.0102, 0.0099, 0.0101, 0.0120, 0.0100]
CANDIDATE = [0.0041, 0.0040, 0.0043, 0.0040, 0.0042]


def entries() -> list[BenchmarkEntry]:
    common = {"recipe": "int8", "backend": "onnxruntime", "input_shape": "1x3x288x800"}
    return [
        BenchmarkEntry(
            "x86_cpu_int8[reference]",
            "x86_cpu_int8",
            REFERENCE,
            {**common, "role": "reference", "precision": "fp32", "accuracy": 95.87, "model_bytes": 45_000_000},
            params={"role": "reference"},
        ),
        BenchmarkEntry(
            "x86_cpu_int8[candidate]",
            "x86_cpu_int8",
            CANDIDATE,
            {**common, "role": "candidate", "precision": "int8", "accuracy": 95.61, "fp": 3, "fn": 5},
            params={"role": "candidate"},
        ),
    ]


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "results" / "x86_cpu_int8" / "benchmark.json"
    config = LatencyConfig(warmup=3, min_rounds=5, max_rounds=5, min_time_s=0.0, max_time_s=10.0)
    doc = write_benchmark_json(path, entries(), machine_extra=capture_environment(), latency_config=config)
    return path, doc


def test_round_trips(written: tuple[Path, dict]) -> None:
    path, doc = written
    assert read_benchmark_json(path) == doc == json.loads(path.read_text())
    assert not list(path.parent.glob(".*.tmp")), "the temporary file of the atomic write is left behind"


def test_has_pytest_benchmark_layout_and_per_round_data(written: tuple[Path, dict]) -> None:
    _, doc = written
    assert set(doc) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert doc["version"] == pytest_benchmark.__version__
    assert doc["datetime"].endswith("+00:00")
    assert {"node", "machine", "python_version", "cpu"} <= set(doc["machine_info"])  # pytest-benchmark's own
    assert {"cpu_model", "physical_cores", "versions"} <= set(doc["machine_info"])  # merged environment
    assert "id" in doc["commit_info"]
    ref, cand = doc["benchmarks"]
    assert ref["fullname"] == "edgematrix/x86_cpu_int8::x86_cpu_int8[reference]"
    assert ref["group"] == "x86_cpu_int8"
    assert ref["param"] == "reference"
    assert ref["options"] == {
        "disable_gc": True,
        "timer": "perf_counter",
        "min_rounds": 5,
        "max_time": 10.0,
        "min_time": 0.0,
        "precision": None,
        "confidence": None,
        "warmup": 3,
    }
    assert ref["stats"]["data"] == REFERENCE
    assert cand["stats"]["data"] == CANDIDATE
    assert ref["stats"]["iterations"] == 1
    assert ref["stats"]["rounds"] == 5
    assert ref["stats"]["median"] == pytest.approx(float(np.median(REFERENCE)))
    assert ref["stats"]["stddev"] == pytest.approx(statistics.stdev(REFERENCE))
    assert ref["stats"]["min"] == min(REFERENCE) and ref["stats"]["max"] == max(REFERENCE)
    assert cand["extra_info"]["fp"] == 3 and cand["extra_info"]["role"] == "candidate"


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(True, "bool"), (np.float32(1.5), "float32"), (None, "NoneType"), ([1, 2], "list"), ({"a": 1}, "dict")],
)
def test_extra_info_must_be_plain(tmp_path: Path, value: object, type_name: str) -> None:
    bad = BenchmarkEntry("b", "g", [0.001], {"role": "candidate", "accuracy": value})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=rf"\['accuracy'\] is {type_name}"):
        write_benchmark_json(tmp_path / "benchmark.json", [bad])
    assert not (tmp_path / "benchmark.json").exists()


def test_extra_info_rejects_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['accuracy'\] is nan"):
        write_benchmark_json(tmp_path / "b.json", [BenchmarkEntry("b", "g", [0.001], {"accuracy": float("nan")})])


def test_failed_write_keeps_the_previous_file(written: tuple[Path, dict]) -> None:
    path, doc = written
    with pytest.raises(TypeError):
        write_benchmark_json(path, entries(), machine_extra={"not_json": object()})
    assert read_benchmark_json(path) == doc


def test_empty_samples_and_duplicate_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no samples"):
        write_benchmark_json(tmp_path / "b.json", [BenchmarkEntry("b", "g", [], {})])
    with pytest.raises(ValueError, match="repeated"):
        write_benchmark_json(tmp_path / "b.json", [BenchmarkEntry("b", "g", [0.1], {})] * 2)


def _mutate(path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("benchmarks"), r"missing 'benchmarks'"),
        (lambda d: d.update(benchmarks=[]), r"benchmarks: empty list"),
        (lambda d: d["benchmarks"][0]["stats"].pop("data"), r"\[reference\]\)\.stats\.data: no per-round samples"),
        (lambda d: d["benchmarks"][1]["stats"]["data"].pop(), r"stats\.data: 4 samples but rounds = 5"),
        (lambda d: d["benchmarks"][0]["stats"].update(data=["fast"] * 5), r"list of non-negative numbers"),
        (lambda d: d["benchmarks"][0]["stats"].pop("median"), r"stats\.median: missing"),
        (lambda d: d["benchmarks"][0]["extra_info"].update(role=["x"]), r"\['role'\] is list"),
        (lambda d: d["benchmarks"][0].pop("name"), r"benchmarks\[0\]\.name: missing"),
    ],
    ids=["no-benchmarks", "empty", "no-data", "short-data", "text-data", "no-median", "bad-extra", "no-name"],
)
def test_malformed_files_raise_clear_errors(written: tuple[Path, dict], change, message: str) -> None:  # type: ignore[no-untyped-def]
    path = _mutate(written[0], change)
    with pytest.raises(EdgeMatrixError, match=message) as info:
        read_benchmark_json(path)
    assert str(path) in str(info.value)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "benchmark.json"
    broken.write_text('{"benchmarks": [')
    with pytest.raises(EdgeMatrixError, match=r"line 1 column \d+: not JSON"):
        read_benchmark_json(broken)
    with pytest.raises(EdgeMatrixError, match=r"does not exist"):
        read_benchmark_json(tmp_path / "absent.json")


def test_data_optional_when_not_required(written: tuple[Path, dict]) -> None:
    path = _mutate(written[0], lambda d: [b["stats"].pop("data") for b in d["benchmarks"]])
    assert len(read_benchmark_json(path, require_data=False)["benchmarks"]) == 2


def test_pytest_benchmark_compare_reads_the_file(written: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = written
    done = subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", "compare", str(path), "--columns=min,median,max,rounds"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no project conftest.py for its hook dispatch to pick up
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Failed to load" not in output  # compare only warns on an unreadable file
    assert "x86_cpu_int8[reference]" in output and "x86_cpu_int8[candidate]" in output
    assert "benchmark 'x86_cpu_int8': 2 tests" in output

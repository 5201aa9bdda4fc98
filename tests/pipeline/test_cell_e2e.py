"""One small cell end to end, through the CLI, with real training, export, quantization and ORT."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgematrix.cli import main
from tiny_cells import TINY, make_workspace, run_cell

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory, "ws", TINY)


def _run(ws: Path, cell: str, *args: str) -> int:
    return run_cell(ws, cell, *args)


@pytest.mark.slow
def test_int8_cell_writes_every_artifact(workspace: Path) -> None:
    assert _run(workspace, "x86_cpu_int8q") == 0
    out = workspace / "results" / "x86_cpu_int8q"
    for name in (
        "config.json",
        "benchmark.json",
        "junit.xml",
        "report.md",
        "labels.json",
        "predictions-reference.json",
        "predictions-candidate.json",
        "predictions-reference-openvino.json",
        "predictions-candidate-openvino.json",
    ):
        assert (out / name).is_file(), name

    config = json.loads((out / "config.json").read_text())
    assert config["cell"] == "x86_cpu_int8q" and config["runner"]["name"] == "local"

    bench = json.loads((out / "benchmark.json").read_text())
    by_key = {(b["extra_info"]["backend"], b["extra_info"]["role"]): b for b in bench["benchmarks"]}
    assert set(by_key) == {(b, r) for b in ("onnxruntime", "openvino") for r in ("reference", "candidate")}
    ref, cand = by_key["onnxruntime", "reference"], by_key["onnxruntime", "candidate"]
    ov_ref, ov_cand = by_key["openvino", "reference"], by_key["openvino", "candidate"]
    # the FP32 reference on OpenVINO runs in exact FP32 and matches ONNX Runtime's outputs
    assert ov_ref["extra_info"]["inference_precision"] == "f32"
    assert ov_ref["extra_info"]["max_rel_diff_vs_reference"] <= 1e-3
    assert ov_cand["extra_info"]["artifact_sha256"] == cand["extra_info"]["artifact_sha256"]  # same QDQ file
    selected = {b["extra_info"]["selected_backend"] for b in bench["benchmarks"]}
    assert len(selected) == 1 and selected <= {"onnxruntime", "openvino"}
    assert ref["extra_info"]["precision"] == "fp32" and cand["extra_info"]["precision"] == "int8"
    for b in (ref, cand):
        info = b["extra_info"]
        for key in ("recipe", "backend", "accuracy", "fp", "fn", "model_bytes", "input_shape", "artifact_sha256"):
            assert key in info, key
        assert all(isinstance(v, int | float | str) for v in info.values())
        assert info["input_shape"] == "1x3x64x160"
        assert len(b["stats"]["data"]) == b["stats"]["rounds"] >= 6
        assert 0.0 <= info["accuracy"] <= 100.0
    # all four were measured in the same run, interleaved: same number of rounds
    assert ref["stats"]["rounds"] == cand["stats"]["rounds"] == ov_ref["stats"]["rounds"] == ov_cand["stats"]["rounds"]
    assert cand["extra_info"]["model_bytes"] < ref["extra_info"]["model_bytes"]
    assert ref["extra_info"]["artifact_sha256"] != cand["extra_info"]["artifact_sha256"]

    # the written predictions re-score to the recorded accuracy with the CLI's official-format scorer
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgematrix.cli",
            "score",
            "tusimple",
            str(out / "predictions-candidate.json"),
            str(out / "labels.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    scored = json.loads(proc.stdout)
    assert scored["Accuracy"] * 100 == pytest.approx(cand["extra_info"]["accuracy"], abs=1e-4)
    assert scored["FP"] == pytest.approx(cand["extra_info"]["fp"], abs=1e-6)

    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    gates = {tc.get("name") for tc in suite.iter("testcase")}
    primary = {"accuracy_vs_reference", "min_accuracy", "accuracy_vs_baseline", "latency_vs_baseline"}
    ov = {f"{g}[openvino]" for g in (*primary, "fp32_outputs_match_reference")}
    assert gates == primary | ov
    report = (out / "report.md").read_text()
    assert report.startswith("# x86_cpu_int8q: passed")
    assert "| onnxruntime | candidate | int8 |" in report and "| openvino | reference | fp32 | f32 |" in report
    assert "**Selected backend**: onnxruntime — candidate p50" in report or "**Selected backend**: openvino" in report


@pytest.mark.slow
def test_second_run_reuses_the_cache_and_baseline_gates_apply(workspace: Path) -> None:
    assert _run(workspace, "x86_cpu_int8q", "--update-baseline") == 0
    (baseline,) = json.loads((workspace / "matrix" / "baselines" / "x86_cpu_int8q.json").read_text())["records"]
    assert baseline["precision"] == "int8" and baseline["p50_ratio"] > 0 and baseline["backend"] == "onnxruntime"
    (ov_baseline,) = json.loads((workspace / "matrix" / "baselines" / "x86_cpu_int8q.openvino.json").read_text())[
        "records"
    ]
    assert ov_baseline["backend"] == "openvino"
    assert _run(workspace, "x86_cpu_int8q") == 0
    out = workspace / "results" / "x86_cpu_int8q"
    report = (out / "report.md").read_text()
    assert "cached checkpoint" in report and "reused cached export" in report
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    for gate in ("accuracy_vs_baseline", "latency_vs_baseline", "accuracy_vs_baseline[openvino]"):
        case = next(tc for tc in suite.iter("testcase") if tc.get("name") == gate)
        assert case.find("skipped") is None and case.find("failure") is None  # applied, and passed


@pytest.mark.slow
def test_fp32_cell_and_failing_gate_exit_code(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(workspace, "x86_cpu_fp32q") == 0
    bench = json.loads((workspace / "results" / "x86_cpu_fp32q" / "benchmark.json").read_text())
    assert {b["extra_info"]["role"] for b in bench["benchmarks"]} == {"reference", "candidate"}
    # an impossible floor makes the min_accuracy gate fail: exit 1, artifacts still written
    tiny = workspace / "matrix" / "tiny.toml"
    tiny.write_text(tiny.read_text().replace("min_accuracy = 0.0", "min_accuracy = 100.0"))
    try:  # the batch sweep still runs over the artifacts of the failed run, and the exit code stays 1
        assert _run(workspace, "x86_cpu_int8q", "--batch-sweep", "1,2") == 1
    finally:
        tiny.write_text(TINY)
    err = capsys.readouterr().err
    assert "gate failed" in err and "min_accuracy" in err and "batch sweep:" in err
    sweep = json.loads((workspace / "results" / "x86_cpu_int8q" / "batch_sweep.json").read_text())
    assert sorted({p["batch"] for p in sweep["points"]}) == [1, 2]
    assert "Batch-size sweep" in (workspace / "results" / "x86_cpu_int8q" / "report.md").read_text()
    assert _run(workspace, "x86_cpu_int8q", "--batch-sweep", "1,x") == 2  # refused before any work
    assert "--batches must be comma-separated positive integers" in capsys.readouterr().err
    suite = ET.parse(workspace / "results" / "x86_cpu_int8q" / "junit.xml").getroot().find("testsuite")
    failed = [tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["min_accuracy", "min_accuracy[openvino]"]


def test_unreachable_cell_and_bad_data_root_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--matrix", str(REPO / "matrix"), "run", "jetson_int8", "--results", str(tmp_path)]) == 2
    assert "cannot run on this host" in capsys.readouterr().err
    code = main(
        [
            "--matrix",
            str(REPO / "matrix"),
            "run",
            "x86_cpu_int8",
            "--results",
            str(tmp_path),
            "--data-root",
            str(tmp_path / "no-such-dataset"),
            "--cache",
            str(tmp_path / "c"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no-such-dataset does not exist" in err and "leave data_root empty" in err


@pytest.mark.slow
def test_ab_mode_measures_the_base_branch_interleaved(workspace: Path) -> None:
    base = workspace / "results-base"
    assert _run(workspace, "x86_cpu_int8q") == 0
    import shutil as _sh

    _sh.copytree(workspace / "results" / "x86_cpu_int8q", base)
    manifest = json.loads((base / "artifacts.json").read_text())
    assert Path(manifest["candidate"]).is_file() and manifest["candidate"].endswith(".onnx")
    assert _run(workspace, "x86_cpu_int8q", "--ab-base", str(base)) == 0
    out = workspace / "results" / "x86_cpu_int8q"
    bench = json.loads((out / "benchmark.json").read_text())
    by_key = {(b["extra_info"]["backend"], b["extra_info"]["role"]): b for b in bench["benchmarks"]}
    base_b, cand_b = by_key["onnxruntime", "base"], by_key["onnxruntime", "candidate"]
    assert base_b["stats"]["rounds"] == cand_b["stats"]["rounds"]  # same interleaved rounds
    assert base_b["extra_info"]["artifact_sha256"] == cand_b["extra_info"]["artifact_sha256"]  # A/A here
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    for gate in ("latency_vs_base", "accuracy_vs_base"):
        assert cases[gate].find("failure") is None and cases[gate].find("skipped") is None
    assert "A/B, same run" in (out / "report.md").read_text()
    assert _run(workspace, "x86_cpu_int8q", "--ab-base", str(workspace / "nowhere")) == 2

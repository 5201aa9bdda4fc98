"""Detection cells end to end: synthetic COCO-format scenes, training, export, INT8 PTQ and QAT,
mAP through pycocotools on ONNX Runtime and OpenVINO, COCO results files, the demo."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgematrix.cli import main
from tiny_cells import DET_TINY_MODEL, TINY_GATES, make_workspace, quick_latency, run_cell

DETECTION_TINY = (
    DET_TINY_MODEL
    + """
[recipes.int8q]
description = "INT8 PTQ quick"
precision = "int8"

[recipes.int8q.quantize]
method = "minmax"
calibration_images = 4

"""
    + quick_latency("int8q")
    + """
[recipes.qatq]
description = "INT8 QAT quick"
precision = "int8"

[recipes.qatq.qat]
calibration_images = 4
epochs = 1
batch_size = 8

[recipes.qatq.quantize]
method = "minmax"
calibration_images = 4

"""
    + quick_latency("qatq")
    + """
[[cells]]
target = "x86_cpu"
model = "det_tiny"
recipes = ["int8q", "qatq"]
name = "{target}_{model}_{recipe}"

"""
    + TINY_GATES
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory, "det", DETECTION_TINY)


def _benchmarks(out: Path) -> dict[str, dict]:
    doc = json.loads((out / "benchmark.json").read_text())
    return {f"{b['extra_info']['role']}@{b['extra_info']['backend']}": b["extra_info"] for b in doc["benchmarks"]}


def test_int8_detection_cell(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cell = "x86_cpu_det_tiny_int8q"
    assert run_cell(workspace, cell) == 0
    out = workspace / "results" / cell
    b = _benchmarks(out)
    cand, ref = b["candidate@onnxruntime"], b["reference@onnxruntime"]
    assert cand["metric"] == "mAP@[.5:.95]" and cand["dataset"] == "synthetic-coco"
    assert {"map50", "map75", "ar100"} <= set(cand) and 0 <= cand["accuracy"] <= cand["map50"] <= 100
    assert cand["precision"] == "int8" and cand["model_bytes"] < ref["model_bytes"]
    # the predictions re-score to the same mAP with `edgematrix score coco` (COCO results + instances json)
    capsys.readouterr()
    assert main(["score", "coco", str(out / "predictions-candidate.json"), str(out / "labels.json")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["AP"] * 100 == pytest.approx(cand["accuracy"], abs=1e-4)
    dets = json.loads((out / "predictions-candidate.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in dets)
    report = (out / "report.md").read_text()
    assert "\\[.5:.95\\] | map50 | map75 | ar100 |" in report  # the metric name, escaped as untrusted text
    # the demo renders FP32 | INT8 boxes over a synthetic drive
    gif = workspace / "demo.gif"
    assert main(["demo", cell, "--results", str(workspace / "results"), "--cache", str(workspace / "cache"),
                 "--frames", "4", "--out", str(gif)]) == 0  # fmt: skip
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.width >= 960


def test_qat_detection_cell_compares_with_ptq(workspace: Path) -> None:
    cell = "x86_cpu_det_tiny_qatq"
    assert run_cell(workspace, cell) == 0
    out = workspace / "results" / cell
    b = _benchmarks(out)
    assert {"reference@onnxruntime", "candidate@onnxruntime", "ptq@onnxruntime", "qat_modelopt_qdq@onnxruntime"} <= set(
        b
    )
    assert b["candidate@onnxruntime"]["qat_qdq_pairs"] > 0
    report = (out / "report.md").read_text()
    assert "## QAT vs PTQ" in report and "| model | mAP@[.5:.95] | drop vs FP32 | map50 |" in report
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None and "qat_export_matches_torch" in {tc.get("name") for tc in suite.iter("testcase")}

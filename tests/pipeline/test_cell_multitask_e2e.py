"""A multi-task split cell end to end: synthetic scenes, training, export, split into encoder + heads
(joins checked), INT8 heads calibrated on encoder features, mIoU/AbsRel, latency, pipeline, sweep."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tiny_cells import MT_TINY_MODEL, TINY_GATES, make_workspace, quick_latency, run_cell

MULTITASK_TINY = (
    MT_TINY_MODEL
    + """
[recipes.splitq]
description = "split quick"
precision = "int8"

[recipes.splitq.quantize]
method = "minmax"
calibration_images = 4

[recipes.splitq.split]
encoder = { precision = "fp32", threads = 1 }
default_head = { precision = "int8", threads = 1 }
calibration_images = 4
frames = 12

"""
    + quick_latency("splitq")
    + """
[[cells]]
target = "x86_cpu"
model = "mt_tiny"
recipes = ["splitq"]
name = "{target}_{model}_{recipe}"

"""
    + TINY_GATES
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory, "mt", MULTITASK_TINY)


def test_split_cell_measures_the_deployed_subgraphs(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cell = "x86_cpu_mt_tiny_splitq"
    assert run_cell(workspace, cell, "--batch-sweep", "1,2") == 0
    out = workspace / "results" / cell
    bench = {
        b["extra_info"]["role"] + "@" + b["extra_info"]["backend"]: b
        for b in json.loads((out / "benchmark.json").read_text())["benchmarks"]
    }
    cand = bench["candidate@onnxruntime"]["extra_info"]
    ref = bench["reference@onnxruntime"]["extra_info"]
    assert cand["metric"] == "mIoU" and cand["dataset"] == "synthetic-scenes"
    assert cand["split_max_abs_diff"] <= 1e-4 and cand["split_features"]
    assert cand["split_placements"].startswith("encoder fp32@cpu/1t") and "int8@cpu/1t" in cand["split_placements"]
    assert cand["pipeline_frames"] == 6 and cand["pipeline_sequential_fps"] > 0 and cand["pipelined_fps"] > 0
    assert cand["pipeline_bottleneck"] in ("encoder", "heads")
    # the candidate is the manifest: its size is the sum of the subgraph files
    manifest = Path(json.loads((out / "artifacts.json").read_text())["candidate"])
    doc = json.loads(manifest.read_text())
    assert cand["model_bytes"] == sum((manifest.parent / s["file"]).stat().st_size for s in doc["subgraphs"])
    assert [s["precision"] for s in doc["subgraphs"]] == ["fp32", "int8", "int8"]
    # both roles are scored with the task metric, INT8 heads close to FP32 on the same images
    assert 0 <= cand["accuracy"] <= 100 and abs(cand["accuracy"] - ref["accuracy"]) < 5
    assert cand["abs_rel"] > 0 and abs(cand["abs_rel"] - ref["abs_rel"]) < 0.05
    preds = np.load(out / "predictions-candidate.npz")
    assert len(preds.files) > 0
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    verdicts = {tc.get("name"): tc.find("failure") is None for tc in suite.iter("testcase")}
    assert verdicts["split_joins_match"] is True
    report = (out / "report.md").read_text()
    assert "## Split model" in report and "### Pipelined vs sequential" in report and "Why: " in report
    assert "## Batch-size sweep" in report
    sweep = json.loads((out / "batch_sweep.json").read_text())
    assert [p["batch"] for p in sweep["points"]] == [1, 2] and all(p["candidate_p50_ms"] for p in sweep["points"])
    # the demo runs the split candidate through the split backend: masks + depth of both models per frame
    from PIL import Image

    from edgematrix.cli import main

    gif = workspace / "demo.gif"
    assert main(["demo", cell, "--results", str(workspace / "results"), "--cache", str(workspace / "cache"),
                 "--frames", "3", "--out", str(gif)]) == 0  # fmt: skip
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.width >= 960

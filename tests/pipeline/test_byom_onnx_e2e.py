"""Issue 17, done-when 1: an ONNX detector edgematrix did not produce (onnx.helper, opset 13, dynamic batch /
height / width, two outputs) runs as ``x86_cpu_det_int8`` from ten lines of TOML and no Python: INT8 PTQ
calibrated on a folder of images, the ``outputs`` metric with its gates, the same-run speedup at the declared
input shape, on ONNX Runtime and OpenVINO. Every figure is checked against one computed here, independently."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from byom import build_detector, export_torch_detector, write_images
from edgematrix.matrix.listing import list_sessions
from edgematrix.metrics.agreement import output_agreement
from edgematrix.pipeline.steps.base import RecipeStep
from tiny_cells import run_cell

REPO = Path(__file__).resolve().parents[2]

#: what a user writes (matrix/det.toml); the int8 recipe and the x86_cpu target are the repository's
USER_TOML = """\
[models.det]
description = "third-party detector (ONNX), dynamic H/W"
onnx = "models/det.onnx"
task = "outputs"
data_root = "data/street"
input_shapes = { images = [1, 3, 256, 320] }

[[cells]]
target = "x86_cpu"
model = "det"
recipes = ["int8"]
name = "{target}_{model}_{recipe}"
"""

#: a detector exported by torch.onnx (TorchScript exporter, opset 13) without images, on a quick INT8 recipe:
#: seeded random inputs, said wherever the metric is
RANDOM_TOML = """
[models.det_noise]
description = "a torch.onnx detector on seeded random inputs"
onnx = "models/torch_det.onnx"
task = "outputs"
input_shapes = { images = [1, 3, 64, 96] }

[recipes.int8_quick]
description = "INT8 PTQ, quick"
precision = "int8"
[recipes.int8_quick.quantize]
method = "minmax"
calibration_images = 8
[recipes.int8_quick.latency]
warmup = 1
min_rounds = 6
max_rounds = 20
min_time_s = 0.1
max_time_s = 10

[recipes.int8_quick.steps.count_qdq]   # a plugin recipe step's settings
at_least = 4

[[cells]]
target = "x86_cpu"
model = "det_noise"
recipes = ["int8_quick"]
name = "{target}_{model}_{recipe}"
"""


class CountQdq(RecipeStep):
    """A recipe step as a plugin writes one: after PTQ, count the candidate's QuantizeLinear nodes, gate them
    against its [recipes.X.steps.count_qdq] settings and report the count in the candidate's extra_info."""

    name = "count_qdq"
    order = 90

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        return "count_qdq" in recipe.steps

    def stage_count(self) -> int:
        return 0

    def build(self) -> None:
        assert self.ctx.build is not None
        graph = onnx.load(str(self.ctx.build.candidate.path)).graph
        self.count = sum(n.op_type == "QuantizeLinear" for n in graph.node)

    def verdicts(self) -> list[Any]:
        from edgematrix.gates.verdicts import Verdict

        floor = int(self.ctx.cell.recipe.steps["count_qdq"]["at_least"])
        return [Verdict("qdq_pairs", "passed" if self.count >= floor else "failed", f"{self.count} (>= {floor})")]

    def facts(self) -> dict[str, int]:
        return {"qdq_pairs": self.count}


@pytest.fixture(scope="module")
def plugin_step() -> Iterator[None]:
    from edgematrix.core.registries import recipe_steps

    recipe_steps.register("count_qdq")(CountQdq)  # what an edgematrix.recipe_steps entry point provides
    try:
        yield
    finally:
        recipe_steps._items.pop("count_qdq")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, plugin_step: None) -> Path:
    ws = tmp_path_factory.mktemp("byom")
    (ws / "matrix").mkdir()
    for name in ("targets.toml", "recipes.toml", "cells.toml"):  # the repository's matrix, defaults included
        shutil.copy(REPO / "matrix" / name, ws / "matrix" / name)
    (ws / "matrix" / "cells.toml").write_text(
        (ws / "matrix" / "cells.toml").read_text().split("[[cells]]")[0]
    )  # its [defaults.gates], not its cells (their models are not in this workspace)
    (ws / "matrix" / "det.toml").write_text(USER_TOML)
    (ws / "matrix" / "noise.toml").write_text(RANDOM_TOML)
    build_detector(ws / "models" / "det.onnx", widths=(32, 64, 128, 128))
    export_torch_detector(ws / "models" / "torch_det.onnx")
    write_images(ws / "data" / "street", 24, sizes=((180, 320), (240, 320), (300, 200)))
    return ws


def _benchmarks(out: Path) -> dict[tuple[str, str], dict]:
    doc = json.loads((out / "benchmark.json").read_text())
    return {(b["extra_info"]["backend"], b["extra_info"]["role"]): b for b in doc["benchmarks"]}


def _feed(path: Path) -> dict[str, np.ndarray]:
    """The declared preprocessing (the defaults: stretch to the input, RGB, pixels / 255, NCHW), done here."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((320, 256), Image.Resampling.BILINEAR)
    return {"images": (np.asarray(rgb, np.float32) / 255.0).transpose(2, 0, 1)[None].copy()}


@pytest.mark.slow
def test_an_onnx_detector_runs_from_ten_lines_of_toml(workspace: Path) -> None:
    assert len([line for line in USER_TOML.splitlines() if line.strip()]) == 11  # "about ten lines"
    sessions = {s.name: s for s in list_sessions(workspace / "matrix")}
    assert "x86_cpu_det_int8" in sessions  # `nox -s x86_cpu_det_int8`
    assert run_cell(workspace, "x86_cpu_det_int8") == 0
    out = workspace / "results" / "x86_cpu_det_int8"
    runs = _benchmarks(out)
    assert set(runs) == {(b, r) for b in ("onnxruntime", "openvino") for r in ("reference", "candidate")}
    cand, ref = runs["onnxruntime", "candidate"]["extra_info"], runs["onnxruntime", "reference"]["extra_info"]
    assert (
        cand["metric"] == "output agreement (cosine % vs FP32, worst output)" and cand["metric_direction"] == "higher"
    )
    assert (cand["precision"], cand["input_shape"], cand["dataset"], cand["model_kind"]) == (
        "int8", "1x3x256x320", "images", "onnx"
    )  # fmt: skip
    assert ref["accuracy"] == 100.0 and ref["snr_db"] == 200.0  # the reference against itself
    # the same-run speedup, at the declared shape: the two p50s of this benchmark.json
    assert cand["speedup_vs_reference"] == pytest.approx(ref["p50_ms"] / cand["p50_ms"], rel=1e-3)

    # the models it deployed: the user's file with its inputs fixed to the declared shape, and a QDQ INT8 model
    models = json.loads((out / "artifacts.json").read_text())
    fp32, int8 = onnx.load(models["reference"]), onnx.load(models["candidate"])
    for m in (fp32, int8):
        dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        assert m.graph.input[0].name == "images" and dims == [1, 3, 256, 320]
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) >= 4
    assert cand["model_bytes"] < 0.5 * ref["model_bytes"]

    # the metric of record, computed here: the last quarter of the sorted images (6), through both files on ORT
    files = sorted((workspace / "data" / "street").rglob("*.png"), key=lambda p: p.as_posix())[18:]
    sessions_ = [ort.InferenceSession(models[role]) for role in ("reference", "candidate")]
    outputs = [[dict(zip(("boxes", "scores"), s.run(None, _feed(f)), strict=True)) for f in files] for s in sessions_]
    boxes, scores = output_agreement(outputs[0], outputs[1])
    assert cand["cosine_boxes"] == pytest.approx(boxes.cosine, abs=1e-6)
    assert cand["cosine_scores"] == pytest.approx(scores.cosine, abs=1e-6)
    assert cand["snr_db_boxes"] == pytest.approx(boxes.snr_db, abs=1e-3)
    assert cand["accuracy"] == pytest.approx(100 * min(boxes.cosine, scores.cosine), abs=1e-4)
    assert 99.0 < cand["accuracy"] < 100.0 and 20.0 < cand["snr_db"] < 80.0  # INT8: close, not identical
    ov = runs["openvino", "candidate"]["extra_info"]
    assert 99.0 < ov["accuracy"] <= 100.0 and runs["openvino", "reference"]["extra_info"]["accuracy"] > 99.99

    # the gates, as for accuracy: budgets from the repository's [defaults.gates] (0.5 points, floor 85)
    cases = {c.get("name"): c for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    for gate in (
        "accuracy_vs_reference",
        "min_accuracy",
        "accuracy_vs_reference[openvino]",
        "fp32_outputs_match_reference[openvino]",
    ):
        assert gate in cases and cases[gate].find("failure") is None, gate
    report = (out / "report.md").read_text().replace("\\", "")  # markdown escapes
    assert "output agreement (cosine % vs FP32, worst output)" in report
    assert "ONNX file" in report and "inputs fixed to images 1x3x256x320" in report
    predictions = json.loads((out / "predictions-candidate.json").read_text())
    assert predictions["inputs"] == "images" and [Path(f).name for f in predictions["files"]] == [f.name for f in files]


@pytest.mark.slow
def test_without_images_seeded_random_inputs_are_said_wherever_the_metric_is(
    workspace: Path, plugin_step: None
) -> None:
    assert run_cell(workspace, "x86_cpu_det_noise_int8_quick") == 0
    out = workspace / "results" / "x86_cpu_det_noise_int8_quick"
    name = "output agreement (cosine % vs FP32, worst output) on seeded random inputs"
    cand = _benchmarks(out)["onnxruntime", "candidate"]["extra_info"]
    assert cand["metric"] == name and cand["dataset"] == "random-inputs" and cand["random_inputs"] == 1.0
    assert cand["input_shape"] == "1x3x64x96" and 90.0 < cand["accuracy"] < 100.0
    report = (out / "report.md").read_text().replace("\\", "")  # markdown escapes
    assert name in report and "seeded random inputs (seed 0, 32 calibration / 16 evaluation samples" in report
    assert json.loads((out / "predictions-candidate.json").read_text())["inputs"] == "seeded random inputs"
    # the plugin step ran after PTQ: its fact and its gate
    graph = onnx.load(json.loads((out / "artifacts.json").read_text())["candidate"]).graph
    assert cand["qdq_pairs"] == sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 4
    gate = next(c for c in ET.parse(out / "junit.xml").getroot().iter("testcase") if c.get("name") == "qdq_pairs")
    assert gate.find("failure") is None

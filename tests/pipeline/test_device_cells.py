"""Device cells through the one pipeline, with the emulated and remote executors: TI FX8 emulation, a
remote device (real server on loopback), and the emulated Jetson (arm64 image under qemu-user on a
real Docker engine)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from edgematrix.executors.emulated import EMULATED_FLOAT_IMAGES
from edgematrix.optimize.fx8 import verify_power_of_two
from tiny_cells import DET_TINY_MODEL, MT_TINY_MODEL, TINY_MODELS_AND_RECIPES, make_workspace, run_cell

REPO = Path(__file__).resolve().parents[2]
TOKEN = "device-cell-test-token-0123456789"

DEVICE_CELLS = """
[recipes.fx8q]
description = "FX8 quick"
precision = "fx8"

[recipes.fx8q.quantize]
method = "minmax"
calibration_images = 4

# a board whose server runs ONNX Runtime (the Jetson's runs TensorRT via trtexec, not installable here)
[targets.board]
description = "a board behind an edgematrix latency server"
arch = "aarch64"
backend = "onnxruntime"
precisions = ["fp32", "int8"]
runners = ["remote"]
requires = ["path:/nonexistent/board-marker"]

[[cells]]
target = "ti"
model = "ufld_tiny"
recipes = ["fx8q"]

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0

[[cells]]
target = "board"
model = "ufld_tiny"
recipes = ["int8q"]

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0

[[cells]]
target = "jetson"
model = "ufld_tiny"
recipes = ["int8q"]

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0

[[cells]]
target = "x86_cpu"
model = "ufld_tiny"
recipes = ["int8q"]

# every task through the same device pipeline: a detector and a multi-task network on the board and the
# emulated Jetson
[[cells]]
target = "board"
model = "det_tiny"
recipes = ["int8q"]
name = "{target}_{model}_{recipe}"

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0

[[cells]]
target = "board"
model = "mt_tiny"
recipes = ["int8q"]
name = "{target}_{model}_{recipe}"

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0

[[cells]]
target = "jetson"
model = "det_tiny"
recipes = ["int8q"]
name = "{target}_{model}_{recipe}"

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0

[[cells]]
target = "jetson"
model = "mt_tiny"
recipes = ["int8q"]
name = "{target}_{model}_{recipe}"

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(
        tmp_path_factory, "device", TINY_MODELS_AND_RECIPES + DET_TINY_MODEL + MT_TINY_MODEL + DEVICE_CELLS
    )


def _run(ws: Path, cell: str, *args: str) -> int:
    return run_cell(ws, cell, *args)


def _bench(ws: Path, cell: str) -> dict[str, dict[str, Any]]:
    doc = json.loads((ws / "results" / cell / "benchmark.json").read_text())
    return {b["name"].split("[")[1].rstrip("]"): b["extra_info"] for b in doc["benchmarks"]}


def _gates(ws: Path, cell: str) -> dict[str, str]:
    root = ET.parse(ws / "results" / cell / "junit.xml").getroot()
    out = {}
    for case in root.iter("testcase"):
        status = (
            "failed"
            if case.find("failure") is not None
            else "skipped"
            if case.find("skipped") is not None
            else "passed"
        )
        out[case.get("name", "")] = status
    return out


@pytest.mark.slow
def test_ti_fx8_emulated_reports_accuracy_and_deltas(workspace: Path, docker_engine: Any) -> None:
    assert _run(workspace, "ti_fx8q", "--runner", "emulated") == 0
    info = _bench(workspace, "ti_fx8q")
    assert set(info) == {"reference", "int8", "candidate"}
    assert (info["reference"]["precision"], info["int8"]["precision"], info["candidate"]["precision"]) == (
        "fp32",
        "int8",
        "fx8",
    )
    # the fixed-point emulation runs in the ti image (x86-64, where TI's PC tools run), every sample
    assert info["candidate"]["latency_kind"] == "emulated-container" and info["candidate"]["executor"] == "emulated"
    assert info["candidate"]["accuracy_source"] == "device"
    assert info["candidate"]["backend"] == "onnxruntime"  # the stand-in runtime of the emulation
    assert info["candidate"]["fx8_scales_rewritten"] > 0
    assert info["candidate"]["artifact_sha256"] != info["int8"]["artifact_sha256"]
    gates = _gates(workspace, "ti_fx8q")
    assert gates["fx8_power_of_two_scales"] == "passed" and gates["latency_vs_baseline"] == "skipped"
    for role in ("reference", "int8", "candidate"):
        assert gates[f"device_outputs_match_host[{role}]"] == "passed"
    report = (workspace / "results" / "ti_fx8q" / "report.md").read_text()
    delta = info["candidate"]["accuracy"] - info["int8"]["accuracy"]
    assert f"FX8 − INT8 {delta:+.2f} points" in report and "never gated" in report
    fx8_files = list((workspace / "cache").rglob("*-fx8.onnx"))
    assert fx8_files and all(verify_power_of_two(p).qdq_nodes > 0 for p in fx8_files)


@pytest.mark.slow
def test_remote_cell_runs_the_bundle_and_measures_on_the_server(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgematrix.server.app import ServerConfig, serve_in_thread

    monkeypatch.setenv("EDGEMATRIX_TOKEN", TOKEN)
    with serve_in_thread(ServerConfig(token=TOKEN)) as server:
        assert _run(workspace, "board_int8q", "--remote", server.url) == 0  # auto + --remote -> remote
        first_gates = _gates(workspace, "board_int8q")
        # a device baseline recorded through the same server, then the device's latency is gated against it
        assert _run(workspace, "board_int8q", "--remote", server.url, "--update-baseline") == 0
        assert _run(workspace, "board_int8q", "--remote", server.url) == 0
        served = [h.op for h in server.history]
    assert first_gates["latency_vs_baseline"] == "skipped"  # no baseline of this device yet
    info = _bench(workspace, "board_int8q")
    for role in ("reference", "candidate"):
        assert info[role]["latency_kind"] == "device" and info[role]["runner"] == "remote"
        assert info[role]["executor"] == "remote" and info[role]["accuracy_source"] == "device"
        assert info[role]["backend"] == "onnxruntime"  # the board's backend of record
    assert served.count("evaluate") == 3  # one evaluation (outputs + interleaved rounds) per run
    gates = _gates(workspace, "board_int8q")
    assert gates["latency_vs_baseline"] == "passed" and gates["accuracy_vs_baseline"] == "passed"
    (record,) = json.loads((workspace / "matrix" / "baselines" / "board_int8q.json").read_text())["records"]
    assert record["environment"]["arch"] and record["ratio_samples"]  # keyed by the device's environment
    doc = json.loads((workspace / "results" / "board_int8q" / "benchmark.json").read_text())
    assert doc["machine_info"]["latency_contention"]["rounds"] > 0  # the device's own contention record
    # the board's outputs are scored like any executor's: the same INT8 file on the same ORT build here gives
    # the same accuracy through the local executor
    assert _run(workspace, "x86_cpu_int8q") == 0
    local = _bench(workspace, "x86_cpu_int8q")
    assert local["candidate"]["artifact_sha256"] == info["candidate"]["artifact_sha256"]
    assert local["candidate"]["accuracy"] == info["candidate"]["accuracy"]
    assert local["reference"]["accuracy"] == info["reference"]["accuracy"]
    config = json.loads((workspace / "results" / "board_int8q" / "config.json").read_text())
    assert config["runner"]["name"] == "remote" and config["runner"]["remote"] == server.url
    assert config["executor"] == "remote"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cell", "metric"), [("board_det_tiny_int8q", "mAP@[.5:.95]"), ("board_mt_tiny_int8q", "mIoU")]
)
def test_detection_and_multitask_cells_run_on_a_remote_device(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, cell: str, metric: str
) -> None:
    from edgematrix.server.app import ServerConfig, serve_in_thread

    monkeypatch.setenv("EDGEMATRIX_TOKEN", TOKEN)
    with serve_in_thread(ServerConfig(token=TOKEN)) as server:
        assert _run(workspace, cell, "--remote", server.url, "--update-baseline") == 0
        assert _run(workspace, cell, "--remote", server.url) == 0
    info = _bench(workspace, cell)
    assert set(info) == {"reference", "candidate"}
    for role in ("reference", "candidate"):
        assert info[role]["metric"] == metric and info[role]["executor"] == "remote"
        assert info[role]["latency_kind"] == "device" and 0 <= info[role]["accuracy"] <= 100
    gates = _gates(workspace, cell)
    assert gates["latency_vs_baseline"] == "passed" and gates["accuracy_vs_baseline"] == "passed"
    labels = workspace / "results" / cell / "labels.json"
    assert labels.is_file()  # the task's own submission format, as a local cell writes it


def test_remote_cell_without_url_says_what_to_pass(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(workspace, "board_int8q", "--runner", "remote") == 2
    assert "needs --remote URL" in capsys.readouterr().err


@pytest.mark.slow
def test_emulated_jetson_matches_x86(workspace: Path, docker_engine: Any) -> None:
    assert _run(workspace, "jetson_int8q", "--runner", "emulated") == 0
    info = _bench(workspace, "jetson_int8q")
    for role in ("reference", "candidate"):
        assert info[role]["latency_kind"] == "emulated-qemu-aarch64" and info[role]["executor"] == "emulated"
    # INT8 runs every test image under qemu; FP32 (float SIMD emulated in software) the first few
    assert info["candidate"]["accuracy_source"] == "device"
    assert info["reference"]["accuracy_source"] == f"host (the emulated device ran {EMULATED_FLOAT_IMAGES} of 5)"
    gates = _gates(workspace, "jetson_int8q")
    for role in ("candidate", "reference"):
        assert gates[f"device_outputs_match_host[{role}]"] == "passed"
        assert gates[f"device_accuracy_matches_host[{role}]"] == "passed"
    assert gates["latency_vs_baseline"] == "skipped"
    doc = json.loads((workspace / "results" / "jetson_int8q" / "benchmark.json").read_text())
    rounds = {b["extra_info"]["role"]: b["stats"]["rounds"] for b in doc["benchmarks"]}
    assert rounds == {"reference": EMULATED_FLOAT_IMAGES, "candidate": 5}  # each image's inference time
    report = (workspace / "results" / "jetson_int8q" / "report.md").read_text()
    assert "emulated-qemu-aarch64" in report or "qemu-user" in report
    assert "never gated" in report
    # the emulated device runs the artifact that ships to the Jetson: TensorRT's explicit-quantization form
    # (int8 activations, zero point 0), not the ONNX Runtime CPU form of its stand-in runtime
    artifacts = json.loads((workspace / "results" / "jetson_int8q" / "artifacts.json").read_text())
    model = onnx.load(artifacts["candidate"])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["jetson_det_tiny_int8q", "jetson_mt_tiny_int8q"])
def test_detection_and_multitask_cells_run_emulated(workspace: Path, docker_engine: Any, cell: str) -> None:
    assert _run(workspace, cell, "--runner", "emulated") == 0
    info = _bench(workspace, cell)
    assert info["candidate"]["accuracy_source"] == "device" and info["candidate"]["executor"] == "emulated"
    gates = _gates(workspace, cell)
    assert gates["device_outputs_match_host[candidate]"] == "passed"
    assert gates["device_accuracy_matches_host[candidate]"] == "passed"
    assert gates["latency_vs_baseline"] == "skipped"

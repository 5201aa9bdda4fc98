"""Pruning (search + distillation + INT8), QAT and mixed-precision cells end to end, tiny settings."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tiny_cells import make_workspace, run_cell

REPO = Path(__file__).resolve().parents[2]

TINY = """
[models.ufld_tiny]
description = "UFLD-v2 tiny, for tests"
family = "ufld_v2"
task = "lane"
dataset = "tusimple"
input_shape = [1, 3, 64, 160]

[models.ufld_tiny.params]
width = 16
mlp_mid_dim = 64
use_aux = true

[models.ufld_tiny.synthetic]
train = 12
test = 5
seed = 3

[models.ufld_tiny.train]
epochs = 1
batch_size = 6

[recipes.prune_int8q]
description = "prune + distil + INT8, quick"
precision = "int8"

[recipes.prune_int8q.prune]
speedup = 1.2
round_to = 4
ignored_layers = ["pool", "cls"]
# sub-millisecond models over a few rounds: the latency is noise-dominated, so the tolerance is set
# wide enough, on both sides of the request, that the gates are exercised (evaluated, reported)
# without depending on the noise
tolerance = 0.9
bound = "nearest"
max_probes = 3
probe_rounds = 5
probe_min_time_s = 0.05

[recipes.prune_int8q.finetune]
epochs = 1
batch_size = 6

[recipes.prune_int8q.quantize]
method = "minmax"
calibration_images = 4

[recipes.prune_int8q.latency]
warmup = 1
min_rounds = 6
max_rounds = 20
min_time_s = 0.1
max_time_s = 10

[recipes.qatq]
description = "QAT quick"
precision = "int8"

[recipes.qatq.qat]
calibration_images = 4
epochs = 1
batch_size = 6

[recipes.qatq.quantize]
method = "minmax"
calibration_images = 4
activations = "symmetric"

[recipes.qatq.latency]
warmup = 1
min_rounds = 6
max_rounds = 20
min_time_s = 0.1
max_time_s = 10

[recipes.mixedq]
description = "mixed precision quick"
precision = "int8"

[recipes.mixedq.quantize]
method = "minmax"
calibration_images = 4
accuracy_budget = 0.0
sensitivity_images = 3
max_float_layers = 2

[recipes.mixedq.latency]
warmup = 1
min_rounds = 6
max_rounds = 20
min_time_s = 0.1
max_time_s = 10

[[cells]]
target = "x86_cpu"
model = "ufld_tiny"
recipes = ["prune_int8q", "qatq", "mixedq"]

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0
latency_regression = 10.0
latency_min_effect = 0.99
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory, "ws", TINY)


def _run(ws: Path, cell: str) -> int:
    return run_cell(ws, cell)


def _gates(out: Path) -> dict[str, ET.Element]:
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    return {str(tc.get("name")): tc for tc in suite.iter("testcase")}


def _by_role(out: Path) -> dict[tuple[str, str], dict]:
    bench = json.loads((out / "benchmark.json").read_text())
    return {(b["extra_info"]["backend"], b["extra_info"]["role"]): b for b in bench["benchmarks"]}


@pytest.mark.slow
def test_prune_int8_cell_searches_distils_quantizes_and_gates(workspace: Path) -> None:
    assert _run(workspace, "x86_cpu_prune_int8q") == 0
    out = workspace / "results" / "x86_cpu_prune_int8q"
    by_role = _by_role(out)
    # the unpruned INT8 model is measured in the same interleaved rounds (primary backend only)
    assert set(by_role) == {
        ("onnxruntime", "reference"), ("onnxruntime", "candidate"), ("onnxruntime", "unpruned"),
        ("openvino", "reference"), ("openvino", "candidate"),
    }  # fmt: skip
    cand, unpruned = by_role["onnxruntime", "candidate"], by_role["onnxruntime", "unpruned"]
    assert cand["stats"]["rounds"] == unpruned["stats"]["rounds"]
    info = cand["extra_info"]
    assert all(type(v) in (int, float, str) for v in info.values())
    assert info["precision"] == "int8" and unpruned["extra_info"]["precision"] == "int8"
    assert 0 < info["prune_ratio"] < 1 and info["prune_requested_speedup"] == 1.2
    assert info["params"] < info["unpruned_params"]
    assert info["model_bytes"] < unpruned["extra_info"]["model_bytes"]
    assert info["speedup_vs_unpruned"] == pytest.approx(unpruned["extra_info"]["p50_ms"] / info["p50_ms"], rel=1e-3)
    assert info["finetune_epochs"] == 1 and info["distill_alpha"] == 0.5
    # every width is a multiple of round_to
    assert all(int(w) % 4 == 0 for w in info["prune_widths"].split("/"))
    search = json.loads((out / "prune_search.json").read_text())
    assert 1 <= len(search["probes"]) <= 3 and search["chosen"]["ratio"] == info["prune_ratio"]
    gates = _gates(out)
    for gate in ("prune_search_landed", "prune_speedup_vs_unpruned", "accuracy_vs_reference"):
        assert gates[gate].find("failure") is None and gates[gate].find("skipped") is None, gate
    report = (out / "report.md").read_text()
    assert "## Pruning search" in report and "(chosen)" in report

    # a second run re-measures nothing in the search (latency cache by architecture) and reuses
    # the distilled checkpoint
    assert _run(workspace, "x86_cpu_prune_int8q") == 0
    again = json.loads((out / "prune_search.json").read_text())
    assert again["baseline_cached"] and all(p["cached"] for p in again["probes"])
    assert again["chosen"]["ratio"] == search["chosen"]["ratio"]


@pytest.mark.slow
def test_qat_cell_compares_with_ptq(workspace: Path) -> None:
    assert _run(workspace, "x86_cpu_qatq") == 0
    out = workspace / "results" / "x86_cpu_qatq"
    by_role = _by_role(out)
    cand, ptq = by_role["onnxruntime", "candidate"], by_role["onnxruntime", "ptq"]
    modelopt = by_role["onnxruntime", "qat_modelopt_qdq"]
    assert ptq["extra_info"]["precision"] == modelopt["extra_info"]["precision"] == "int8"
    assert cand["stats"]["rounds"] == ptq["stats"]["rounds"] == modelopt["stats"]["rounds"]
    assert info_size_close(cand, ptq)
    info = cand["extra_info"]
    assert info["qat_qdq_pairs"] > 0
    assert info["ptq_accuracy"] == pytest.approx(ptq["extra_info"]["accuracy"], abs=1e-5)
    assert info["qat_minus_ptq_accuracy"] == pytest.approx(info["accuracy"] - ptq["extra_info"]["accuracy"], abs=1e-5)
    assert cand["extra_info"]["artifact_sha256"] != ptq["extra_info"]["artifact_sha256"]
    gates = _gates(out)
    assert gates["qat_export_matches_torch"].find("failure") is None
    report = (out / "report.md").read_text()
    assert "## QAT vs PTQ" in report and "| QAT (INT8, PTQ form) |" in report and "| PTQ (INT8) |" in report
    assert "| QAT (ModelOpt QDQ) |" in report


def info_size_close(a: dict, b: dict) -> bool:
    """The deployed QAT model has PTQ's form: int8 weights, so about the PTQ model's size."""
    return abs(a["extra_info"]["model_bytes"] / b["extra_info"]["model_bytes"] - 1) < 0.1


@pytest.mark.slow
def test_mixed_precision_cell_reports_float_layers_and_cost(workspace: Path) -> None:
    code = _run(workspace, "x86_cpu_mixedq")
    out = workspace / "results" / "x86_cpu_mixedq"
    by_role = _by_role(out)
    cand, full = by_role["onnxruntime", "candidate"], by_role["onnxruntime", "int8_full"]
    info = cand["extra_info"]
    assert info["accuracy_budget"] == 0.0 and info["sensitivity_images"] == 3
    assert info["float_layer_count"] == len([n for n in info["float_layers"].split(",") if n])
    assert info["float_layer_count"] <= 2
    assert info["latency_cost_vs_int8_full"] == pytest.approx(info["p50_ms"] / full["extra_info"]["p50_ms"], rel=1e-3)
    gates = _gates(out)
    budget = gates["mixed_precision_budget"]
    met = info["subset_accuracy_fp32"] - info["subset_accuracy_mixed"] <= 0.0
    assert (budget.find("failure") is None) == met
    assert code == (0 if met else 1)
    assert "## Mixed precision" in (out / "report.md").read_text()

"""PilotNet strategies: a tiny end-to-end run (every row measured, INT8 size gate) and the helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgematrix.core.results import read_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.matrix.loader import load_matrix
from edgematrix.pipeline.strategies import (
    INT8_SIZE_LIMIT,
    ORDER,
    StrategiesResult,
    StrategySettings,
    fold_weight_quantizers,
    quick_settings,
    run_strategies,
)

MATRIX = Path(__file__).resolve().parents[2] / "matrix"


def _tiny_model_cfg():  # the matrix's PilotNet with a few frames and one epoch
    m = load_matrix(MATRIX).models["pilotnet"]
    return m.model_copy(
        update={
            "synthetic": m.synthetic.model_copy(update={"train": 64, "test": 16}),
            "train": m.train.model_copy(update={"epochs": 1, "batch_size": 16}),
        }
    )


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> StrategiesResult:
    tmp = tmp_path_factory.mktemp("strategies")
    return run_strategies(
        _tiny_model_cfg(), tmp / "results" / "pilotnet_strategies", cache_dir=tmp / "cache",
        settings=quick_settings(), progress=False,
    )  # fmt: skip


@pytest.mark.slow
def test_every_strategy_has_a_measured_row(result: StrategiesResult) -> None:
    assert [r.artifact.strategy for r in result.rows] == list(ORDER)
    for row in result.rows:
        assert math.isfinite(row.mse) and row.mse >= 0 and math.isfinite(row.mae)
        assert row.model_bytes == row.artifact.path.stat().st_size > 0
        assert len(row.samples_s) >= 10 and row.p50_ms > 0
    by = {r.artifact.strategy: r for r in result.rows}
    fp32 = by["fp32"].model_bytes
    for name in ("dynamic_int8", "static_int8", "qat_int8", "prune_int8"):
        assert by[name].artifact.precision == "int8"
        assert by[name].model_bytes <= INT8_SIZE_LIMIT * fp32, name
    # pruning removed parameters; the pruned + quantized model is the smallest file
    assert by["global_prune"].artifact.params < by["fp32"].artifact.params
    assert by["local_prune"].artifact.params < by["fp32"].artifact.params
    assert by["prune_int8"].model_bytes == min(r.model_bytes for r in result.rows)
    # quantizing keeps the FP32 model's predictions close (same weights, int8 arithmetic)
    assert abs(by["static_int8"].mse - by["fp32"].mse) < 0.5 * by["fp32"].mse + 1e-3
    assert result.failed_gates == []


@pytest.mark.slow
def test_results_files(result: StrategiesResult) -> None:
    out = result.out_dir
    doc = read_benchmark_json(out / "benchmark.json")
    extras = {b["extra_info"]["recipe"]: b["extra_info"] for b in doc["benchmarks"]}
    assert list(extras) == list(ORDER)
    assert extras["fp32"]["role"] == "reference" and extras["static_int8"]["role"] == "candidate"
    for e in extras.values():
        assert e["task_metric"] == "mse" and e["task_metric_direction"] == "lower" and "accuracy" not in e
        assert e["model"] == "pilotnet" and e["target"] == "x86_cpu" and e["input_shape"] == "1x3x66x200"
        assert len(e["artifact_sha256"]) == 64 and e["backend"] == "onnxruntime"
    row = next(r for r in result.rows if r.artifact.strategy == "static_int8")
    assert extras["static_int8"]["mse"] == pytest.approx(row.mse, abs=1e-8)
    junit = (out / "junit.xml").read_text()
    for name in ("int8_size[dynamic_int8]", "int8_size[static_int8]", "int8_size[qat_int8]", "every_strategy_measured"):
        assert f'name="{name}"' in junit
    assert "<failure" not in junit
    report = (out / "report.md").read_text()
    assert "| strategy | precision | MSE | MAE | params | size | size vs FP32 | p50 (ms) | speedup vs FP32 |" in report
    assert report.count("\n| ") >= len(ORDER) * 2  # the table and the Pareto table
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "config.json").read_text())["settings"]["prune_ratio"] == "0.4"


def _qdq_weight_model(w: np.ndarray, scale: np.ndarray, axis: int) -> onnx.ModelProto:
    zp = np.zeros(scale.shape, np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=axis),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=axis),
        helper.make_node("MatMul", ["x", "wd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("per_channel", [False, True])
def test_fold_weight_quantizers_matches_onnxruntime(per_channel: bool) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, 3)).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32) if per_channel else np.float32(np.abs(w).max() / 127)
    model = _qdq_weight_model(w, np.asarray(scale), axis=1)
    x = rng.normal(0, 1, (1, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert fold_weight_quantizers(model) == 1
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul"]
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert stored["wq"].dtype == np.int8 and "w" not in stored
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_settings_and_inputs_are_validated() -> None:
    with pytest.raises(EdgeMatrixError, match="prune_ratio"):
        StrategySettings(prune_ratio=1.0)
    with pytest.raises(EdgeMatrixError, match="max_layer_prune_ratio"):
        StrategySettings(prune_ratio=0.5, max_layer_prune_ratio=0.3)
    m = load_matrix(MATRIX)
    with pytest.raises(EdgeMatrixError, match="task 'lane'"):
        run_strategies(m.models["ufld_r18"], "unused")
    with pytest.raises(EdgeMatrixError, match="unknown strategies"):
        run_strategies(m.models["pilotnet"], "unused", names=("fp32", "magic"))
    with pytest.raises(EdgeMatrixError, match="builds on \\['global_prune'\\]"):
        run_strategies(m.models["pilotnet"], "unused", names=("fp32", "prune_int8"))
    with pytest.raises(EdgeMatrixError, match="need 'fp32'"):
        run_strategies(m.models["pilotnet"], "unused", names=("static_int8",))

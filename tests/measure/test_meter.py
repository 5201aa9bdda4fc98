"""LocalMeter: the shared "how fast is this model file" interface, on real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgematrix.backends.meter import LocalMeter, random_feed
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.harness import LatencyConfig
from edgematrix.measure.meter import LatencyMeter


@pytest.fixture
def relu_model(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    return path


def test_local_meter_reports_statistics_and_facts(relu_model: Path) -> None:
    config = LatencyConfig(warmup=1, min_rounds=20, max_rounds=20, min_time_s=0)
    meter = LocalMeter(config=config, shapes={"x": (3, 8)})
    assert isinstance(meter, LatencyMeter)
    report = meter.measure(relu_model)
    assert report.facts["input_shape"] == "x:3x8"  # what was measured, and why
    assert report.facts["input_shape_source"] == "--shape for dynamic input(s) x"
    with pytest.raises(EdgeMatrixError, match=r"input 'x' float32\[batch, 8\]: dynamic dim\(s\) 0 \('batch'\)"):
        LocalMeter(config=config).measure(relu_model)
    assert report.rounds == 20 == len(report.samples_ms)
    assert report.p50_ms == pytest.approx(float(np.percentile(report.samples_ms, 50)))
    assert report.p50_ms <= report.p90_ms <= report.p99_ms
    assert report.facts["backend"] == "onnxruntime"
    assert report.as_dict()["rounds"] == 20


def test_local_meter_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"nope\.onnx does not exist"):
        LocalMeter().measure(tmp_path / "nope.onnx")


def test_random_feed_is_deterministic_and_refuses_a_dynamic_dim_without_a_shape() -> None:
    from edgematrix.backends.base import TensorMeta

    meta = {"x": TensorMeta(np.dtype(np.float32), ("batch", 3)), "i": TensorMeta(np.dtype(np.int64), (2,))}
    # a dynamic dimension is never guessed (it used to become 1: a detector "measured" at 1x3x1x1)
    with pytest.raises(
        EdgeMatrixError, match=r"input 'x' float32\[batch, 3\]: dynamic dim\(s\) 0 \('batch'\) \(--shape x:Nx3\)"
    ):
        random_feed(meta)
    a, b = random_feed(meta, shapes={"x": (4, 3)}), random_feed(meta, shapes={"x": [4, 3]})
    assert a["x"].shape == (4, 3) and a["x"].dtype == np.float32
    assert a["i"].shape == (2,) and a["i"].dtype == np.int64 and set(np.unique(a["i"])) <= {0, 1}
    np.testing.assert_array_equal(a["x"], b["x"])

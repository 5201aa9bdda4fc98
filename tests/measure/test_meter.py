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
    meter = LocalMeter(config=LatencyConfig(warmup=1, min_rounds=20, max_rounds=20, min_time_s=0))
    assert isinstance(meter, LatencyMeter)
    report = meter.measure(relu_model)
    assert report.rounds == 20 == len(report.samples_ms)
    assert report.p50_ms == pytest.approx(float(np.percentile(report.samples_ms, 50)))
    assert report.p50_ms <= report.p90_ms <= report.p99_ms
    assert report.facts["backend"] == "onnxruntime"
    assert report.as_dict()["rounds"] == 20


def test_local_meter_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"nope\.onnx does not exist"):
        LocalMeter().measure(tmp_path / "nope.onnx")


def test_random_feed_is_deterministic_and_fills_dynamic_dims() -> None:
    from edgematrix.backends.base import TensorMeta

    meta = {"x": TensorMeta(np.dtype(np.float32), ("batch", 3)), "i": TensorMeta(np.dtype(np.int64), (2,))}
    a, b = random_feed(meta), random_feed(meta)
    assert a["x"].shape == (1, 3) and a["x"].dtype == np.float32
    assert a["i"].dtype == np.int64 and set(np.unique(a["i"])) <= {0, 1}
    np.testing.assert_array_equal(a["x"], b["x"])

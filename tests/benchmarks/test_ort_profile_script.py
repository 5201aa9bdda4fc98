"""benchmarks/ort_profile.py's profile reader on a real ONNX Runtime profile (no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from ort_profile import profile

RNG = np.random.default_rng(3)


def _three_convs(path: Path) -> Path:
    """stem 7x7 stride 2 (3 → 8 channels), then two 3x3 convolutions with a Relu between."""
    inits, nodes = [], []
    shapes = [(8, 3, 7, 7), (8, 8, 3, 3), (8, 8, 3, 3)]
    x = "input"
    for i, shape in enumerate(shapes):
        w = f"w{i}"
        inits.append(numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.1, w))
        stride = 2 if i == 0 else 1
        pad = shape[-1] // 2
        nodes.append(
            helper.make_node("Conv", [x, w], [f"c{i}"], name=f"conv{i}", strides=[stride, stride], pads=[pad] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "three_convs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


def test_the_stem_is_the_first_convolution_and_the_parts_add_up(tmp_path: Path) -> None:
    model = _three_convs(tmp_path / "fp32.onnx")
    feed = {"input": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    p = profile(model, feed, runs=3, threads=1)
    # ONNX Runtime fuses Conv + Relu (FusedConv) and may rewrite to its NCHWc layout, naming the node after
    # its output ("r0_nchwc"): either way the stem is the node of the first convolution and its Relu
    assert p["stem"]["node"].split("_")[0] in {"conv0", "c0", "r0"}, p["stem"]
    assert p["stem"]["op"] in {"Conv", "FusedConv"}
    assert p["other_convs"]["count"] == 2
    assert p["stem"]["ms"] > 0 and p["other_convs"]["ms"] > 0
    assert abs(p["total_ms"] - (p["stem"]["ms"] + p["other_convs"]["ms"] + p["rest_ms"])) < 1e-9


def test_a_qdq_model_profiles_as_qlinear_convolutions(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = _three_convs(tmp_path / "fp32.onnx")
    feeds = [{"input": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    int8 = tmp_path / "int8.onnx"
    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    p = profile(int8, feeds[0], runs=3, threads=1)
    assert p["stem"]["op"] == "QLinearConv" and p["other_convs"]["count"] == 2
    assert "QLinearConv" in p["ops"] and "Conv" not in p["ops"]

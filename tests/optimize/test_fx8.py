"""FX8 emulation (power-of-two scales, TI TIDL style) on a tiny conv model quantized by edgematrix.

Bounds asserted (measured on this model, 16 held-out random inputs, ORT 1.31 CPU): every scale a
power of two; dequantized weights within half a new step of the INT8 ones; FX8 output vs INT8 QDQ
output max |diff| ≈ 7% of the output range (bound 15%); FX8 error vs FP32 at most 3× the INT8
error (a power-of-two step is at most 2× the INT8 step; measured below 1×); correlation with FP32
> 0.995 (measured 0.9997).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgematrix.errors import EdgeMatrixError, ModelError, QuantizationFormatError
from edgematrix.optimize.fx8 import Fx8Report, fx8_from_qdq, is_power_of_two, pow2_ceil, verify_power_of_two
from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

RNG = np.random.default_rng(0)
SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """x → Conv(8) → Relu → Conv(4) → y, FP32; its symmetric INT8 QDQ (TensorRT/TIDL form) and FX8."""
    d = tmp_path_factory.mktemp("fx8")
    w1 = (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((4, 8, 3, 3)) * 0.2).astype(np.float32)
    b1, b2 = (RNG.standard_normal(8) * 0.1).astype(np.float32), (RNG.standard_normal(4) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fp32 = d / "fp32.onnx"
    onnx.save(model, str(fp32))
    calib = [RNG.standard_normal(SHAPE).astype(np.float32) for _ in range(16)]
    int8 = d / "int8.onnx"
    quantize_static_qdq(fp32, int8, calib, input_name="x", config=QuantizeConfig.tensorrt(method="minmax"))
    asym = d / "asym.onnx"
    quantize_static_qdq(fp32, asym, calib, input_name="x", config=QuantizeConfig())  # uint8, zero point != 0
    return {"fp32": fp32, "int8": int8, "asym": asym, "dir": d}


@pytest.fixture(scope="module")
def fx8(models: dict[str, Path]) -> tuple[Path, Fx8Report]:
    out = models["dir"] / "fx8.onnx"
    return out, fx8_from_qdq(models["int8"], out)


def _run(path: Path, xs: list[np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x})[0] for x in xs])


def _consts(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize(
    ("scale", "expected"),
    [(0.25, 0.25), (0.3, 0.5), (0.0049, 2.0**-7), (0.25 * (1 + 2e-6), 0.25), (0.25 * (1 + 1e-4), 0.5), (3.0, 4.0)],
)
def test_pow2_ceil(scale: float, expected: float) -> None:
    got = pow2_ceil(np.array([scale], np.float32))
    assert got[0] == np.float32(expected)
    assert is_power_of_two(got).all()


def test_every_qdq_scale_is_a_power_of_two_and_zero_points_zero(
    models: dict[str, Path], fx8: tuple[Path, Fx8Report]
) -> None:
    path, report = fx8
    verification = verify_power_of_two(path)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert verification.qdq_nodes == len(nodes) == report.qdq_nodes == 10
    consts = _consts(path)
    for node in nodes:
        assert is_power_of_two(consts[node.input[1]]).all(), node.name
        assert not np.any(consts[node.input[2]]), node.name
    summary = report.summary()
    assert (
        summary["fx8_activation_scales"] == 3 and summary["fx8_weight_scales"] == 2 and summary["fx8_bias_scales"] == 2
    )
    assert summary["fx8_weights_requantized"] == 2 and summary["fx8_biases_requantized"] == 2
    assert 1.0 <= summary["fx8_max_scale_ratio"] < 4.0  # biases: product of two rounded-up scales
    assert 0.0 < summary["fx8_mean_bits_lost"] < 1.0
    for change in report.changes:
        assert change.max_ratio < (4.0 if change.kind == "bias" else 2.0), change


def test_weights_and_biases_requantized_consistently(models: dict[str, Path], fx8: tuple[Path, Fx8Report]) -> None:
    before, after = _consts(models["int8"]), _consts(fx8[0])
    for w in ("w1", "w2"):
        old = before[f"{w}_quantized"] * before[f"{w}_scale"].reshape(-1, 1, 1, 1)
        new_scale = after[f"{w}_scale"].reshape(-1, 1, 1, 1)
        new = after[f"{w}_quantized"] * new_scale
        assert after[f"{w}_quantized"].dtype == np.int8
        assert np.all(np.abs(new - old) <= new_scale / 2 + 1e-7)  # round-to-nearest on the new grid
    # bias scale = (power-of-two input scale) x (power-of-two weight scale), per channel
    np.testing.assert_array_equal(after["b1_quantized_scale"], after["x_scale"] * after["w1_scale"])
    np.testing.assert_array_equal(after["b2_quantized_scale"], after["r1_scale"] * after["w2_scale"])
    assert after["b1_quantized"].dtype == np.int32


def test_outputs_close_to_int8_and_fp32(models: dict[str, Path], fx8: tuple[Path, Fx8Report]) -> None:
    xs = [np.random.default_rng(100 + i).standard_normal(SHAPE).astype(np.float32) for i in range(16)]
    f, i8, fx = _run(models["fp32"], xs), _run(models["int8"], xs), _run(fx8[0], xs)
    scale = float(np.abs(f).max())
    int8_err = float(np.abs(i8 - f).max()) / scale
    fx8_err = float(np.abs(fx - f).max()) / scale
    assert float(np.abs(fx - i8).max()) / scale < 0.15
    assert fx8_err <= 3 * int8_err
    assert np.corrcoef(fx.ravel(), f.ravel())[0, 1] > 0.995
    assert not np.array_equal(fx, i8)  # the rewrite changed the arithmetic


def test_model_without_qdq_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(
        QuantizationFormatError, match=r"no QuantizeLinear/DequantizeLinear nodes.*QuantizeConfig.tensorrt"
    ):
        fx8_from_qdq(models["fp32"], tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_asymmetric_model_is_refused_naming_nodes(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(QuantizationFormatError) as err:
        fx8_from_qdq(models["asym"], tmp_path / "out.onnx")
    message = str(err.value)
    assert "asymmetrically quantized" in message and "zero point" in message
    assert "QuantizeConfig.tensorrt()" in message and "TDA4VM" in message


def test_verify_lists_every_non_power_of_two_node(models: dict[str, Path]) -> None:
    with pytest.raises(QuantizationFormatError) as err:
        verify_power_of_two(models["int8"])
    message = str(err.value)
    assert message.startswith("10 of 10 Q/DQ node(s) are not FX8")
    assert "x_QuantizeLinear (scale 'x_scale'" in message and "w1_DequantizeLinear" in message
    with pytest.raises(QuantizationFormatError, match="zero point"):
        verify_power_of_two(models["asym"])


def test_bad_paths(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match="is the source model itself"):
        fx8_from_qdq(models["int8"], models["int8"])
    with pytest.raises(ModelError, match="does not exist"):
        fx8_from_qdq(tmp_path / "missing.onnx", tmp_path / "out.onnx")

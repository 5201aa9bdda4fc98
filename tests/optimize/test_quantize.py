"""INT8 static QDQ quantization of the tiny UFLD model: structure, zero points, accuracy, errors.

Accuracy bound asserted: on held-out synthetic lane frames (the calibration distribution), every
INT8 output correlates with the FP32 output at > 0.99 and its largest error stays under 15% of
the output's largest magnitude (measured: minmax 0.998 / 7%, percentile 0.997 / 10%). Entropy
(KL) calibration clips outliers by design: > 0.98 and 30% (measured 0.990 / 22%). No timing
here: benchmarks/quantize_speed.py measures speed.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from edgematrix.data.lanes import preprocess
from edgematrix.data.synthetic_lanes import render_sample
from edgematrix.errors import EdgeMatrixError, ModelError, UnknownNameError
from edgematrix.export.onnx_export import export_onnx
from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2
from edgematrix.optimize.quantize import (
    CALIBRATION_METHODS,
    QuantizeConfig,
    quantize_static_qdq,
    zero_points,
)

SIZE = (64, 160)
BOUNDS = {"minmax": (0.99, 0.15), "percentile": (0.99, 0.15), "entropy": (0.98, 0.30)}  # (min corr, max rel err)


def _frames(start: int, count: int) -> np.ndarray:
    h, w = SIZE
    imgs = [
        np.asarray(render_sample(0, i)[0].resize((w, h), Image.Resampling.BILINEAR))
        for i in range(start, start + count)
    ]
    return preprocess(np.stack(imgs))


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    all_frames = _frames(0, 24)
    return {"bn": all_frames[:12], "calib": all_frames[12:20], "held_out": all_frames[20:]}


@pytest.fixture(scope="module")
def fp32_path(frames, tmp_path_factory):
    torch.manual_seed(0)
    model = UFLDv2(input_size=SIZE, width=8, mlp_mid_dim=64)
    for m in model.modules():  # one BatchNorm-statistics pass: realistic activation ranges
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.from_numpy(frames["bn"]))
    path = tmp_path_factory.mktemp("fp32") / "tiny_fp32.onnx"
    # torchscript exporter: faster here; the export tests cover the default (dynamo) exporter
    export_onnx(model.eval(), (1, 3, *SIZE), path, output_names=OUTPUT_NAMES, exporter="torchscript")
    return path


def _calib(frames) -> list[np.ndarray]:
    return [f[None] for f in frames["calib"]]


def _run(path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.concatenate(outs) for outs in zip(*(sess.run(None, {"input": xi[None]}) for xi in x), strict=True)]


def _assert_close_to_fp32(fp32_path, int8_path, x, method):
    min_corr, max_rel = BOUNDS[method]
    for name, ref, got in zip(OUTPUT_NAMES, _run(fp32_path, x), _run(int8_path, x), strict=True):
        assert got.dtype == np.float32 and got.shape == ref.shape
        corr = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert corr > min_corr, f"{name}: correlation {corr:.4f}"
        assert rel < max_rel, f"{name}: max error {rel:.3f} of max |fp32|"


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


@pytest.fixture(scope="module")
def trt_models(fp32_path, frames, tmp_path_factory):
    """One TensorRT-form model per calibration method."""
    out = tmp_path_factory.mktemp("int8")
    return {
        method: quantize_static_qdq(
            fp32_path,
            out / f"{method}.onnx",
            _calib(frames),
            input_name="input",
            config=QuantizeConfig.tensorrt(method=method),
        )
        for method in CALIBRATION_METHODS
    }


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_tensorrt_form_is_qdq_with_zero_points_zero(trt_models, method):
    res = trt_models[method]
    assert res.path.is_file() and res.method == method and res.calibration_images == 8
    ops = _ops(res.path)
    assert ops.count("QuantizeLinear") == res.qdq_pairs > 0 and "DequantizeLinear" in ops
    assert res.quantized_nodes >= 21  # 21 convs (backbone 20 + pool) at least
    zps = zero_points(onnx.load(res.path))
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps.values())
    assert QuantizeConfig.tensorrt(method=method).tensorrt_compatible


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_int8_outputs_close_to_fp32(trt_models, fp32_path, frames, method):
    _assert_close_to_fp32(fp32_path, trt_models[method].path, frames["held_out"], method)


def test_default_config_is_u8s8_for_ort_cpu_and_accurate(fp32_path, frames, tmp_path):
    config = QuantizeConfig(method="minmax")
    assert config == QuantizeConfig.ort_cpu(method="minmax") and config.resolved_activation_type == "uint8"
    assert not config.tensorrt_compatible
    assert QuantizeConfig(symmetric_activations=True).tensorrt_compatible  # "auto" follows symmetry
    res = quantize_static_qdq(fp32_path, tmp_path / "u8.onnx", _calib(frames), input_name="input", config=config)
    model = onnx.load(res.path)
    assert {z.dtype for z in zero_points(model).values()} == {np.dtype(np.uint8)}
    assert "Relu" not in _ops(res.path)  # folded into the uint8 zero points
    _assert_close_to_fp32(fp32_path, res.path, frames["held_out"], "minmax")


def _optimized_ops(path, tmp_path) -> list[str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]


def test_ort_cpu_runs_every_conv_in_int8(trt_models, fp32_path, frames, tmp_path):
    """split_fanout: without it ORT keeps the block-input convs of a ResNet in float."""
    ops = _optimized_ops(trt_models["minmax"].path, tmp_path)
    assert "Conv" not in ops and ops.count("QLinearConv") == 21
    assert "Gemm" not in ops and ops.count("QGemm") == 2

    shared = quantize_static_qdq(
        fp32_path,
        tmp_path / "shared.onnx",
        _calib(frames),
        input_name="input",
        config=QuantizeConfig.tensorrt(method="minmax", split_fanout=False),
    )
    assert "Conv" in _optimized_ops(shared.path, tmp_path)  # the slow form this option avoids


def test_model_outputs_stay_float(trt_models):
    graph = onnx.load(trt_models["minmax"].path).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producers[o.name] == "Reshape" for o in graph.output)
    assert "Slice" in {n.op_type for n in graph.node}
    assert all(producers[n.input[0]] != "DequantizeLinear" for n in graph.node if n.op_type == "Slice")


def _conv_weight_scales(path) -> list[tuple[int, np.ndarray]]:
    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq_by_output = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = dq_by_output[conv.input[1]]
        weight = inits[dq.input[0]]
        assert weight.dtype == np.int8
        out.append((weight.shape[0], inits[dq.input[1]]))
    return out


def test_per_channel_weight_scales(trt_models, fp32_path, frames, tmp_path):
    scales = _conv_weight_scales(trt_models["minmax"].path)
    assert len(scales) == 21
    for out_channels, scale in scales:
        assert scale.ndim == 1 and scale.shape == (out_channels,)

    per_tensor = quantize_static_qdq(
        fp32_path,
        tmp_path / "per_tensor.onnx",
        _calib(frames),
        input_name="input",
        config=QuantizeConfig.tensorrt(method="minmax", per_channel=False),
    )
    assert all(scale.size == 1 for _, scale in _conv_weight_scales(per_tensor.path))


def test_unknown_method_lists_the_valid_ones(fp32_path, frames, tmp_path):
    with pytest.raises(UnknownNameError, match=r"'kl'.*minmax, entropy, percentile"):
        quantize_static_qdq(
            fp32_path, tmp_path / "x.onnx", _calib(frames), input_name="input", config=QuantizeConfig(method="kl")
        )  # type: ignore[arg-type]


def test_input_validation(fp32_path, frames, tmp_path):
    with pytest.raises(EdgeMatrixError, match="no calibration data"):
        quantize_static_qdq(fp32_path, tmp_path / "x.onnx", [], input_name="input")
    with pytest.raises(EdgeMatrixError, match=r"shape \(1, 3, 32, 32\).*\(1, 3, 64, 160\)"):
        quantize_static_qdq(fp32_path, tmp_path / "x.onnx", [np.zeros((1, 3, 32, 32), np.float32)], input_name="input")
    with pytest.raises(EdgeMatrixError, match="has input"):
        quantize_static_qdq(fp32_path, tmp_path / "x.onnx", _calib(frames), input_name="image")
    with pytest.raises(EdgeMatrixError, match="zero point 128"):
        quantize_static_qdq(
            fp32_path,
            tmp_path / "x.onnx",
            _calib(frames),
            input_name="input",
            config=QuantizeConfig(activation_type="uint8", symmetric_activations=True),
        )
    with pytest.raises(EdgeMatrixError, match="exclude_nodes"):
        quantize_static_qdq(
            fp32_path,
            tmp_path / "x.onnx",
            _calib(frames),
            input_name="input",
            config=QuantizeConfig(exclude_nodes=("no_such_node",)),
        )
    assert not (tmp_path / "x.onnx").exists()


def test_corrupt_model_raises_model_error(frames, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not onnx")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        quantize_static_qdq(bad, tmp_path / "out.onnx", _calib(frames), input_name="input")


def test_calibration_limit_and_tempdir_cleanup(fp32_path, frames, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = replace(QuantizeConfig(), method="minmax", calibration_images=3)
    res = quantize_static_qdq(
        fp32_path, tmp_path / "out" / "q.onnx", iter(_calib(frames)), input_name="input", config=config
    )
    assert res.calibration_images == 3
    assert list(scratch.iterdir()) == []  # calibration temporaries removed
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["q.onnx"]

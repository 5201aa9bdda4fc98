"""Input-channel padding: same outputs, padded weights, a Pad node; no-op when already aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgematrix.errors import ModelError
from edgematrix.export.onnx_export import export_onnx
from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2
from edgematrix.optimize.graph import pad_input_channels


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pad") / "fp32.onnx"
    export_onnx(
        UFLDv2(input_size=(64, 160), width=8, mlp_mid_dim=32).eval(),
        (1, 3, 64, 160),
        path,
        output_names=OUTPUT_NAMES,
        input_name="input",
    )
    return path


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def test_padding_keeps_outputs_and_pads_weights(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "pad4.onnx"
    assert pad_input_channels(tiny_onnx, out, "input", 4) == 1
    model = onnx.load(str(out))
    assert model.graph.node[0].op_type == "Pad"
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert conv.input[0] == "input_pad4"
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}[conv.input[1]]
    assert w.shape[1] == 4 and not w[:, 3].any()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 160)).astype(np.float32)
    for a, b in zip(_run(tiny_onnx, x), _run(out, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_aligned_input_is_left_alone(tiny_onnx: Path, tmp_path: Path) -> None:
    assert pad_input_channels(tiny_onnx, tmp_path / "same.onnx", "input", 3) == 0
    assert "Pad" not in {n.op_type for n in onnx.load(str(tmp_path / "same.onnx")).graph.node}


def test_unknown_input_is_a_model_error(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no input 'image'"):
        pad_input_channels(tiny_onnx, tmp_path / "x.onnx", "image", 4)

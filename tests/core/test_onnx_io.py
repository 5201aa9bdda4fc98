"""The interface of an ONNX file edgematrix did not write, the problems of declared shapes, and the static copy
a cell deploys (inputs fixed to the declared shapes, outputs unchanged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from byom import build_detector, export_torch_detector
from edgematrix.core.onnx_io import concrete_shapes, fix_input_shapes, read_interface, shape_problems
from edgematrix.errors import ModelError


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_detector(tmp_path_factory.mktemp("det") / "det.onnx", widths=(8, 16), classes=3)


def test_interface_names_inputs_outputs_and_their_dynamic_dims(detector: Path) -> None:
    i = read_interface(detector)
    assert i.input_names == ["images"] and i.output_names == ["boxes", "scores"]
    assert i.inputs[0].dims == ("batch", 3, "height", "width") and i.inputs[0].dynamic == [0, 2, 3]
    assert i.inputs[0].describe() == "float32[batch, 3, height, width]"
    assert i.outputs[1].describe() == "float32[batch, anchors, 3]"
    assert (i.opset, i.producer) == (13, "onnx.helper")


def test_shape_problems_name_the_input_and_the_dimension(detector: Path) -> None:
    i = read_interface(detector)
    assert shape_problems(i, {"images": [1, 3, 64, 96]}) == []
    (missing,) = shape_problems(i, {})
    assert missing == (
        "input 'images' (float32[batch, 3, height, width]) has dynamic dimension(s) 0 ('batch'), 2 ('height'), "
        "3 ('width') and no declared shape; declare it: input_shapes = { images = [N, 3, N, N] } with N the "
        "size to build and measure at"
    )
    assert shape_problems(i, {"images": [1, 4, 64, 96]}) == [
        "input 'images' dim 1 is fixed to 3 in the file (float32[batch, 3, height, width]); input_shapes declares 4"
    ]
    assert "declares [1, 3, 64] (3 dims)" in shape_problems(i, {"images": [1, 3, 64]})[0]
    unknown = shape_problems(i, {"image": [1, 3, 64, 96]})
    assert unknown[0] == "input_shapes names input 'image', which the model does not have (its inputs: images)"
    assert "has dynamic dimension(s)" in unknown[1]  # and the real input is still undeclared
    with pytest.raises(ModelError, match=r"det\.onnx: input 'images' dim 1 is fixed to 3"):
        concrete_shapes(i, {"images": [1, 4, 64, 96]})


def test_fixed_copy_is_static_and_computes_what_the_original_does(detector: Path, tmp_path: Path) -> None:
    fixed = fix_input_shapes(detector, tmp_path / "fixed.onnx", {"images": [1, 3, 64, 96]})
    assert fixed.inputs[0].dims == (1, 3, 64, 96)
    # outputs inferred again at the declared shape: 64x96 / 2 / 2 = 16x24 cells, 2 anchors each
    assert fixed.outputs[0].dims == (1, 768, 4) and fixed.outputs[1].dims == (1, 768, 3)
    x = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
    a = ort.InferenceSession(str(detector)).run(None, {"images": x})
    b = ort.InferenceSession(str(tmp_path / "fixed.onnx")).run(None, {"images": x})
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ModelError, match="has dynamic dimension"):
        fix_input_shapes(detector, tmp_path / "none.onnx", {})
    assert not (tmp_path / "none.onnx").exists()


def test_a_file_that_is_not_onnx_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ModelError, match=r"model\.onnx is not a readable ONNX model"):
        read_interface(bad)
    with pytest.raises(ModelError, match=r"ONNX file .*missing\.onnx not found"):
        read_interface(tmp_path / "missing.onnx")


def test_a_torch_onnx_export_with_size_dependent_reshapes_is_fixed_into_a_valid_model(tmp_path: Path) -> None:
    """torch.onnx (TorchScript exporter, opset 13) computes its reshapes from Shape ops: the outputs' sizes stay
    unknown in the copy, which must still be a valid model (the INT8 step pads and checks it)."""
    import onnx

    from edgematrix.optimize.graph import pad_input_channels

    src = export_torch_detector(tmp_path / "torch_det.onnx")
    assert read_interface(src).inputs[0].dims == ("batch", 3, "height", "width")
    fixed = fix_input_shapes(src, tmp_path / "fixed.onnx", {"images": [1, 3, 96, 128]})
    assert fixed.inputs[0].dims == (1, 3, 96, 128) and [len(o.dims) for o in fixed.outputs] == [3, 3]
    onnx.checker.check_model(onnx.load(str(tmp_path / "fixed.onnx")), full_check=True)
    assert pad_input_channels(tmp_path / "fixed.onnx", tmp_path / "padded.onnx", "images", 4) == 1
    x = np.random.default_rng(1).random((1, 3, 96, 128), dtype=np.float32)
    a = ort.InferenceSession(str(src)).run(None, {"images": x})
    b = ort.InferenceSession(str(tmp_path / "padded.onnx")).run(None, {"images": x})
    assert a[0].shape == (1, 2 * 12 * 16, 4) and a[1].shape == (1, 2 * 12 * 16, 5)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)

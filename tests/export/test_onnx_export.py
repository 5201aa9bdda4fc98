"""torch → ONNX export: a checked, simplified, self-contained file; broken numerics and files are caught."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

from edgematrix.errors import EdgeMatrixError, ModelError
from edgematrix.export.onnx_export import ExportResult, check_numerics, export_onnx, load_onnx
from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2

SHAPE = (1, 3, 64, 160)


@pytest.fixture(scope="module")
def tiny() -> UFLDv2:
    torch.manual_seed(0)
    return UFLDv2(input_size=(64, 160), width=8, mlp_mid_dim=64).eval()


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> ExportResult:
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    return export_onnx(tiny, SHAPE, path, output_names=OUTPUT_NAMES)


def test_export_writes_one_checked_self_contained_file(exported):
    assert exported.path.is_file()
    # nothing beside it: no external-data file, no leftover temporary
    assert [p.name for p in exported.path.parent.iterdir()] == ["tiny.onnx"]
    model = load_onnx(exported.path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert exported.opset == opset >= 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_export_keeps_names_and_static_shape(exported):
    model = onnx.load(exported.path)
    assert exported.output_names == OUTPUT_NAMES
    assert tuple(o.name for o in model.graph.output) == OUTPUT_NAMES
    assert [i.name for i in model.graph.input] == ["input"] == [exported.input_name]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert tuple(dims) == SHAPE


def test_export_is_simplified_and_within_tolerance(exported):
    assert exported.simplified
    assert (exported.atol, exported.rtol) == (1e-4, 1e-3)
    assert 0.0 <= exported.max_abs_diff <= exported.atol
    ops = {n.op_type for n in onnx.load(exported.path).graph.node}
    assert "BatchNormalization" not in ops and "Identity" not in ops  # folded / removed
    assert {"Conv", "Gemm"} <= ops


def test_check_numerics_passes_for_the_exported_model(exported, tiny):
    diff = check_numerics(exported.path, tiny, SHAPE, atol=1e-4, rtol=1e-3, seed=3)
    assert 0.0 <= diff <= 1e-4


def test_check_numerics_catches_a_model_that_differs(exported, tiny):
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        other.cls[2].bias += 0.05  # every logit moves by 0.05
    with pytest.raises(ModelError, match=r"output 'loc_row'.*max \|ort - torch\| = 0\.05"):
        check_numerics(exported.path, other, SHAPE, atol=1e-3, rtol=1e-3)


def test_export_with_zero_tolerance_fails_and_leaves_no_file(tiny, tmp_path):
    # ORT and torch round differently (~1e-7), so a zero tolerance must fail the check
    target = tmp_path / "strict.onnx"
    with pytest.raises(ModelError, match="differs from torch"):
        export_onnx(tiny, SHAPE, target, output_names=OUTPUT_NAMES, atol=0.0, rtol=0.0, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_torchscript_exporter_and_training_mode_restored(tmp_path):
    torch.manual_seed(1)
    model = UFLDv2(input_size=(64, 160), width=8, mlp_mid_dim=64).train()
    res = export_onnx(model, SHAPE, tmp_path / "ts.onnx", output_names=OUTPUT_NAMES, exporter="torchscript")
    assert model.training  # export ran in eval mode, then put the model back
    assert res.exporter == "torchscript" and res.opset == 17 and res.max_abs_diff <= res.atol


def test_export_validates_arguments(tiny, tmp_path):
    with pytest.raises(EdgeMatrixError, match="opset >= 17"):
        export_onnx(tiny, SHAPE, tmp_path / "a.onnx", output_names=OUTPUT_NAMES, opset=13)
    with pytest.raises(EdgeMatrixError, match="4 output"):
        export_onnx(tiny, SHAPE, tmp_path / "b.onnx", output_names=("only_one",), exporter="torchscript")
    with pytest.raises(EdgeMatrixError, match="available: dynamo, torchscript"):
        export_onnx(tiny, SHAPE, tmp_path / "c.onnx", exporter="tflite")  # type: ignore[arg-type]


def test_load_onnx_corrupt_missing_and_truncated(exported, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all\xff\xff\xff")
    with pytest.raises(ModelError, match=r"garbage\.onnx.*(corrupt|fails onnx\.checker|empty graph).*Re-export"):
        load_onnx(garbage)

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.path.read_bytes()[:2000])
    with pytest.raises(ModelError, match=r"truncated\.onnx"):
        load_onnx(truncated)

    with pytest.raises(ModelError, match=r"missing\.onnx does not exist"):
        load_onnx(tmp_path / "missing.onnx")

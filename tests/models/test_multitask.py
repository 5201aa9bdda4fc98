from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgematrix.errors import ModelError
from edgematrix.export.onnx_export import export_onnx
from edgematrix.models import create_model, families
from edgematrix.models.multitask import MultiTaskNet
from edgematrix.tasks import multitask as task_multitask

TINY = {"width": 0.25, "features": 8, "head_channels": 8, "num_classes": 5, "max_depth": 50.0}
SHAPE = [1, 3, 32, 64]


def tiny() -> MultiTaskNet:
    torch.manual_seed(0)
    return create_model("multitask_seg_depth", SHAPE, **TINY).eval()


def test_registered_and_shapes() -> None:
    assert "multitask_seg_depth" in families
    m = tiny()
    with torch.no_grad():
        seg, depth = m(torch.randn(2, 3, 32, 64))
    assert seg.shape == (2, 5, 32, 64)
    assert depth.shape == (2, 1, 32, 64)
    assert float(depth.min()) > 0 and float(depth.max()) < 50.0
    assert m.encoder(torch.randn(1, 3, 32, 64)).shape == (1, 8, 8, 16)
    assert set(m.heads) == {"seg", "depth"}


def test_names_agree_with_the_task_adapter() -> None:
    assert MultiTaskNet.OUTPUT_NAMES == task_multitask.OUTPUT_NAMES
    assert MultiTaskNet.ENCODER_OUTPUTS == task_multitask.ENCODER_OUTPUTS


def test_default_size_is_the_documented_one() -> None:
    m = create_model("multitask_seg_depth", [1, 3, 192, 384])
    assert sum(p.numel() for p in m.parameters()) == 295512


def test_bad_params_name_the_family() -> None:
    with pytest.raises(ModelError, match="multiples of 16"):
        create_model("multitask_seg_depth", [1, 3, 30, 64])
    with pytest.raises(ModelError, match="rejected its params"):
        create_model("multitask_seg_depth", SHAPE, depth=3)


def _ancestors(graph: onnx.GraphProto, output: str) -> set[int]:
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    seen: set[int] = set()
    stack = [output]
    while stack:
        t = stack.pop()
        if t in producer and producer[t] not in seen:
            seen.add(producer[t])
            stack.extend(graph.node[producer[t]].input)
    return seen


def test_exported_heads_read_only_the_encoder_output(tmp_path: Path) -> None:
    m = tiny()
    path = tmp_path / "mt.onnx"
    export_onnx(m, tuple(SHAPE), path, output_names=MultiTaskNet.OUTPUT_NAMES)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    seg_nodes, depth_nodes = _ancestors(g, "seg"), _ancestors(g, "depth")
    encoder = seg_nodes & depth_nodes
    heads = (seg_nodes | depth_nodes) - encoder
    assert encoder and heads
    enc_tensors = {o for i in encoder for o in g.node[i].output} | {"input"}
    crossing = {t for i in heads for t in g.node[i].input if t in enc_tensors}
    assert len(crossing) == 1, f"heads read {crossing}; only the encoder's one output may cross the cut"
    (cut,) = crossing
    assert cut != "input"
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.value_info}
    assert shapes[cut] == [1, 8, 8, 16]

    # the cut composes: heads(encoder(x)) == model(x)
    enc_p, seg_p, depth_p = tmp_path / "enc.onnx", tmp_path / "seg.onnx", tmp_path / "depth.onnx"
    onnx.utils.extract_model(str(path), str(enc_p), ["input"], [cut])
    onnx.utils.extract_model(str(path), str(seg_p), [cut], ["seg"])
    onnx.utils.extract_model(str(path), str(depth_p), [cut], ["depth"])
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    def run(p: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)

    full_seg, full_depth = run(path, {"input": x})
    (feat,) = run(enc_p, {"input": x})
    (seg,) = run(seg_p, {cut: feat})
    (depth,) = run(depth_p, {cut: feat})
    np.testing.assert_allclose(seg, full_seg, atol=1e-5)
    np.testing.assert_allclose(depth, full_depth, atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(feat, m.encoder(torch.from_numpy(x)).numpy(), atol=1e-4)

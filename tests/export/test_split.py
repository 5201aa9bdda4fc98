"""split_model / find_cut / check_split on tiny multi-head torch models and hand-built ONNX graphs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgematrix.backends.split.manifest import file_sha256, load_manifest
from edgematrix.errors import EdgeMatrixError, ModelError
from edgematrix.export.split import check_split, find_cut, split_model
from split_models import OUTPUTS, exported, frames, whole_outputs


def _run_split(result_dir: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    manifest = load_manifest(result_dir / "manifest.json")
    enc = ort.InferenceSession(str(manifest.path_of("encoder")), providers=["CPUExecutionProvider"])
    features = dict(zip(manifest.encoder.outputs, enc.run(list(manifest.encoder.outputs), feed), strict=True))
    out: dict[str, np.ndarray] = {}
    for head in manifest.heads:
        sess = ort.InferenceSession(str(manifest.path_of(head.name)), providers=["CPUExecutionProvider"])
        out.update(zip(head.outputs, sess.run(list(head.outputs), {n: features[n] for n in head.inputs}), strict=True))
    return out


def test_auto_cut_finds_the_trunk_tensor(tmp_path: Path) -> None:
    model = exported("one_feature")
    assert find_cut(onnx.load(str(model.path)), list(OUTPUTS)) == [model.trunk_output]
    result = split_model(model.path, tmp_path, heads=list(OUTPUTS))
    assert result.auto_cut
    assert [(f.name, f.source, f.shape, f.dtype) for f in result.features] == [
        ("features", model.trunk_output, (1, 16, 16, 16), "float32")
    ]
    assert result.head_inputs == {"seg": ("features",), "depth": ("features",)}
    assert 0.0 <= result.max_abs_diff <= 1e-4


@pytest.mark.parametrize("kind", ["one_feature", "two_features"])
def test_encoder_then_heads_equals_the_whole_model(kind: str, tmp_path: Path) -> None:
    model = exported(kind)
    result = split_model(model.path, tmp_path, heads=list(OUTPUTS))
    assert result.max_abs_diff <= 1e-4
    for feed in frames(3, seed=11):  # seeds check_split did not use
        want = whole_outputs(model.path, feed)
        got = _run_split(tmp_path, feed)
        assert list(got) == list(OUTPUTS)
        for name in OUTPUTS:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)
    # the subgraphs have clean io names and the whole model's input / output names
    encoder = onnx.load(str(result.encoder))
    assert [i.name for i in encoder.graph.input] == ["input"]
    assert [o.name for o in encoder.graph.output] == [f.name for f in result.features]
    for head, path in result.heads.items():
        sub = onnx.load(str(path))
        assert [o.name for o in sub.graph.output] == [head]
        assert (
            tuple(i.name for i in sub.graph.input if i.name not in {t.name for t in sub.graph.initializer})
            == (result.head_inputs[head])
        )
        assert not {n.name for n in sub.graph.node} & {n.name for n in encoder.graph.node}  # no trunk node


def test_two_feature_maps_are_both_cut_and_each_head_reads_what_it_needs(tmp_path: Path) -> None:
    model = exported("two_features")
    result = split_model(model.path, tmp_path, heads=list(OUTPUTS))
    assert [f.name for f in result.features] == ["features_0", "features_1"]
    assert [f.shape for f in result.features] == [(1, 8, 32, 32), (1, 16, 16, 16)]
    assert result.features[1].source == model.trunk_output
    assert result.head_inputs == {"seg": ("features_0", "features_1"), "depth": ("features_1",)}


def test_manifest_lists_files_io_placements_and_hashes(tmp_path: Path) -> None:
    model = exported("one_feature")
    result = split_model(model.path, tmp_path, heads=["depth", "seg"])  # head order is the caller's
    data = json.loads(result.manifest.read_text())
    assert data["format"] == "edgematrix-split/1"
    assert data["outputs"] == ["depth", "seg"]
    assert data["source_sha256"] == file_sha256(model.path)
    assert data["max_abs_diff"] == result.max_abs_diff
    rows = {s["name"]: s for s in data["subgraphs"]}
    assert list(rows) == ["encoder", "depth", "seg"]
    assert rows["encoder"]["inputs"] == ["input"] and rows["encoder"]["outputs"] == ["features"]
    assert rows["seg"]["file"] == "seg.onnx" and rows["seg"]["outputs"] == ["seg"]
    for row in rows.values():
        assert (row["precision"], row["device"], row["threads"]) == ("fp32", "cpu", 0)
        assert row["sha256"] == file_sha256(tmp_path / row["file"])


def test_explicit_cut_gives_the_same_split(tmp_path: Path) -> None:
    model = exported("one_feature")
    result = split_model(model.path, tmp_path, heads=list(OUTPUTS), encoder_outputs=[model.trunk_output])
    assert not result.auto_cut
    assert [f.source for f in result.features] == [model.trunk_output]
    assert result.max_abs_diff <= 1e-4


def test_a_cut_inside_one_head_is_refused(tmp_path: Path) -> None:
    model = exported("one_feature")
    proto = onnx.load(str(model.path))
    # the output of the seg head's first Conv: the depth head would still need the model input
    inside_seg = next(n.output[0] for n in proto.graph.node if n.op_type == "Conv" and model.trunk_output in n.input)
    with pytest.raises(ModelError, match=r"head 'depth' reads model input\(s\) \['input'\] directly"):
        split_model(model.path, tmp_path, heads=list(OUTPUTS), encoder_outputs=[inside_seg])
    with pytest.raises(ModelError, match="not tensors computed by the model"):
        split_model(model.path, tmp_path, heads=list(OUTPUTS), encoder_outputs=["no_such_tensor"])


def test_unknown_head_names_the_outputs(tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"\['lanes'\] are not outputs of .*its outputs: seg, depth"):
        split_model(exported("one_feature").path, tmp_path, heads=["seg", "lanes"])


def test_check_split_raises_with_the_figures_when_a_head_is_wrong(tmp_path: Path) -> None:
    model = exported("one_feature")
    result = split_model(model.path, tmp_path, heads=list(OUTPUTS))
    seg = onnx.load(str(result.heads["seg"]))
    weight = next(t for t in seg.graph.initializer if len(t.dims) == 4)
    arr = numpy_helper.to_array(weight).copy()
    arr *= 1.5
    weight.CopyFrom(numpy_helper.from_array(arr, weight.name))
    onnx.save(seg, str(result.heads["seg"]))
    with pytest.raises(ModelError, match="changed after the manifest was written"):
        check_split(model.path, result.manifest)
    manifest = load_manifest(result.manifest, verify=False)  # record the wrong file as if deployed that way
    entries = tuple(
        replace(s, sha256=file_sha256(result.heads["seg"])) if s.name == "seg" else s for s in manifest.subgraphs
    )
    manifest.with_subgraphs(entries, tmp_path).save(result.manifest)
    with pytest.raises(ModelError, match=r"output 'seg' .* max \|diff\| = [0-9.e+-]+ > atol 0.0001 \(seed 0"):
        check_split(model.path, result.manifest)
    assert check_split(model.path, result.manifest, atol=1e3) > 1e-3  # the figure itself


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _io(shape: list[int]) -> tuple[onnx.ValueInfoProto, list[onnx.ValueInfoProto]]:
    return (
        helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("h1", "h2")],
    )


def test_a_constant_shared_by_both_heads_does_not_cross_the_cut(tmp_path: Path) -> None:
    x, outs = _io([1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["t"]),
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.full((1, 4), 2.0, np.float32))),
        helper.make_node("Sigmoid", ["t"], ["s"]),
        helper.make_node("Tanh", ["t"], ["u"]),
        helper.make_node("Add", ["s", "c"], ["h1"]),
        helper.make_node("Mul", ["u", "c"], ["h2"]),
    ]
    path = _save(helper.make_graph(nodes, "g", [x], outs), tmp_path / "const.onnx")
    assert find_cut(onnx.load(str(path)), ["h1", "h2"]) == ["t"]
    result = split_model(path, tmp_path / "split", heads=["h1", "h2"])
    assert result.max_abs_diff <= 1e-6
    head = onnx.load(str(result.heads["h2"]))
    assert [n.op_type for n in head.graph.node] == ["Constant", "Tanh", "Mul"]  # the constant is copied


def test_a_shape_tensor_crossing_the_cut_is_reported_as_ambiguous(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 6]) for n in ("h1", "h2")]
    nodes = [
        helper.make_node("Relu", ["x"], ["t"]),
        helper.make_node("Shape", ["t"], ["s"]),
        helper.make_node("Sigmoid", ["t"], ["a"]),
        helper.make_node("Tanh", ["t"], ["b"]),
        helper.make_node("Reshape", ["a", "s"], ["h1"]),
        helper.make_node("Reshape", ["b", "s"], ["h2"]),
    ]
    path = _save(helper.make_graph(nodes, "g", [x], outs), tmp_path / "shape.onnx")
    with pytest.raises(ModelError, match=r"ambiguous: candidate tensors \['t', 's'\], of which \['s'\] are not float"):
        split_model(path, tmp_path / "split", heads=["h1", "h2"])
    result = split_model(path, tmp_path / "split", heads=["h1", "h2"], encoder_outputs=["t"])  # by hand: fine
    assert result.max_abs_diff == 0.0


def test_heads_without_a_shared_trunk_are_refused(tmp_path: Path) -> None:
    x, outs = _io([1, 4])
    nodes = [helper.make_node("Sigmoid", ["x"], ["h1"]), helper.make_node("Tanh", ["x"], ["h2"])]
    path = _save(helper.make_graph(nodes, "g", [x], outs), tmp_path / "apart.onnx")
    with pytest.raises(ModelError, match="share no node"):
        split_model(path, tmp_path / "split", heads=["h1", "h2"])


def test_a_head_inside_the_trunk_and_a_single_head_are_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("t", "h2")]
    nodes = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Sigmoid", ["t"], ["h2"])]
    path = _save(helper.make_graph(nodes, "g", [x], outs), tmp_path / "inside.onnx")
    with pytest.raises(ModelError, match="head 't' is computed entirely by the trunk"):
        split_model(path, tmp_path / "split", heads=["t", "h2"])
    with pytest.raises(EdgeMatrixError, match=r"one head .* has no shared trunk"):
        split_model(path, tmp_path / "split", heads=["h2"])

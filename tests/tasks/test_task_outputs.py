"""The ``outputs`` task: images from a folder through the declared preprocessing (or seeded random inputs, said
in the metric's name), every input of the model fed, agreement with the FP32 reference as the metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from byom import build_detector, write_images
from edgematrix.errors import EdgeMatrixError, ModelError
from edgematrix.matrix.loader import load_matrix
from edgematrix.metrics.agreement import output_agreement
from edgematrix.tasks.base import get_task

REPO = Path(__file__).resolve().parents[2]


def _workspace(tmp_path: Path, model_toml: str) -> Path:
    (tmp_path / "matrix").mkdir(exist_ok=True)
    shutil.copy(REPO / "matrix" / "targets.toml", tmp_path / "matrix" / "targets.toml")
    (tmp_path / "matrix" / "m.toml").write_text(model_toml)
    return tmp_path


def _two_input_model(path: Path) -> Path:
    """``pixels`` uint8 [1, H, W, 3] (channels last) and ``gain`` float [1, 1]: out = mean(pixels) * gain + bias,
    ``bias`` an initializer listed among the graph inputs (old exporters): not an input to feed."""
    nodes = [
        helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "gain"], ["g"]),
        helper.make_node("Add", ["g", "bias"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, "h", "w", 3]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.full(1, 0.5, np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_folder_splits_into_calibration_and_evaluation_with_the_declared_preprocessing(tmp_path: Path) -> None:
    build_detector(tmp_path / "det.onnx", widths=(8,), classes=2)
    files = write_images(tmp_path / "imgs", 24, sizes=((40, 80), (60, 60)))
    ws = _workspace(
        tmp_path,
        '[models.det]\ndescription = "d"\nonnx = "det.onnx"\ntask = "outputs"\ndata_root = "imgs"\n'
        "input_shapes = { images = [1, 3, 32, 48] }\n"
        '[models.det.images]\nresize = "letterbox"\nmean = [10.0, 20.0, 30.0]\nstd = [2.0, 4.0, 8.0]\nchannels = "bgr"\n',
    )
    cfg = load_matrix(ws / "matrix").models["det"]
    task = get_task("outputs")
    data = task.load_data(cfg, None, tmp_path / "cache")
    assert (len(data.train), len(data.test)) == (18, 6)  # the last quarter evaluates
    assert data.test.files == files[18:] and data.train.files == files[:18] and data.tag == "images"
    assert task.metric == "output agreement (cosine % vs FP32, worst output)"
    assert task.output_names == ("boxes", "scores")
    assert data.label.startswith("24 images (18 calibration, 6 evaluation; letterbox to 32×48, BGR")
    feed = task.feed(data.test, 0)
    assert list(feed) == ["images"] and feed["images"].shape == (1, 3, 32, 48) and feed["images"].dtype == np.float32
    # the same pixels computed here with PIL: letterbox 40x80 (or 60x60) into 32x48 with 114 padding
    with Image.open(files[18]) as im:
        rgb = im.convert("RGB")
    scale = min(48 / rgb.width, 32 / rgb.height)
    w, h = round(rgb.width * scale), round(rgb.height * scale)
    canvas = Image.new("RGB", (48, 32), (114, 114, 114))
    canvas.paste(rgb.resize((w, h), Image.Resampling.BILINEAR), ((48 - w) // 2, (32 - h) // 2))
    bgr = np.asarray(canvas, np.float32)[..., ::-1].transpose(2, 0, 1)
    expected = (bgr - np.array([10.0, 20.0, 30.0])[:, None, None]) / np.array([2.0, 4.0, 8.0])[:, None, None]
    np.testing.assert_allclose(feed["images"][0], expected, rtol=1e-6)
    again = task.load_data(cfg, None, tmp_path / "cache")
    assert again.key == data.key
    (files[0]).write_bytes(files[1].read_bytes())  # one image changes: another dataset
    assert task.load_data(cfg, None, tmp_path / "cache").key != data.key


def test_without_images_the_inputs_are_seeded_random_and_the_metric_says_so(tmp_path: Path) -> None:
    _two_input_model(tmp_path / "two.onnx")
    ws = _workspace(
        tmp_path,
        '[models.two]\ndescription = "two inputs"\nonnx = "two.onnx"\ntask = "outputs"\n'
        "input_shapes = { pixels = [1, 8, 12, 3] }\n",
    )
    cfg = load_matrix(ws / "matrix").models["two"]
    assert cfg.input_shapes == {"pixels": [1, 8, 12, 3], "gain": [1, 1]} and cfg.input_shape == [1, 8, 12, 3]
    task = get_task("outputs")
    data = task.load_data(cfg, None, tmp_path / "cache")
    assert task.metric == "output agreement (cosine % vs FP32, worst output) on seeded random inputs"
    assert data.tag == "random-inputs" and data.synthetic and (len(data.train), len(data.test)) == (32, 16)
    assert data.label.startswith("seeded random inputs (seed 0, 32 calibration / 16 evaluation samples; no images")
    feed = task.feed(data.test, 3)
    # the uint8 image input takes pixels as they are, channels last (its shape says so); gain is seeded noise
    assert feed["pixels"].dtype == np.uint8 and feed["pixels"].shape == (1, 8, 12, 3)
    assert feed["gain"].dtype == np.float32 and feed["gain"].shape == (1, 1)
    np.testing.assert_array_equal(feed["gain"], task.load_data(cfg, None, tmp_path / "c2").test.extra[3]["gain"])
    import onnxruntime as ort

    out = ort.InferenceSession(str(tmp_path / "two.onnx")).run(None, feed)[0]
    assert out.item() == pytest.approx(float(feed["pixels"].mean()) * float(feed["gain"][0, 0]) + 0.5, rel=1e-5)


def test_score_is_the_worst_outputs_cosine_with_every_figure_per_output(tmp_path: Path) -> None:
    task = get_task("outputs")
    rng = np.random.default_rng(0)
    ref = [{"boxes": rng.normal(size=(1, 5, 4)), "scores": rng.random((1, 5, 2))} for _ in range(4)]
    cand = [{"boxes": r["boxes"] + rng.normal(0, 0.2, (1, 5, 4)), "scores": r["scores"] + 0.01} for r in ref]
    split = type("Split", (), {"__len__": lambda self: 4, "files": []})()
    own = task.score(ref, split, None, "reference", model=None, reference=ref)
    assert own.accuracy == 100.0 and own.extras["snr_db"] == 200.0 and own.extras["max_rel_boxes"] == 0.0
    score = task.score(cand, split, tmp_path, "candidate", model=None, reference=ref)
    boxes, scores = output_agreement(ref, cand)
    assert score.accuracy == pytest.approx(100 * min(boxes.cosine, scores.cosine))
    assert score.extras["cosine_boxes"] == pytest.approx(boxes.cosine)
    assert score.extras["snr_db_scores"] == pytest.approx(scores.snr_db)
    assert score.extras["max_abs_scores"] == pytest.approx(0.01)
    assert score.extras["max_rel"] == pytest.approx(max(boxes.max_rel, scores.max_rel))
    doc = json.loads((tmp_path / "predictions-candidate.json").read_text())
    assert doc["metric_of_record"] == pytest.approx(score.accuracy) and doc["samples"] == 4
    assert doc["outputs"]["boxes"]["per_sample_cosine"] == pytest.approx(list(boxes.per_sample_cosine))
    with pytest.raises(EdgeMatrixError, match="scores agreement with the FP32 reference: score\\(\\) needs reference="):
        task.score(cand, split, None, "candidate", model=None)


def test_no_labels_no_training_and_no_drawing(tmp_path: Path) -> None:
    task = get_task("outputs")
    with pytest.raises(ModelError, match=r"no labels to train a model from scratch; give the trained weights"):
        task.train(None, None, None, tmp_path / "x.pt", progress=False)
    with pytest.raises(EdgeMatrixError, match=r"has no drawing of its outputs"):
        task.drive(None, 4, 0)

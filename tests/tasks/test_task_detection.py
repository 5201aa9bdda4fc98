"""The detection adapter end to end on a tiny synthetic set: data, training, ONNX export, evaluation through a
real ONNX Runtime runner (COCO results + labels written), drive and overlay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgematrix.backends.base import create_runner
from edgematrix.errors import DataError
from edgematrix.export.onnx_export import export_onnx
from edgematrix.matrix.schema import Model
from edgematrix.metrics.coco import score_files
from edgematrix.models import create_model
from edgematrix.models.detection_task import encode_boxes
from edgematrix.tasks.base import get_task


def _cfg(**params) -> Model:
    return Model(
        description="tiny detector",
        family="ssdlite",
        task="detection",
        dataset="coco",
        input_shape=[1, 3, 64, 96],
        params={"num_classes": 4, "width": 0.25, "neck_channels": 16, "head_depth": 1, **params},
        synthetic={"train": 6, "test": 3, "seed": 2},
        train={"epochs": 1, "batch_size": 3, "lr": 3e-3, "amp": "off"},
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_evaluate_writes_coco_results_through_onnxruntime(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EDGEMATRIX_DATA_ROOT", raising=False)
    task = get_task("detection")
    assert task.metric == "mAP@[.5:.95]" and task.output_names == ("scores", "boxes")
    cfg = _cfg()
    data = task.load_data(cfg, None, cache)
    assert data.synthetic and data.tag == "synthetic-coco" and len(data.train) == 6 and len(data.test) == 3
    assert data.train.images.shape == (6, 3, 64, 96)
    model = create_model(cfg.family, cfg.input_shape, **cfg.params)
    outcome = task.train(model, data, cfg.train, tmp_path / "ckpt.pt", progress=False)
    assert not outcome.cache_hit and len(outcome.history) == 1
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, tuple(cfg.input_shape), onnx_path, output_names=task.output_names, input_name="input")
    out = tmp_path / "results"
    with create_runner("onnxruntime", path=onnx_path) as runner:
        result = task.evaluate(runner, data.test, out, "candidate", model=model)
    preds = json.loads((out / "predictions-candidate.json").read_text())
    labels = json.loads((out / "labels.json").read_text())
    assert {im["id"] for im in labels["images"]} == set(data.test.image_ids)
    assert isinstance(preds, list)
    for p in preds:
        assert set(p) == {"image_id", "category_id", "bbox", "score"}
        assert p["image_id"] in data.test.image_ids and p["category_id"] in (1, 2, 3, 4)
        x, y, w, h = p["bbox"]
        assert w >= 0 and h >= 0 and 0 <= x <= 640 and 0 <= y <= 384  # original image coordinates
    assert 0.0 <= result.accuracy <= 100.0 and set(result.extras) == {"map50", "map75", "ar100"}
    # the files score the same with the standalone scorer
    if preds:
        assert score_files(out / "predictions-candidate.json", out / "labels.json")["AP"] * 100 == pytest.approx(
            result.accuracy, abs=1e-9
        )


class _Echo:
    """A runner stand-in that returns outputs encoding the ground truth of each image exactly."""

    def __init__(self, split, geometry) -> None:
        self.split, self.g, self.i = split, geometry, 0
        self.pts, self.strides = geometry.points()

    def infer(self, feed):
        scores = np.full((1, self.g.num_anchors, self.g.num_classes), -12.0, np.float32)
        raw = np.zeros((1, self.g.num_anchors, 4), np.float32)
        used: set[int] = set()
        for box, label in zip(self.split.boxes[self.i], self.split.labels[self.i], strict=True):
            c = (box[:2] + box[2:]) / 2
            inside = (self.pts > box[:2]).all(1) & (self.pts < box[2:]).all(1)
            inside[list(used)] = False
            a = int(np.argmin(((self.pts - c) ** 2).sum(1) + 1e9 * ~inside))  # the free cell nearest the centre
            used.add(a)
            raw[0, a] = encode_boxes(box[None], self.pts[a : a + 1], self.strides[a : a + 1])[0]
            scores[0, a, label] = 5.0
        self.i += 1
        return {"scores": scores, "boxes": raw}


def test_perfect_outputs_score_100(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EDGEMATRIX_DATA_ROOT", raising=False)
    task = get_task("detection")
    cfg = _cfg().model_copy(update={"input_shape": [1, 3, 384, 640]})  # native size: every box holds cell centres
    data = task.load_data(cfg, None, cache)
    model = create_model(cfg.family, cfg.input_shape, **cfg.params)
    result = task.evaluate(_Echo(data.test, model.geometry), data.test, tmp_path, "reference", model=model)  # type: ignore[arg-type]
    assert result.accuracy == pytest.approx(100.0, abs=1e-6)
    assert result.extras["map50"] == pytest.approx(100.0)


def test_bad_data_roots_and_class_counts(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EDGEMATRIX_DATA_ROOT", raising=False)
    task = get_task("detection")
    with pytest.raises(DataError, match="does not exist; point it at a COCO-format folder"):
        task.load_data(_cfg(), str(tmp_path / "missing"), cache)
    with pytest.raises(DataError, match="num_classes = 80"):
        task.load_data(_cfg(num_classes=80), None, cache)
    monkeypatch.setenv("EDGEMATRIX_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="no annotations for split 'train'"):
        task.load_data(_cfg(), None, cache)


def test_drive_and_overlay() -> None:
    task = get_task("detection")
    cfg = _cfg()
    frames = task.drive(cfg, 3, seed=0)
    assert frames.shape == (3, 64, 96, 3) and frames.dtype == np.uint8
    model = create_model(cfg.family, cfg.input_shape, **cfg.params)
    g = model.geometry
    pts, strides = g.points()
    scores = np.full((1, g.num_anchors, 4), -10.0, np.float32)
    raw = np.zeros((1, g.num_anchors, 4), np.float32)
    a = int(np.argmin(((pts - [44.0, 28.0]) ** 2).sum(1)))  # a cell inside the box
    raw[0, a] = encode_boxes(np.array([[20.0, 10.0, 60.0, 40.0]], np.float32), pts[a : a + 1], strides[a : a + 1])[0]
    scores[0, a, 1] = 4.0
    big = np.zeros((128, 192, 3), np.uint8)
    drawn = task.overlay(big, {"scores": scores, "boxes": raw}, model)
    assert drawn.shape == big.shape
    # the box outline at 2x: x from 40 to 120, y from 20 to 80, in the truck colour
    assert drawn[50, 40].tolist() == [255, 170, 30] and drawn[20, 80].tolist() == [255, 170, 30]
    assert drawn[50, 80].tolist() == [0, 0, 0]
    with torch.no_grad():
        none = task.overlay(big, {"scores": scores * 0 - 10, "boxes": raw}, model)
    assert not none.any()

"""COCO mAP through pycocotools: perfect, shifted, missing detections; input validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgematrix.errors import DataError
from edgematrix.metrics.coco import STAT_NAMES, score, score_files

GT = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
        {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 20, 60, 60], "area": 3600, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 30, 80, 50], "area": 4000, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "truck"}],
}


def _perfect() -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in GT["annotations"]
    ]


def test_perfect_predictions_score_one() -> None:
    s = score(_perfect(), GT)
    assert s.map == pytest.approx(1.0) and s.map50 == pytest.approx(1.0) and s.ar100 == pytest.approx(1.0)
    assert list(s.stats) == list(STAT_NAMES)
    assert s.stats["APs"] == -1.0  # no small objects in this ground truth: COCOeval's -1


def test_shifted_boxes_lose_ap_at_strict_thresholds() -> None:
    shifted = [{**p, "bbox": [p["bbox"][0] + 0.15 * p["bbox"][2], *p["bbox"][1:]]} for p in _perfect()]
    s = score(shifted, GT)
    # IoU of a box shifted by 15% of its width: 0.85 / 1.15 = 0.739 -> matches at .50-.70, not at .75-.95
    assert s.map50 == pytest.approx(1.0)
    assert s.map == pytest.approx(5 / 10, abs=1e-6)
    assert s.stats["AP75"] == pytest.approx(0.0)


def test_missing_detections_and_false_positives() -> None:
    assert score([], GT).map == 0.0
    one = _perfect()[:1]
    s = score(one, GT)
    assert 0 < s.map < 1
    # restricting to image 2, which has no detections: 0
    assert score(one, GT, image_ids=[2]).map == 0.0


def test_files_and_validation(tmp_path: Path) -> None:
    pred, gt = tmp_path / "p.json", tmp_path / "g.json"
    pred.write_text(json.dumps(_perfect()))
    gt.write_text(json.dumps(GT))
    assert score_files(pred, gt)["AP"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="image_id 9 is not in the ground truth"):
        score([{**_perfect()[0], "image_id": 9}], GT)
    with pytest.raises(DataError, match="category_id 7"):
        score([{**_perfect()[0], "category_id": 7}], GT)
    with pytest.raises(DataError, match="must have image_id"):
        score([{"image_id": 1}], GT)
    with pytest.raises(DataError, match="w, h >= 0"):
        score([{**_perfect()[0], "bbox": [0, 0, -2, 3]}], GT)
    with pytest.raises(DataError, match="does not exist"):
        score_files(tmp_path / "none.json", gt)

"""COCO instances reader/writer, validation errors, split loading, and the synthetic road-scene generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgematrix.data.coco import (
    CocoAnnotation,
    CocoCategory,
    CocoImage,
    CocoInstances,
    detections_to_results,
    fingerprint,
    instances_from_json,
    load_split,
    read_instances,
    write_instances,
)
from edgematrix.data.synthetic_detection import SyntheticDetectionConfig, drive, generate, render_sample
from edgematrix.errors import DataError


def _instances() -> CocoInstances:
    return CocoInstances(
        [CocoImage(1, "a.jpg", 40, 20), CocoImage(7, "b.jpg", 40, 20)],
        [
            CocoAnnotation(1, 1, 3, (2.0, 4.0, 10.0, 6.0), 60.0, 0),
            CocoAnnotation(2, 7, 5, (0.0, 0.0, 40.0, 20.0), 800.0, 1),
        ],
        [CocoCategory(5, "truck", "vehicle"), CocoCategory(3, "car", "vehicle")],
        {"description": "t"},
    )


def test_json_round_trip(tmp_path: Path) -> None:
    inst = _instances()
    path = write_instances(tmp_path / "annotations" / "instances_train.json", inst)
    raw = json.loads(path.read_text())
    assert raw["annotations"][0] == {
        "id": 1, "image_id": 1, "category_id": 3, "bbox": [2.0, 4.0, 10.0, 6.0], "area": 60.0, "iscrowd": 0,
    }  # fmt: skip
    back = read_instances(path)
    assert back.to_json() == inst.to_json()
    assert back.category_ids == [3, 5]
    assert [a.id for a in back.annotations_by_image()[7]] == [2]
    sub = back.subset([7])
    assert [im.id for im in sub.images] == [7] and [a.id for a in sub.annotations] == [2]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["annotations"][0].update(image_id=99), "image_id 99, which is not in images"),
        (lambda r: r["annotations"][0].update(category_id=42), "category_id 42, not in categories"),
        (lambda r: r["annotations"][0].update(bbox=[0, 0, -1, 3]), "width and height must be >= 0"),
        (lambda r: r["annotations"][0].update(bbox=[0, 0, 3]), r"bbox must be \[x, y, w, h\]"),
        (lambda r: r["images"][0].update(width=0), "must be > 0"),
        (lambda r: r["images"][1].update(id=1), "image id 1 appears twice"),
        (lambda r: r["images"][0].update(file_name="../x.jpg"), "relative path"),
        (lambda r: r.pop("categories"), "missing or not a list: categories"),
        (lambda r: r["annotations"][0].pop("bbox"), "has no 'bbox'"),
    ],
)
def test_validation_names_what_is_wrong(mutate, message: str) -> None:
    raw = _instances().to_json()
    mutate(raw)
    with pytest.raises(DataError, match=message):
        instances_from_json(raw)


def test_writer_refuses_invalid_instances(tmp_path: Path) -> None:
    inst = _instances()
    inst.annotations.append(CocoAnnotation(9, 1, 99, (0.0, 0.0, 1.0, 1.0), 1.0, 0))
    with pytest.raises(DataError, match="category_id 99"):
        write_instances(tmp_path / "x.json", inst)
    assert not (tmp_path / "x.json").exists()


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; expected layout"):
        read_instances(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_instances(bad)
    with pytest.raises(DataError, match="no annotations for split 'train'"):
        load_split(tmp_path, "train", (32, 32))


def _write_dataset(root: Path, split_dir: str, ann_name: str) -> None:
    from PIL import Image

    (root / split_dir).mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (40, 20), (10, 200, 30)).save(root / split_dir / name)
    write_instances(root / "annotations" / ann_name, _instances())


@pytest.mark.parametrize(
    ("split_dir", "ann_name"), [("train", "instances_train.json"), ("train2017", "instances_train2017.json")]
)
def test_load_split_scales_boxes_to_the_input(tmp_path: Path, split_dir: str, ann_name: str) -> None:
    _write_dataset(tmp_path, split_dir, ann_name)
    s = load_split(tmp_path, "train", (40, 80))
    assert len(s) == 2 and s.images.shape == (2, 3, 40, 80) and s.images.dtype == np.uint8
    assert s.images[0, :, 5, 5].tolist() == [10, 200, 30]
    # bbox (2, 4, 10, 6) at 2x: x1y1x2y2 (4, 8, 24, 20); label index of category 3 among [3, 5] is 0
    np.testing.assert_allclose(s.boxes[0], [[4, 8, 24, 20]])
    assert s.labels[0].tolist() == [0]
    assert s.boxes[1].shape == (0, 4)  # the crowd box is not a training target
    assert s.image_ids == [1, 7] and s.category_ids == [3, 5] and s.category_names == ["car", "truck"]
    np.testing.assert_allclose(s.scales, [[2, 2], [2, 2]])
    assert len(load_split(tmp_path, "train", (40, 80), limit=1)) == 1
    # detections map back to the original image's pixels and category ids
    res = detections_to_results(
        1, np.array([[4, 8, 24, 20]], np.float32), np.array([0.5]), np.array([1]), s.scales[0], s.category_ids
    )
    assert res == [{"image_id": 1, "category_id": 5, "bbox": [2.0, 4.0, 10.0, 6.0], "score": 0.5}]


def test_load_split_reports_missing_and_mis_sized_images(tmp_path: Path) -> None:
    _write_dataset(tmp_path, "val", "instances_val.json")
    (tmp_path / "val" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"b\.jpg \(id 7.*does not exist"):
        load_split(tmp_path, "test", (20, 40))
    from PIL import Image

    Image.new("RGB", (10, 10)).save(tmp_path / "val" / "b.jpg")
    with pytest.raises(DataError, match="is 10x10, but"):
        load_split(tmp_path, "val", (20, 40))


def test_synthetic_scenes_are_deterministic_and_in_coco_layout(tmp_path: Path) -> None:
    a, labels_a = render_sample(3, 5)
    b, labels_b = render_sample(3, 5)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and labels_a == labels_b
    cfg = SyntheticDetectionConfig(train=6, test=3, seed=1)
    root = generate(tmp_path / "syn", cfg, workers=1)
    train = read_instances(root / "annotations" / "instances_train.json")
    assert len(train.images) == 6 and [c.name for c in train.categories] == [
        "car",
        "truck",
        "pedestrian",
        "traffic_sign",
    ]
    assert all((root / "train" / im.file_name).is_file() for im in train.images)
    assert len(train.annotations) >= 6  # at least one object kept per scene on average
    for ann in train.annotations:
        x, y, w, h = ann.bbox
        assert w >= 6 and h >= 6 and x >= 0 and y >= 0 and x + w <= 640.01 and y + h <= 384.01
    key = fingerprint(root)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert generate(root, cfg) == root and (root / "synthetic.json").stat().st_mtime_ns == stamp  # cached
    assert fingerprint(root) == key and len(key) == 16
    val = load_split(root, "val", (96, 160))
    assert len(val) == 3 and val.images.shape == (3, 3, 96, 160)


def test_drive_is_smooth() -> None:
    frames = drive(0, 6, (96, 160))
    assert frames.shape == (6, 96, 160, 3) and frames.dtype == np.uint8
    step = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()
    other = np.abs(frames[0].astype(np.int16) - drive(1, 1, (96, 160))[0]).mean()
    assert 0 < step < other  # consecutive frames differ less than two different roads

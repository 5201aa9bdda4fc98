"""TuSimple reader/writers on the real dataset's layouts (tiny hand-made folders)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgematrix.data.tusimple import (
    LaneSample,
    TuSimpleDataset,
    parse_label_line,
    read_label_file,
    write_label_file,
    write_predictions,
)
from edgematrix.errors import DataError, EdgeMatrixError
from edgematrix.metrics.tusimple import score_files

HS = [160, 170, 180, 190]


def _sample(i: int, n_lanes: int = 2) -> LaneSample:
    lanes = [[100 * (k + 1) + i, -2, 110 * (k + 1) + i, 120 * (k + 1) + i] for k in range(n_lanes)]
    return LaneSample(f"clips/0313-{i}/{1000 + i}/20.jpg", lanes, list(HS))


def _write_image(path: Path, colour: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")  # lossless: pixel values are checked


def _make_split(base: Path, label_name: str, samples: list[LaneSample]) -> None:
    write_label_file(base / label_name, samples)
    for s in samples:
        _write_image(base / s.raw_file)


# ----------------------------------------------------------------------------------------------
# label lines and files
# ----------------------------------------------------------------------------------------------
def test_label_file_round_trip(tmp_path):
    samples = [_sample(i, n) for i, n in ((0, 0), (1, 2), (2, 5))]
    path = tmp_path / "sub" / "label_data_0313.json"  # parent folder is created
    write_label_file(path, samples)
    assert read_label_file(path) == samples
    # one compact JSON object per line, in TuSimple's key set; no temporary file left behind
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert all(set(json.loads(line)) == {"lanes", "h_samples", "raw_file"} for line in lines)
    assert [p.name for p in path.parent.iterdir()] == ["label_data_0313.json"]


def test_real_label_line_parses():
    line = (
        '{"lanes": [[-2, -2, 632, 625], [719, 734, 748, -2]], "h_samples": [240, 250, 260, 270], '
        '"raw_file": "clips/0313-1/6040/20.jpg"}'
    )
    s = parse_label_line(line, "x.json:1")
    assert s == LaneSample("clips/0313-1/6040/20.jpg", [[-2, -2, 632, 625], [719, 734, 748, -2]], [240, 250, 260, 270])


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(_sample(0).to_json()) + "\n\n   \n" + json.dumps(_sample(1).to_json()) + "\n")
    assert read_label_file(path) == [_sample(0), _sample(1)]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "label_data_x.json"
    path.write_text(json.dumps(_sample(0).to_json()) + "\n" + '{"lanes": [[1, 2]], "h_samples": [1, 2], "raw' + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid JSON")) as info:
        read_label_file(path)
    assert isinstance(info.value, EdgeMatrixError)


def test_lanes_h_samples_length_mismatch(tmp_path):
    path = tmp_path / "label_data_x.json"
    obj = {"lanes": [[1, 2, 3], [4, 5]], "h_samples": [160, 170, 180], "raw_file": "clips/a/20.jpg"}
    path.write_text(json.dumps(obj) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: lane 1 has 2 points but h_samples has 3")):
        read_label_file(path)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "expected a JSON object, found list"),
        ({"lanes": [], "h_samples": []}, r"missing key\(s\) \['raw_file'\]"),
        ({"lanes": [1, 2], "h_samples": [1, 2], "raw_file": "a"}, "'lanes' must be a list of lists"),
        ({"lanes": [], "h_samples": 5, "raw_file": "a"}, "'h_samples' must be a list"),
        ({"lanes": [["a", 2]], "h_samples": [1, 2], "raw_file": "a"}, "must hold numbers"),
        ({"lanes": [[None, 2]], "h_samples": [1, 2], "raw_file": "a"}, "must hold numbers"),
    ],
)
def test_malformed_label_objects_raise_data_error(obj, message):
    with pytest.raises(DataError, match=message):
        parse_label_line(json.dumps(obj), "f.json:7")


def test_missing_label_file(tmp_path):
    with pytest.raises(DataError, match=r"label file .*nope\.json not found"):
        read_label_file(tmp_path / "nope.json")


def test_predictions_writer_format_and_scoring(tmp_path):
    samples = [_sample(0), _sample(1)]
    write_label_file(tmp_path / "gt.json", samples)
    pred_path = tmp_path / "out" / "predictions.json"
    write_predictions(
        pred_path,
        [
            (samples[0].raw_file, samples[0].lanes, 12),
            (samples[1].raw_file, [np.array(lane) for lane in samples[1].lanes], np.float32(3.5)),
        ],
    )
    objs = [json.loads(line) for line in pred_path.read_text().splitlines()]
    assert len(objs) == 2
    for obj, s in zip(objs, samples, strict=True):
        assert set(obj) == {"raw_file", "lanes", "run_time"}
        assert obj["raw_file"] == s.raw_file
        assert obj["lanes"] == s.lanes
        assert all(type(v) is int for lane in obj["lanes"] for v in lane)
        assert type(obj["run_time"]) is float
    assert [o["run_time"] for o in objs] == [12.0, 3.5]
    # what we write is what the metric reads: a perfect submission
    assert score_files(pred_path, tmp_path / "gt.json").as_official() == {"Accuracy": 1.0, "FP": 0.0, "FN": 0.0}


# ----------------------------------------------------------------------------------------------
# dataset layouts
# ----------------------------------------------------------------------------------------------
def test_flat_layout_files_at_root(tmp_path):
    train_a, train_b, test = [_sample(0), _sample(1)], [_sample(2)], [_sample(3), _sample(4)]
    _make_split(tmp_path, "label_data_0531.json", train_b)  # sorted by name: 0313 before 0531
    _make_split(tmp_path, "label_data_0313.json", train_a)
    _make_split(tmp_path, "test_label.json", test)
    tr = TuSimpleDataset(tmp_path, "train")
    assert len(tr) == 3
    assert tr.samples == train_a + train_b
    te = TuSimpleDataset(tmp_path, "test")
    assert te.samples == test
    assert te.image_path(test[0]) == tmp_path / test[0].raw_file


def test_real_layout_with_train_set_and_test_set(tmp_path):
    train, test = [_sample(0), _sample(1)], [_sample(5)]
    _make_split(tmp_path / "train_set", "label_data_0313.json", train)
    # the real test set: images under test_set/, test_label.json downloaded next to it at the top
    write_label_file(tmp_path / "test_label.json", test)
    for s in test:
        _write_image(tmp_path / "test_set" / s.raw_file, colour=(1, 2, 3))
    tr = TuSimpleDataset(tmp_path, "train")
    assert tr.samples == train
    assert tr.image_path(train[1]) == tmp_path / "train_set" / train[1].raw_file
    te = TuSimpleDataset(tmp_path, "test")
    assert te.samples == test
    assert te.image_path(test[0]) == tmp_path / "test_set" / test[0].raw_file
    img = te.load_image(test[0])
    assert img.shape == (12, 16, 3) and img.dtype == np.uint8
    assert (img == np.array([1, 2, 3], np.uint8)).all()


def test_load_image_resizes_to_height_width(tmp_path):
    _make_split(tmp_path, "test_label.json", [_sample(0)])
    ds = TuSimpleDataset(tmp_path, "test")
    img = ds.load_image(ds.samples[0], size=(4, 6))
    assert img.shape == (4, 6, 3)
    assert (img == np.array([10, 200, 30], np.uint8)).all()


def test_grayscale_image_is_converted_to_rgb(tmp_path):
    s = _sample(0)
    write_label_file(tmp_path / "test_label.json", [s])
    (tmp_path / s.raw_file).parent.mkdir(parents=True)
    Image.new("L", (8, 8), 77).save(tmp_path / s.raw_file, format="PNG")
    img = TuSimpleDataset(tmp_path, "test").load_image(s)
    assert img.shape == (8, 8, 3) and (img == 77).all()


def test_test_txt_selects_images(tmp_path):
    test = [_sample(i) for i in range(4)]
    _make_split(tmp_path, "test_label.json", test)
    # UFLD-style list: leading "/" and extra columns are tolerated; a listed unknown image is ignored
    (tmp_path / "test.txt").write_text(
        f"/{test[2].raw_file}\n\n{test[0].raw_file} clips/x.png 1 1 0 0\nclips/unknown/20.jpg\n"
    )
    ds = TuSimpleDataset(tmp_path, "test")
    assert [s.raw_file for s in ds.samples] == [test[0].raw_file, test[2].raw_file]  # label-file order
    # the list of one split does not filter the other
    _make_split(tmp_path, "label_data_0313.json", [_sample(7), _sample(8)])
    assert len(TuSimpleDataset(tmp_path, "train")) == 2
    (tmp_path / "train_gt.txt").write_text(f"{_sample(8).raw_file} {_sample(8).raw_file[:-3]}png 1 1 0 0\n")
    assert [s.raw_file for s in TuSimpleDataset(tmp_path, "train").samples] == [_sample(8).raw_file]


def test_selection_matching_nothing_is_an_error(tmp_path):
    _make_split(tmp_path, "test_label.json", [_sample(0)])
    (tmp_path / "test.txt").write_text("clips/other/20.jpg\n")
    with pytest.raises(DataError, match="no test samples found"):
        TuSimpleDataset(tmp_path, "test")


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
def test_missing_data_root_names_path_and_remedy(tmp_path):
    missing = tmp_path / "no" / "such" / "tusimple"
    with pytest.raises(DataError) as info:
        TuSimpleDataset(missing)
    msg = str(info.value)
    assert str(missing) in msg
    assert "does not exist" in msg
    assert "point data_root at a TuSimple folder" in msg and "synthetic" in msg


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match="unknown TuSimple split 'val'"):
        TuSimpleDataset(tmp_path, "val")


def test_no_label_files_lists_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"no label_data_\*\.json under .*train_set") as info:
        TuSimpleDataset(tmp_path, "train")
    assert str(tmp_path) in str(info.value)
    with pytest.raises(DataError, match=r"no test_label\.json under"):
        TuSimpleDataset(tmp_path, "test")


def test_empty_label_file_is_an_error(tmp_path):
    (tmp_path / "test_label.json").write_text("\n")
    with pytest.raises(DataError, match="no test samples found"):
        TuSimpleDataset(tmp_path, "test")


def test_malformed_line_in_dataset_names_file_and_line(tmp_path):
    _make_split(tmp_path, "label_data_0313.json", [_sample(0), _sample(1)])
    path = tmp_path / "label_data_0313.json"
    path.write_text(path.read_text() + "oops\n")
    with pytest.raises(DataError, match=r"label_data_0313\.json:3: not valid JSON"):
        TuSimpleDataset(tmp_path, "train")


def test_missing_image(tmp_path):
    s = _sample(0)
    write_label_file(tmp_path / "test_label.json", [s])
    ds = TuSimpleDataset(tmp_path, "test")  # labels alone load; the image is checked when read
    with pytest.raises(DataError, match=re.escape(f"image {s.raw_file} not found under {tmp_path}")):
        ds.load_image(s)


def test_corrupt_image(tmp_path):
    s = _sample(0)
    write_label_file(tmp_path / "test_label.json", [s])
    (tmp_path / s.raw_file).parent.mkdir(parents=True)
    (tmp_path / s.raw_file).write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="cannot read image"):
        TuSimpleDataset(tmp_path, "test").load_image(s)

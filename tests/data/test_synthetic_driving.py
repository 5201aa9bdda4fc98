"""Synthetic driving frames: the Udacity driving_log.csv layout, the reader on real-style logs, the labels."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgematrix.data.synthetic_driving import (
    COLUMNS,
    HEIGHT,
    WIDTH,
    DrivingSynthConfig,
    Scene,
    generate,
    load_frame,
    load_split,
    read_driving_log,
    render,
    render_sample,
    resolve_data_root,
    split_samples,
    steering_label,
    write_driving_log,
)
from edgematrix.errors import DataError

CONFIG = DrivingSynthConfig(train=5, test=3, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("drive") / "a", CONFIG, workers=1)


def test_layout_and_round_trip(dataset: Path) -> None:
    for split, count in (("train", 5), ("test", 3)):
        log = dataset / split / "driving_log.csv"
        with log.open(newline="") as fh:
            rows = list(csv.reader(fh))
        assert tuple(rows[0]) == COLUMNS  # header line, as Udacity's published sample
        assert [r[0] for r in rows[1:]] == [f"IMG/center_{split}_{i:05d}.jpg" for i in range(count)]
        samples = read_driving_log(log)
        assert [s.image for s in samples] == [dataset / split / r[0] for r in rows[1:]]
        for i, s in enumerate(samples):  # the stored label is the scene's pure-pursuit steering
            _, label, scene = render_sample(CONFIG.seed, split, i)
            assert s.steering == pytest.approx(label, abs=1e-6) == pytest.approx(steering_label(scene), abs=1e-6)
            with Image.open(s.image) as im:
                assert im.size == (WIDTH, HEIGHT) and im.format == "JPEG"


def test_deterministic_and_independent_of_workers(dataset: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "b", CONFIG, workers=2)
    for split in ("train", "test"):
        assert (again / split / "driving_log.csv").read_bytes() == (dataset / split / "driving_log.csv").read_bytes()
    a, _, _ = render_sample(3, "train", 1)
    b, _, _ = render_sample(3, "train", 1)
    c, _, _ = render_sample(3, "test", 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    stamp = (dataset / "synthetic.json").stat().st_mtime_ns
    generate(dataset, CONFIG)  # complete: not regenerated
    assert (dataset / "synthetic.json").stat().st_mtime_ns == stamp


def test_steering_label_geometry() -> None:
    assert steering_label(Scene(0.0, 0.0, 0.0)) == 0.0
    # left of the lane centre (offset < 0) -> steer right (positive); a left curve -> steer left
    assert steering_label(Scene(-0.5, 0.0, 0.0)) > 0 > steering_label(Scene(0.0, 0.0, -0.01))
    # pure pursuit at 8 m with a 2.7 m wheelbase, normalised by 25 degrees
    c = 0.02
    x = 0.5 * c * 8.0**2
    expected = math.degrees(math.atan(2 * 2.7 * x / 64.0)) / 25.0
    assert steering_label(Scene(0.0, 0.0, c)) == pytest.approx(expected)
    assert steering_label(Scene(0.3, -0.05, 0.01)) == pytest.approx(-steering_label(Scene(-0.3, 0.05, -0.01)))
    assert steering_label(Scene(0.0, 0.0, 1.0)) == 1.0  # clipped to full lock


@pytest.mark.parametrize("seed", range(4))
def test_rendered_marking_where_the_geometry_puts_it(seed: int) -> None:
    # straight road, car centred: the right solid line is at +w/2; row 130 sees the ground ~3 m ahead
    frame = render(Scene(0.0, 0.0, 0.0, lane_width=3.6), np.random.default_rng(seed))
    row = frame[130, 170:].astype(float).mean(axis=1)
    col = 170 + int(np.argmax(row))
    # horizon row 58..66 -> z = 150*1.4/(130.5 - h) in 2.90..3.26 m -> u = 160 + 150*1.8/z
    assert 240 <= col <= 256, col


def test_reader_on_simulator_style_log(tmp_path: Path) -> None:
    # the simulator writes no header and absolute paths (here: Windows paths from another machine)
    img_dir = tmp_path / "rec" / "IMG"
    img_dir.mkdir(parents=True)
    for name in ("center_1.jpg", "center_2.jpg"):
        Image.fromarray(np.full((160, 320, 3), 100, np.uint8)).save(img_dir / name)
    log = tmp_path / "rec" / "driving_log.csv"
    log.write_text(
        "C:\\Users\\me\\sim\\IMG\\center_1.jpg, C:\\Users\\me\\sim\\IMG\\left_1.jpg, x,-0.25,0.9,0,30.1\n"
        f"{img_dir / 'center_2.jpg'},,,0.1,0.5,0.1,12\n"
    )
    samples = read_driving_log(log)
    assert [s.image for s in samples] == [img_dir / "center_1.jpg", img_dir / "center_2.jpg"]
    assert [(s.steering, s.throttle, s.brake, s.speed) for s in samples] == [
        (-0.25, 0.9, 0.0, 30.1),
        (0.1, 0.5, 0.1, 12.0),
    ]
    # one recording: the last 20% of rows (in order) is the test split
    assert split_samples(tmp_path / "rec", "test") == samples[1:]
    assert split_samples(tmp_path / "rec", "train") == samples[:1]


@pytest.mark.parametrize(
    ("text", "match"),
    [("a,b\n", "2 column"), ("IMG/x.jpg,,,0.1\n", "not found"), ("IMG/c.jpg,,,left\nIMG/c.jpg,,,abc\n", "numbers"),
     ("IMG/c.jpg,,,nan\n", "non-finite"), ("center,left,right,steering\n", "no rows"), (",,,0.1\n", "empty")],
)  # fmt: skip
def test_reader_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "IMG").mkdir()
    Image.new("RGB", (320, 160)).save(tmp_path / "IMG" / "c.jpg")
    (tmp_path / "driving_log.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_driving_log(tmp_path / "driving_log.csv")


def test_missing_dataset_and_bad_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no driving log"):
        split_samples(tmp_path, "train")
    with pytest.raises(DataError, match="unknown split"):
        split_samples(tmp_path, "val")
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_root(str(tmp_path / "nope"), CONFIG, tmp_path)


def test_write_then_read(tmp_path: Path) -> None:
    Image.new("RGB", (320, 160)).save(tmp_path / "f.png")
    write_driving_log(tmp_path / "driving_log.csv", [{"center": "f.png", "steering": -0.5, "speed": 3.0}])
    (s,) = read_driving_log(tmp_path / "driving_log.csv")
    assert (s.image, s.steering, s.speed) == (tmp_path / "f.png", -0.5, 3.0)


def test_load_split_crops_resizes_and_converts(dataset: Path, tmp_path: Path) -> None:
    split = load_split(dataset, "test", (66, 200))
    assert split.images.shape == (3, 3, 66, 200) and split.images.dtype == np.uint8
    assert split.steering.tolist() == pytest.approx([s.steering for s in split.samples])
    # a frame whose rows are coloured by band: the crop removes the top 60 and bottom 25 rows
    frame = np.zeros((160, 320, 3), np.uint8)
    frame[:60] = (255, 0, 0)
    frame[60:135] = (0, 255, 0)
    frame[135:] = (0, 0, 255)
    Image.fromarray(frame).save(tmp_path / "bands.png")
    rgb = load_frame(tmp_path / "bands.png", (66, 200), color="rgb")
    assert rgb.shape == (3, 66, 200) and np.all(rgb[1] == 255) and np.all(rgb[0] == 0) and np.all(rgb[2] == 0)
    yuv = load_frame(tmp_path / "bands.png", (66, 200))  # BT.601 full range: pure green is Y 150, Cb 44, Cr 21
    assert np.all(np.abs(yuv[:, 10, 10].astype(int) - [150, 44, 21]) <= 1)
    with pytest.raises(DataError, match="does not fit"):
        load_frame(tmp_path / "bands.png", (66, 200), crop=(100, 60))
    with pytest.raises(DataError, match="colour space"):
        load_frame(tmp_path / "bands.png", (66, 200), color="hsv")

"""Synthetic TuSimple generator: deterministic, and exactly the real dataset's format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgematrix.data.synthetic_lanes import H_SAMPLES, HEIGHT, WIDTH, SyntheticConfig, generate, render_sample
from edgematrix.data.tusimple import TuSimpleDataset, read_label_file

CONFIG = SyntheticConfig(train=6, test=3, seed=7)
LABEL_FILES = ("label_data_synthetic.json", "test_label.json")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "a", CONFIG)


def _images(root: Path) -> list[Path]:
    return sorted(root.glob("clips/*/*/20.jpg"))


def test_layout_and_counts(dataset):
    for name in (*LABEL_FILES, "test.txt", "test_tasks.json", "synthetic.json"):
        assert (dataset / name).is_file(), name
    train = read_label_file(dataset / "label_data_synthetic.json")
    test = read_label_file(dataset / "test_label.json")
    assert len(train) == 6 and len(test) == 3
    assert [s.raw_file for s in train] == [f"clips/synthetic-train/{i:05d}/20.jpg" for i in range(6)]
    assert (dataset / "test.txt").read_text().split() == [s.raw_file for s in test]
    tasks = [json.loads(line) for line in (dataset / "test_tasks.json").read_text().splitlines()]
    assert tasks == [{"raw_file": s.raw_file, "h_samples": s.h_samples, "lanes": []} for s in test]
    assert len(_images(dataset)) == 9


def test_labels_follow_the_tusimple_format(dataset):
    assert list(range(160, 720, 10)) == H_SAMPLES
    for name in LABEL_FILES:
        for s in read_label_file(dataset / name):
            assert s.h_samples == H_SAMPLES
            assert 2 <= len(s.lanes) <= 5
            for lane in s.lanes:
                assert len(lane) == len(H_SAMPLES)
                assert all(v == -2 or 0 <= v < WIDTH for v in lane), lane
                assert sum(v >= 0 for v in lane) >= 3
                # a lane is one visible run from its start row down: no -2 between labelled points
                idx = [i for i, v in enumerate(lane) if v >= 0]
                assert idx == list(range(idx[0], idx[-1] + 1))


def test_label_x_never_rounds_to_the_image_width():
    # Regression: x in [1279.5, 1280) used to be kept and rounded to 1280, outside the image.
    # These (seed, index) scenes have a lane ending in that range at some h_sample.
    for index in (83, 89, 102, 198, 218):
        _, lanes = render_sample(0, index)
        assert all(v == -2 or 0 <= v <= WIDTH - 1 for lane in lanes for v in lane)


def test_images_are_1280x720_rgb_jpeg(dataset):
    for path in _images(dataset):
        with Image.open(path) as im:
            assert im.format == "JPEG"
            assert im.size == (WIDTH, HEIGHT)
            assert im.mode == "RGB"


def test_markings_are_drawn_where_the_labels_are(dataset):
    # lane paint is brighter than the road next to it: compare label pixels with pixels 40 px away
    ds = TuSimpleDataset(dataset, "train")
    brighter = total = 0
    for s in ds.samples:
        img = ds.load_image(s).astype(np.float32).mean(2)
        for lane in s.lanes:
            for x, y in zip(lane, s.h_samples, strict=True):
                if x >= 0 and 40 <= x < WIDTH - 40 and y > 500:
                    total += 1
                    brighter += img[y, x] > min(img[y, x - 40], img[y, x + 40])
    assert total > 20
    assert brighter / total > 0.6  # dashes, vehicles and shadows hide some points


def test_reads_back_with_the_dataset_reader(dataset):
    train = TuSimpleDataset(dataset, "train")
    test = TuSimpleDataset(dataset, "test")
    assert (len(train), len(test)) == (6, 3)
    img = test.load_image(test.samples[0], size=(288, 800))
    assert img.shape == (288, 800, 3) and img.dtype == np.uint8
    assert img.std() > 10  # a real scene, not a blank frame


def test_same_seed_is_byte_identical_other_seed_differs(dataset, tmp_path):
    again = generate(tmp_path / "b", CONFIG)
    for name in LABEL_FILES:
        assert (again / name).read_bytes() == (dataset / name).read_bytes()
    for a, b in zip(_images(dataset), _images(again), strict=True):
        assert a.relative_to(dataset) == b.relative_to(again)
        assert a.read_bytes() == b.read_bytes()
    other = generate(tmp_path / "c", SyntheticConfig(train=6, test=3, seed=8))
    for name in LABEL_FILES:
        assert (other / name).read_bytes() != (dataset / name).read_bytes()
    assert SyntheticConfig(6, 3, 8).key() != CONFIG.key() == SyntheticConfig(6, 3, 7).key()


def test_render_sample_is_a_pure_function_of_seed_and_index():
    img1, lanes1 = render_sample(3, 11)
    img2, lanes2 = render_sample(3, 11)
    assert lanes1 == lanes2
    assert np.array_equal(np.asarray(img1), np.asarray(img2))
    _, lanes3 = render_sample(3, 12)
    assert lanes3 != lanes1


def test_train_and_test_scenes_differ(dataset):
    train = read_label_file(dataset / "label_data_synthetic.json")
    test = read_label_file(dataset / "test_label.json")
    assert not {json.dumps(s.lanes) for s in train} & {json.dumps(s.lanes) for s in test}


def test_rerun_on_complete_folder_rewrites_nothing(dataset):
    files = [*_images(dataset), *(dataset / n for n in LABEL_FILES)]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert generate(dataset, CONFIG) == dataset
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_changed_config_regenerates(tmp_path):
    root = generate(tmp_path / "d", SyntheticConfig(train=1, test=1, seed=0))
    assert len(read_label_file(root / "label_data_synthetic.json")) == 1
    generate(root, SyntheticConfig(train=2, test=1, seed=0))
    assert len(read_label_file(root / "label_data_synthetic.json")) == 2
    stamp = json.loads((root / "synthetic.json").read_text())
    assert stamp["key"] == SyntheticConfig(train=2, test=1, seed=0).key()


def test_interrupted_generation_is_redone(tmp_path):
    # no stamp (the run died before the end) -> the next call writes everything again
    root = generate(tmp_path / "e", SyntheticConfig(train=1, test=1, seed=0))
    (root / "synthetic.json").unlink()
    (root / "test_label.json").unlink()
    generate(root, SyntheticConfig(train=1, test=1, seed=0))
    assert len(read_label_file(root / "test_label.json")) == 1
    assert (root / "synthetic.json").is_file()

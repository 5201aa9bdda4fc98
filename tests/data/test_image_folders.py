"""Image folders as model inputs: listing order, the three resize modes, the declared normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgematrix.data.images import (
    ImageSettings,
    ImageStack,
    fingerprint,
    list_images,
    load_image,
    random_images,
    to_input,
)
from edgematrix.errors import DataError


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_folder_listing_is_sorted_recursive_and_by_extension(tmp_path: Path) -> None:
    for name in ("b/2.png", "a/9.JPG", "a/1.png", "c.bmp"):
        _save(tmp_path / name, np.zeros((4, 4, 3)))
    (tmp_path / "notes.txt").write_text("not an image")
    files = list_images(tmp_path, [".png", "jpg", ".bmp"])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/1.png", "a/9.JPG", "b/2.png", "c.bmp"]
    key = fingerprint(tmp_path, files)
    _save(tmp_path / "a/1.png", np.ones((4, 4, 3)))  # same name, other pixels: another dataset
    assert fingerprint(tmp_path, files) != key


def test_stretch_letterbox_and_crop(tmp_path: Path) -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # left half red, right half green
    img[:, 20:] = (0, 255, 0)
    path = _save(tmp_path / "wide.png", img)
    stretch = load_image(path, ImageSettings(height=10, width=10))
    assert stretch.shape == (3, 10, 10) and stretch[0, 5, 0] == 255 and stretch[1, 5, 9] == 255
    box = load_image(path, ImageSettings(height=10, width=10, resize="letterbox", pad_value=7))
    # 40x20 fits 10x10 as 10x5, centred: rows 0-1 and 8-9 are padding
    assert (box[:, :2] == 7).all() and (box[:, 8:] == 7).all() and box[0, 5, 0] == 255 and box[1, 5, 9] == 255
    crop = load_image(path, ImageSettings(height=10, width=10, resize="crop"))
    # 40x20 covers 10x10 as 20x10, centre columns 5..14: the red/green boundary in the middle
    assert crop[0, 5, 0] == 255 and crop[1, 5, 9] == 255 and (crop[2] == 0).all()
    # size larger than the input: resize to size, then the centre crop of the input's size
    big = load_image(path, ImageSettings(height=8, width=8, size=(16, 16)))
    assert big.shape == (3, 8, 8) and big[0, 4, 0] == 255 and big[1, 4, 7] == 255
    with pytest.raises(DataError, match=r"images\.size \[4, 4\] is smaller than the input's 8×8"):
        ImageSettings(height=8, width=8, size=(4, 4))


def test_to_input_normalises_reorders_and_lays_out() -> None:
    images = np.zeros((1, 3, 2, 2), np.uint8)
    images[0, 0], images[0, 2] = 200, 100  # R 200, G 0, B 100
    s = ImageSettings(height=2, width=2, mean=(100.0, 0.0, 50.0), std=(50.0, 1.0, 25.0), channels="bgr")
    x = to_input(images, s)
    assert x.dtype == np.float32 and x.shape == (1, 3, 2, 2)
    # BGR order, then (pixel - mean) / std per channel in that order: B (100-100)/50, G 0, R (200-50)/25
    np.testing.assert_allclose(x[0, :, 0, 0], [0.0, 0.0, 6.0])
    nhwc = to_input(images, ImageSettings(height=2, width=2, layout="nhwc"))
    assert nhwc.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(nhwc[0, 0, 0], [200 / 255, 0, 100 / 255], rtol=1e-6)
    raw = to_input(images, ImageSettings(height=2, width=2, layout="nhwc"), np.uint8)  # a uint8 input: pixels
    assert raw.dtype == np.uint8 and raw[0, 0, 0].tolist() == [200, 0, 100]


def test_stack_decodes_slices_and_random_images_are_seeded(tmp_path: Path) -> None:
    files = [_save(tmp_path / f"{i}.png", np.full((6, 6, 3), 40 * i)) for i in range(3)]
    stack = ImageStack(files, ImageSettings(height=4, width=4))
    assert len(stack) == 3 and stack.shape == (3, 3, 4, 4)
    part = stack[1:3]
    assert part.shape == (2, 3, 4, 4) and part[0].max() == 40 and part[1].min() == 80
    assert stack[3:].shape == (0, 3, 4, 4)
    a, b = random_images(2, 4, 5, seed=3), random_images(2, 4, 5, seed=3)
    assert a.shape == (2, 3, 4, 5) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, random_images(2, 4, 5, seed=4))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"image .*broken\.png cannot be decoded"):
        load_image(broken, ImageSettings(height=4, width=4))

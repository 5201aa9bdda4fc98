from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgematrix.data import synthetic_scenes as syn
from edgematrix.data.scenes import (
    ClassInfo,
    colorize,
    decode_depth,
    encode_depth,
    fingerprint,
    load_split,
    write_classes,
    write_sample,
)
from edgematrix.errors import DataError

CLASSES = ClassInfo(("road", "car", "sky"), ((128, 64, 128), (0, 0, 142), (70, 130, 180)))


def _sample(rng: np.random.Generator, h: int = 8, w: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (h, w), dtype=np.uint8)
    mask[0, 0] = 255
    # multiples of 1/256 m are exact in the KITTI encoding; 0 = no measurement; the largest value fits
    depth = rng.integers(0, 65536, (h, w)).astype(np.float64) / 256
    depth[0, :3] = [0.0, 65535 / 256, 1 / 256]
    return image, mask, depth


def _dataset(root: Path, n: int = 3) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    write_classes(root, CLASSES)
    samples = []
    for split in ("train", "val"):
        for i in range(n):
            s = _sample(rng)
            write_sample(root, split, f"{i:03d}", *s, image_format="png")
            samples.append(s)
    return samples


def test_round_trip_is_exact_at_native_size(tmp_path: Path) -> None:
    samples = _dataset(tmp_path)
    split = load_split(tmp_path, "val", (8, 12))
    assert len(split) == 3 and split.has_depth
    assert split.files == ["val/images/000.png", "val/images/001.png", "val/images/002.png"]
    assert split.classes == CLASSES
    for i, (image, mask, depth) in enumerate(samples[3:]):
        assert np.array_equal(split.images[i], image.transpose(2, 0, 1))
        assert np.array_equal(split.masks[i], mask)
        assert split.depth.dtype == np.float32
        assert np.array_equal(split.depth[i], depth.astype(np.float32))  # uint16 × 256: exact
    assert split.depth[0, 0, 1] == pytest.approx(255.99609375)
    assert not split.valid[0, 0, 0] and split.valid[0, 0, 2]
    tail = split.subset(slice(-2, None))
    assert len(tail) == 2 and tail.files == split.files[1:] and np.array_equal(tail.masks, split.masks[1:])
    assert tail.depth.shape == (2, 8, 12) and tail.images.shape == (2, 3, 8, 12)


def test_depth_encoding_is_kitti() -> None:
    raw = encode_depth(np.array([0.0, 1.0, 1.001, 80.0, np.nan]))
    assert raw.dtype == np.uint16
    assert raw.tolist() == [0, 256, 256, 20480, 0]
    assert decode_depth(np.array([512], np.uint16)).tolist() == [2.0]
    with pytest.raises(DataError, match="fit uint16"):
        encode_depth(np.array([300.0]))


def test_resized_split_keeps_ids_and_valid_depth(tmp_path: Path) -> None:
    samples = _dataset(tmp_path)
    split = load_split(tmp_path, "train", (4, 6), limit=2)
    assert split.images.shape == (2, 3, 4, 6) and split.masks.shape == (2, 4, 6) and len(split) == 2
    assert set(np.unique(split.masks)) <= {0, 1, 2, 255}
    # nearest: every resized depth value is one of the source values (never blended with a 0)
    for i in range(2):
        assert set(split.depth[i].ravel().tolist()) <= set(samples[i][2].astype(np.float32).ravel().tolist())


def test_split_without_depth(tmp_path: Path) -> None:
    write_classes(tmp_path, CLASSES)
    image, mask, _ = _sample(np.random.default_rng(1))
    write_sample(tmp_path, "val", "a", image, mask, None)
    split = load_split(tmp_path, "val", (8, 12))
    assert not split.has_depth and not split.valid.any()


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"classes\.json not found"):
        load_split(tmp_path, "val", (8, 12))
    _dataset(tmp_path, n=2)
    with pytest.raises(DataError, match="split 'test' is not one of"):
        load_split(tmp_path, "test", (8, 12))
    (tmp_path / "val/masks/001.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) of .* have no mask .*001\.png"):
        load_split(tmp_path, "val", (8, 12))
    Image.fromarray(np.full((8, 12), 9, np.uint8)).save(tmp_path / "train/masks/000.png")
    with pytest.raises(DataError, match=r"holds class id 9; classes\.json lists 3 classes"):
        load_split(tmp_path, "train", (8, 12))
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(tmp_path / "train/masks/000.png")
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(tmp_path / "train/depth/001.png")
    with pytest.raises(DataError, match="mode L; depth maps are 16-bit PNGs"):
        load_split(tmp_path, "train", (8, 12))
    (tmp_path / "classes.json").write_text('{"names": ["a"], "palette": [[1, 2]]}')
    with pytest.raises(DataError, match=r"palette colour \[1, 2\]"):
        load_split(tmp_path, "train", (8, 12))


def test_colorize_uses_palette_and_blacks_out_ignore() -> None:
    out = colorize(np.array([[0, 2, 255]], np.uint8), CLASSES.palette)
    assert out.tolist() == [[[128, 64, 128], [70, 130, 180], [0, 0, 0]]]


def test_synthetic_scene_is_deterministic_and_geometric() -> None:
    a = syn.render_sample(3, 5)
    b = syn.render_sample(3, 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    image, mask, depth = a
    assert image.shape == (syn.HEIGHT, syn.WIDTH, 3) and mask.shape == depth.shape == (syn.HEIGHT, syn.WIDTH)
    assert mask.max() < syn.CLASSES.num_classes
    assert np.all(depth[mask == syn.SKY] == 0) and np.all(depth[mask != syn.SKY] > 0)
    assert depth.max() <= syn.MAX_DEPTH
    # ground pixels of the bottom row lie at z = f·h / (y - horizon), the pinhole ground plane
    scene = syn._sample_scene(np.random.default_rng([3, 5]))
    y = syn.HEIGHT - 1
    ground = np.isin(mask[y], (syn.ROAD, syn.SIDEWALK, syn.MARKING))
    assert ground.any()
    want = syn.FOCAL * syn.CAM_HEIGHT / (y + 0.5 - scene.horizon)
    assert np.allclose(depth[y][ground], want, rtol=1e-6)


def test_drive_frames_change_smoothly() -> None:
    f0, f1, f5 = (syn.render_drive_frame(0, t)[0].astype(np.float32) for t in (0.0, 0.02, 0.5))
    assert np.abs(f0 - f1).mean() < np.abs(f0 - f5).mean()


def test_generate_writes_the_format_and_reuses_its_stamp(tmp_path: Path) -> None:
    cfg = syn.ScenesConfig(train=2, val=1, seed=0)
    root = syn.generate(tmp_path / "s", cfg, workers=1)
    split = load_split(root, "train", (96, 192))
    assert len(split) == 2 and split.has_depth and split.classes == syn.CLASSES
    key = fingerprint(root)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert syn.generate(root, cfg, workers=1) == root
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp and fingerprint(root) == key
    _, mask, depth = syn.render_sample(0, 1)
    again = load_split(root, "train", (syn.HEIGHT, syn.WIDTH))
    assert np.array_equal(again.masks[1], mask)
    assert np.abs(again.depth[1] - depth).max() <= 0.5 / 256 + 1e-6

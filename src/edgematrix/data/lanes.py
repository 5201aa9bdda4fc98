"""Lane data for training and evaluation: a TuSimple split as tensors at the model's input size."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgematrix.data import roots
from edgematrix.data.synthetic_lanes import SyntheticConfig, generate
from edgematrix.data.tusimple import LaneSample, TuSimpleDataset
from edgematrix.errors import DataError

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] or [N, 3, H, W] RGB -> float32 NCHW normalised (ImageNet mean/std)."""
    x = images if images.shape[1] == 3 else images.transpose(0, 3, 1, 2)
    return ((x.astype(np.float32) - MEAN[None, :, None, None]) / STD[None, :, None, None]).astype(np.float32)


@dataclass
class LaneSplit:
    dataset: TuSimpleDataset
    images: np.ndarray  # uint8 [N, 3, H, W]

    @property
    def samples(self) -> list[LaneSample]:
        return self.dataset.samples

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def labels_json(self) -> list[dict]:
        return [s.to_json() for s in self.samples]


def resolve_data_root(configured: str, synthetic: SyntheticConfig, cache_dir: Path) -> tuple[Path, bool]:
    """The TuSimple folder (``EDGEMATRIX_DATA_ROOT``, then ``data_root``), or the synthetic one in the cache."""
    return roots.resolve_data_root(
        configured,
        layout="TuSimple folder (clips/, label_data_*.json, test_label.json)",
        synthetic="synthetic dataset",
        generate=lambda: generate(cache_dir / "data" / f"synthetic-tusimple-{synthetic.key()}", synthetic),
    )


def load_split(root: Path, split: str, size: tuple[int, int], limit: int = 0) -> LaneSplit:
    ds = TuSimpleDataset(root, split)
    if limit:
        ds.samples = ds.samples[:limit]
    images = np.stack([ds.load_image(s, size) for s in ds.samples]).transpose(0, 3, 1, 2)
    return LaneSplit(ds, np.ascontiguousarray(images))


def fingerprint(root: Path) -> str:
    """Content hash of a dataset: label files' bytes plus the image list with sizes."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        try:
            ds = TuSimpleDataset(root, split)
        except DataError:
            continue
        for s in ds.samples:
            h.update(json.dumps(s.to_json(), sort_keys=True).encode())
            h.update(str(ds.image_path(s).stat().st_size).encode())
    return h.hexdigest()[:16]

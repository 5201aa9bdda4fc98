"""TuSimple lane dataset: reader and writers for the real format.

Layout (the real dataset, or UFLD's preprocessed copy, or our synthetic generator's output)::

    data_root/
      clips/<date>/<clip>/20.jpg           images (the 20th frame of each clip is the labelled one)
      label_data_*.json                    train labels, one JSON object per line
      test_label.json                      test labels, same format
      test.txt / train_gt.txt              optional lists; when present they select the images

A label line is ``{"lanes": [[x, ...], ...], "h_samples": [y, ...], "raw_file": "clips/..."}`` with
``-2`` where a lane has no point at that row. A prediction line adds ``"run_time"`` (ms).
The real dataset's ``train_set/`` and ``test_set/`` sub-folders are searched as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgematrix.errors import DataError
from edgematrix.fileio import atomic_write_text

TRAIN_GLOB = "label_data_*.json"
TEST_LABELS = "test_label.json"
LIST_FILES = {"train": "train_gt.txt", "test": "test.txt"}


@dataclass
class LaneSample:
    raw_file: str
    lanes: list[list[int]]
    h_samples: list[int]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"lanes": self.lanes, "h_samples": self.h_samples, "raw_file": self.raw_file}


def parse_label_line(line: str, where: str) -> LaneSample:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}); each line must be one TuSimple label object") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    missing = [k for k in ("lanes", "h_samples", "raw_file") if k not in obj]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; a TuSimple label has lanes, h_samples, raw_file")
    lanes, hs = obj["lanes"], obj["h_samples"]
    if not isinstance(lanes, list) or not all(isinstance(lane, list) for lane in lanes):
        raise DataError(f"{where}: 'lanes' must be a list of lists of x values")
    if not isinstance(hs, list):
        raise DataError(f"{where}: 'h_samples' must be a list of y values, found {type(hs).__name__}")
    for i, lane in enumerate(lanes):
        if len(lane) != len(hs):
            raise DataError(f"{where}: lane {i} has {len(lane)} points but h_samples has {len(hs)}; they must match")
    try:
        int_lanes = [[int(v) for v in lane] for lane in lanes]
        int_hs = [int(v) for v in hs]
    except (TypeError, ValueError):
        raise DataError(f"{where}: lanes and h_samples must hold numbers (-2 where a lane has no point)") from None
    return LaneSample(str(obj["raw_file"]), int_lanes, int_hs)


def read_label_file(path: str | os.PathLike) -> list[LaneSample]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} not found")
    samples = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                samples.append(parse_label_line(line, f"{path}:{n}"))
    return samples


def write_label_file(path: str | os.PathLike, samples: Iterable[LaneSample]) -> None:
    _atomic_write_lines(Path(path), (json.dumps(s.to_json()) for s in samples))


def write_predictions(
    path: str | os.PathLike, predictions: Iterable[tuple[str, Sequence[Sequence[int]], float]]
) -> None:
    """Write a TuSimple submission: one ``{"raw_file", "lanes", "run_time"}`` object per line."""
    lines = (
        json.dumps({"raw_file": raw, "lanes": [list(map(int, lane)) for lane in lanes], "run_time": float(rt)})
        for raw, lanes, rt in predictions
    )
    _atomic_write_lines(Path(path), lines)


def restamp_run_time(path: str | os.PathLike, run_time_ms: float) -> None:
    """Set every prediction's ``run_time`` in the submission ``path`` to ``run_time_ms`` (atomically)."""
    path = Path(path)
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    _atomic_write_lines(path, (json.dumps({**d, "run_time": float(run_time_ms)}) for d in docs))


def _atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


class TuSimpleDataset:
    """Samples of one split; images are read on demand with :meth:`load_image`."""

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        if split not in ("train", "test"):
            raise DataError(f"unknown TuSimple split {split!r}; use 'train' or 'test'")
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DataError(
                f"data_root {self.root} does not exist; point data_root at a TuSimple folder "
                "(clips/, label_data_*.json, test_label.json) or leave it empty to use synthetic data"
            )
        files = self._label_files()
        self.samples: list[LaneSample] = [s for f in files for s in read_label_file(f)]
        selection = self._list_selection()
        if selection is not None:
            self.samples = [s for s in self.samples if s.raw_file in selection]
        if not self.samples:
            raise DataError(f"no {split} samples found under {self.root} (label files: {[str(f) for f in files]})")

    def _search_dirs(self) -> list[Path]:
        sub = "train_set" if self.split == "train" else "test_set"
        return [self.root, self.root / sub]

    def _label_files(self) -> list[Path]:
        for d in self._search_dirs():
            found = sorted(d.glob(TRAIN_GLOB)) if self.split == "train" else sorted(d.glob(TEST_LABELS))
            if found:
                return found
        # the real dataset keeps test_label.json at the top level, next to test_set/
        want = TRAIN_GLOB if self.split == "train" else TEST_LABELS
        raise DataError(f"no {want} under {self.root} (looked in {[str(d) for d in self._search_dirs()]})")

    def _list_selection(self) -> set[str] | None:
        path = self.root / LIST_FILES[self.split]
        if not path.is_file():
            return None
        return {line.split()[0].lstrip("/") for line in path.read_text().splitlines() if line.strip()}

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, sample: LaneSample) -> Path:
        for d in self._search_dirs():
            p = d / sample.raw_file
            if p.is_file():
                return p
        raise DataError(f"image {sample.raw_file} not found under {self.root}; is data_root complete?")

    def load_image(self, sample: LaneSample, size: tuple[int, int] | None = None) -> np.ndarray:
        """RGB uint8 array [H, W, 3]; resized to ``size`` = (height, width) when given."""
        path = self.image_path(sample)
        try:
            with Image.open(path) as f:
                im = f.convert("RGB")
                if size is not None:
                    im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(im)
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from None

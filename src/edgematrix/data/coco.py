"""COCO instances format: a validating reader/writer, and splits as arrays at the model's input size.

Layout of a dataset folder (COCO's own; ``train2017`` / ``val2017`` names are accepted too)::

    <root>/annotations/instances_train.json   <root>/train/<file_name>
    <root>/annotations/instances_val.json     <root>/val/<file_name>

An instances file is ``{"images": [{id, file_name, width, height}], "annotations": [{id, image_id,
category_id, bbox: [x, y, w, h], area, iscrowd}], "categories": [{id, name, supercategory}]}`` (``info`` and
``licenses`` are kept when present). Detection results, what a model writes, are COCO's results format:
``[{image_id, category_id, bbox: [x, y, w, h], score}]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import DataError

SPLITS = ("train", "val")
LAYOUT = (
    "<root>/annotations/instances_{train,val}.json and images in <root>/{train,val}/ "
    "(COCO's train2017/val2017 names work too)"
)


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoAnnotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in image pixels
    area: float
    iscrowd: int = 0


@dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str
    supercategory: str = ""


@dataclass
class CocoInstances:
    """One instances file. :meth:`validate` checks ids are unique, references resolve and sizes are valid;
    the reader and the writer call it."""

    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]
    info: dict[str, Any] = field(default_factory=dict)
    licenses: list[Any] = field(default_factory=list)

    def validate(self, source: str = "instances") -> None:
        where = f"{source}: "
        for kind, items in (("image", self.images), ("annotation", self.annotations), ("category", self.categories)):
            seen: set[int] = set()
            for it in items:
                if it.id in seen:
                    raise DataError(f"{where}{kind} id {it.id} appears twice; ids must be unique")
                seen.add(it.id)
        images = {im.id: im for im in self.images}
        cats = {c.id for c in self.categories}
        for im in self.images:
            if im.width <= 0 or im.height <= 0:
                raise DataError(f"{where}image {im.id} ({im.file_name}) has size {im.width}x{im.height}; must be > 0")
            if not im.file_name or Path(im.file_name).is_absolute() or ".." in Path(im.file_name).parts:
                raise DataError(
                    f"{where}image {im.id} has file_name {im.file_name!r}; need a relative path inside the split"
                )
        for a in self.annotations:
            if a.image_id not in images:
                raise DataError(f"{where}annotation {a.id} points to image_id {a.image_id}, which is not in images")
            if a.category_id not in cats:
                raise DataError(
                    f"{where}annotation {a.id} points to category_id {a.category_id}, not in categories "
                    f"({', '.join(str(c) for c in sorted(cats)) or 'none'})"
                )
            w, h = a.bbox[2], a.bbox[3]
            if not all(math.isfinite(v) for v in a.bbox) or w < 0 or h < 0:
                raise DataError(f"{where}annotation {a.id} has bbox {list(a.bbox)}; width and height must be >= 0")
            if not math.isfinite(a.area) or a.area < 0:
                raise DataError(f"{where}annotation {a.id} has area {a.area}; must be >= 0")
            if a.iscrowd not in (0, 1):
                raise DataError(f"{where}annotation {a.id} has iscrowd {a.iscrowd}; must be 0 or 1")

    @property
    def category_ids(self) -> list[int]:
        """Category ids sorted: index i is the model's class i."""
        return sorted(c.id for c in self.categories)

    def annotations_by_image(self) -> dict[int, list[CocoAnnotation]]:
        out: dict[int, list[CocoAnnotation]] = {im.id: [] for im in self.images}
        for a in self.annotations:
            out[a.image_id].append(a)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.info:
            out["info"] = self.info
        if self.licenses:
            out["licenses"] = self.licenses
        out["images"] = [
            {"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height} for i in self.images
        ]
        out["annotations"] = [
            {
                "id": a.id,
                "image_id": a.image_id,
                "category_id": a.category_id,
                "bbox": [float(v) for v in a.bbox],
                "area": float(a.area),
                "iscrowd": a.iscrowd,
            }
            for a in self.annotations
        ]
        out["categories"] = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in self.categories]
        return out

    def subset(self, image_ids: list[int]) -> CocoInstances:
        """The same categories, only the images (and their annotations) whose ids are given."""
        keep = set(image_ids)
        return CocoInstances(
            [im for im in self.images if im.id in keep],
            [a for a in self.annotations if a.image_id in keep],
            list(self.categories),
            dict(self.info),
            list(self.licenses),
        )


def _field(obj: dict[str, Any], key: str, kind: str, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: {kind} {obj.get('id', '?')} has no {key!r}")
    return obj[key]


def instances_from_json(raw: Any, source: str = "instances") -> CocoInstances:
    """Parse and validate an instances dict (the content of ``instances_*.json``)."""
    if not isinstance(raw, dict):
        raise DataError(
            f"{source}: expected a JSON object with images, annotations, categories; got {type(raw).__name__}"
        )
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(raw.get(k), list)]
    if missing:
        raise DataError(f"{source}: missing or not a list: {', '.join(missing)} (COCO instances format)")
    try:
        images = [
            CocoImage(
                int(_field(i, "id", "image", source)),
                str(_field(i, "file_name", "image", source)),
                int(_field(i, "width", "image", source)),
                int(_field(i, "height", "image", source)),
            )
            for i in raw["images"]
        ]
        anns = []
        for a in raw["annotations"]:
            bbox = _field(a, "bbox", "annotation", source)
            if not isinstance(bbox, list | tuple) or len(bbox) != 4:
                raise DataError(f"{source}: annotation {a.get('id', '?')} bbox must be [x, y, w, h]; got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            anns.append(
                CocoAnnotation(
                    int(_field(a, "id", "annotation", source)),
                    int(_field(a, "image_id", "annotation", source)),
                    int(_field(a, "category_id", "annotation", source)),
                    (x, y, w, h),
                    float(a.get("area", w * h)),
                    int(a.get("iscrowd", 0)),
                )
            )
        cats = [
            CocoCategory(
                int(_field(c, "id", "category", source)),
                str(_field(c, "name", "category", source)),
                str(c.get("supercategory", "")),
            )
            for c in raw["categories"]
        ]
    except (TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{source}: malformed entry ({e}); see the COCO instances format") from None
    info: dict[str, Any] = raw["info"] if isinstance(raw.get("info"), dict) else {}
    licenses: list[Any] = raw["licenses"] if isinstance(raw.get("licenses"), list) else []
    out = CocoInstances(images, anns, cats, info, licenses)
    out.validate(source)
    return out


def read_instances(path: str | os.PathLike[str]) -> CocoInstances:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} does not exist; expected layout: {LAYOUT}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read: {e}") from None
    return instances_from_json(raw, str(path))


def write_instances(path: str | os.PathLike[str], instances: CocoInstances) -> Path:
    """Validate ``instances`` and write them (atomically) as COCO instances JSON."""
    path = Path(path)
    instances.validate(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(instances.to_json()))
    os.replace(tmp, path)
    return path


def write_results(path: str | os.PathLike[str], results: list[dict[str, Any]]) -> Path:
    """Write detections in COCO's results format (``[{image_id, category_id, bbox, score}]``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


# -- dataset folders -----------------------------------------------------------------------------


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of ``split`` (``train`` / ``val``; ``test`` means ``val``)."""
    split = "val" if split == "test" else split
    if split not in SPLITS:
        raise DataError(f"unknown COCO split {split!r}; known: {', '.join(SPLITS)}")
    for name in (split, f"{split}2017"):
        ann = root / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            images = root / name
            if not images.is_dir():
                raise DataError(f"{ann} exists but its image folder {images} does not; expected layout: {LAYOUT}")
            return ann, images
    raise DataError(
        f"no annotations for split {split!r} under {root}: looked for annotations/instances_{split}.json and "
        f"annotations/instances_{split}2017.json; expected layout: {LAYOUT}"
    )


@dataclass
class DetectionSplit:
    """A split at the model's input size. ``boxes[i]`` ``[k, 4]`` x1y1x2y2 and ``labels[i]`` ``[k]`` (class
    indices into ``category_ids``) are image i's non-crowd boxes scaled to the input; ``scales[i]`` is
    (input / original) along x and y, to map detections back to ``instances``' image coordinates."""

    instances: CocoInstances  # the images loaded (in order) and all their annotations
    images: np.ndarray  # uint8 [N, 3, H, W]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    image_ids: list[int]
    scales: np.ndarray  # float64 [N, 2]
    category_ids: list[int]
    category_names: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)


def load_split(root: str | os.PathLike[str], split: str, size: tuple[int, int], limit: int = 0) -> DetectionSplit:
    """Read ``split`` of the COCO-layout folder ``root``, images resized to ``size`` (H, W) and RGB.

    ``limit`` > 0 keeps the first ``limit`` images (in file order).
    """
    from PIL import Image

    root = Path(root)
    ann_path, image_dir = split_paths(root, split)
    inst = read_instances(ann_path)
    if not inst.images:
        raise DataError(f"{ann_path} lists no images")
    if limit:
        inst = inst.subset([im.id for im in inst.images[:limit]])
    cat_ids = inst.category_ids
    index = {c: i for i, c in enumerate(cat_ids)}
    names = {c.id: c.name for c in inst.categories}
    h, w = size
    by_image = inst.annotations_by_image()
    images = np.empty((len(inst.images), 3, h, w), np.uint8)
    boxes, labels, scales = [], [], np.empty((len(inst.images), 2), np.float64)
    for i, im in enumerate(inst.images):
        path = image_dir / im.file_name
        try:
            with Image.open(path) as pil:
                rgb = pil.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image {path} (id {im.id}, listed in {ann_path}) does not exist") from None
        except OSError as e:
            raise DataError(f"image {path} cannot be decoded: {e}") from None
        if rgb.size != (im.width, im.height):
            raise DataError(f"image {path} is {rgb.size[0]}x{rgb.size[1]}, but {ann_path} says {im.width}x{im.height}")
        images[i] = np.asarray(rgb.resize((w, h), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        sx, sy = w / im.width, h / im.height
        scales[i] = (sx, sy)
        anns = [a for a in by_image[im.id] if not a.iscrowd and a.bbox[2] > 0 and a.bbox[3] > 0]
        b = np.array([[a.bbox[0], a.bbox[1], a.bbox[0] + a.bbox[2], a.bbox[1] + a.bbox[3]] for a in anns], np.float32)
        b = b.reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
        boxes.append(b)
        labels.append(np.array([index[a.category_id] for a in anns], np.int64))
    return DetectionSplit(
        inst, images, boxes, labels, [im.id for im in inst.images], scales, cat_ids, [names[c] for c in cat_ids]
    )


def detections_to_results(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, scale: np.ndarray, category_ids: list[int]
) -> list[dict[str, Any]]:
    """One image's detections (x1y1x2y2 in model-input pixels, class indices) → COCO results entries in the
    original image's coordinates."""
    sx, sy = float(scale[0]), float(scale[1])
    out = []
    for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        bx, by = x1 / sx, y1 / sy
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[int(c)]),
                "bbox": [round(bx, 2), round(by, 2), round(x2 / sx - bx, 2), round(y2 / sy - by, 2)],
                "score": round(float(s), 5),
            }
        )
    return out


def fingerprint(root: str | os.PathLike[str]) -> str:
    """Content hash of a COCO-layout dataset: annotation files' bytes plus each listed image's size."""
    root = Path(root)
    h = hashlib.sha256()
    for split in SPLITS:
        try:
            ann, image_dir = split_paths(root, split)
        except DataError:
            continue
        data = ann.read_bytes()
        h.update(data)
        for im in json.loads(data).get("images", []):
            p = image_dir / str(im.get("file_name", ""))
            h.update(str(p.stat().st_size if p.is_file() else -1).encode())
    return h.hexdigest()[:16]

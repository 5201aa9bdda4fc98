"""COCO detection metrics through pycocotools' ``COCOeval`` (the reference implementation).

``score(predictions, ground_truth)`` takes detections in COCO's results format (``[{image_id, category_id,
bbox: [x, y, w, h], score}]``) and a COCO instances dict or file, and returns COCOeval's twelve summary
figures (fractions, not percent): ``AP`` (mAP@[.5:.95]), ``AP50``, ``AP75``, ``APs``/``APm``/``APl``,
``AR1``, ``AR10``, ``AR100``, ``ARs``/``ARm``/``ARl``. COCOeval reports -1 for an area range without ground
truth; those are passed through as -1.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgematrix.errors import DataError, EdgeMatrixError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass(frozen=True)
class CocoScore:
    stats: dict[str, float]  # STAT_NAMES -> value (fraction; -1 where COCOeval has no ground truth)

    @property
    def map(self) -> float:
        return self.stats["AP"]

    @property
    def map50(self) -> float:
        return self.stats["AP50"]

    @property
    def ar100(self) -> float:
        return self.stats["AR100"]


def _load_json(source: Any, what: str) -> Any:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{what} file {path} does not exist")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{what} file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return source


def validate_results(results: Any, gt: dict[str, Any]) -> list[dict[str, Any]]:
    """Check detections against the ground truth's images and categories; returns them as plain dicts."""
    if not isinstance(results, list):
        raise DataError(
            f"detections must be a JSON list of {{image_id, category_id, bbox, score}}; got {type(results).__name__}"
        )
    images = {int(im["id"]) for im in gt["images"]}
    cats = {int(c["id"]) for c in gt["categories"]}
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or any(k not in r for k in ("image_id", "category_id", "bbox", "score")):
            raise DataError(f"detection {i} must have image_id, category_id, bbox, score; got {r!r}")
        bbox = r["bbox"]
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            raise DataError(f"detection {i}: bbox must be [x, y, w, h]; got {bbox!r}")
        try:
            x, y, w, h = (float(v) for v in bbox)
            score = float(r["score"])
            image_id, category_id = int(r["image_id"]), int(r["category_id"])
        except (TypeError, ValueError):
            raise DataError(f"detection {i}: non-numeric field in {r!r}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h, score)) or w < 0 or h < 0:
            raise DataError(f"detection {i}: bbox {bbox} / score {r['score']} must be finite with w, h >= 0")
        if image_id not in images:
            raise DataError(f"detection {i}: image_id {image_id} is not in the ground truth")
        if category_id not in cats:
            raise DataError(
                f"detection {i}: category_id {category_id} is not in the ground truth's categories {sorted(cats)}"
            )
        out.append({"image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h], "score": score})
    return out


def score(predictions: Any, ground_truth: Any, *, image_ids: list[int] | None = None) -> CocoScore:
    """COCOeval bbox summary of ``predictions`` (results list or file) against ``ground_truth`` (instances
    dict or file). ``image_ids`` restricts the evaluation to those images (default: all ground-truth images)."""
    from edgematrix.data.coco import instances_from_json

    gt_raw = _load_json(ground_truth, "ground-truth")
    gt = instances_from_json(gt_raw, "ground truth").to_json()  # validated; COCOeval needs 'iscrowd' and 'area'
    if not gt["images"]:
        raise DataError("the ground truth lists no images; nothing to evaluate")
    dets = validate_results(_load_json(predictions, "detections"), gt)
    return _score_impl(dets, gt, image_ids)


def _score_impl(dets: list[dict[str, Any]], gt: dict[str, Any], image_ids: list[int] | None) -> CocoScore:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise EdgeMatrixError(f"COCO mAP needs pycocotools ({e}); pip install pycocotools") from None
    if not dets:  # COCO.loadRes refuses an empty list; no detection scores 0 (recall 0 everywhere)
        return CocoScore({k: 0.0 for k in STAT_NAMES})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])  # loadRes adds fields in place
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return CocoScore({k: float(v) for k, v in zip(STAT_NAMES, ev.stats, strict=True)})


def score_files(predictions: str | os.PathLike[str], ground_truth: str | os.PathLike[str]) -> dict[str, float]:
    """``edgematrix score coco PRED.json GT.json``: COCOeval's summary figures as a dict (fractions)."""
    return score(predictions, ground_truth).stats

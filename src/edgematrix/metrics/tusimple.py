"""TuSimple lane metric, numerically identical to the official ``LaneEval`` (tusimple-benchmark).

Rules reproduced from the official evaluator:

- per ground-truth lane, threshold = 20 px / cos(angle), the angle from a least-squares line
  fit x = k*y + b through the lane's labelled points;
- a point is correct when |pred - gt| < threshold, where absent points (< 0) on either side are
  mapped to -100 (so absent-vs-absent counts as correct, as officially), divided by all h_samples;
- a GT lane is matched when its best prediction reaches 0.85 of its points;
- more than 4 GT lanes: the worst lane's accuracy and one FN are forgiven;
- more than len(gt) + 2 predicted lanes, or run_time > 200 ms: the image scores (0, 0, 1).

Unlike the official script, an image with no prediction does not abort the evaluation: it is
scored as an empty prediction (accuracy 0, every lane a false negative), which is what the official
evaluator returns for an empty ``lanes`` list. A prediction for an image not in the ground truth
is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgematrix.errors import DataError

PIXEL_THRESH = 20.0
PT_THRESH = 0.85
RUN_TIME_LIMIT_MS = 200.0  # the official rule: an image whose run_time (ms) exceeds this scores (0, 0, 1)


@dataclass(frozen=True)
class TuSimpleScore:
    accuracy: float
    fp: float
    fn: float
    images: int
    missing: int = 0

    def as_official(self) -> dict[str, float]:
        return {"Accuracy": self.accuracy, "FP": self.fp, "FN": self.fn}


def _angle(xs: np.ndarray, ys: np.ndarray) -> float:
    """arctan of the slope k of the least-squares fit x = k*y + b through the labelled points.

    Computed exactly as scikit-learn's ``LinearRegression`` (which the official evaluator calls):
    centre both sides on their means, then a LAPACK least-squares solve. The closed form
    sum(dy*dx) / sum(dy*dy) differs from it in the last bit for many lanes, and that bit decides
    |pred - gt| < threshold when the threshold is exact (slope 3/4 gives 20 / cos = 25 px).
    """
    valid = xs >= 0
    xs, ys = xs[valid], ys[valid]
    if len(xs) <= 1:
        return 0.0
    k = np.linalg.lstsq((ys - np.average(ys))[:, None], xs - np.average(xs), rcond=None)[0][0]
    return float(np.arctan(k))


def bench_image(
    pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]], y_samples: Sequence[float], run_time: float = 0.0
) -> tuple[float, float, float]:
    """(accuracy, fp, fn) of one image, as the official ``LaneEval.bench``."""
    if any(len(p) != len(y_samples) for p in pred):
        raise DataError(f"a predicted lane has {[len(p) for p in pred]} points but h_samples has {len(y_samples)}")
    if any(len(g) != len(y_samples) for g in gt):
        raise DataError(f"a ground-truth lane has {[len(g) for g in gt]} points but h_samples has {len(y_samples)}")
    if run_time > RUN_TIME_LIMIT_MS or len(gt) + 2 < len(pred):
        return 0.0, 0.0, 1.0
    ys = np.asarray(y_samples, dtype=np.float64)
    gt_arr = [np.asarray(g, dtype=np.float64) for g in gt]
    P = np.asarray(pred, dtype=np.float64).reshape(len(pred), len(y_samples))
    P = np.where(P >= 0, P, -100.0)
    line_accs = []
    matched = 0
    fn = 0.0
    for g in gt_arr:
        thresh = PIXEL_THRESH / np.cos(_angle(g, ys))
        gm = np.where(g >= 0, g, -100.0)
        if len(P):
            accs = np.where(np.abs(P - gm[None]) < thresh, 1.0, 0.0).sum(1) / len(g)
            best = float(accs.max())
        else:
            best = 0.0
        if best < PT_THRESH:
            fn += 1
        else:
            matched += 1
        line_accs.append(best)
    fp = len(pred) - matched
    if len(gt) > 4 and fn > 0:
        fn -= 1
    s = sum(line_accs)
    if len(gt) > 4:
        s -= min(line_accs)
    return (
        s / max(min(4.0, len(gt)), 1.0),
        fp / len(pred) if len(pred) > 0 else 0.0,
        fn / max(min(len(gt), 4.0), 1.0),
    )


def _is_lane_list(lanes: object) -> bool:
    """A list of lanes, each a sequence of x values (JSON lists, tuples or numpy arrays)."""
    if not isinstance(lanes, Sequence | np.ndarray) or isinstance(lanes, str | bytes):
        return False
    return all(isinstance(lane, Sequence | np.ndarray) and not isinstance(lane, str | bytes) for lane in lanes)


def score(predictions: Sequence[Mapping], ground_truth: Sequence[Mapping]) -> TuSimpleScore:
    """Score prediction objects against label objects (both as read from TuSimple JSON lines)."""
    for g in ground_truth:
        for key in ("raw_file", "lanes", "h_samples"):
            if key not in g:
                raise DataError(f"a ground-truth label lacks {key!r}; each line needs raw_file, lanes and h_samples")
    gts = {g["raw_file"]: g for g in ground_truth}
    if not gts:
        raise DataError("the ground truth holds no images")
    seen: set[str] = set()
    acc = fp = fn = 0.0
    for p in predictions:
        for key in ("raw_file", "lanes", "run_time"):
            if key not in p:
                raise DataError(f"a prediction lacks {key!r}; each line needs raw_file, lanes and run_time")
        raw = p["raw_file"]
        if raw not in gts:
            raise DataError(f"prediction for {raw!r}, which is not in the ground truth")
        if raw in seen:
            raise DataError(f"two predictions for {raw!r}")
        if not _is_lane_list(p["lanes"]):
            raise DataError(f"prediction for {raw!r}: 'lanes' must be a list of lists of x values")
        seen.add(raw)
        g = gts[raw]
        a, f, n = bench_image(p["lanes"], g["lanes"], g["h_samples"], float(p["run_time"]))
        acc, fp, fn = acc + a, fp + f, fn + n
    missing = [raw for raw in gts if raw not in seen]
    for raw in missing:
        g = gts[raw]
        a, f, n = bench_image([], g["lanes"], g["h_samples"])
        acc, fp, fn = acc + a, fp + f, fn + n
    num = len(gts)
    return TuSimpleScore(acc / num, fp / num, fn / num, images=num, missing=len(missing))


def _read_lines(path: str | os.PathLike, what: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object")
        out.append(obj)
    return out


def score_files(pred_file: str | os.PathLike, gt_file: str | os.PathLike) -> TuSimpleScore:
    return score(_read_lines(pred_file, "prediction"), _read_lines(gt_file, "ground-truth"))

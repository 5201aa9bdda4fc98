"""Semantic segmentation and monocular depth metrics.

Segmentation (Cityscapes / PASCAL VOC convention): one confusion matrix accumulated over the whole
split (rows = ground truth, columns = prediction), pixels labelled ``ignore_index`` (255) skipped.
IoU of class c = TP / (TP + FP + FN); mIoU is the mean over the classes that occur in the ground
truth or the predictions (a class absent from both has no IoU and is left out, not counted as 0
or 1). Pixel accuracy = correct / labelled pixels.

Depth (Eigen et al. 2014, the KITTI depth benchmark's figures), over the pixels with a valid
ground-truth depth (> 0), pooled over the split:

- AbsRel = mean(|d - d*| / d*)
- RMSE = sqrt(mean((d - d*)²)) in metres
- δ1 = fraction of pixels with max(d / d*, d* / d) < 1.25
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgematrix.errors import EdgeMatrixError

IGNORE_INDEX = 255


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``[C, C]`` int64 counts, rows = ground truth class, columns = predicted class.

    ``pred`` and ``target`` are integer class maps of the same shape. Ground-truth pixels equal to
    ``ignore_index`` are skipped; any other value outside ``[0, num_classes)`` (in either) is an error.
    """
    if num_classes < 1:
        raise EdgeMatrixError(f"num_classes must be >= 1; got {num_classes}")
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise EdgeMatrixError(f"prediction shape {pred.shape} and ground-truth shape {target.shape} differ")
    keep = target != ignore_index
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    for name, arr in (("ground truth", t), ("prediction", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise EdgeMatrixError(
                f"{name} holds class id {int(arr.min() if arr.min() < 0 else arr.max())} outside 0..{num_classes - 1} "
                f"(and not the ignore index {ignore_index}); check the class count and the masks' encoding"
            )
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class SegmentationScore:
    miou: float  # fraction 0..1, over the classes present in GT or predictions
    per_class_iou: dict[int, float]  # only present classes
    pixel_accuracy: float  # fraction 0..1


def segmentation_scores(confusion: np.ndarray) -> SegmentationScore:
    """mIoU, per-class IoU and pixel accuracy of an accumulated confusion matrix."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise EdgeMatrixError(f"a confusion matrix is square [C, C]; got shape {cm.shape}")
    tp = np.diag(cm)
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    present = union > 0
    ious = {int(c): float(tp[c] / union[c]) for c in np.flatnonzero(present)}
    total = cm.sum()
    return SegmentationScore(
        miou=float(np.mean(list(ious.values()))) if ious else 0.0,
        per_class_iou=ious,
        pixel_accuracy=float(tp.sum() / total) if total else 0.0,
    )


@dataclass
class DepthAccumulator:
    """Sums over valid pixels; ``add`` batches of predictions, then read the figures."""

    count: int = 0
    abs_rel_sum: float = 0.0
    sq_err_sum: float = 0.0
    delta1_count: int = 0
    _eps: float = field(default=1e-6, repr=False)

    def add(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        """``pred`` / ``target`` depths in metres of one shape; ``valid`` defaults to ``target > 0``."""
        pred = np.asarray(pred, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        if pred.shape != target.shape:
            raise EdgeMatrixError(f"depth prediction shape {pred.shape} and ground-truth shape {target.shape} differ")
        mask = target > 0 if valid is None else (np.asarray(valid, bool) & (target > 0))
        if mask.shape != target.shape:
            raise EdgeMatrixError(f"valid mask shape {mask.shape} differs from the depth shape {target.shape}")
        d, g = np.maximum(pred[mask], self._eps), target[mask]
        self.count += int(d.size)
        self.abs_rel_sum += float(np.sum(np.abs(d - g) / g))
        self.sq_err_sum += float(np.sum((d - g) ** 2))
        self.delta1_count += int(np.sum(np.maximum(d / g, g / d) < 1.25))

    def _need(self) -> None:
        if self.count == 0:
            raise EdgeMatrixError("no valid ground-truth depth pixels were scored (all depth maps are empty / 0)")

    @property
    def abs_rel(self) -> float:
        self._need()
        return self.abs_rel_sum / self.count

    @property
    def rmse(self) -> float:
        self._need()
        return float(np.sqrt(self.sq_err_sum / self.count))

    @property
    def delta1(self) -> float:
        self._need()
        return self.delta1_count / self.count


def depth_scores(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """``{"abs_rel", "rmse", "delta1"}`` of one prediction (or a stack), over valid pixels."""
    acc = DepthAccumulator()
    acc.add(pred, target, valid)
    return {"abs_rel": acc.abs_rel, "rmse": acc.rmse, "delta1": acc.delta1}

from __future__ import annotations

import math

import numpy as np
import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.metrics.segmentation import (
    DepthAccumulator,
    confusion_matrix,
    depth_scores,
    segmentation_scores,
)

# 3 classes; one ignored pixel. Kept pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,0)
GT = np.array([[0, 0, 1], [1, 255, 2]], np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, GT, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_miou_per_class_and_pixel_accuracy_by_hand() -> None:
    s = segmentation_scores(confusion_matrix(PRED, GT, 3))
    # IoU0 = 1 / (2 + 2 - 1), IoU1 = 2 / (2 + 3 - 2), IoU2 = 0 / (1 + 0 - 0)
    assert s.per_class_iou == pytest.approx({0: 1 / 3, 1: 2 / 3, 2: 0.0})
    assert s.miou == pytest.approx(1 / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)


def test_class_absent_from_gt_and_predictions_is_left_out() -> None:
    s = segmentation_scores(confusion_matrix(PRED, GT, 5))
    assert sorted(s.per_class_iou) == [0, 1, 2]
    assert s.miou == pytest.approx(1 / 3)


def test_class_only_predicted_counts_as_zero() -> None:
    s = segmentation_scores(confusion_matrix(np.array([3, 0]), np.array([0, 0]), 4))
    assert s.per_class_iou == pytest.approx({0: 0.5, 3: 0.0})
    assert s.miou == pytest.approx(0.25)


def test_accumulating_equals_one_big_matrix() -> None:
    rng = np.random.default_rng(0)
    gts = rng.integers(0, 4, (3, 10, 12))
    preds = rng.integers(0, 4, (3, 10, 12))
    total = sum(confusion_matrix(p, g, 4) for p, g in zip(preds, gts, strict=True))
    assert np.array_equal(total, confusion_matrix(preds, gts, 4))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(EdgeMatrixError, match="shape"):
        confusion_matrix(PRED[:, :2], GT, 3)
    with pytest.raises(EdgeMatrixError, match=r"class id 7 outside 0\.\.2"):
        confusion_matrix(PRED, np.where(GT == 2, 7, GT), 3)
    with pytest.raises(EdgeMatrixError, match="prediction holds class id 3"):
        confusion_matrix(np.where(PRED == 1, 3, PRED), GT, 3)


def test_depth_metrics_by_hand() -> None:
    pred = np.array([2.0, 4.0, 12.0, 7.0])
    gt = np.array([2.0, 5.0, 10.0, 0.0])  # the last pixel has no measurement
    d = depth_scores(pred, gt)
    assert d["abs_rel"] == pytest.approx((0 + 1 / 5 + 2 / 10) / 3)
    assert d["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    # ratios 1.0, 1.25 (not < 1.25), 1.2
    assert d["delta1"] == pytest.approx(2 / 3)


def test_depth_valid_mask_and_pooling() -> None:
    acc = DepthAccumulator()
    acc.add(np.array([[1.0, 3.0]]), np.array([[1.0, 2.0]]), valid=np.array([[True, False]]))
    acc.add(np.array([4.0]), np.array([2.0]))
    assert acc.count == 2
    assert acc.abs_rel == pytest.approx((0 + 1.0) / 2)
    assert acc.rmse == pytest.approx(math.sqrt(4 / 2))
    assert acc.delta1 == pytest.approx(0.5)


def test_depth_without_valid_pixels_raises() -> None:
    with pytest.raises(EdgeMatrixError, match="no valid ground-truth depth"):
        depth_scores(np.ones(3), np.zeros(3))

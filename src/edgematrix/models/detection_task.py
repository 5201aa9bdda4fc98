"""Detection targets, loss, box coding and post-processing for :class:`~edgematrix.models.detector.Detector`.

Boxes are ``[x1, y1, x2, y2]`` in model-input pixels throughout (COCO's ``[x, y, w, h]`` appears only in
:mod:`edgematrix.data.coco` and the results files).

- Assignment (FCOS, Tian et al. 2019, with centre sampling): a cell is positive for a ground-truth box when
  its centre lies inside the box, within ``center_radius`` strides of the box centre, and the box's largest
  side distance from it falls in the cell's level range (``level_scale`` × stride × (1/2, 1], the finest
  level from 0, the coarsest to infinity). A cell claimed by several boxes takes the smallest. A box that no
  cell claims (smaller than a stride) takes the finest-level cell nearest its centre.
- Loss: quality focal loss (Li et al. 2020, GFL: the positive class's target is the IoU of the predicted box
  with its ground truth, so scores rank boxes by localisation quality, which mAP@[.5:.95] rewards) plus
  ``box_weight`` × GIoU loss on the positive cells, both normalised by the number of positives.
- Coding: the ``boxes`` output is ``log(d / stride)`` of the distances to the left, top, right, bottom sides.
- Post-processing (numpy, on the host): sigmoid, score threshold, top-k, class-wise greedy NMS, max detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgematrix.models.detector import DetectorGeometry

MAX_LOG_DISTANCE = 8.0  # exp(8) strides: far beyond any image; keeps exp finite on garbage inputs


@dataclass(frozen=True)
class AssignConfig:
    center_radius: float = 1.5  # strides around the box centre that may be positive
    level_scale: float = 4.0  # level i takes boxes whose largest side distance is in (scale*s/2, scale*s]


@dataclass(frozen=True)
class PostprocessConfig:
    score_threshold: float = 0.05
    nms_iou: float = 0.6
    pre_nms_top_k: int = 1000
    max_detections: int = 100


# -- box coding ----------------------------------------------------------------------------------


def decode_boxes(raw: np.ndarray, points: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """``boxes`` output ``[..., A, 4]`` → ``[..., A, 4]`` x1, y1, x2, y2 (model-input pixels)."""
    d = np.exp(np.minimum(raw.astype(np.float32), MAX_LOG_DISTANCE)) * strides[:, None]
    return np.concatenate([points - d[..., :2], points + d[..., 2:]], axis=-1)


def encode_boxes(boxes: np.ndarray, points: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_boxes` for boxes that contain their point: ``[A, 4]`` x1y1x2y2 → raw."""
    d = np.concatenate([points - boxes[:, :2], boxes[:, 2:] - points], axis=1)
    return np.log(np.maximum(d, 1e-6) / strides[:, None]).astype(np.float32)


def decode_boxes_torch(raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    d = torch.exp(raw.float().clamp(max=MAX_LOG_DISTANCE)) * strides[:, None]
    return torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1)


# -- IoU and NMS (numpy) -------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[n, 4]`` and ``[m, 4]`` x1y1x2y2 boxes → ``[n, m]`` (0 where a union is empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, highest score first (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each label (boxes of different labels never suppress each other)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    offset = (boxes.max() + 1.0) * labels.astype(np.float64)[:, None]
    return nms(boxes + offset, scores, iou_threshold)


def postprocess(
    scores: np.ndarray,
    raw_boxes: np.ndarray,
    geometry: DetectorGeometry,
    config: PostprocessConfig = PostprocessConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs (``scores`` ``[A, C]`` logits, ``boxes`` ``[A, 4]`` raw; a leading batch axis of 1
    is dropped) → detections: boxes ``[k, 4]`` x1y1x2y2 clipped to the input, scores ``[k]``, labels ``[k]``
    (0-based class indices), best first."""
    scores, raw_boxes = np.asarray(scores, np.float32), np.asarray(raw_boxes, np.float32)
    if scores.ndim == 3:
        scores, raw_boxes = scores[0], raw_boxes[0]
    n_anchor = geometry.num_anchors
    if scores.shape != (n_anchor, geometry.num_classes) or raw_boxes.shape != (n_anchor, 4):
        raise ValueError(
            f"outputs scores {scores.shape} / boxes {raw_boxes.shape} do not match the detector's "
            f"({n_anchor}, {geometry.num_classes}) / ({n_anchor}, 4)"
        )
    prob = 1.0 / (1.0 + np.exp(-scores))
    idx, cls = np.nonzero(prob > config.score_threshold)
    conf = prob[idx, cls]
    if conf.size > config.pre_nms_top_k:
        top = np.argsort(-conf, kind="stable")[: config.pre_nms_top_k]
        idx, cls, conf = idx[top], cls[top], conf[top]
    points, strides = geometry.points()
    boxes = decode_boxes(raw_boxes[idx], points[idx], strides[idx])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, geometry.input_width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, geometry.input_height)
    keep = batched_nms(boxes, conf, cls, config.nms_iou)[: config.max_detections]
    return boxes[keep].astype(np.float32), conf[keep].astype(np.float32), cls[keep].astype(np.int64)


# -- training targets ----------------------------------------------------------------------------


def assign_targets(
    boxes: np.ndarray, labels: np.ndarray, geometry: DetectorGeometry, config: AssignConfig = AssignConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """One image's ground truth (``[k, 4]`` x1y1x2y2, ``[k]`` class indices) → per cell: class index
    (``-1`` = background) ``[A]`` int64 and the assigned ground-truth box ``[A, 4]`` float32."""
    points, strides = geometry.points()
    n = len(points)
    cls_t = np.full(n, -1, np.int64)
    box_t = np.zeros((n, 4), np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(boxes) == 0:
        return cls_t, box_t
    px, py = points[:, 0:1], points[:, 1:2]  # [A, 1]
    x1, y1, x2, y2 = (boxes[None, :, i] for i in range(4))  # [1, k]
    dist = np.stack([px - x1, py - y1, x2 - px, y2 - py], -1)  # [A, k, 4]
    inside = dist.min(-1) > 0
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    r = config.center_radius * strides[:, None]
    in_center = (np.abs(px - cx) < r) & (np.abs(py - cy) < r)
    reach = dist.max(-1)
    finest, coarsest = strides.min(), strides.max()
    lo = np.where(strides == finest, 0.0, config.level_scale * strides / 2)[:, None]
    hi = np.where(strides == coarsest, np.inf, config.level_scale * strides)[:, None]
    ok = inside & in_center & (reach > lo) & (reach <= hi)
    area = ((x2 - x1) * (y2 - y1)).repeat(n, 0)
    area = np.where(ok, area, np.inf)
    # a box no cell claims (smaller than the finest stride): the finest-level cell nearest its centre
    for j in np.nonzero(~ok.any(0))[0]:
        fine = np.nonzero(strides == finest)[0]
        d2 = (points[fine, 0] - cx[0, j]) ** 2 + (points[fine, 1] - cy[0, j]) ** 2
        a = fine[int(np.argmin(d2))]
        area[a, j] = min(area[a, j], 0.0)  # wins against any other claim on that cell
    best = area.argmin(1)
    pos = np.isfinite(area[np.arange(n), best])
    cls_t[pos] = labels[best[pos]]
    box_t[pos] = boxes[best[pos]]
    return cls_t, box_t


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise IoU and generalized IoU of ``[n, 4]`` x1y1x2y2 boxes."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = (area_a + area_b - inter).clamp(min=1e-6)
    iou = inter / union
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(1).clamp(min=1e-6)
    return iou, iou - (hull - union) / hull


def detection_loss(
    scores: torch.Tensor,
    raw_boxes: torch.Tensor,
    cls_t: torch.Tensor,
    box_t: torch.Tensor,
    points: torch.Tensor,
    strides: torch.Tensor,
    *,
    box_weight: float = 2.0,
    beta: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Quality focal loss + GIoU loss (see the module docstring) of a batch: ``scores`` ``[N, A, C]``,
    ``raw_boxes`` ``[N, A, 4]``, targets ``cls_t`` ``[N, A]`` (-1 background), ``box_t`` ``[N, A, 4]``.
    Returns ``{"loss", "cls", "box"}``."""
    scores, raw_boxes = scores.float(), raw_boxes.float()
    pos = cls_t >= 0
    num_pos = max(1.0, float(pos.sum().item()))
    target = torch.zeros_like(scores)
    box_loss = scores.new_zeros(())
    if pos.any():
        pred = decode_boxes_torch(raw_boxes, points, strides)[pos]
        iou, g = giou(pred, box_t[pos])
        box_loss = (1 - g).sum() / num_pos
        target[pos, cls_t[pos]] = iou.detach().clamp(min=0.01)
    p = scores.sigmoid()
    qfl = F.binary_cross_entropy_with_logits(scores, target, reduction="none") * (p - target).abs().pow(beta)
    cls_loss = qfl.sum() / num_pos
    return {"loss": cls_loss + box_weight * box_loss, "cls": cls_loss, "box": box_loss}

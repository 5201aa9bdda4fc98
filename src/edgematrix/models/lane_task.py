"""Lane task adapter: TuSimple lanes <-> UFLD-v2 anchor targets, decoder, loss.

The decoder follows UFLD-v2's TuSimple evaluation (``generate_tusimple_lines``, mode ``4row``): per
lane slot, a lane is kept when it exists on more than ``MIN_LANE_POINTS`` (3) row anchors; its x at
each existing row anchor is the softmax expectation over the arg-max cell and its neighbours
(``local_width``), mapped back to image pixels. (UFLD-v2's demo drawing code keeps only lanes present
on more than half the anchors; on TuSimple that drops every lane that enters the image late or leaves
it at the side, most of the outer lanes, so its evaluation does not use it.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgematrix.models.ufld import LaneGeometry

IGNORE = -1
MIN_LANE_POINTS = 3  # UFLD-v2 eval_wrapper: min_lanepts_row; a lane needs more row anchors than this


def _bottom_x(xs: np.ndarray, ys: np.ndarray, y_bottom: float) -> float:
    """x of a lane extrapolated to the bottom row (linear fit of its lowest points)."""
    valid = xs >= 0
    xs, ys = xs[valid], ys[valid]
    if len(xs) == 1:
        return float(xs[0])
    order = np.argsort(ys)[-10:]
    k, b = np.polyfit(ys[order], xs[order], 1)
    return float(k * y_bottom + b)


def assign_slots(lanes: Sequence[Sequence[float]], h_samples: Sequence[float], g: LaneGeometry) -> list[int]:
    """Slot per lane (-1 = dropped): ego-left=1, its left neighbour=0, ego-right=2, its right=3.

    Only the 4-slot layout of UFLD's TuSimple models is supported; lanes beyond two per side are
    dropped from the training targets (the metric still sees them).
    """
    ys = np.asarray(h_samples, dtype=np.float64)
    centre = (g.image_width - 1) / 2
    bottoms = []
    for i, lane in enumerate(lanes):
        xs = np.asarray(lane, dtype=np.float64)
        if (xs >= 0).sum() >= 2:
            bottoms.append((_bottom_x(xs, ys, g.image_height - 1), i))
    left = sorted([b for b in bottoms if b[0] < centre], reverse=True)
    right = sorted([b for b in bottoms if b[0] >= centre])
    slots = [-1] * len(lanes)
    half = g.num_lanes // 2
    for rank, (_, i) in enumerate(left[:half]):
        slots[i] = half - 1 - rank
    for rank, (_, i) in enumerate(right[: g.num_lanes - half]):
        slots[i] = half + rank
    return slots


def _interp_lane_at(xs: np.ndarray, ys: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Lane x at target rows by linear interpolation inside its labelled span; -1 outside."""
    valid = xs >= 0
    out = np.full(len(targets), -1.0)
    if valid.sum() < 2:
        return out
    vy, vx = ys[valid], xs[valid]
    inside = (targets >= vy.min()) & (targets <= vy.max())
    out[inside] = np.interp(targets[inside], vy, vx)
    return out


def encode_targets(
    lanes: Sequence[Sequence[float]], h_samples: Sequence[float], g: LaneGeometry
) -> dict[str, np.ndarray]:
    """Classification targets for one image (int64 arrays, IGNORE where no lane)."""
    ys = np.asarray(h_samples, dtype=np.float64)
    anchors = np.asarray(g.row_anchors, dtype=np.float64)
    cols = g.col_anchors
    row_cls = np.full((g.num_row, g.num_lanes), IGNORE, np.int64)
    col_cls = np.full((g.num_col, g.num_lanes), IGNORE, np.int64)
    for lane, slot in zip(lanes, assign_slots(lanes, h_samples, g), strict=True):
        if slot < 0:
            continue
        xs = np.asarray(lane, dtype=np.float64)
        x_at = _interp_lane_at(xs, ys, anchors)
        ok = (x_at >= 0) & (x_at <= g.image_width - 1)
        row_cls[ok, slot] = np.rint(g.x_to_cell(x_at[ok])).astype(np.int64)
        # column anchors: where the lane crosses each vertical line x = c
        valid = xs >= 0
        if valid.sum() >= 2:
            vx, vy = xs[valid], ys[valid]
            for ci, c in enumerate(cols):
                hits = np.nonzero((vx[:-1] - c) * (vx[1:] - c) <= 0)[0]
                if len(hits) and vx[hits[-1]] != vx[hits[-1] + 1]:
                    j = hits[-1]  # lowest crossing (closest to the car)
                    t = (c - vx[j]) / (vx[j + 1] - vx[j])
                    y = vy[j] + t * (vy[j + 1] - vy[j])
                    col_cls[ci, slot] = int(np.clip(np.rint(g.y_to_cell(y)), 0, g.num_cell_col - 1))
    return {
        "row_cls": row_cls,
        "row_exist": (row_cls >= 0).astype(np.int64),
        "col_cls": col_cls,
        "col_exist": (col_cls >= 0).astype(np.int64),
    }


def encode_segmentation(
    lanes: Sequence[Sequence[float]], h_samples: Sequence[float], g: LaneGeometry, size: tuple[int, int]
) -> np.ndarray:
    """Lane mask for the auxiliary segmentation branch: [H, W] int64, 0 = background, slot + 1 = lane."""
    from PIL import Image, ImageDraw

    h, w = size
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    sx, sy = w / g.image_width, h / g.image_height
    ys = np.asarray(h_samples, dtype=np.float64)
    for lane, slot in zip(lanes, assign_slots(lanes, h_samples, g), strict=True):
        xs = np.asarray(lane, dtype=np.float64)
        pts = [(x * sx, y * sy) for x, y in zip(xs, ys, strict=True) if x >= 0]
        if slot >= 0 and len(pts) >= 2:
            draw.line(pts, fill=slot + 1, width=max(1, round(w / 50)))
    return np.asarray(mask, dtype=np.int64)


def decode_rows(
    loc_row: np.ndarray,
    exist_row: np.ndarray,
    g: LaneGeometry,
    local_width: int = 1,
    min_points: int = MIN_LANE_POINTS,
) -> np.ndarray:
    """Decode one image's row-anchor logits into x per (row anchor, lane slot); -2 where absent.

    ``loc_row``: [num_cell_row, num_row, num_lanes]; ``exist_row``: [2, num_row, num_lanes].
    Returns float array [num_lanes, num_row]; lanes present on at most ``min_points`` row anchors
    are all -2.
    """
    loc = np.asarray(loc_row, dtype=np.float64)
    cells = loc.shape[0]
    arg = loc.argmax(0)  # [num_row, num_lanes]
    offsets = np.arange(-local_width, local_width + 1)
    idx = np.clip(arg[None] + offsets[:, None, None], 0, cells - 1)  # [K, R, L]
    # neighbours clipped at the border repeat an index; mask the repeats so each cell counts once
    unique = np.ones_like(idx, dtype=bool)
    for k in range(1, len(offsets)):
        unique[k] = ~np.any(idx[:k] == idx[k][None], axis=0)
    logits = np.take_along_axis(loc, idx, axis=0)
    logits = np.where(unique, logits, -np.inf)
    w = np.exp(logits - logits.max(0, keepdims=True))
    w /= w.sum(0, keepdims=True)
    cell = (w * idx).sum(0)
    x = g.cell_to_x(cell)
    present = np.asarray(exist_row).argmax(0).astype(bool)  # [R, L]
    keep_lane = present.sum(0) > min_points
    x = np.where(present & keep_lane[None], x, -2.0)
    return x.T


def lanes_for_h_samples(xs_at_anchors: np.ndarray, g: LaneGeometry, h_samples: Sequence[float]) -> list[list[int]]:
    """TuSimple ``lanes`` for the requested ``h_samples`` (ints, -2 absent); empty lanes dropped."""
    anchors = np.asarray(g.row_anchors, dtype=np.float64)
    hs = np.asarray(h_samples, dtype=np.float64)
    out = []
    for lane in xs_at_anchors:
        if np.array_equal(hs, anchors):
            vals = lane
        else:
            vals = _interp_lane_at(np.where(lane >= 0, lane, -1.0), anchors, hs)
            vals = np.where(vals >= 0, vals, -2.0)
        if (vals >= 0).any():
            out.append([int(np.rint(v)) if v >= 0 else -2 for v in vals])
    return out


def _soft_cell_ce(loc: torch.Tensor, cls: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy over cells against a Gaussian around the target cell (sigma in cells).

    Neighbouring cells are near-misses, not errors: the soft target turns the classification into an
    ordinal one, which localises sooner in short CPU training. ``sigma=0`` is plain cross-entropy.
    """
    if sigma <= 0:
        return F.cross_entropy(loc, cls, ignore_index=IGNORE)
    cells = torch.arange(loc.shape[1], dtype=loc.dtype, device=loc.device).view(1, -1, 1, 1)
    target = torch.exp(-0.5 * ((cells - cls.clamp(min=0).unsqueeze(1).to(loc.dtype)) / sigma) ** 2)
    target = target / target.sum(1, keepdim=True)
    per = -(target * F.log_softmax(loc, dim=1)).sum(1)  # [B, anchors, lanes]
    return per[mask].mean()


def lane_loss(
    outputs: Sequence[torch.Tensor],
    targets: dict[str, torch.Tensor],
    expectation_weight: float = 0.05,
    label_sigma: float = 0.0,
) -> torch.Tensor:
    """UFLD-v2 style loss: cell classification + expectation (L1 in cells) + existence.

    A fifth output (the training-only auxiliary segmentation logits) adds a cross-entropy against
    ``targets["seg"]``, as UFLD's ``use_aux`` does.
    """
    loc_row, loc_col, exist_row, exist_col = outputs[:4]
    total = loc_row.new_zeros(())
    if len(outputs) > 4:
        total = total + F.cross_entropy(outputs[4], targets["seg"])
    for loc, exist, cls_key, ex_key in (
        (loc_row, exist_row, "row_cls", "row_exist"),
        (loc_col, exist_col, "col_cls", "col_exist"),
    ):
        cls = targets[cls_key]
        total = total + F.cross_entropy(exist, targets[ex_key])
        mask = cls >= 0
        # a batch without any lane cell (no lanes, or none crossing a column anchor) has no cell
        # target: cross_entropy's mean over zero targets would be NaN and poison the whole step
        if mask.any():
            total = total + _soft_cell_ce(loc, cls, mask, label_sigma)
            prob = loc.softmax(1)
            grid = torch.arange(loc.shape[1], dtype=loc.dtype, device=loc.device).view(1, -1, 1, 1)
            expect = (prob * grid).sum(1)
            total = total + expectation_weight * F.l1_loss(expect[mask], cls[mask].to(loc.dtype))
    return total

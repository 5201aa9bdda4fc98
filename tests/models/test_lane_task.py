"""UFLD-v2 lane task: targets, decoder and loss agree with each other and with the TuSimple metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgematrix.data.synthetic_lanes import H_SAMPLES, render_sample
from edgematrix.metrics.tusimple import bench_image
from edgematrix.models.lane_task import (
    IGNORE,
    MIN_LANE_POINTS,
    assign_slots,
    decode_rows,
    encode_targets,
    lane_loss,
    lanes_for_h_samples,
)
from edgematrix.models.ufld import LaneGeometry

G = LaneGeometry()
CELL_PX = (G.image_width - 1) / (G.num_cell_row - 1)  # one row-anchor cell: 12.92 px


def _vertical(x: float, rows: slice = slice(None)) -> list[int]:
    lane = [-2] * len(H_SAMPLES)
    for i in range(len(H_SAMPLES))[rows]:
        lane[i] = int(x)
    return lane


def _line(x_top: float, x_bottom: float, rows: slice = slice(None)) -> list[int]:
    """A straight lane from x_top at y=160 to x_bottom at y=710, labelled on ``rows``."""
    lane = [-2] * len(H_SAMPLES)
    for i in range(len(H_SAMPLES))[rows]:
        t = (H_SAMPLES[i] - 160) / 550
        lane[i] = round(x_top + t * (x_bottom - x_top))
    return lane


def _perfect_outputs(t: dict[str, np.ndarray], g: LaneGeometry = G, margin: float = 20.0):
    """Logits a perfect model would produce: a large logit at each target cell, existence from targets."""

    def loc(cls: np.ndarray, cells: int) -> np.ndarray:
        out = np.zeros((cells, *cls.shape))
        r, lane = np.nonzero(cls >= 0)
        out[cls[r, lane], r, lane] = margin
        return out

    def exist(ex: np.ndarray) -> np.ndarray:
        return np.stack([(ex == 0) * margin / 2, (ex == 1) * margin / 2])

    return (
        loc(t["row_cls"], g.num_cell_row),
        loc(t["col_cls"], g.num_cell_col),
        exist(t["row_exist"]),
        exist(t["col_exist"]),
    )


def _batch(outputs_list, targets_list):
    outs = [torch.tensor(np.stack(o), dtype=torch.float32) for o in zip(*outputs_list, strict=True)]
    tgts = {k: torch.tensor(np.stack([t[k] for t in targets_list])) for k in targets_list[0]}
    return outs, tgts


# ----------------------------------------------------------------------------------------------
# slots
# ----------------------------------------------------------------------------------------------
def test_slots_ego_left_1_left_left_0_ego_right_2_right_right_3():
    lanes = [_vertical(1100), _vertical(400), _vertical(800), _vertical(100)]
    assert assign_slots(lanes, H_SAMPLES, G) == [3, 1, 2, 0]


def test_fifth_lane_outermost_on_its_side_is_dropped():
    lanes = [_vertical(250), _vertical(100), _vertical(400), _vertical(800), _vertical(1100)]
    # left of centre, nearest first: 400 -> 1, 250 -> 0, 100 -> dropped
    assert assign_slots(lanes, H_SAMPLES, G) == [0, -1, 1, 2, 3]
    t = encode_targets(lanes, H_SAMPLES, G)
    assert sorted(set(t["row_cls"][:, 0])) == [round(250 / CELL_PX)]  # slot 0 holds the 250 px lane


def test_side_is_decided_at_the_bottom_of_the_image():
    # labelled only high up, entirely right of centre (x 700..650), but heading left: at the
    # bottom row (y=719) its extrapolation is at x ~ 490 -> a left lane
    lane = [-2] * len(H_SAMPLES)
    for i, y in enumerate(H_SAMPLES):
        if 300 <= y <= 400:
            lane[i] = round(700 - (y - 300) * 0.5)
    assert min(v for v in lane if v >= 0) > (G.image_width - 1) / 2
    assert assign_slots([lane, _vertical(800)], H_SAMPLES, G) == [1, 2]


def test_lanes_with_fewer_than_two_points_get_no_slot():
    one_point = _vertical(300, slice(10, 11))
    assert assign_slots([one_point, [-2] * len(H_SAMPLES), _vertical(900)], H_SAMPLES, G) == [-1, -1, 2]
    t = encode_targets([one_point], H_SAMPLES, G)
    assert (t["row_cls"] == IGNORE).all() and (t["col_cls"] == IGNORE).all()


# ----------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------
def test_encode_targets_shapes_dtypes_and_row_cells():
    lanes = [_line(600, 300, slice(5, None)), _line(700, 1000, slice(5, None))]
    t = encode_targets(lanes, H_SAMPLES, G)
    assert set(t) == {"row_cls", "row_exist", "col_cls", "col_exist"}
    assert t["row_cls"].shape == t["row_exist"].shape == (G.num_row, G.num_lanes)
    assert t["col_cls"].shape == t["col_exist"].shape == (G.num_col, G.num_lanes)
    assert all(v.dtype == np.int64 for v in t.values())
    assert np.array_equal(t["row_exist"], (t["row_cls"] >= 0).astype(np.int64))
    assert np.array_equal(t["col_exist"], (t["col_cls"] >= 0).astype(np.int64))
    # slots 0 and 3 empty; slot 1 = left lane, slot 2 = right lane, absent on the first 5 rows
    assert (t["row_cls"][:, [0, 3]] == IGNORE).all()
    assert (t["row_cls"][:5, 1:3] == IGNORE).all()
    for slot, lane in ((1, lanes[0]), (2, lanes[1])):
        expected = np.rint(np.array(lane[5:]) / CELL_PX)
        assert np.array_equal(t["row_cls"][5:, slot], expected)


def test_row_targets_ignore_points_outside_the_image_width():
    lane = _vertical(640)
    lane[-1] = 1300  # beyond x = 1279 (not a valid label, but the encoder must not index out of range)
    t = encode_targets([lane], H_SAMPLES, G)
    assert t["row_cls"][-1, 2] == IGNORE
    assert (t["row_cls"][:-1, 2] == round(640 / CELL_PX)).all()
    assert t["row_cls"].max() < G.num_cell_row


def test_column_targets_give_the_crossing_row():
    # slope 1 lane: x = 700 + (y - 160), labelled on every row -> crosses column anchors 700..1250
    lane = _line(700, 1250)
    t = encode_targets([lane], H_SAMPLES, G)
    slot = 2
    cols = G.col_anchors
    cells = t["col_cls"][:, slot]
    crossed = (cols >= 700) & (cols <= 1250)
    assert (cells[~crossed] == IGNORE).all()
    assert crossed.sum() >= 15
    y_true = 160 + (cols[crossed] - 700)
    y_cell = G.cell_to_y(cells[crossed].astype(np.float64))
    span_cell = (G.image_height - 1 - G.col_y_min) / (G.num_cell_col - 1)
    assert np.abs(y_cell - y_true).max() <= span_cell / 2 + 1


# ----------------------------------------------------------------------------------------------
# perfect logits decode back to the labels
# ----------------------------------------------------------------------------------------------
def test_perfect_logits_reproduce_synthetic_labels_and_score_one():
    full, checked = 0, 0
    for index in range(16):
        _, gt = render_sample(11, index)
        t = encode_targets(gt, H_SAMPLES, G)
        loc_row, _, exist_row, _ = _perfect_outputs(t)
        xs = decode_rows(loc_row, exist_row, G)
        assert xs.shape == (G.num_lanes, G.num_row)
        slots = assign_slots(gt, H_SAMPLES, G)
        for lane, slot in zip(gt, slots, strict=True):
            if slot < 0:
                continue
            lane = np.array(lane)
            valid = lane >= 0
            if valid.sum() <= MIN_LANE_POINTS:  # too short to be decoded (the generator keeps >= 3)
                assert (xs[slot] == -2).all()
                continue
            # same rows present, x within half a cell (rounding to a cell) plus rounding to pixels
            assert np.array_equal(xs[slot] >= 0, valid)
            err = np.abs(xs[slot][valid] - lane[valid])
            assert err.max() <= CELL_PX / 2 + 1e-6
            checked += 1
        pred = lanes_for_h_samples(xs, G, H_SAMPLES)
        decodable = [s >= 0 and sum(v >= 0 for v in lane) > MIN_LANE_POINTS for lane, s in zip(gt, slots, strict=True)]
        assert len(pred) == sum(decodable)
        acc, fp, fn = bench_image(pred, gt, H_SAMPLES)
        if -1 not in slots:  # every GT lane fits the 4 slots
            full += 1
            assert acc == pytest.approx(1.0, abs=1e-12) and fp == 0.0 and fn == 0.0, (index, acc, fp, fn)
    assert full >= 8 and checked >= 40


def test_perfect_logits_on_lanes_between_rows_and_custom_h_samples():
    lanes = [_line(600, 250, slice(8, None)), _line(680, 1100, slice(3, 50))]
    xs = decode_rows(*_perfect_outputs(encode_targets(lanes, H_SAMPLES, G))[::2], G)
    # h_samples that are not the anchors: values are interpolated between anchors, -2 outside
    hs = [165, 245, 405, 705, 715]
    out = lanes_for_h_samples(xs, G, hs)
    assert len(out) == 2
    left, right = out
    assert left[0] == -2 and right[0] == -2  # above both lanes' first anchors
    assert left[-1] == -2 and right[-1] == -2  # 715 is below the last anchor (710)
    assert right[3] == -2  # the right lane ends at row 49 (y = 650)
    for got, (top, bottom) in ((left, (600, 250)), (right, (680, 1100))):
        for x, y in zip(got, hs, strict=True):
            if x >= 0:
                assert abs(x - (top + (y - 160) / 550 * (bottom - top))) <= CELL_PX / 2 + 1
    assert all(type(v) is int for lane in out for v in lane)


def test_lanes_for_h_samples_drops_empty_slots():
    xs = np.full((4, G.num_row), -2.0)
    xs[2, 10:20] = 700.4
    assert lanes_for_h_samples(xs, G, H_SAMPLES) == [[-2] * 10 + [700] * 10 + [-2] * 36]


# ----------------------------------------------------------------------------------------------
# decoder details
# ----------------------------------------------------------------------------------------------
def _ufld_window_reference(loc: np.ndarray, exist: np.ndarray, g: LaneGeometry, w: int, min_points: int):
    """Loop version of UFLD-v2's generate_tusimple_lines window: range(max(0, a-w), min(C-1, a+w)+1)."""
    cells, rows, lanes = loc.shape
    out = np.full((lanes, rows), -2.0)
    valid = exist.argmax(0)
    for lane in range(lanes):
        if valid[:, lane].sum() <= min_points:
            continue
        for r in range(rows):
            if not valid[r, lane]:
                continue
            a = int(loc[:, r, lane].argmax())
            ind = np.arange(max(0, a - w), min(cells - 1, a + w) + 1)
            v = loc[ind, r, lane]
            p = np.exp(v - v.max())
            p /= p.sum()
            out[lane, r] = g.cell_to_x((p * ind).sum())
    return out


@pytest.mark.parametrize("local_width", [0, 1, 2, 5])
def test_decode_rows_matches_the_window_reference_including_borders(local_width):
    rng = np.random.default_rng(local_width)
    loc = rng.normal(size=(G.num_cell_row, G.num_row, G.num_lanes))
    # force arg-max onto the border cells on some rows
    loc[0, :10, :] += 10
    loc[-1, 10:20, :] += 10
    loc[1, 20:25, :] += 10
    exist = rng.normal(size=(2, G.num_row, G.num_lanes))
    exist[1, :, 0] += 10  # slot 0 present everywhere; the others random (~ half the rows)
    exist[0, :, 3] += 10  # slot 3 absent everywhere
    got = decode_rows(loc, exist, G, local_width=local_width)
    ref = _ufld_window_reference(loc, exist, G, local_width, MIN_LANE_POINTS)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
    assert (got[3] == -2).all()
    assert (got[0] >= 0).all()


def test_decode_rows_border_cells_counted_once():
    loc = np.zeros((G.num_cell_row, G.num_row, G.num_lanes))
    exist = np.zeros((2, G.num_row, G.num_lanes))
    exist[1] = 1.0
    loc[0, :, 0], loc[1, :, 0] = 5.0, 4.0  # arg-max at cell 0, right neighbour one logit lower
    loc[-1, :, 1], loc[-2, :, 1] = 5.0, 4.0  # arg-max at the last cell
    loc[49, :, 2], loc[50, :, 2], loc[51, :, 2] = 4.0, 5.0, 4.0  # interior, symmetric
    xs = decode_rows(loc, exist, G, local_width=1)
    # window {0, 1}: expectation = 1 * e^4 / (e^5 + e^4) = 1 / (1 + e). Counting the clipped
    # neighbour (cell 0 again) twice would give 1 / (1 + 2e) instead.
    w = 1 / (1 + math.e)
    assert xs[0] == pytest.approx(np.full(G.num_row, w * CELL_PX), abs=1e-9)
    assert xs[1] == pytest.approx(np.full(G.num_row, (99 - w) * CELL_PX), abs=1e-9)
    assert xs[2] == pytest.approx(np.full(G.num_row, 50 * CELL_PX), abs=1e-9)
    assert xs[1].max() <= G.image_width - 1
    # local_width 2 at the border: window {0, 1, 2}
    loc[2, :, 0] = 3.0
    xs = decode_rows(loc, exist, G, local_width=2)
    p = np.exp([5.0, 4.0, 3.0])
    assert xs[0, 0] == pytest.approx((p @ [0, 1, 2]) / p.sum() * CELL_PX, abs=1e-9)


@pytest.mark.parametrize(("rows_present", "kept"), [(0, False), (3, False), (4, True), (20, True), (56, True)])
def test_lane_needs_more_than_three_row_anchors(rows_present, kept):
    # UFLD-v2's TuSimple evaluation (min_lanepts_row = 3). Note: a lane on fewer than half the
    # anchors (4..27 of 56) is kept; the "more than half" rule of UFLD-v2's demo would drop most
    # outer lanes, which enter the image late or leave it at the side.
    loc = np.zeros((G.num_cell_row, G.num_row, G.num_lanes))
    loc[30] = 10.0
    exist = np.zeros((2, G.num_row, G.num_lanes))
    exist[0] = 1.0
    exist[1, G.num_row - rows_present :, 1] = 2.0
    xs = decode_rows(loc, exist, G)
    assert (xs[[0, 2, 3]] == -2).all()
    if kept:
        np.testing.assert_allclose(xs[1, G.num_row - rows_present :], 30 * CELL_PX, rtol=0, atol=1e-3)
        assert (xs[1, : G.num_row - rows_present] == -2).all()
    else:
        assert (xs[1] == -2).all()
    # the threshold is a parameter: UFLD-v2's demo rule is min_points = num_row // 2
    half = decode_rows(loc, exist, G, min_points=G.num_row // 2)
    assert ((half[1] >= 0).any()) == (rows_present > G.num_row // 2)


# ----------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------
def _targets_and_perfect(seed_indices=(0, 1)):
    targets, outputs = [], []
    for i in seed_indices:
        _, gt = render_sample(5, i)
        t = encode_targets(gt, H_SAMPLES, G)
        targets.append(t)
        outputs.append(_perfect_outputs(t))
    return _batch(outputs, targets)


def test_loss_is_finite_positive_and_decreases_toward_targets():
    perfect, tgt = _targets_and_perfect()
    torch.manual_seed(0)
    noise = [torch.randn_like(p) for p in perfect]
    losses = []
    for alpha in (0.0, 0.25, 0.5, 1.0):
        outs = [(1 - alpha) * n + alpha * p for n, p in zip(noise, perfect, strict=True)]
        loss = lane_loss(outs, tgt)
        assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
        losses.append(loss.item())
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.01 * losses[0]


def test_loss_gradient_points_toward_targets():
    perfect, tgt = _targets_and_perfect((3,))
    outs = [torch.zeros_like(p, requires_grad=True) for p in perfect]
    lane_loss(outs, tgt).backward()
    g_row = outs[0].grad[0]
    cls = tgt["row_cls"][0]
    r, lane = torch.nonzero(cls >= 0, as_tuple=True)
    # descending the gradient raises the logit of every target cell
    assert (g_row[cls[r, lane], r, lane] < 0).all()
    assert all(torch.isfinite(o.grad).all() for o in outs)


def test_loss_ignores_cells_of_absent_lanes():
    perfect, tgt = _targets_and_perfect()
    torch.manual_seed(1)
    outs = [torch.randn_like(p) for p in perfect]
    base = lane_loss(outs, tgt)
    for k, key in ((0, "row_cls"), (1, "col_cls")):
        ignored = (tgt[key] == IGNORE).unsqueeze(1).expand_as(outs[k])
        assert ignored.any() and not ignored.all()
        changed = list(outs)
        changed[k] = torch.where(ignored, torch.randn_like(outs[k]) * 50, outs[k])
        assert lane_loss(changed, tgt).item() == pytest.approx(base.item(), rel=1e-6)
        # changing a cell of a present lane does change it
        changed[k] = torch.where(~ignored, outs[k] + 3 * torch.randn_like(outs[k]), outs[k])
        assert lane_loss(changed, tgt).item() != pytest.approx(base.item(), rel=1e-3)


def test_loss_is_finite_for_images_without_lanes():
    # regression: cross_entropy over targets that are all IGNORE is NaN (0/0)
    t = encode_targets([], H_SAMPLES, G)
    assert (t["row_cls"] == IGNORE).all()
    torch.manual_seed(2)
    outs, tgt = _batch([_perfect_outputs(t)], [t])
    outs = [o + torch.randn_like(o) for o in outs]
    for o in outs:
        o.requires_grad_(True)
    loss = lane_loss(outs, tgt)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    # no cell targets: the location logits get no gradient; the existence logits a finite one
    assert all(o.grad is None or (o.grad == 0).all() for o in outs[:2])
    assert all(torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0 for o in outs[2:])


def test_loss_with_lanes_crossing_no_column_anchor_is_finite():
    # a lane between two column anchors (spacing 32 px) never crosses one: col targets all IGNORE
    lane = _vertical(G.col_anchors[20] + 10)
    t = encode_targets([lane], H_SAMPLES, G)
    assert (t["col_cls"] == IGNORE).all() and (t["row_cls"] >= 0).any()
    outs, tgt = _batch([_perfect_outputs(t)], [t])
    assert torch.isfinite(lane_loss(outs, tgt))

"""The SSD-lite detector: shapes, anchor points, box coding, IoU / NMS, target assignment, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgematrix.errors import ModelError
from edgematrix.models import create_model
from edgematrix.models.detection_task import (
    assign_targets,
    batched_nms,
    box_iou,
    decode_boxes,
    decode_boxes_torch,
    detection_loss,
    encode_boxes,
    giou,
    nms,
    postprocess,
)
from edgematrix.models.detector import Detector, DetectorGeometry


def test_outputs_have_one_row_per_cell_of_the_three_levels() -> None:
    m = create_model("ssdlite", [1, 3, 64, 96], num_classes=3, width=0.25, neck_channels=8, head_depth=1).eval()
    scores, boxes = m(torch.zeros(2, 3, 64, 96))
    # strides 8, 16, 32 on 64x96: 8*12 + 4*6 + 2*3 cells
    assert m.geometry.num_anchors == 96 + 24 + 6
    assert scores.shape == (2, 126, 3) and boxes.shape == (2, 126, 4)
    # the focal-loss prior: every class starts at probability 0.01
    assert torch.sigmoid(scores).mean().item() == pytest.approx(0.01, rel=0.05)


def test_points_are_cell_centres_in_output_order() -> None:
    pts, strides = DetectorGeometry(64, 64).points()
    assert pts.shape == (64 + 16 + 4, 2)
    assert pts[0].tolist() == [4.0, 4.0] and pts[1].tolist() == [12.0, 4.0] and pts[8].tolist() == [4.0, 12.0]
    assert pts[64].tolist() == [8.0, 8.0] and strides[64] == 16
    assert pts[-1].tolist() == [48.0, 48.0] and strides[-1] == 32


def test_bad_input_size_names_the_constraint() -> None:
    with pytest.raises(ModelError, match="multiples of 32"):
        create_model("ssdlite", [1, 3, 100, 96])
    with pytest.raises(ModelError, match="rejected its params"):
        create_model("ssdlite", [1, 3, 64, 96], depth=3)
    with pytest.raises(ModelError, match="class_names lists 2 names"):
        create_model("ssdlite", [1, 3, 64, 96], num_classes=3, class_names="car,truck")
    assert create_model("ssdlite", [1, 3, 64, 96], num_classes=2, class_names="car, truck").class_names == (
        "car",
        "truck",
    )


def test_decode_inverts_encode() -> None:
    pts = np.array([[10.0, 20.0], [50.0, 50.0], [4.0, 4.0]], np.float32)
    strides = np.array([8.0, 16.0, 8.0], np.float32)
    boxes = np.array([[2.0, 5.0, 30.0, 40.0], [10.0, 0.5, 60.0, 99.0], [3.0, 3.5, 4.5, 5.0]], np.float32)
    raw = encode_boxes(boxes, pts, strides)
    np.testing.assert_allclose(decode_boxes(raw, pts, strides), boxes, atol=1e-4)
    # the torch decoder agrees with numpy
    t = decode_boxes_torch(torch.from_numpy(raw), torch.from_numpy(pts), torch.from_numpy(strides))
    np.testing.assert_allclose(t.numpy(), boxes, atol=1e-4)
    # raw 0 means one stride to each side
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4), np.float32), pts[:1], strides[:1]), [[2, 12, 18, 28]])


def test_iou_and_giou_hand_computed() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0.0, 1.0]])
    iou, g = giou(torch.tensor(a).repeat(3, 1), torch.tensor(b))
    np.testing.assert_allclose(iou.numpy(), [25 / 175, 0, 1], rtol=1e-6)
    # hull of the first pair 15x15 = 225: giou = iou - (225 - 175) / 225; disjoint pair: hull 900, union 200
    np.testing.assert_allclose(g.numpy(), [25 / 175 - 50 / 225, -700 / 900, 1.0], rtol=1e-6)


def test_nms_hand_computed() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 81 / 119 = 0.68; IoU(3, 0) = 0.9; IoU(3, 1) = 72 / 118 = 0.61
    assert nms(boxes, scores, 0.6).tolist() == [3, 2]
    assert nms(boxes, scores, 0.65).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]
    # boxes of another class never suppress each other
    labels = np.array([0, 1, 0, 0])
    assert sorted(batched_nms(boxes, scores, labels, 0.6).tolist()) == [1, 2, 3]
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, np.int64), 0.5).tolist() == []


def test_assignment_centre_sampling_levels_and_tiny_boxes() -> None:
    g = DetectorGeometry(64, 64)
    pts, strides = g.points()
    boxes = np.array([[8, 8, 40, 40], [50, 2, 53, 5]], np.float32)  # 32 px box (stride 8 level), 3 px box
    cls, tgt = assign_targets(boxes, np.array([2, 1]), g)
    pos_big = np.nonzero(cls == 2)[0]
    # stride-8 cells within 1.5 strides (12 px) of the centre (24, 24): centres 16, 24, 32 in x and y
    # stride-8 cells within 1.5 strides (12 px) of the centre (24, 24): x, y in {20, 28}
    assert sorted(map(tuple, pts[pos_big].tolist())) == [(20.0, 20.0), (20.0, 28.0), (28.0, 20.0), (28.0, 28.0)]
    assert set(strides[pos_big]) == {8.0}
    np.testing.assert_array_equal(tgt[pos_big], np.repeat(boxes[:1], len(pos_big), 0))
    # the 3 px box: exactly the stride-8 cell nearest its centre (51.5, 3.5) -> (52, 4)
    pos_tiny = np.nonzero(cls == 1)[0]
    assert len(pos_tiny) == 1 and pts[pos_tiny[0]].tolist() == [52.0, 4.0]
    assert (cls >= 0).sum() == len(pos_big) + 1
    # no boxes: all background
    cls0, _ = assign_targets(np.zeros((0, 4)), np.zeros(0), g)
    assert (cls0 == -1).all()


def test_large_boxes_go_to_coarse_levels() -> None:
    g = DetectorGeometry(128, 128)
    cls, _ = assign_targets(np.array([[0, 0, 128, 128]], np.float32), np.array([0]), g)
    _, strides = g.points()
    assert set(strides[cls == 0]) == {32.0}


def test_postprocess_recovers_an_encoded_box() -> None:
    g = DetectorGeometry(64, 96, num_classes=3)
    pts, strides = g.points()
    scores = np.full((1, g.num_anchors, 3), -10.0, np.float32)
    raw = np.zeros((1, g.num_anchors, 4), np.float32)
    box = np.array([[30.0, 10.0, 60.0, 50.0]], np.float32)
    a = int(np.argmin(((pts - [44, 28]) ** 2).sum(1)))
    raw[0, a] = encode_boxes(box, pts[a : a + 1], strides[a : a + 1])[0]
    scores[0, a, 2] = 3.0
    b, s, c = postprocess(scores, raw, g)
    np.testing.assert_allclose(b, box, atol=1e-3)
    assert c.tolist() == [2] and s[0] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        postprocess(scores[:, :5], raw, g)


def test_loss_is_lower_for_the_right_answer() -> None:
    g = DetectorGeometry(64, 64, num_classes=2)
    pts, strides = (torch.from_numpy(a) for a in g.points())
    box = np.array([[8, 8, 40, 40]], np.float32)
    cls_t, box_t = (torch.from_numpy(a)[None] for a in assign_targets(box, np.array([1]), g))
    pos = cls_t[0] >= 0
    good_raw = torch.zeros(1, g.num_anchors, 4)
    good_raw[0, pos] = torch.from_numpy(encode_boxes(box_t[0, pos].numpy(), pts[pos].numpy(), strides[pos].numpy()))
    good_scores = torch.full((1, g.num_anchors, 2), -8.0)
    good_scores[0, pos, 1] = 8.0
    good = detection_loss(good_scores, good_raw, cls_t, box_t, pts, strides)
    bad = detection_loss(torch.zeros(1, g.num_anchors, 2), torch.zeros(1, g.num_anchors, 4), cls_t, box_t, pts, strides)
    assert good["box"].item() == pytest.approx(0.0, abs=1e-4)
    assert good["loss"].item() < 0.05 < bad["loss"].item()


def test_detector_class_defaults() -> None:
    m = Detector()
    assert m.geometry == DetectorGeometry(192, 320, (8, 16, 32), 4)


def test_output_names_agree_with_the_task_adapter() -> None:
    from edgematrix.models.detector import OUTPUT_NAMES
    from edgematrix.tasks.detection import DetectionTask

    assert DetectionTask.output_names == OUTPUT_NAMES == ("scores", "boxes")

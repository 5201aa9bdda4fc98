"""Task adapters: the registry, and the lane adapter's drive and overlay (used by `edgematrix demo`)."""

from __future__ import annotations

import numpy as np
import pytest

from edgematrix.errors import UnknownNameError
from edgematrix.matrix.loader import load_matrix
from edgematrix.models import create_model
from edgematrix.models.ufld import LaneGeometry
from edgematrix.tasks.base import get_task, imagenet_preprocess, stack_outputs, tasks


def test_registry_names_every_cell_task_and_rejects_others() -> None:
    assert {"lane", "detection", "multitask", "steering", "outputs"} <= set(tasks.names())
    assert get_task("lane") is get_task("lane")  # one instance per task
    lane = get_task("lane")
    assert lane.output_names == ("loc_row", "loc_col", "exist_row", "exist_col")
    assert lane.agreement_output in lane.output_names
    with pytest.raises(
        UnknownNameError, match=r"unknown task .steer.; known: detection, lane, multitask, outputs, steering"
    ):
        get_task("steer")


def test_preprocess_normalises_with_imagenet_statistics() -> None:
    img = np.full((1, 2, 3, 3), 255, np.uint8)  # NHWC white
    x = imagenet_preprocess(img)
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-5)
    assert np.array_equal(imagenet_preprocess(img.transpose(0, 3, 1, 2)), x)  # NCHW in, same result


def test_stack_outputs_keeps_sample_order() -> None:
    outs = [{"a": np.full((1, 2), i), "b": np.zeros(1)} for i in range(3)]
    st = stack_outputs(outs, ("a",))
    assert list(st) == ["a"] and st["a"].shape == (3, 1, 2) and st["a"][2, 0, 0] == 2


def test_lane_drive_is_smooth_and_overlay_draws_the_decoded_lanes() -> None:
    cfg = load_matrix("matrix").models["ufld_r18"].model_copy(update={"input_shape": [1, 3, 72, 200]})
    lane = get_task("lane")
    frames = lane.drive(cfg, 4, seed=3)
    assert frames.shape == (4, 72, 200, 3) and frames.dtype == np.uint8
    step = np.abs(frames[1].astype(int) - frames[0].astype(int)).mean()
    other = lane.drive(cfg, 4, seed=4)
    assert 0 < step < np.abs(other[0].astype(int) - frames[0].astype(int)).mean()  # moves, but stays one road
    g = LaneGeometry()
    model = create_model("ufld_v2", [1, 3, 64, 160], depth=18, width=8, mlp_mid_dim=16, use_aux=False)
    loc = np.full((1, g.num_cell_row, g.num_row, g.num_lanes), -5.0, np.float32)
    loc[0, 50, :, 1] = 5.0  # lane slot 1 at the image centre on every row anchor
    exist = np.zeros((1, 2, g.num_row, g.num_lanes), np.float32)
    exist[0, 1, :, 1] = 1.0
    drawn = lane.overlay(frames[0], {"loc_row": loc, "exist_row": exist}, model)
    changed = np.argwhere((drawn != frames[0]).any(-1))
    assert len(changed) > 0
    # drawn around x = 0.5 * width, from the first row anchor (160 of 720) down
    assert abs(changed[:, 1].mean() - 100) < 3 and changed[:, 0].min() >= int(160 / 720 * 72) - 3

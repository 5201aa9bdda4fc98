"""UFLD-v2 model: output shapes follow the geometry; the geometry's coordinate maps are consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgematrix.models.lane_task import decode_rows, encode_targets, lane_loss
from edgematrix.models.ufld import OUTPUT_NAMES, LaneGeometry, UFLDv2


@pytest.fixture(scope="module")
def tiny() -> UFLDv2:
    torch.manual_seed(0)
    return UFLDv2(input_size=(64, 160), width=8, mlp_mid_dim=16).eval()


def test_default_geometry_is_tusimple():
    g = LaneGeometry()
    assert (g.image_width, g.image_height) == (1280, 720)
    assert g.row_anchors == tuple(range(160, 720, 10)) and g.num_row == 56
    assert (g.num_cell_row, g.num_cell_col, g.num_col, g.num_lanes) == (100, 100, 41, 4)
    cols = g.col_anchors
    assert len(cols) == 41 and cols[0] == 0 and cols[-1] == 1279
    assert np.allclose(np.diff(cols), 1279 / 40)


def test_geometry_maps_are_inverse_and_span_the_image():
    g = LaneGeometry()
    x = np.array([0.0, 1.5, 640.0, 1279.0])
    assert np.allclose(g.cell_to_x(g.x_to_cell(x)), x)
    assert g.x_to_cell(np.array([0.0, 1279.0])).tolist() == [0.0, 99.0]
    y = np.array([160.0, 400.0, 719.0])
    assert np.allclose(g.cell_to_y(g.y_to_cell(y)), y)
    assert g.y_to_cell(np.array([160.0, 719.0])).tolist() == [0.0, 99.0]


def test_output_shapes_default_geometry(tiny):
    x = torch.randn(2, 3, 64, 160)
    with torch.no_grad():
        out = tiny(x)
    assert len(out) == len(OUTPUT_NAMES) == 4
    loc_row, loc_col, exist_row, exist_col = out
    assert loc_row.shape == (2, 100, 56, 4)
    assert loc_col.shape == (2, 100, 41, 4)
    assert exist_row.shape == (2, 2, 56, 4)
    assert exist_col.shape == (2, 2, 41, 4)
    assert all(torch.isfinite(o).all() for o in out)
    assert sum(tiny.dims) == tiny.cls[-1].out_features


def test_outputs_are_per_sample(tiny):
    # the reshapes must not mix samples: sample 1 alone gives the same outputs as in a batch
    x = torch.randn(3, 3, 64, 160)
    with torch.no_grad():
        batch = tiny(x)
        single = tiny(x[1:2])
    for b, s in zip(batch, single, strict=True):
        torch.testing.assert_close(b[1:2], s, rtol=1e-4, atol=1e-5)


def test_output_shapes_custom_geometry():
    g = LaneGeometry(row_anchors=(200, 300, 400), num_col=5, num_cell_row=20, num_cell_col=12, num_lanes=2)
    model = UFLDv2(input_size=(32, 96), geometry=g, width=8, mlp_mid_dim=8, pool_channels=4).eval()
    with torch.no_grad():
        loc_row, loc_col, exist_row, exist_col = model(torch.randn(1, 3, 32, 96))
    assert loc_row.shape == (1, 20, 3, 2)
    assert loc_col.shape == (1, 12, 5, 2)
    assert exist_row.shape == (1, 2, 3, 2)
    assert exist_col.shape == (1, 2, 5, 2)
    assert model.cls[0].in_features == 4 * (32 // 32) * (96 // 32)


@pytest.mark.parametrize("size", [(64, 150), (70, 160), (100, 100)])
def test_input_size_not_divisible_by_32_raises(size):
    with pytest.raises(ValueError, match="divisible by 32"):
        UFLDv2(input_size=size, width=8, mlp_mid_dim=8)


def test_outputs_feed_loss_and_decoder(tiny):
    """One training step's plumbing: model outputs + encoded targets -> finite loss, gradients, decode."""
    g = tiny.geometry
    hs = list(g.row_anchors)
    lanes = [[-2] * 10 + [500 - 3 * i for i in range(46)], [-2] * 10 + [760 + 3 * i for i in range(46)]]
    t = encode_targets(lanes, hs, g)
    targets = {k: torch.from_numpy(v)[None] for k, v in t.items()}
    model = UFLDv2(input_size=(64, 160), width=8, mlp_mid_dim=16).train()
    out = model(torch.randn(1, 3, 64, 160))
    loss = lane_loss(out, targets)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    xs = decode_rows(out[0][0].detach().numpy(), out[2][0].detach().numpy(), g)
    assert xs.shape == (g.num_lanes, g.num_row)
    assert ((xs == -2) | ((xs >= 0) & (xs <= g.image_width - 1))).all()

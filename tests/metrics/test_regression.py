"""MSE / MAE on hand-computed values, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.metrics.regression import mae, mse, score


def test_hand_computed_values() -> None:
    pred, target = [0.1, -0.2, 0.5, 0.0], [0.0, 0.0, 0.25, -0.5]
    # errors 0.1, -0.2, 0.25, 0.5
    assert mse(pred, target) == pytest.approx((0.01 + 0.04 + 0.0625 + 0.25) / 4)
    assert mae(pred, target) == pytest.approx((0.1 + 0.2 + 0.25 + 0.5) / 4)
    s = score(np.array(pred).reshape(4, 1), target)  # (N, 1) model outputs are flattened
    assert (s.mse, s.mae, s.count) == (pytest.approx(0.090625), pytest.approx(0.2625), 4)
    assert s.as_dict()["count"] == 4


def test_perfect_prediction_is_zero() -> None:
    y = np.linspace(-1, 1, 11)
    assert mse(y, y) == 0.0 and mae(y, y) == 0.0


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [([1.0, 2.0], [1.0], "2 predictions for 1 targets"), ([], [], "no predictions"),
     ([np.nan], [0.0], "non-finite .* predictions"), ([0.0], [np.inf], "non-finite .* targets")],
)  # fmt: skip
def test_bad_input(pred: list, target: list, match: str) -> None:
    with pytest.raises(EdgeMatrixError, match=match):
        score(pred, target)

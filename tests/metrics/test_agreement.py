"""Output agreement with the FP32 reference: cosine similarity, SNR, max absolute and relative error, per
output, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.metrics.agreement import SNR_CAP_DB, output_agreement


def test_agreement_per_output_matches_hand_computed_values() -> None:
    ref = [
        {"a": np.array([[3.0, 4.0]]), "b": np.array([1.0, 0.0, 0.0])},
        {"a": np.array([[1.0, 0.0]]), "b": np.ones(3)},
    ]
    cand = [
        {"a": np.array([[3.0, 4.0]]), "b": np.array([0.0, 1.0, 0.0])},
        {"a": np.array([[1.0, 1.0]]), "b": np.ones(3)},
    ]
    a, b = output_agreement(ref, cand)
    assert (a.name, b.name) == ("a", "b")
    # a: sample 0 identical (cos 1), sample 1 cos((1,0),(1,1)) = 1/sqrt(2)
    assert a.per_sample_cosine == pytest.approx((1.0, 1 / math.sqrt(2)))
    assert a.cosine == pytest.approx((1 + 1 / math.sqrt(2)) / 2) and a.cosine_min == pytest.approx(1 / math.sqrt(2))
    # signal 9 + 16 + 1 = 26, noise 1: 10 log10(26)
    assert a.snr_db == pytest.approx(10 * math.log10(26.0))
    assert (a.max_abs, a.max_rel) == (1.0, pytest.approx(1 / 4))  # |ref| peaks at 4
    # b: sample 0 orthogonal (cos 0), sample 1 identical; signal 1 + 3 = 4, noise 2
    assert b.per_sample_cosine == (0.0, 1.0) and b.snr_db == pytest.approx(10 * math.log10(2.0))


def test_identical_zero_and_non_finite_outputs() -> None:
    ref = [{"y": np.zeros(4)}, {"y": np.arange(4.0)}]
    (same,) = output_agreement(ref, ref)
    assert same.cosine == 1.0 and same.snr_db == SNR_CAP_DB and same.max_abs == 0.0 and same.max_rel == 0.0
    (nan,) = output_agreement(ref, [{"y": np.zeros(4)}, {"y": np.array([0.0, np.nan, 2.0, 3.0])}])
    assert nan.per_sample_cosine == (1.0, 0.0) and nan.snr_db == -SNR_CAP_DB and math.isinf(nan.max_abs)
    (dead,) = output_agreement(ref, [{"y": np.zeros(4)}, {"y": np.zeros(4)}])  # a candidate that outputs zeros
    assert dead.per_sample_cosine == (1.0, 0.0) and dead.snr_db == 0.0 and dead.max_rel == 1.0


def test_agreement_refuses_what_is_not_the_same_model() -> None:
    with pytest.raises(EdgeMatrixError, match="output 'y' of sample 0 has 3 elements, the reference's 4"):
        output_agreement([{"y": np.zeros(4)}], [{"y": np.zeros(3)}])
    with pytest.raises(EdgeMatrixError, match="output 'y' is missing in sample 0 of the candidate"):
        output_agreement([{"y": np.zeros(4)}], [{"z": np.zeros(4)}])
    with pytest.raises(EdgeMatrixError, match="2 candidate samples but only 1 reference"):
        output_agreement([{"y": np.zeros(4)}], [{"y": np.zeros(4)}] * 2)

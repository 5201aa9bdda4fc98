"""TuSimple metric: hand-computed cases, error handling, and equality with the official evaluator.

``_OfficialLaneEval`` below is a transcription of tusimple-benchmark's ``evaluate/lane.py``
(class ``LaneEval``), kept as close to the original as Python 3 allows. It is used ONLY as the test
oracle that ``edgematrix.metrics.tusimple`` must reproduce to 1e-9; nothing in the package uses it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression

from edgematrix.errors import DataError, EdgeMatrixError
from edgematrix.metrics.tusimple import PIXEL_THRESH, PT_THRESH, TuSimpleScore, bench_image, score, score_files


# --------------------------------------------------------------------------------------------------
# Test oracle: transcription of the official tusimple-benchmark evaluate/lane.py (LaneEval).
# --------------------------------------------------------------------------------------------------
class _OfficialLaneEval:
    lr = LinearRegression()
    pixel_thresh = 20
    pt_thresh = 0.85

    @staticmethod
    def get_angle(xs, y_samples):
        xs, ys = xs[xs >= 0], y_samples[xs >= 0]
        if len(xs) > 1:
            _OfficialLaneEval.lr.fit(ys[:, None], xs)
            k = _OfficialLaneEval.lr.coef_[0]
            theta = np.arctan(k)
        else:
            theta = 0
        return theta

    @staticmethod
    def line_accuracy(pred, gt, thresh):
        pred = np.array([p if p >= 0 else -100 for p in pred])
        gt = np.array([g if g >= 0 else -100 for g in gt])
        return np.sum(np.where(np.abs(pred - gt) < thresh, 1.0, 0.0)) / len(gt)

    @staticmethod
    def bench(pred, gt, y_samples, running_time):
        if any(len(p) != len(y_samples) for p in pred):
            raise Exception("Format of lanes error.")
        if running_time > 200 or len(gt) + 2 < len(pred):
            return 0.0, 0.0, 1.0
        angles = [_OfficialLaneEval.get_angle(np.array(x_gts), np.array(y_samples)) for x_gts in gt]
        threshs = [_OfficialLaneEval.pixel_thresh / np.cos(angle) for angle in angles]
        line_accs = []
        fp, fn = 0.0, 0.0
        matched = 0.0
        for x_gts, thresh in zip(gt, threshs, strict=True):
            accs = [_OfficialLaneEval.line_accuracy(np.array(x_preds), np.array(x_gts), thresh) for x_preds in pred]
            max_acc = np.max(accs) if len(accs) > 0 else 0.0
            if max_acc < _OfficialLaneEval.pt_thresh:
                fn += 1
            else:
                matched += 1
            line_accs.append(max_acc)
        fp = len(pred) - matched
        if len(gt) > 4 and fn > 0:
            fn -= 1
        s = sum(line_accs)
        if len(gt) > 4:
            s -= min(line_accs)
        return (
            s / max(min(4.0, len(gt)), 1.0),
            fp / len(pred) if len(pred) > 0 else 0.0,
            fn / max(min(len(gt), 4.0), 1.0),
        )

    @staticmethod
    def bench_one_submit(pred_file, gt_file):
        try:
            with open(pred_file) as f:
                json_pred = [json.loads(line) for line in f.readlines()]
        except BaseException:
            raise Exception("Fail to load json file of the prediction.") from None
        with open(gt_file) as f:
            json_gt = [json.loads(line) for line in f.readlines()]
        if len(json_gt) != len(json_pred):
            raise Exception("We do not get the predictions of all the test tasks")
        gts = {g["raw_file"]: g for g in json_gt}
        accuracy, fp, fn = 0.0, 0.0, 0.0
        for pred in json_pred:
            if "raw_file" not in pred or "lanes" not in pred or "run_time" not in pred:
                raise Exception("raw_file or lanes or run_time not in some predictions.")
            raw_file = pred["raw_file"]
            pred_lanes = pred["lanes"]
            run_time = pred["run_time"]
            if raw_file not in gts:
                raise Exception("Some raw_file from your predictions do not exist in the test tasks.")
            gt = gts[raw_file]
            gt_lanes = gt["lanes"]
            y_samples = gt["h_samples"]
            try:
                a, p, n = _OfficialLaneEval.bench(pred_lanes, gt_lanes, y_samples, run_time)
            except BaseException:
                raise Exception("Format of lanes error.") from None
            accuracy += a
            fp += p
            fn += n
        num = len(gts)
        # the first return parameter is the default ranking parameter
        return json.dumps(
            [
                {"name": "Accuracy", "value": accuracy / num, "order": "desc"},
                {"name": "FP", "value": fp / num, "order": "desc"},
                {"name": "FN", "value": fn / num, "order": "asc"},
            ]
        )


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _write_lines(path: Path, objs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def _official(preds: list[dict], gts: list[dict], folder: Path) -> dict[str, float]:
    out = _OfficialLaneEval.bench_one_submit(
        _write_lines(folder / "pred.json", preds), _write_lines(folder / "gt.json", gts)
    )
    return {m["name"]: m["value"] for m in json.loads(out)}


H10 = list(range(200, 300, 10))  # 10 rows: every lane below has 10 points


def _vertical(x: int, n: int = 10) -> list[int]:
    return [x] * n


def test_constants_are_the_official_ones():
    assert PIXEL_THRESH == _OfficialLaneEval.pixel_thresh == 20
    assert PT_THRESH == _OfficialLaneEval.pt_thresh == 0.85


# --------------------------------------------------------------------------------------------------
# hand-computed single images
# --------------------------------------------------------------------------------------------------
def test_perfect_prediction_scores_one_zero_zero():
    gt = [_vertical(300), _vertical(900), [-2] * 5 + [600, 610, 620, 630, 640]]
    assert bench_image(gt, gt, H10, 10.0) == (1.0, 0.0, 0.0)


def test_vertical_lane_shifted_25px_is_a_false_negative():
    # vertical lane: fitted slope 0 -> threshold 20 px; 25 px off -> 0/10 points -> FN.
    # lane 2 perfect. accuracy (0 + 1)/2 = 0.5; matched 1 of 2 preds -> FP 1/2; FN 1/2.
    gt = [_vertical(300), _vertical(900)]
    pred = [_vertical(325), _vertical(900)]
    assert bench_image(pred, gt, H10) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("shift", "correct"), [(19, True), (20, False), (21, False)])
def test_vertical_threshold_is_strict_20px(shift, correct):
    # |pred - gt| < 20 is strict: 19 px counts, 20 px does not
    a, fp, fn = bench_image([_vertical(300 + shift)], [_vertical(300)], H10)
    assert (a, fp, fn) == ((1.0, 0.0, 0.0) if correct else (0.0, 1.0, 1.0))


def test_slanted_lane_threshold_grows_with_the_angle():
    # x = 100 + 0.75 * (y - 200): slope 3/4, cos(arctan 3/4) = 4/5, threshold 20 / 0.8 = 25 px.
    # a 21 px error is therefore correct on every point: accuracy 1, FP 0, FN 0
    ys = [200, 240, 280, 320, 360]
    gt = [[100, 130, 160, 190, 220]]
    pred = [[121, 151, 181, 211, 241]]
    assert bench_image(pred, gt, ys) == (1.0, 0.0, 0.0)
    # the same 21 px error on a vertical lane (threshold 20) misses every point
    assert bench_image([[121] * 5], [[100] * 5], ys) == (0.0, 1.0, 1.0)
    # 26 px on the slanted lane is outside 25 px
    assert bench_image([[126, 156, 186, 216, 246]], gt, ys) == (0.0, 1.0, 1.0)


def test_slope_three_quarters_boundary_matches_sklearn_bit_for_bit(tmp_path):
    # Regression: with these points sklearn's fit gives 20 / cos = 25.000000000000004, so an error of
    # exactly 25 px counts as correct officially. A closed-form slope gave 25.0 and scored it wrong.
    ys = [160, 200, 240, 280]
    gt = [[0, 30, 60, 90]]
    pred = [[25, 55, 85, 115]]
    assert bench_image(pred, gt, ys) == (1.0, 0.0, 0.0)
    gts = [{"raw_file": "a.jpg", "lanes": gt, "h_samples": ys}]
    preds = [{"raw_file": "a.jpg", "lanes": pred, "run_time": 1}]
    assert score(preds, gts).as_official() == _official(preds, gts, tmp_path)


def test_absent_points_count_as_correct_on_both_sides():
    # GT present on rows 0-4 only. A prediction with the same -2 rows: 10/10.
    gt = [[300] * 5 + [-2] * 5]
    assert bench_image([[300] * 5 + [-2] * 5], gt, H10) == (1.0, 0.0, 0.0)
    # a prediction continuing past the GT: rows 5-9 are 300 vs -100 -> wrong, 5/10 = 0.5 < 0.85 -> FN
    assert bench_image([[300] * 10], gt, H10) == (0.5, 1.0, 1.0)


def test_five_gt_lanes_forgive_the_worst_lane_and_one_fn():
    gt = [_vertical(x) for x in (100, 300, 500, 700, 900)]
    # 4 of 5 predicted exactly: line accs [1,1,1,1,0]; fn 1 -> 0; s = 4 - 0 = 4 -> 4/4
    assert bench_image(gt[:4], gt, H10) == (1.0, 0.0, 0.0)
    # 3 of 5: line accs [1,1,1,0,0]; fn 2 -> 1; s = 3 - 0 -> 3/4 = 0.75; FN 1/4
    assert bench_image(gt[:3], gt, H10) == (0.75, 0.0, 0.25)
    # all 5: s = 5 - 1 -> 4/4; FP (5 - 5)/5 = 0
    assert bench_image(gt, gt, H10) == (1.0, 0.0, 0.0)


def test_four_gt_lanes_get_no_forgiveness():
    gt = [_vertical(x) for x in (100, 300, 500, 700)]
    # 3 of 4: accuracy 3/4, FN 1/4
    assert bench_image(gt[:3], gt, H10) == (0.75, 0.0, 0.25)


def test_too_many_predicted_lanes_scores_zero_zero_one():
    gt = [_vertical(300)]
    # len(gt) + 2 = 3 < 4 predicted lanes -> (0, 0, 1), even though one lane is perfect
    four = [_vertical(300), _vertical(500), _vertical(700), _vertical(900)]
    assert bench_image(four, gt, H10) == (0.0, 0.0, 1.0)
    # 3 predicted lanes is allowed: accuracy 1, 2 of 3 unmatched -> FP 2/3, FN 0
    a, fp, fn = bench_image(four[:3], gt, H10)
    assert (a, fn) == (1.0, 0.0)
    assert fp == pytest.approx(2 / 3, abs=1e-15)


@pytest.mark.parametrize(("run_time", "expected"), [(200, (1.0, 0.0, 0.0)), (200.5, (0.0, 0.0, 1.0))])
def test_run_time_over_200_ms_scores_zero_zero_one(run_time, expected):
    gt = [_vertical(300)]
    assert bench_image(gt, gt, H10, run_time) == expected


def test_no_gt_lanes_every_prediction_is_a_false_positive():
    # len(gt) = 0: accuracy 0/1 = 0, FP 2/2 = 1, FN 0/1 = 0
    assert bench_image([_vertical(300), _vertical(600)], [], H10) == (0.0, 1.0, 0.0)
    assert bench_image([], [], H10) == (0.0, 0.0, 0.0)


def test_prediction_length_mismatch_raises_data_error():
    with pytest.raises(DataError, match="h_samples has 10"):
        bench_image([[300] * 9], [_vertical(300)], H10)


def test_gt_length_mismatch_raises_data_error():
    with pytest.raises(DataError, match="ground-truth lane"):
        bench_image([], [[300] * 9], H10)


# --------------------------------------------------------------------------------------------------
# whole submissions
# --------------------------------------------------------------------------------------------------
def _gts():
    return [
        {"raw_file": "clips/a/20.jpg", "lanes": [_vertical(300), _vertical(900)], "h_samples": H10},
        {"raw_file": "clips/b/20.jpg", "lanes": [_vertical(400), _vertical(800)], "h_samples": H10},
    ]


def test_score_averages_over_gt_images(tmp_path):
    gts = _gts()
    preds = [
        {"raw_file": "clips/a/20.jpg", "lanes": gts[0]["lanes"], "run_time": 5},
        {"raw_file": "clips/b/20.jpg", "lanes": [_vertical(425), _vertical(800)], "run_time": 5},
    ]
    # image a (1, 0, 0); image b (0.5, 0.5, 0.5) -> (0.75, 0.25, 0.25)
    s = score(preds, gts)
    assert isinstance(s, TuSimpleScore)
    assert (s.accuracy, s.fp, s.fn, s.images, s.missing) == (0.75, 0.25, 0.25, 2, 0)
    assert s.as_official() == {"Accuracy": 0.75, "FP": 0.25, "FN": 0.25}
    assert s.as_official() == _official(preds, gts, tmp_path)


def test_missing_image_is_scored_as_an_empty_prediction(tmp_path):
    gts = _gts()
    preds = [{"raw_file": "clips/a/20.jpg", "lanes": gts[0]["lanes"], "run_time": 5}]
    # image a (1, 0, 0); image b missing = empty prediction: acc 0, FP 0 (no preds), FN 2/2 = 1
    s = score(preds, gts)
    assert (s.accuracy, s.fp, s.fn, s.images, s.missing) == (0.5, 0.0, 0.5, 2, 1)
    # the official evaluator refuses a partial submission; with the empty prediction spelt out it agrees
    explicit = [*preds, {"raw_file": "clips/b/20.jpg", "lanes": [], "run_time": 0}]
    assert s.as_official() == _official(explicit, gts, tmp_path)
    with pytest.raises(Exception, match="predictions of all the test tasks"):
        _official(preds, gts, tmp_path)


def test_no_predictions_at_all_scores_every_lane_missing():
    s = score([], _gts())
    assert (s.accuracy, s.fp, s.fn, s.missing) == (0.0, 0.0, 1.0, 2)


def test_prediction_for_unknown_image_raises_data_error():
    preds = [{"raw_file": "clips/zzz/20.jpg", "lanes": [], "run_time": 1}]
    with pytest.raises(DataError, match=r"clips/zzz/20\.jpg.*not in the ground truth"):
        score(preds, _gts())


def test_duplicate_prediction_raises_data_error():
    p = {"raw_file": "clips/a/20.jpg", "lanes": [], "run_time": 1}
    with pytest.raises(DataError, match="two predictions"):
        score([p, dict(p)], _gts())


@pytest.mark.parametrize("key", ["raw_file", "lanes", "run_time"])
def test_prediction_missing_key_raises_data_error(key):
    p = {"raw_file": "clips/a/20.jpg", "lanes": [], "run_time": 1}
    del p[key]
    with pytest.raises(DataError, match=repr(key)):
        score([p], _gts())


@pytest.mark.parametrize("lanes", [None, 5, "abc", [1, 2, 3], [[300] * 10, "x"]])
def test_prediction_lanes_of_wrong_type_raise_data_error(lanes):
    with pytest.raises(DataError, match="list of lists"):
        score([{"raw_file": "clips/a/20.jpg", "lanes": lanes, "run_time": 1}], _gts())


def test_prediction_lanes_as_tuples_or_arrays_are_accepted():
    gts = _gts()
    preds = [
        {"raw_file": "clips/a/20.jpg", "lanes": [tuple(lane) for lane in gts[0]["lanes"]], "run_time": 1},
        {"raw_file": "clips/b/20.jpg", "lanes": np.array(gts[1]["lanes"]), "run_time": 1},
    ]
    assert score(preds, gts).as_official() == {"Accuracy": 1.0, "FP": 0.0, "FN": 0.0}


def test_empty_or_incomplete_ground_truth_raises_data_error():
    with pytest.raises(DataError, match="no images"):
        score([], [])
    with pytest.raises(DataError, match="h_samples"):
        score([], [{"raw_file": "a", "lanes": []}])


def test_score_files_round_trip_and_blank_lines(tmp_path):
    gts = _gts()
    preds = [{"raw_file": g["raw_file"], "lanes": g["lanes"], "run_time": 3} for g in gts]
    gt_file = _write_lines(tmp_path / "gt.json", gts)
    pred_file = tmp_path / "pred.json"
    pred_file.write_text("\n".join(json.dumps(p) for p in preds) + "\n\n")  # trailing blank line is fine
    s = score_files(pred_file, gt_file)
    assert s.as_official() == {"Accuracy": 1.0, "FP": 0.0, "FN": 0.0}


def test_malformed_json_names_file_and_line(tmp_path):
    gt_file = _write_lines(tmp_path / "gt.json", _gts())
    bad = tmp_path / "pred.json"
    bad.write_text(json.dumps({"raw_file": "clips/a/20.jpg", "lanes": [], "run_time": 1}) + "\n{not json\n")
    with pytest.raises(DataError, match=re.escape(f"{bad}:2: not valid JSON")) as info:
        score_files(bad, gt_file)
    assert isinstance(info.value, EdgeMatrixError)
    bad.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=re.escape(f"{bad}:1: expected a JSON object")):
        score_files(bad, gt_file)


def test_missing_files_raise_data_error(tmp_path):
    gt_file = _write_lines(tmp_path / "gt.json", _gts())
    with pytest.raises(DataError, match=r"prediction file .*nope\.json not found"):
        score_files(tmp_path / "nope.json", gt_file)
    with pytest.raises(DataError, match=r"ground-truth file .*nope\.json not found"):
        score_files(gt_file, tmp_path / "nope.json")


# --------------------------------------------------------------------------------------------------
# property: equal to the official evaluator on random submissions
# --------------------------------------------------------------------------------------------------
_SLOPES = [0.0, 0.5, 0.75, -0.75, 1.0, 4 / 3, -2.0, 2.4]  # several give exact thresholds (25, 25, 33.3.., 52)
_SHIFTS = [0, 1, -5, 15, 19, 20, -20, 21, 24, 25, -25, 26, 33, 52, 60, -300]


@st.composite
def _image(draw, index: int) -> tuple[dict, dict]:
    n_rows = draw(st.integers(1, 14))
    step = draw(st.sampled_from([10, 20, 40]))
    start = draw(st.integers(0, 20)) * 10
    ys = [start + step * i for i in range(n_rows)]

    def lane_from(base: list[int]) -> list[int]:
        gaps = draw(st.lists(st.booleans(), min_size=n_rows, max_size=n_rows))
        return [-2 if gap else x for x, gap in zip(base, gaps, strict=True)]

    gt_lanes = []
    for _ in range(draw(st.integers(0, 6))):
        x0 = draw(st.integers(0, 1279))
        slope = draw(st.sampled_from(_SLOPES) | st.floats(-3, 3, allow_nan=False))
        base = [round(x0 + slope * (y - ys[0])) for y in ys]
        lane = lane_from(base) if draw(st.booleans()) else base
        gt_lanes.append(lane)
    pred_lanes = []
    for _ in range(draw(st.integers(0, 7))):
        if gt_lanes and draw(st.integers(0, 3)) > 0:  # mostly: a perturbed copy of a GT lane
            src = draw(st.sampled_from(gt_lanes))
            shift = draw(st.sampled_from(_SHIFTS) | st.integers(-40, 40))
            lane = [x + shift if x >= 0 else x for x in src]
            if draw(st.booleans()):
                noise = draw(st.lists(st.integers(-3, 3), min_size=n_rows, max_size=n_rows))
                lane = [x + e if x >= 0 else x for x, e in zip(lane, noise, strict=True)]
            if draw(st.booleans()):
                lane = lane_from(lane)
        else:
            lane = draw(st.lists(st.integers(-2, 1279), min_size=n_rows, max_size=n_rows))
        pred_lanes.append(lane)
    run_time = draw(st.sampled_from([0, 5.5, 199.9, 200, 200.1, 1000]) | st.floats(0, 400, allow_nan=False))
    raw = f"clips/{index}/20.jpg"
    return (
        {"raw_file": raw, "lanes": pred_lanes, "run_time": run_time},
        {"raw_file": raw, "lanes": gt_lanes, "h_samples": ys},
    )


@st.composite
def _submission(draw) -> tuple[list[dict], list[dict]]:
    n = draw(st.integers(1, 4))
    pairs = [draw(_image(i)) for i in range(n)]
    preds = [p for p, _ in pairs]
    order = draw(st.permutations(range(n)))  # predictions need not follow the label order
    return [preds[i] for i in order], [g for _, g in pairs]


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_submission())
def test_score_equals_official_evaluator(sub):
    preds, gts = sub
    with tempfile.TemporaryDirectory() as d:
        official = _official(preds, gts, Path(d))
    ours = score(preds, gts).as_official()
    assert ours.keys() == official.keys()
    for k in ours:
        assert ours[k] == pytest.approx(official[k], abs=1e-9), (k, ours, official)


@settings(max_examples=100, deadline=None, database=None)
@given(
    xs=st.lists(st.integers(-2, 1279), min_size=1, max_size=30),
    step=st.sampled_from([1, 10, 40]),
)
def test_angle_equals_sklearn_fit_bit_for_bit(xs, step):
    from edgematrix.metrics.tusimple import _angle

    x = np.array(xs, dtype=np.float64)
    y = np.arange(len(xs), dtype=np.float64) * step + 160
    assert _angle(x, y) == _OfficialLaneEval.get_angle(np.array(xs), y)

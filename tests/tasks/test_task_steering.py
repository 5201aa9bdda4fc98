"""The steering task: driving-log data (synthetic and a real-layout recording), MSE/MAE scoring with the
predictions CSV, preprocessing, and the demo's drive and steering arrow."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgematrix.data.synthetic_driving import render_sample
from edgematrix.errors import EdgeMatrixError
from edgematrix.matrix.loader import load_matrix
from edgematrix.metrics.regression import score
from edgematrix.models import create_model
from edgematrix.tasks.base import get_task
from edgematrix.tasks.steering import SteeringTask, read_predictions, score_steering_outputs

REPO = Path(__file__).resolve().parents[2]


def _cfg(**update: object):  # the matrix's PilotNet with a handful of synthetic frames
    m = load_matrix(REPO / "matrix").models["pilotnet"]
    synthetic = m.synthetic.model_copy(update={"train": 12, "test": 6, "seed": 5})
    return m.model_copy(update={"synthetic": synthetic, **update})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return get_task("steering").load_data(_cfg(), None, tmp_path_factory.mktemp("cache"))


def test_the_registry_names_the_steering_task() -> None:
    task = get_task("steering")
    assert isinstance(task, SteeringTask) and task is get_task("steering")
    assert (task.metric, task.metric_direction) == ("MSE", "lower")
    assert task.output_names == ("steering",) and task.agreement_output == "steering"


def test_synthetic_data_is_loaded_at_the_model_input(data, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEMATRIX_DATA_ROOT", raising=False)
    assert data.synthetic and data.tag == "synthetic-driving" and data.label == "synthetic driving frames"
    assert data.train.images.shape == (12, 3, 66, 200) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (6, 3, 66, 200) and len(data.test) == 6
    # the labels are the generator's pure-pursuit steering of each frame's scene
    want = [render_sample(5, "test", i)[1] for i in range(6)]
    np.testing.assert_allclose(data.test.steering, want, atol=1e-6)
    assert np.all(np.abs(data.train.steering) <= 1)


def test_the_data_key_follows_the_frames(data, tmp_path: Path) -> None:
    task = get_task("steering")
    again = task.load_data(_cfg(), None, data.root.parents[1])  # the same cache: reused, same key
    assert again.key == data.key and again.root == data.root
    rgb = task.load_data(_cfg(params={"color": "rgb"}), None, data.root.parents[1])
    assert rgb.key != data.key  # other planes are another dataset for training
    assert not np.array_equal(rgb.test.images, data.test.images)
    capped = task.load_data(_cfg(eval_images=4), None, data.root.parents[1])
    assert len(capped.test) == 4


def test_a_recording_in_the_simulator_layout(data, tmp_path: Path) -> None:
    """One driving_log.csv as the simulator writes it: no header, absolute paths; its last 20% is the test split."""
    rec = tmp_path / "recording"
    (rec / "IMG").mkdir(parents=True)
    rows = []
    for i in range(10):
        frame, steering, _ = render_sample(9, "train", i)
        path = rec / "IMG" / f"center_{i:03d}.jpg"
        Image.fromarray(frame).save(path, quality=95)
        rows.append([str(path), "", "", f"{steering:.6f}", "0.3", "0", "25"])
    with (rec / "driving_log.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    real = get_task("steering").load_data(_cfg(), str(rec), tmp_path / "cache")
    assert not real.synthetic and real.tag == "driving_log" and real.root == rec
    assert (len(real.train), len(real.test)) == (8, 2)
    np.testing.assert_allclose(real.test.steering, [float(r[3]) for r in rows[8:]], atol=1e-6)
    assert real.key != data.key


def test_preprocess_gives_float_pixels_nchw() -> None:
    task = get_task("steering")
    nchw = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    x = task.preprocess(nchw)
    assert x.dtype == np.float32 and x.shape == (2, 3, 4, 5) and x.max() == 119.0  # no normalisation here
    assert np.array_equal(task.preprocess(nchw.transpose(0, 2, 3, 1)), x)  # NHWC (the demo's frames)
    with pytest.raises(EdgeMatrixError, match=r"\[N, 3, H, W\] or \[N, H, W, 3\]"):
        task.preprocess(np.zeros((2, 4, 4), np.uint8))


def test_score_is_the_mse_and_the_predictions_csv_rescores_to_it(data, tmp_path: Path) -> None:
    labels = data.test.steering.astype(np.float64)
    pred = labels + np.array([0.1, -0.2, 0.0, 0.05, 0.3, -0.1])
    outputs = [{"steering": np.array([[p]], np.float32)} for p in pred]
    s = get_task("steering").score(outputs, data.test, tmp_path, "candidate", model=None)
    p32 = pred.astype(np.float32).astype(np.float64)
    assert s.accuracy == pytest.approx(np.mean((p32 - labels) ** 2), rel=1e-9)
    assert s.accuracy == pytest.approx((0.01 + 0.04 + 0 + 0.0025 + 0.09 + 0.01) / 6, rel=1e-5)
    assert s.extras == {"mae": pytest.approx(0.75 / 6, rel=1e-5)}
    assert s.predictions_file == tmp_path / "predictions-candidate.csv"
    text = s.predictions_file.read_text().splitlines()
    assert text[0] == "frame,predicted,label" and text[1].startswith("IMG/center_test_00000.jpg,")
    frames, predicted, read_labels = read_predictions(s.predictions_file)
    assert len(frames) == 6 and score(predicted, read_labels).mse == pytest.approx(s.accuracy, rel=1e-6)
    # the first n frames of a partial run are scored; a malformed output is refused
    part = score_steering_outputs(outputs[:2], data.test)
    assert part.accuracy == pytest.approx(np.mean((p32[:2] - labels[:2]) ** 2), rel=1e-9)
    with pytest.raises(EdgeMatrixError, match="expected one value"):
        score_steering_outputs([{"steering": np.zeros((1, 2))}], data.test)
    with pytest.raises(EdgeMatrixError, match="7 outputs for a split of 6 frames"):
        score_steering_outputs(outputs + outputs[:1], data.test)


def test_the_drive_is_smooth_in_the_model_colour_space() -> None:
    task = get_task("steering")
    frames = task.drive(_cfg(), 6, seed=3)
    assert frames.shape == (6, 66, 200, 3) and frames.dtype == np.uint8
    step = np.abs(frames[1].astype(int) - frames[0].astype(int)).mean()
    other = task.drive(_cfg(), 6, seed=4)
    assert 0 < step < np.abs(other[0].astype(int) - frames[0].astype(int)).mean()  # moves, but one road
    rgb = task.drive(_cfg(params={"color": "rgb"}), 1, seed=3)[0]
    yuv = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    assert np.abs(yuv.astype(int) - frames[0].astype(int)).max() <= 1  # the same frame, YUV planes


@pytest.mark.parametrize("steering", [1.0, -0.6, 0.0])
def test_overlay_draws_the_steering_arrow_towards_the_turn(steering: float) -> None:
    task = get_task("steering")
    model = create_model("pilotnet", [1, 3, 66, 200])  # color yuv
    frame = np.full((132, 400, 3), 128, np.uint8)  # mid grey in YUV (Y 128, Cb = Cr = 128)
    drawn = task.overlay(frame, {"steering": np.array([[steering]], np.float32)}, model)
    assert drawn.shape == (132, 400, 3)
    body = drawn[40:, :]  # below the caption
    grey = np.abs(body.astype(int) - 128).max(-1) <= 2
    assert grey.mean() > 0.9  # the frame converted from YUV to RGB: still grey
    ys, xs = np.nonzero((body[..., 1] > 200) & (body[..., 0] < 150))  # the green arrow
    assert len(xs) > 50
    offset = xs[ys.argmin()] - 200  # the tip (the arrow's highest pixel) from the bottom centre
    # +1 is full lock (25°) to the right; the arrow is 0.55 × the frame height long
    assert offset == pytest.approx(0.55 * 132 * math.sin(math.radians(25 * steering)), abs=3)

"""The steering task: driving logs (Udacity simulator recordings, or synthetic frames), PilotNet training and
distillation, the MSE of the steering command (lower is better; MAE an extra), a steering arrow for the demo.

Data: ``dataset = "driving_log"`` (:mod:`edgematrix.data.synthetic_driving`): a folder with
``driving_log.csv`` + ``IMG/`` (or ``train/`` and ``test/`` logs); empty ``data_root``: synthetic frames
generated into the cache. Frames are cropped, resized to the model input and converted to the model's
colour space (``params.color``: ``yuv`` as in the paper, or ``rgb``); the model takes them as float pixels
0..255 (PilotNet normalises in its first layer).

Predictions: ``predictions-<role>.csv`` with one row per test frame, ``frame,predicted,label`` (the frame
as ``IMG/<file>``, as the driving log names it), so any tool re-scores them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgematrix.errors import EdgeMatrixError
from edgematrix.tasks.base import TaskAdapter, TaskData, TaskScore

#: the ONNX output of a steering model: the normalised steering command, shape (1, 1)
OUTPUT_NAMES: tuple[str, ...] = ("steering",)
#: the steering command is normalised to [-1, 1] = ±25° (the Udacity simulator's full scale)
FULL_SCALE_DEG = 25.0
_ARROW = (80, 230, 120)
_LABEL_ARROW = (255, 210, 60)


def model_color(model_cfg: Any) -> str:
    """The colour space the model's frames are in (``params.color``; PilotNet's default ``yuv``)."""
    color = str(model_cfg.params.get("color", "yuv"))
    if color not in ("yuv", "rgb"):
        raise EdgeMatrixError(f"params.color {color!r} of a steering model must be 'yuv' or 'rgb'")
    return color


class SteeringTask(TaskAdapter):
    name = "steering"
    metric = "MSE"
    metric_direction = "lower"
    output_names: ClassVar[tuple[str, ...]] = OUTPUT_NAMES
    agreement_output = "steering"
    train_code: ClassVar[tuple[str, ...]] = (
        "models/__init__", "models/pilotnet", "train/steering", "train/lane", "train/loop", "data/synthetic_driving",
    )  # fmt: skip
    train_function = "edgematrix.train.steering:train_steering_model"
    distill_function = "edgematrix.train.steering:distill_steering_model"
    summary_extras: ClassVar[tuple[str, ...] | None] = ("mae",)

    def load_data(self, model_cfg: Any, data_root: str | None, cache_dir: Path) -> TaskData:
        from edgematrix.core.cache import content_key
        from edgematrix.data.synthetic_driving import DrivingSynthConfig, load_split, resolve_data_root

        configured = data_root if data_root is not None else model_cfg.data_root
        syn = DrivingSynthConfig(model_cfg.synthetic.train, model_cfg.synthetic.test, model_cfg.synthetic.seed)
        root, synthetic = resolve_data_root(configured, syn, cache_dir)
        size = (int(model_cfg.input_shape[2]), int(model_cfg.input_shape[3]))
        color = model_color(model_cfg)
        train = load_split(root, "train", size, color=color)
        test = load_split(root, "test", size, color=color, limit=model_cfg.eval_images)
        if synthetic:
            key = syn.key()
        else:  # the recording's rows and image sizes: another recording, or an edited one, is another dataset
            rows = [(_frame_name(s.image), s.image.stat().st_size, s.steering) for s in (*train.samples, *test.samples)]
            key = content_key("driving_log", rows)
        key = content_key(key, color, size)
        label = "synthetic driving frames" if synthetic else "driving log (Udacity simulator layout)"
        tag = "synthetic-driving" if synthetic else "driving_log"
        return TaskData(root, synthetic, key, label, tag, train, test)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 frames (NCHW, or NHWC as :meth:`drive` gives them) in the model's colour space -> float32
        NCHW pixels 0..255 (the model normalises them itself)."""
        x = np.asarray(images)
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[3]):
            raise EdgeMatrixError(f"steering frames must be [N, 3, H, W] or [N, H, W, 3]; got {list(x.shape)}")
        if x.shape[1] != 3:
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def score(
        self, outputs: Sequence[dict[str, np.ndarray]], split: Any, out_dir: Path | None, role: str, *, model: Any
    ) -> TaskScore:
        """MSE of the steering command (the metric of record, lower is better) and MAE; writes
        ``predictions-<role>.csv`` (``frame,predicted,label``) when ``out_dir`` is given."""
        out_file = out_dir / f"predictions-{role}.csv" if out_dir is not None else None
        return score_steering_outputs(outputs, split, out_file)

    def drive(self, model_cfg: Any, frames: int, seed: int) -> np.ndarray:
        """The synthetic road: the car weaves across its lane (offset ±0.7 m, heading ±0.06 rad) while the road
        bends one way, then the other; one appearance (sky, texture, lighting) for the whole drive. Frames in
        the model's colour space, cropped and resized as the data loader does."""
        from edgematrix.data.synthetic_driving import Scene, render

        h, w = int(model_cfg.input_shape[2]), int(model_cfg.input_shape[3])
        color = model_color(model_cfg)
        out = np.empty((frames, h, w, 3), np.uint8)
        for t in range(frames):
            phase = t / max(frames - 1, 1)
            scene = Scene(
                offset=0.7 * math.sin(2 * math.pi * phase),
                heading=0.06 * math.cos(2 * math.pi * phase),
                curvature=0.02 * math.sin(math.pi * (2 * phase - 0.5)),
            )
            rgb = render(scene, np.random.default_rng([seed, 7]))  # the same appearance draws every frame
            out[t] = _prepare_frame(rgb, (h, w), color)
        return out

    def overlay(self, frame: np.ndarray, outputs: dict[str, np.ndarray], model: Any) -> np.ndarray:
        """``frame`` (the model's colour space) as RGB, with the predicted steering as an arrow from the bottom
        centre (turned by the steering angle: +1 = 25° right) and its value in degrees."""
        from PIL import Image, ImageDraw

        steering = float(np.asarray(outputs["steering"]).reshape(-1)[0])
        h, w = frame.shape[:2]
        mode = "YCbCr" if _colour_of(model) == "yuv" else "RGB"
        pil = Image.frombytes(mode, (w, h), np.ascontiguousarray(frame, np.uint8).tobytes()).convert("RGB")
        draw = ImageDraw.Draw(pil)
        draw_steering_arrow(draw, (w, h), steering, _ARROW)
        draw.text((4, 2), f"steer {steering:+.3f} ({steering * FULL_SCALE_DEG:+.1f} deg)", fill=_ARROW)
        return np.asarray(pil)


def _colour_of(model: Any) -> str:
    return str(getattr(model, "color", "yuv"))


def draw_steering_arrow(draw: Any, size: tuple[int, int], steering: float, colour: tuple[int, int, int]) -> None:
    """An arrow from the bottom centre of a ``size`` (width, height) image, turned by ``steering`` × 25°
    (clipped to ±1: full lock) from straight up, about half the image height long."""
    w, h = size
    angle = math.radians(float(np.clip(steering, -1.0, 1.0)) * FULL_SCALE_DEG)
    length = 0.55 * h
    x0, y0 = w / 2, h - 2
    x1, y1 = x0 + length * math.sin(angle), y0 - length * math.cos(angle)
    width = max(2, round(h / 40))
    draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
    head = max(5.0, h / 9)
    for side in (-1, 1):  # two barbs at ±28° from the shaft, pointing back
        a = angle + math.pi + side * math.radians(28)
        draw.line([(x1, y1), (x1 + head * math.sin(a), y1 - head * math.cos(a))], fill=colour, width=width)


def _prepare_frame(rgb: np.ndarray, size: tuple[int, int], color: str) -> np.ndarray:
    """A rendered 160×320 RGB frame, cropped (sky, bonnet) and resized like the data loader, HWC uint8."""
    from PIL import Image

    from edgematrix.data.synthetic_driving import DEFAULT_CROP

    top, bottom = DEFAULT_CROP
    image = Image.fromarray(rgb).crop((0, top, rgb.shape[1], rgb.shape[0] - bottom))
    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    if color == "yuv":
        image = image.convert("YCbCr")
    return np.asarray(image, dtype=np.uint8)


def _frame_name(path: Path) -> str:
    """A frame as the driving log names it: ``IMG/<file>`` (the folder it is in, and the file)."""
    return f"{path.parent.name}/{path.name}"


def score_steering_outputs(
    outputs: Sequence[dict[str, np.ndarray]], split: Any, out_file: Path | None = None
) -> TaskScore:
    """MSE (``accuracy``: the metric of record, lower is better) and ``mae`` of per-frame outputs ``steering``
    (frame i at index i; they may cover only the first n frames of ``split``: those are scored). Writes
    ``out_file`` when given: CSV ``frame,predicted,label``."""
    from edgematrix.fileio import atomic_write_text
    from edgematrix.metrics.regression import score

    n = len(outputs)
    if n == 0:
        raise EdgeMatrixError("no outputs to score; the runner produced nothing")
    if n > len(split):
        raise EdgeMatrixError(f"{n} outputs for a split of {len(split)} frames")
    predicted = []
    for i, out in enumerate(outputs):
        value = np.asarray(out["steering"])
        if value.size != 1:
            raise EdgeMatrixError(f"frame {i}: the steering output has shape {list(value.shape)}; expected one value")
        predicted.append(float(value.reshape(-1)[0]))
    labels = np.asarray(split.steering[:n], np.float64)
    result = score(predicted, labels)
    if out_file is not None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("frame", "predicted", "label"))
        for sample, p, y in zip(split.samples[:n], predicted, labels, strict=True):
            writer.writerow((_frame_name(sample.image), f"{p:.9g}", f"{y:.9g}"))
        out_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_file, buf.getvalue())
    return TaskScore(result.mse, {"mae": result.mae}, out_file)


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A ``predictions-<role>.csv``: frame names, predictions and labels (float64)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        frames = [r["frame"] for r in rows]
        predicted = np.array([float(r["predicted"]) for r in rows])
        labels = np.array([float(r["label"]) for r in rows])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise EdgeMatrixError(
            f"{path} is not a steering predictions file (CSV with columns frame,predicted,label): {e}"
        ) from None
    return frames, predicted, labels

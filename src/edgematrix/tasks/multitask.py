"""The multi-task task: scenes data (class masks + KITTI depth), segmentation + depth training and
distillation, mIoU (primary, points) with depth AbsRel / RMSE / δ1 and pixel accuracy as extras."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgematrix.data.scenes import ScenesSplit, colorize
from edgematrix.errors import EdgeMatrixError
from edgematrix.metrics.segmentation import DepthAccumulator, confusion_matrix, segmentation_scores
from edgematrix.tasks.base import TaskAdapter, TaskData, TaskScore

#: the ONNX names of the model's outputs and of the encoder output the split cuts at
#: (:attr:`edgematrix.models.multitask.MultiTaskNet.OUTPUT_NAMES` / ``ENCODER_OUTPUTS``; kept here so this
#: module imports no torch, and checked equal by the tests)
OUTPUT_NAMES: tuple[str, ...] = ("seg", "depth")
ENCODER_OUTPUTS: tuple[str, ...] = ("features",)

# depth colour map anchors (near = warm, far = cool), 0..1 → RGB
_DEPTH_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_DEPTH_COLOURS = np.array([[180, 4, 38], [244, 109, 67], [254, 224, 144], [116, 173, 209], [49, 54, 149]], np.float64)


class MultiTaskTask(TaskAdapter):
    name = "multitask"
    metric = "mIoU"
    output_names: ClassVar[tuple[str, ...]] = OUTPUT_NAMES
    agreement_output = "seg"
    encoder_outputs: ClassVar[tuple[str, ...]] = ENCODER_OUTPUTS
    train_code: ClassVar[tuple[str, ...]] = (
        "models/multitask", "train/multitask", "train/lane", "train/loop", "data/scenes", "data/synthetic_scenes",
    )  # fmt: skip
    train_function = "edgematrix.train.multitask:train_multitask_model"
    distill_function = "edgematrix.train.multitask:distill_multitask_model"

    def head_outputs(self) -> dict[str, str]:
        """Head (``model.heads`` key) → the ONNX output it produces; each head is one split subgraph."""
        return {"seg": "seg", "depth": "depth"}

    def load_data(self, model_cfg: Any, data_root: str | None, cache_dir: Path) -> TaskData:
        from edgematrix.data.scenes import fingerprint, load_split
        from edgematrix.data.synthetic_scenes import ScenesConfig, resolve_data_root

        configured = data_root if data_root is not None else model_cfg.data_root
        syn = ScenesConfig(train=model_cfg.synthetic.train, val=model_cfg.synthetic.test, seed=model_cfg.synthetic.seed)
        h, w = model_cfg.input_shape[2], model_cfg.input_shape[3]
        root, synthetic = resolve_data_root(configured, syn, cache_dir)
        train = load_split(root, "train", (h, w))
        test = load_split(root, "val", (h, w), limit=model_cfg.eval_images)
        label = "synthetic scenes (segmentation + depth)" if synthetic else "scenes (segmentation + depth)"
        tag = "synthetic-scenes" if synthetic else "scenes"
        return TaskData(root, synthetic, fingerprint(root), label, tag, train, test)

    def score(
        self, outputs: Sequence[dict[str, np.ndarray]], split: Any, out_dir: Path | None, role: str, *, model: Any
    ) -> TaskScore:
        """mIoU (points) + depth/pixel extras; writes predictions-<role>.npz and labels.json."""
        from edgematrix.fileio import atomic_write_text

        out_file = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "labels.json", json.dumps(list(split.files), indent=1))
            out_file = out_dir / f"predictions-{role}.npz"
        return score_multitask_outputs(outputs, split, out_file)

    def drive(self, model_cfg: Any, frames: int, seed: int) -> np.ndarray:
        """The synthetic road bending while the ego car drifts, poles passing, vehicles ahead."""
        from PIL import Image

        from edgematrix.data.synthetic_scenes import render_drive_frame

        h, w = model_cfg.input_shape[2], model_cfg.input_shape[3]
        out = np.empty((frames, h, w, 3), np.uint8)
        for t in range(frames):
            image, _, _ = render_drive_frame(seed, t / max(frames - 1, 1))
            out[t] = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        return out

    def overlay(self, frame: np.ndarray, outputs: dict[str, np.ndarray], model: Any) -> np.ndarray:
        """Class colours blended over the frame, and the depth map as an inset in the top-right corner.

        Colours: ``model.palette`` when the model has one, else the synthetic scenes' classes (the demo's
        drive is synthetic); ids beyond the palette are drawn black."""
        from edgematrix.data.synthetic_scenes import CLASSES

        palette = getattr(model, "palette", None) or CLASSES.palette
        seg, depth = decode_outputs(outputs)
        max_depth = float(getattr(model, "max_depth", 80.0))
        return draw_overlay(frame, seg, depth, palette, max_depth)


def decode_outputs(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One batch-1 inference → (class map uint8 [H, W], depth float32 [H, W] metres)."""
    seg = np.asarray(outputs["seg"])
    depth = np.asarray(outputs["depth"])
    if seg.ndim != 4 or seg.shape[0] != 1 or depth.ndim != 4 or depth.shape[:2] != (1, 1):
        raise EdgeMatrixError(
            f"multitask outputs must be seg [1, C, H, W] and depth [1, 1, H, W]; got {seg.shape} and {depth.shape}"
        )
    return seg[0].argmax(0).astype(np.uint8), depth[0, 0].astype(np.float32)


def depth_colours(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """float [H, W] metres → uint8 [H, W, 3] (near warm, far cool; 0 = black)."""
    t = np.clip(np.asarray(depth, np.float64) / max_depth, 0, 1)
    rgb = np.stack([np.interp(t, _DEPTH_ANCHORS, _DEPTH_COLOURS[:, c]) for c in range(3)], -1)
    rgb[np.asarray(depth) <= 0] = 0
    return rgb.astype(np.uint8)


def draw_overlay(
    frame: np.ndarray, seg: np.ndarray, depth: np.ndarray, palette: Sequence[Sequence[int]], max_depth: float
) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    if seg.shape != (h, w):
        seg = np.asarray(Image.fromarray(seg).resize((w, h), Image.Resampling.NEAREST))
    out = (0.55 * frame.astype(np.float32) + 0.45 * colorize(seg, palette).astype(np.float32)).astype(np.uint8)
    iw, ih = max(8, w // 3), max(4, h // 3)
    inset = Image.fromarray(depth_colours(depth, max_depth)).resize((iw, ih), Image.Resampling.BILINEAR)
    out[1 : 1 + ih, w - iw - 1 : w - 1] = np.asarray(inset)
    return out


def score_multitask_outputs(
    outputs: Sequence[dict[str, np.ndarray]], split: ScenesSplit, out_file: Path | None = None
) -> TaskScore:
    """mIoU (points) and extras ``pixel_acc`` (points), ``abs_rel`` / ``rmse`` / ``delta1`` (when the split
    has depth) of per-sample batch-1 outputs (sample i at index i; may cover only the first n samples:
    those are scored). Writes ``out_file`` when given: npz with ``masks`` uint8 [n, H, W], ``depth``
    float16 [n, H, W], ``files``, ``classes`` and ``class_iou`` (points; NaN = class absent from GT and
    predictions), no pickled objects."""
    n = len(outputs)
    if n == 0:
        raise EdgeMatrixError("no outputs to score; the runner produced nothing")
    if n > len(split):
        raise EdgeMatrixError(f"{n} outputs for a split of {len(split)} images")
    k = split.classes.num_classes
    cm = np.zeros((k, k), np.int64)
    acc = DepthAccumulator()
    masks = np.empty((n, *split.masks.shape[1:]), np.uint8)
    depths = np.empty((n, *split.masks.shape[1:]), np.float16)
    for i, out in enumerate(outputs):
        seg, depth = decode_outputs(out)
        if seg.shape != split.masks.shape[1:]:
            raise EdgeMatrixError(f"seg output is {seg.shape}, the labels {split.masks.shape[1:]}; not the same size")
        if int(np.asarray(out["seg"]).shape[1]) != k:
            raise EdgeMatrixError(f"the model predicts {np.asarray(out['seg']).shape[1]} classes, the dataset has {k}")
        cm += confusion_matrix(seg, split.masks[i], k)
        if split.has_depth:
            acc.add(depth, split.depth[i])
        masks[i], depths[i] = seg, depth
    s = segmentation_scores(cm)
    extras: dict[str, float] = {"pixel_acc": s.pixel_accuracy * 100}
    if split.has_depth and acc.count:
        extras.update({"abs_rel": acc.abs_rel, "rmse": acc.rmse, "delta1": acc.delta1})
    if out_file is not None:
        class_iou = np.full(k, np.nan)
        for c, iou in s.per_class_iou.items():
            class_iou[c] = iou * 100
        out_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out_file,
            masks=masks,
            depth=depths,
            files=np.array(split.files[:n]),
            classes=np.array(split.classes.names),
            class_iou=class_iou,
        )
    return TaskScore(s.miou * 100, extras, out_file)

"""The detection task: COCO-format data (real or synthetic road scenes), the SSD-lite detector's training and
distillation, COCO mAP@[.5:.95] through pycocotools."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgematrix.errors import DataError
from edgematrix.tasks.base import TaskAdapter, TaskData, TaskScore

#: the ONNX names of the detector's outputs (:data:`edgematrix.models.detector.OUTPUT_NAMES`; kept here so
#: this module, which loading a matrix imports, imports no torch; checked equal by the tests)
OUTPUT_NAMES: tuple[str, ...] = ("scores", "boxes")

# one colour per class index (car, truck, pedestrian, traffic sign, then repeating)
CLASS_COLOURS = ((255, 70, 70), (255, 170, 30), (60, 220, 90), (70, 150, 255), (220, 80, 255), (40, 230, 230))


class DetectionTask(TaskAdapter):
    name = "detection"
    metric = "mAP@[.5:.95]"
    needs_module = True  # decodes with model.geometry
    output_names: ClassVar[tuple[str, ...]] = OUTPUT_NAMES
    agreement_output = "scores"
    train_code: ClassVar[tuple[str, ...]] = (
        "models/detector",
        "models/detection_task",
        "train/detection",
        "train/lane",
        "train/loop",
        "data/coco",
        "data/synthetic_detection",
    )
    train_function = "edgematrix.train.detection:train_detector"
    distill_function = "edgematrix.train.detection:distill_detector"

    def load_data(self, model_cfg: Any, data_root: str | None, cache_dir: Path) -> TaskData:
        from edgematrix.data.coco import fingerprint, load_split

        configured = data_root if data_root is not None else model_cfg.data_root
        h, w = model_cfg.input_shape[2], model_cfg.input_shape[3]
        from edgematrix.data.synthetic_detection import resolve_data_root

        root, synthetic = resolve_data_root(configured, model_cfg.synthetic, cache_dir)
        train = load_split(root, "train", (h, w))
        test = load_split(root, "val", (h, w), limit=model_cfg.eval_images)
        classes = int(model_cfg.params.get("num_classes", 4))
        if len(train.category_ids) != classes:
            raise DataError(
                f"{root} has {len(train.category_ids)} categories ({', '.join(train.category_names)}) but the model "
                f"is configured with num_classes = {classes}; set params.num_classes to {len(train.category_ids)}"
            )
        if test.category_ids != train.category_ids:
            raise DataError(
                f"{root}: train and val list different categories ({train.category_ids} vs {test.category_ids})"
            )
        label = "COCO-format detection (synthetic road scenes)" if synthetic else "COCO-format detection"
        return TaskData(
            root, synthetic, fingerprint(root), label, "synthetic-coco" if synthetic else "coco", train, test
        )

    def score(
        self, outputs: Sequence[dict[str, np.ndarray]], split: Any, out_dir: Path | None, role: str, *, model: Any
    ) -> TaskScore:
        """COCO mAP@[.5:.95] (points), extras map50 / map75 / ar100 (points); writes predictions-<role>.json
        (COCO results) and labels.json (the ground-truth instances of the images evaluated)."""
        from edgematrix.data.coco import write_instances

        out_file = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_instances(out_dir / "labels.json", split.instances)
            out_file = out_dir / f"predictions-{role}.json"
        return score_detection_outputs(list(outputs), split, model.geometry, out_file)

    def drive(self, model_cfg: Any, frames: int, seed: int) -> np.ndarray:
        """Synthetic road scenes: the ego car drives on, vehicles move, signs and pedestrians come closer."""
        from edgematrix.data.synthetic_detection import drive

        return drive(seed, frames, (model_cfg.input_shape[2], model_cfg.input_shape[3]))

    def overlay(self, frame: np.ndarray, outputs: dict[str, np.ndarray], model: Any) -> np.ndarray:
        """Boxes scoring >= 0.3, in the class's colour, with the class name (``params.class_names``; else its
        index) and score."""
        from PIL import Image, ImageDraw

        from edgematrix.models.detection_task import PostprocessConfig, postprocess

        g = model.geometry
        boxes, scores, labels = postprocess(
            np.asarray(outputs["scores"]), np.asarray(outputs["boxes"]), g, PostprocessConfig(score_threshold=0.3)
        )
        h, w = frame.shape[:2]
        sx, sy = w / g.input_width, h / g.input_height
        pil = Image.fromarray(np.ascontiguousarray(frame))
        draw = ImageDraw.Draw(pil)
        names = getattr(model, "class_names", None)
        for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            colour = CLASS_COLOURS[c % len(CLASS_COLOURS)]
            draw.rectangle([x1 * sx, y1 * sy, x2 * sx, y2 * sy], outline=colour, width=max(1, round(w / 320)))
            tag = f"{names[c] if names else c} {s:.2f}"
            draw.text((x1 * sx + 2, max(0.0, y1 * sy - 11)), tag, fill=colour)
        return np.asarray(pil)


def score_detection_outputs(
    outputs: list[dict[str, np.ndarray]],
    split: Any,
    geometry: Any,
    out_file: Path | None = None,
) -> TaskScore:
    """COCO mAP of per-image outputs ``scores`` / ``boxes`` (image i at index i; may cover only the first n
    images of ``split``: those are scored). Writes the COCO results to ``out_file`` when given."""
    from edgematrix.data.coco import detections_to_results, write_results
    from edgematrix.metrics.coco import score
    from edgematrix.models.detection_task import postprocess

    n = len(outputs)
    results: list[dict[str, Any]] = []
    for i in range(n):
        boxes, scores, labels = postprocess(outputs[i]["scores"], outputs[i]["boxes"], geometry)
        results += detections_to_results(split.image_ids[i], boxes, scores, labels, split.scales[i], split.category_ids)
    if out_file is not None:
        write_results(out_file, results)
    s = score(results, split.instances.to_json(), image_ids=list(split.image_ids[:n]))
    extras = {"map50": s.map50 * 100, "map75": s.stats["AP75"] * 100, "ar100": s.ar100 * 100}
    return TaskScore(s.map * 100, extras, out_file)

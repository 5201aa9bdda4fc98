"""Task adapters for the cell benchmark: run a model over the test split and score it.

Keyed by the matrix model's ``task``; a new task (detection, multi-task) registers its adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Runner
from edgematrix.data.lanes import LaneSplit, preprocess
from edgematrix.data.tusimple import write_label_file, write_predictions
from edgematrix.metrics.tusimple import score
from edgematrix.models.lane_task import decode_rows, lanes_for_h_samples
from edgematrix.models.ufld import LaneGeometry
from edgematrix.registry import Registry


@dataclass
class TaskScore:
    accuracy: float  # percent
    extras: dict[str, float] = field(default_factory=dict)
    predictions_file: Path | None = None


TaskEval = Callable[..., TaskScore]
tasks: Registry[TaskEval] = Registry("task")


@tasks.register("lane")
def evaluate_lanes(
    runner: Runner,
    split: LaneSplit,
    out_dir: Path,
    role: str,
    *,
    geometry: LaneGeometry,
    input_name: str,
    progress: Callable[[int], Any] | None = None,
) -> TaskScore:
    """TuSimple accuracy/FP/FN of ``runner`` on ``split``; writes predictions-<role>.json and labels.json."""
    preds = []
    for i, sample in enumerate(split.samples):
        x = preprocess(split.images[i : i + 1])
        t0 = time.perf_counter()
        out = runner.infer({input_name: x})
        ms = (time.perf_counter() - t0) * 1e3
        xs = decode_rows(np.asarray(out["loc_row"])[0], np.asarray(out["exist_row"])[0], geometry)
        preds.append((sample.raw_file, lanes_for_h_samples(xs, geometry, sample.h_samples), ms))
        if progress:
            progress(1)
    pred_file = out_dir / f"predictions-{role}.json"
    write_predictions(pred_file, preds)
    write_label_file(out_dir / "labels.json", split.samples)
    result = score([{"raw_file": r, "lanes": lanes, "run_time": rt} for r, lanes, rt in preds], split.labels_json())
    return TaskScore(result.accuracy * 100, {"fp": result.fp, "fn": result.fn}, pred_file)

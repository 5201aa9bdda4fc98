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
    outputs, times_ms = [], []
    for i in range(len(split.samples)):
        x = preprocess(split.images[i : i + 1])
        t0 = time.perf_counter()
        outputs.append(runner.infer({input_name: x}))
        times_ms.append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress(1)
    write_label_file(out_dir / "labels.json", split.samples)
    return score_lane_outputs(
        {k: np.stack([np.asarray(o[k]) for o in outputs]) for k in ("loc_row", "exist_row")},
        split,
        geometry,
        out_dir / f"predictions-{role}.json",
        times_ms,
    )


def score_lane_outputs(
    outputs: dict[str, np.ndarray],
    split: LaneSplit,
    geometry: LaneGeometry,
    out_file: Path | None = None,
    times_ms: list[float] | None = None,
) -> TaskScore:
    """TuSimple accuracy (percent), FP, FN of per-sample outputs ``loc_row`` / ``exist_row`` (sample i at
    index i); writes the predictions to ``out_file`` when given, with ``times_ms`` as their run_time.

    ``outputs`` may cover only the first n samples of ``split`` (a partial emulated run): those are scored.
    """
    n = len(outputs["loc_row"])
    preds = []
    for i, sample in enumerate(split.samples[:n]):
        xs = decode_rows(np.asarray(outputs["loc_row"][i])[0], np.asarray(outputs["exist_row"][i])[0], geometry)
        preds.append(
            (sample.raw_file, lanes_for_h_samples(xs, geometry, sample.h_samples), times_ms[i] if times_ms else 0.0)
        )
    if out_file is not None:
        write_predictions(out_file, preds)
    result = score([{"raw_file": r, "lanes": lanes, "run_time": rt} for r, lanes, rt in preds], split.labels_json()[:n])
    return TaskScore(result.accuracy * 100, {"fp": result.fp, "fn": result.fn}, out_file)

"""Sequential vs pipelined streaming through a split model: same outputs, same order, finite figures."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from edgematrix.backends.base import create_runner
from edgematrix.backends.split.runner import SplitRunner
from edgematrix.errors import BackendError, EdgeMatrixError
from edgematrix.export.split import split_model
from edgematrix.measure.pipeline import (
    PipelineReport,
    StreamRun,
    measure_pipeline,
    run_pipelined,
    run_sequential,
)
from split_models import OUTPUTS, exported, frames


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_model(exported("two_features").path, tmp_path_factory.mktemp("split"), heads=list(OUTPUTS)).manifest


@pytest.fixture(scope="module")
def runner(manifest: Path) -> Iterator[SplitRunner]:
    with create_runner("split", path=manifest, threads=1) as r:
        assert isinstance(r, SplitRunner)
        yield r


@pytest.mark.parametrize("queue_depth", [1, 2])
def test_pipelined_returns_the_sequential_outputs_in_frame_order(runner: SplitRunner, queue_depth: int) -> None:
    stream = frames(9, seed=4)
    seq, seq_run = run_sequential(runner, stream)
    pipe, pipe_run = run_pipelined(runner, stream, queue_depth=queue_depth)
    assert len(pipe) == len(seq) == 9
    for a, b in zip(seq, pipe, strict=True):
        assert list(a) == list(b) == list(OUTPUTS)
        for name in OUTPUTS:
            np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(seq[0]["seg"], seq[1]["seg"])  # frames differ, so order is really checked
    for run in (seq_run, pipe_run):
        assert run.frames == 9 and math.isfinite(run.fps) and run.fps > 0
        assert run.stage_s["encoder"] > 0 and run.stage_s["heads"] > 0


def test_measure_pipeline_reports_finite_fps_stage_times_and_a_bottleneck(runner: SplitRunner, manifest: Path) -> None:
    seen: list[int] = []
    with create_runner("onnxruntime", path=exported("two_features").path, intra_op_threads=1) as whole:
        report = measure_pipeline(
            runner,
            frames(6),
            whole=whole,
            rounds=2,
            warmup_frames=2,
            progress=lambda r, runs: seen.append(r) if set(runs) == {"sequential", "pipelined", "whole"} else None,
        )
    assert seen == [1, 2]
    assert report.rounds == 2 and report.frames == 6
    assert all(len(runs) == 2 for runs in report.runs.values())
    for value in (report.sequential_fps, report.pipelined_fps, report.whole_fps, report.speedup):
        assert value is not None and math.isfinite(value) and value > 0
    assert report.bottleneck in ("encoder", "heads")
    assert 1.0 <= report.balance_bound <= 2.0
    summary = report.summary()
    assert summary["pipeline_speedup"] == report.speedup
    assert {"sequential_encoder_ms", "pipelined_heads_ms", "whole_fps", "pipelined_vs_whole", "bottleneck"} <= set(
        summary
    )
    assert "capped at" in report.reason()


def test_the_bound_follows_the_stage_balance() -> None:
    def run(enc: float, heads: float, wall: float) -> StreamRun:
        return StreamRun(wall_s=wall, stage_s={"encoder": enc, "heads": heads}, frames=10)

    # encoder 80 ms + heads 20 ms per 10 frames sequential; inside the pipeline 90 / 25 ms, 95 ms wall
    report = PipelineReport(
        frames=10,
        rounds=1,
        queue_depth=1,
        runs={"sequential": [run(0.08, 0.02, 0.1)], "pipelined": [run(0.09, 0.025, 0.095)]},
    )
    assert report.balance_bound == pytest.approx(1.25)  # 1 / 0.8
    assert report.contention_bound == pytest.approx(0.10 / 0.09)
    assert report.speedup == pytest.approx(0.1 / 0.095)
    paired = PipelineReport(
        frames=10,
        rounds=3,
        queue_depth=1,
        runs={
            "sequential": [run(0.08, 0.02, w) for w in (0.1, 0.2, 0.1)],  # round 2: the machine was busy ...
            "pipelined": [run(0.09, 0.025, w) for w in (0.08, 0.16, 0.1)],  # ... for both modes
        },
    )
    assert paired.speedup == pytest.approx(1.25)  # median of the per-round ratios 1.25, 1.25, 1.0
    assert report.bottleneck == "encoder"
    assert report.overlap_slowdown == pytest.approx(0.115 / 0.10)
    assert report.pipelined_frame_ms == pytest.approx(9.5)
    assert report.handoff_overhead == pytest.approx(9.5 / 9.0)
    assert "the encoder stage is 80% of the frame, so a 2-stage pipeline is capped at 1/0.80 = 1.25x" in report.reason()


class _Failing:
    """A staged runner whose heads fail on the third frame."""

    name = "failing"
    is_active = True

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def run_encoder(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"f": feed["input"]}

    def run_heads(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.calls += 1
            if self.calls == 3:
                raise BackendError("head failed on frame 3")
        return {"y": features["f"]}


def test_a_failing_stage_is_reraised_without_hanging() -> None:
    with pytest.raises(BackendError, match="head failed on frame 3"):
        run_pipelined(_Failing(), frames(20), queue_depth=1)


def test_bad_arguments_are_refused(runner: SplitRunner, manifest: Path) -> None:
    with pytest.raises(EdgeMatrixError, match="queue_depth must be >= 1"):
        run_pipelined(runner, frames(2), queue_depth=0)
    with pytest.raises(EdgeMatrixError, match="frames is empty"):
        measure_pipeline(runner, [])
    with pytest.raises(BackendError, match="is not active"):
        measure_pipeline(create_runner("split", path=manifest), frames(2))  # type: ignore[arg-type]

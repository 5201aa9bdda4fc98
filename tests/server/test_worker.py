"""The measurement worker in-process: self-timing runners, error classification, orphan exit."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgematrix.backends.base import Runner, TensorMeta, backends
from edgematrix.measure.meter import LatencyReport
from edgematrix.server import worker
from edgematrix.server.options import WorkOrder

SELF_TIMED = "selftimed-test"


class SelfTimedRunner(Runner):
    """Like the tensorrt backend: no numpy inference, times itself and returns a LatencyReport."""

    backend_name = SELF_TIMED
    calls: list[dict[str, Any]] = []  # noqa: RUF012 - the test reads what the worker asked for

    def __init__(self, path: Path, *, name: str | None = None) -> None:
        super().__init__(name)

    def activate_impl(self) -> None:
        pass

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        raise AssertionError("a self-timing runner is not asked for input metadata")

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("a self-timing runner is not asked to infer")

    def release_impl(self) -> None:
        pass

    def measure(self, **timing: Any) -> LatencyReport:
        SelfTimedRunner.calls.append(timing)
        samples = (2.0, 1.0, 4.0, 3.0)
        return LatencyReport("x", 0, 0, 0, 0, len(samples), samples_ms=samples)


if SELF_TIMED not in backends:
    backends.register(SELF_TIMED)(SelfTimedRunner)


def _folder(tmp_path: Path, order: WorkOrder, model: bytes) -> Path:
    (tmp_path / worker.ORDER_FILE).write_text(json.dumps(order.as_dict()))
    (tmp_path / f"model{order.model_suffix}").write_bytes(model)
    return tmp_path


def test_self_timing_runner_gets_rounds_and_time_and_its_samples_are_used(tmp_path: Path) -> None:
    config = {"warmup": 0, "min_rounds": 7, "min_time_s": 0.5}
    order = WorkOrder(op="measure", backend=SELF_TIMED, model_suffix=".engine", config=config)
    folder = _folder(tmp_path, order, b"engine bytes")
    assert worker.main([str(folder), str(os.getppid())]) == 0
    result = json.loads((folder / worker.RESULT_FILE).read_text())
    assert SelfTimedRunner.calls[-1] == {"iterations": 7, "duration_s": 0.5}
    assert result["rounds"] == 4 and result["samples_ms"] == pytest.approx([2.0, 1.0, 4.0, 3.0])
    assert result["p50_ms"] == pytest.approx(2.5) and result["mean_ms"] == pytest.approx(2.5)


def test_corrupt_model_is_a_422_with_the_runtimes_message(tmp_path: Path) -> None:
    order = WorkOrder(op="measure", backend="onnxruntime")
    folder = _folder(tmp_path, order, b"\x00garbage")
    assert worker.main([str(folder), str(os.getppid())]) == worker.EXIT_ERROR
    error = json.loads((folder / worker.ERROR_FILE).read_text())
    assert error["status"] == 422 and error["kind"] == "model_rejected"
    assert "ModelError: ONNX Runtime cannot load" in error["message"]


def test_worker_stops_when_its_server_is_gone(tmp_path: Path, relu_model: Path) -> None:
    order = WorkOrder(op="measure", backend="onnxruntime", config={"warmup": 0, "min_rounds": 5, "min_time_s": 0.0})
    folder = _folder(tmp_path, order, relu_model.read_bytes())
    not_my_parent = os.getppid() + 1_000_000
    assert worker.main([str(folder), str(not_my_parent)]) == worker.EXIT_ORPHANED
    assert not (folder / worker.RESULT_FILE).exists()

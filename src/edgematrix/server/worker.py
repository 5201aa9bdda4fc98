"""The measurement worker: one child process per request, so a timeout can kill it and a crashing
runtime (a segfault in a vendor library) cannot take the server down.

``python -m edgematrix.server.worker DIR`` reads ``DIR/order.json`` (a validated
:class:`~edgematrix.server.options.WorkOrder`) and the model file ``DIR/model<suffix>``, and writes
``DIR/result.json`` (+ ``DIR/outputs.npz`` for a bundle run) or ``DIR/error.json``
(``{"status": http status, "kind": ..., "message": ...}``). It exits by itself when the server that
started it is gone (checked every timed round).

A runner with its own ``measure(iterations=..., duration_s=...) -> LatencyReport`` (the ``tensorrt``
backend, which times engines with trtexec and runs no numpy feeds) is timed that way: ``min_rounds``
and ``min_time_s`` of the request become its iterations and duration, and its per-inference samples
go through the same statistics. Every other runner is timed by :func:`~edgematrix.measure.harness.measure_one`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from edgematrix.backends.base import create_runner
from edgematrix.errors import BackendError, EdgeMatrixError, ModelError, UnknownNameError, WireFormatError
from edgematrix.measure.harness import LatencyConfig, LatencySamples, measure_one
from edgematrix.measure.meter import LatencyReport, random_feed
from edgematrix.server.device import dynamic_facts
from edgematrix.server.options import DEFAULT_CONFIG
from edgematrix.server.wire import arrays_to_npz, npz_to_arrays

ORDER_FILE, RESULT_FILE, ERROR_FILE, BUNDLE_FILE, OUTPUTS_FILE = (
    "order.json",
    "result.json",
    "error.json",
    "bundle.npz",
    "outputs.npz",
)
EXIT_ERROR = 3  # the worker wrote error.json
EXIT_ORPHANED = 4  # the server went away


class _Orphaned(Exception):
    pass


def _check_parent(parent: int) -> None:
    if os.getppid() != parent:
        raise _Orphaned


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def _self_timed_samples(report: Any) -> LatencySamples:
    """Per-inference samples of a runner that times itself and returns a ``LatencyReport``."""
    if not isinstance(report, LatencyReport) or not report.samples_ms:
        raise BackendError(
            f"the runner's own measure() returned {type(report).__name__} without per-inference samples; "
            "a self-timing runner must return a LatencyReport with samples_ms"
        )
    return LatencySamples("runner", [ms * 1e-3 for ms in report.samples_ms])


def _measure(order: dict[str, Any], model: Path, parent: int, cap_s: float) -> dict[str, Any]:
    merged = {**dataclasses.asdict(LatencyConfig()), **DEFAULT_CONFIG, **order["config"]}
    merged["max_time_s"] = max(merged["min_time_s"], min(merged["max_time_s"], cap_s))
    merged["min_time_s"] = min(merged["min_time_s"], merged["max_time_s"])
    cfg = LatencyConfig(**merged)
    t0 = time.perf_counter()
    with create_runner(order["backend"], path=model, **order["runner_options"]) as runner:
        load_s = time.perf_counter() - t0
        self_timed = getattr(runner, "measure", None)
        if callable(self_timed):  # the runner times itself (tensorrt: trtexec --exportTimes)
            samples = _self_timed_samples(self_timed(iterations=cfg.min_rounds, duration_s=cfg.min_time_s))
        else:
            feed = random_feed(dict(runner.input_metadata()), seed=order["seed"])
            samples = measure_one(runner, feed, cfg, progress=lambda _r, _t: _check_parent(parent))
        facts = runner.facts()
    facts.pop("model", None)  # a temporary path on the server, meaningless to the client
    result: dict[str, Any] = {"backend": order["backend"], **samples.summary(), "load_s": load_s}
    result["samples_ms"] = [s * 1e3 for s in samples.samples_s] if order["return_samples"] else []
    result["facts"] = {**dynamic_facts(), **facts}
    result["config"] = {k: getattr(cfg, k) for k in merged}
    return result


def _run_bundle(order: dict[str, Any], model: Path, folder: Path, parent: int) -> dict[str, Any]:
    from edgematrix.server.bundle import stack_outputs

    inputs = npz_to_arrays((folder / BUNDLE_FILE).read_bytes(), what="bundle")
    counts = {n: a.shape[0] if a.ndim else 0 for n, a in inputs.items()}
    if len(set(counts.values())) != 1:
        raise WireFormatError(f"bundle inputs disagree on the number of samples (first axis): {counts}")
    samples = next(iter(counts.values())) if counts else 0
    t0 = time.perf_counter()
    per_sample = []
    with create_runner(order["backend"], path=model, **order["runner_options"]) as runner:
        for i in range(samples):
            _check_parent(parent)
            per_sample.append(runner.infer({n: inputs[n][i] for n in inputs}))
        facts = runner.facts()
    facts.pop("model", None)
    outputs = stack_outputs(per_sample)
    (folder / OUTPUTS_FILE).write_bytes(arrays_to_npz(outputs))
    return {"samples": samples, "run_s": time.perf_counter() - t0, "facts": {**dynamic_facts(), **facts}}


def _status_for(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, ModelError):
        return 422, "model_rejected"
    if isinstance(exc, BackendError):
        return 422, "runtime_error"
    if isinstance(exc, UnknownNameError | WireFormatError | TypeError | ValueError):
        return 400, "bad_request"
    if isinstance(exc, EdgeMatrixError):
        return 400, "bad_request"
    return 500, "internal_error"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0])
    parent = int(args[1]) if len(args) > 1 else os.getppid()
    cap_s = float(args[2]) if len(args) > 2 else 120.0
    order = json.loads((folder / ORDER_FILE).read_text(encoding="utf-8"))
    model = folder / f"model{order['model_suffix']}"
    try:
        if order["op"] == "measure":
            result = _measure(order, model, parent, cap_s)
        else:
            result = _run_bundle(order, model, folder, parent)
    except _Orphaned:
        return EXIT_ORPHANED
    except Exception as exc:
        status, kind = _status_for(exc)
        message = f"{type(exc).__name__}: {exc}"
        if status == 500:
            message += "\n" + "".join(traceback.format_exception(exc)[-6:])
        _write_json(folder / ERROR_FILE, {"status": status, "kind": kind, "message": message})
        return EXIT_ERROR
    _write_json(folder / RESULT_FILE, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

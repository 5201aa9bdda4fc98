"""The measurement worker: one child process per request, so a timeout can kill it and a crashing
runtime (a segfault in a vendor library) cannot take the server down.

``python -m edgematrix.server.worker DIR`` reads ``DIR/order.json`` (a validated
:class:`~edgematrix.server.options.WorkOrder`) and the model file ``DIR/model<suffix>`` (``evaluate``:
``DIR/model-<i><suffix>``, one per model), and writes ``DIR/result.json`` (+ ``DIR/outputs.npz`` for a
bundle run, ``DIR/outputs-<i>.npz`` per model for an evaluation) or ``DIR/error.json``
(``{"status": http status, "kind": ..., "message": ...}``). It exits by itself when the server that
started it is gone (checked every sample and every timed round).

An evaluation (``/v1/evaluate``) loads one runner per model (released together, also when a later one
fails to load), runs every bundle sample through every model, then measures all of them with
:func:`~edgematrix.measure.harness.measure_interleaved` on the bundle's first sample, in the time the
outputs left of the worker's.

A runner with its own ``measure(iterations=..., duration_s=...) -> LatencyReport`` (the ``tensorrt``
backend, which times engines with trtexec and runs no numpy feeds) is timed that way: ``min_rounds``
and ``min_time_s`` of the request become its iterations and duration, and its per-inference samples
go through the same statistics. Every other runner is timed by :func:`~edgematrix.measure.harness.measure_one`.

Everything the worker reads comes from a client and is bounded by the order's ``limits`` before it
is allocated: the random feed of ``/v1/measure`` and each bundle sample (``max_input_bytes``), the
outputs of ``/v1/run`` and ``/v1/evaluate`` (``max_response_bytes``, checked after every sample; an
evaluation knows after the first sample whether the bundle's outputs fit). An ONNX model must be
self-contained (external data would make the runtime read files next to it or elsewhere). Errors a
client's model or options cause are 4xx answers with a message; the traceback of anything else goes
to stderr (the server's log), never to the client.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, create_runner
from edgematrix.backends.meter import random_feed
from edgematrix.core.toolchain import current_environment
from edgematrix.errors import BackendError, EdgeMatrixError, ModelError, UnknownNameError, WireFormatError
from edgematrix.measure.harness import LatencyConfig, LatencySamples, measure_interleaved, measure_one
from edgematrix.measure.meter import LatencyReport
from edgematrix.server.device import dynamic_facts
from edgematrix.server.options import DEFAULT_CONFIG, Limits
from edgematrix.server.wire import arrays_to_npz, map_npz, write_npz

ORDER_FILE, RESULT_FILE, ERROR_FILE, BUNDLE_FILE, OUTPUTS_FILE = (
    "order.json",
    "result.json",
    "error.json",
    "bundle.npz",
    "outputs.npz",
)
#: ``evaluate``: the outputs of the i-th model of the order (its role's blob ``outputs.<role>`` in the answer)
EVAL_OUTPUTS_FILE = "outputs-{index}.npz"
#: ``evaluate``: the per-round seconds of every model, ``{role: float64[rounds]}`` (the answer's blob ``samples``;
#: up to [limits] max_rounds per model, too many for the JSON header)
EVAL_SAMPLES_FILE = "samples.npz"
EXIT_ERROR = 3  # the worker wrote error.json
EXIT_ORPHANED = 4  # the server went away


class _Orphaned(Exception):
    pass


class InModel(Exception):
    """An error of one model of an ``evaluate`` order: the client is told which (its role)."""

    def __init__(self, role: str, error: Exception) -> None:
        super().__init__(role)
        self.role, self.error = role, error


class LimitExceeded(EdgeMatrixError):
    """A client's model or bundle needs more than the server's limits allow (answered 413 / 422)."""

    def __init__(self, message: str, status: int = 422, kind: str = "over_limit") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


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
    limits = Limits(**order["limits"])
    t0 = time.perf_counter()
    with create_runner(order["backend"], path=model, **runner_kwargs(order)) as runner:
        load_s = time.perf_counter() - t0
        self_timed = getattr(runner, "measure", None)
        if callable(self_timed):  # the runner times itself (tensorrt: trtexec --exportTimes)
            samples = _self_timed_samples(self_timed(iterations=cfg.min_rounds, duration_s=cfg.min_time_s))
        else:
            metadata = dict(runner.input_metadata())
            check_feed_size(metadata, limits.max_input_bytes)
            feed = random_feed(metadata, seed=order["seed"])
            samples = measure_one(runner, feed, cfg, progress=lambda _r, _t: _check_parent(parent))
        facts = runner.facts()
    facts.pop("model", None)  # a temporary path on the server, meaningless to the client
    result: dict[str, Any] = {"backend": order["backend"], **samples.summary(), "load_s": load_s}
    result["samples_ms"] = [s * 1e3 for s in samples.samples_s] if order["return_samples"] else []
    result["facts"] = {**dynamic_facts(), **facts}
    result["config"] = {k: getattr(cfg, k) for k in merged}
    return result


def _load_bundle(folder: Path, limits: Limits) -> tuple[dict[str, np.ndarray], int]:
    """The bundle's arrays (memory-mapped from its file: a sample is paged in when it is fed; bounded by the
    limits) and its number of samples."""
    inputs = map_npz(
        folder / BUNDLE_FILE,
        max_bytes=limits.max_bundle_bytes,
        what="bundle",
        max_arrays=limits.max_arrays,
        max_ndim=limits.max_ndim + 1,
    )
    counts = {n: a.shape[0] if a.ndim else 0 for n, a in inputs.items()}
    if len(set(counts.values())) != 1:
        raise WireFormatError(f"bundle inputs disagree on the number of samples (first axis): {counts}")
    samples = next(iter(counts.values())) if counts else 0
    per_sample_bytes = sum(a.nbytes // max(1, a.shape[0]) for a in inputs.values())
    if per_sample_bytes > limits.max_input_bytes:
        raise LimitExceeded(
            f"one bundle sample is {per_sample_bytes} bytes of inputs; this server feeds at most "
            f"{limits.max_input_bytes} bytes per inference ([limits] max_input_bytes)",
            status=413,
        )
    return inputs, samples


def _sample(inputs: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """Sample ``index`` of the bundle as a feed: writable C-contiguous copies (the bundle is a read-only map)."""
    return {name: np.array(arr[index], order="C") for name, arr in inputs.items()}


def _run_bundle(order: dict[str, Any], model: Path, folder: Path, parent: int) -> dict[str, Any]:
    from edgematrix.server.bundle import stack_outputs

    limits = Limits(**order["limits"])
    inputs, samples = _load_bundle(folder, limits)
    t0 = time.perf_counter()
    per_sample = []
    returned = 0
    with create_runner(order["backend"], path=model, **runner_kwargs(order)) as runner:
        for i in range(samples):
            _check_parent(parent)
            outputs = runner.infer(_sample(inputs, i))
            returned += sum(np.asarray(v).nbytes for v in outputs.values())
            if returned > limits.max_response_bytes:
                raise LimitExceeded(
                    f"the outputs of samples 0..{i} are already {returned} bytes; this server returns at most "
                    f"{limits.max_response_bytes} bytes per request ([limits] max_response_bytes): send fewer "
                    "samples per request",
                    kind="response_too_large",
                )
            per_sample.append(outputs)
        facts = runner.facts()
    facts.pop("model", None)
    outputs = stack_outputs(per_sample)
    (folder / OUTPUTS_FILE).write_bytes(arrays_to_npz(outputs))
    return {"samples": samples, "run_s": time.perf_counter() - t0, "facts": {**dynamic_facts(), **facts}}


def runner_kwargs(order: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The order's runner options (or ``options``, one model's) as the runner takes them (JSON lists of
    provider pairs become tuples)."""
    kwargs = dict(order["runner_options"] if options is None else options)
    if order["backend"] == "onnxruntime" and "providers" in kwargs:
        kwargs["providers"] = [p if isinstance(p, str) else (p[0], dict(p[1])) for p in kwargs["providers"]]
    return kwargs


# ---------------------------------------------------------------------------------------------
# evaluate: every bundle sample through every model, then the models measured interleaved


class _OutputStore:
    """The outputs of one model, written into arrays of ``capacity`` samples allocated at the first sample."""

    def __init__(self, role: str, capacity: int) -> None:
        self.role, self.capacity = role, capacity
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, index: int, outputs: Mapping[str, np.ndarray]) -> None:
        if index == 0:
            self.arrays = {
                name: np.empty((self.capacity, *np.shape(v)), np.asarray(v).dtype) for name, v in outputs.items()
            }
        if list(outputs) != list(self.arrays):
            raise WireFormatError(
                f"model {self.role!r}: sample {index} gave outputs {list(outputs)}; sample 0 gave {list(self.arrays)}"
            )
        for name, value in outputs.items():
            arr = np.asarray(value)
            if arr.shape != self.arrays[name].shape[1:]:
                raise WireFormatError(
                    f"model {self.role!r}: output {name!r} of sample {index} has shape {list(arr.shape)}; sample 0's "
                    f"has {list(self.arrays[name].shape[1:])} (every sample's outputs must stack)"
                )
            self.arrays[name][index] = arr

    def first(self, count: int) -> dict[str, np.ndarray]:
        return {name: arr[:count] for name, arr in self.arrays.items()}


def _run_samples(
    runners: Mapping[str, Runner],
    inputs: Mapping[str, np.ndarray],
    samples: int,
    *,
    max_bytes: int,
    partial: bool,
    parent: int,
    end: float,
    reserve: Callable[[float], float],
) -> tuple[dict[str, _OutputStore], int, float]:
    """Run every sample through every runner (sample by sample); returns the outputs, how many samples ran
    and the typical seconds of one sample through all of them (about one harness round).

    The outputs are bounded by ``max_bytes``: the first sample tells how many bytes one sample's
    outputs take; a bundle whose outputs would not fit is refused right then (or, with ``partial``,
    the samples that fit are run and the rest left to another request). With ``partial`` the samples
    also stop where the next one would leave less than ``reserve(seconds of one sample)`` before
    ``end`` (``time.monotonic``): the time the measurement after them needs.
    """
    stores: dict[str, _OutputStore] = {}
    done = total = capacity = 0
    took: list[float] = []
    for i in range(samples):
        _check_parent(parent)
        if partial and took and time.monotonic() + took[-1] + reserve(_typical(took)) > end:
            break
        t0 = time.monotonic()
        feed = _sample(inputs, i)
        results = {role: runner.infer(feed) for role, runner in runners.items()}
        took.append(time.monotonic() - t0)
        size = sum(np.asarray(v).nbytes for outputs in results.values() for v in outputs.values())
        if i == 0:
            fit = max_bytes // size if size else samples
            limit = f"this server answers at most {max_bytes} bytes per request ([limits] max_response_bytes)"
            if fit < 1:
                raise LimitExceeded(
                    f"the outputs of one sample through {len(runners)} model(s) are {size} bytes; {limit}: "
                    "raise the limit in the server's configuration",
                    kind="response_too_large",
                )
            if fit < samples and not partial:
                raise LimitExceeded(
                    f"the outputs of this bundle's {samples} samples through {len(runners)} model(s) would be "
                    f"{size * samples} bytes ({size} bytes per sample); {limit}: send at most {fit} sample(s) per "
                    "request (RemoteSession.evaluate splits a bundle by itself), or raise the limit",
                    kind="response_too_large",
                )
            capacity = min(samples, fit)
            stores = {role: _OutputStore(role, capacity) for role in runners}
        if total + size > max_bytes or i >= capacity:
            if partial:
                break
            raise LimitExceeded(
                f"the outputs of samples 0..{i} are {total + size} bytes; this server answers at most {max_bytes} "
                "bytes per request ([limits] max_response_bytes): send fewer samples per request",
                kind="response_too_large",
            )
        for role, outputs in results.items():
            stores[role].put(i, outputs)
        total += size
        done = i + 1
    return stores, done, _typical(took)


def _typical(took: list[float]) -> float:
    """Seconds of one sample: the median, without the first sample (lazy initialization) once there are others."""
    return float(np.median(took[1:] if len(took) > 1 else took))


def measurement_need_s(cfg: LatencyConfig, round_s: float) -> float:
    """About how long the harness runs with rounds of ``round_s``: its warm-up, then rounds until its stop rule."""
    timed = min(cfg.max_time_s, cfg.max_rounds * round_s, max(cfg.min_time_s, cfg.min_rounds * round_s))
    return cfg.warmup * round_s + timed


def _capped_config(order: Mapping[str, Any], remaining_s: float) -> LatencyConfig:
    """The order's harness settings with the time cut to what is left of the worker's time (the outputs ran first)."""
    merged = {**dataclasses.asdict(LatencyConfig()), **DEFAULT_CONFIG, **order["config"]}
    merged["max_time_s"] = min(merged["max_time_s"], max(0.0, remaining_s))
    merged["min_time_s"] = min(merged["min_time_s"], merged["max_time_s"])
    return LatencyConfig(**merged)


def _plain_facts(runner: Runner) -> dict[str, Fact]:
    facts = runner.facts()
    facts.pop("model", None)  # a temporary path on the server, meaningless to the client
    return facts


def _evaluate(order: dict[str, Any], folder: Path, parent: int, cap_s: float) -> dict[str, Any]:
    """Every bundle sample through every model of the order (outputs), then the models measured interleaved
    on the bundle's first sample. Writes one outputs file per model; returns the answer's meta."""
    end = time.monotonic() + cap_s
    limits = Limits(**order["limits"])
    inputs, samples = _load_bundle(folder, limits)
    if samples < 1:
        raise WireFormatError("the bundle has no samples; send at least one (the first is the latency feed)")
    roles = [m["role"] for m in order["models"]]
    load_s: dict[str, float] = {}
    with ExitStack() as stack:  # every runner entered is released, also when a later one fails to load
        runners: dict[str, Runner] = {}
        for model in order["models"]:
            t0 = time.perf_counter()
            try:
                runner = create_runner(
                    order["backend"],
                    path=folder / model["file"],
                    name=model["role"],
                    **runner_kwargs(order, model["runner_options"]),
                )
                stack.enter_context(runner)
            except Exception as exc:
                raise InModel(model["role"], exc) from exc
            load_s[model["role"]] = time.perf_counter() - t0
            runners[model["role"]] = runner
        wanted = _capped_config(order, cap_s) if order["measure"] else None
        t0 = time.perf_counter()
        stores, done, round_s = _run_samples(
            runners,
            inputs,
            samples,
            max_bytes=limits.max_response_bytes,
            partial=order["partial"],
            parent=parent,
            end=end,
            # room for the measurement (half as much again, and a second) or, outputs only, for the answer
            reserve=lambda one_s: 1.5 * measurement_need_s(wanted, one_s) + 1.0 if wanted else 1.0,
        )
        run_s = time.perf_counter() - t0
        for index, role in enumerate(roles):
            write_npz(folder / EVAL_OUTPUTS_FILE.format(index=index), stores[role].first(done))
        del stores
        latency: dict[str, Any] | None = None
        contention: dict[str, Any] | None = None
        if wanted is not None:
            left_s, need_s = end - time.monotonic(), measurement_need_s(wanted, round_s)
            if left_s < need_s:
                raise LimitExceeded(
                    f"the outputs of {done} sample(s) took {run_s:.1f} s and left {max(0.0, left_s):.1f} s of this "
                    f"worker's {cap_s:.0f} s (0.8 x the server's --timeout-s) for a measurement that needs about "
                    f"{need_s:.1f} s (warm-up, then min_rounds / min_time_s of {round_s * 1e3:.1f} ms rounds): send "
                    "fewer samples per request (with partial=true the server stops the outputs in time), ask for a "
                    "shorter measurement, or start the server with a larger --timeout-s",
                    status=504,
                    kind="timeout",
                )
            cfg = _capped_config(order, left_s)
            feed = _sample(inputs, 0)
            measured = measure_interleaved(runners, feed, cfg, progress=lambda _r, _t: _check_parent(parent))
            write_npz(
                folder / EVAL_SAMPLES_FILE,
                {role: np.asarray(measured[role].samples_s, np.float64) for role in roles},
            )
            latency = {
                "config": dataclasses.asdict(cfg),
                "feed_sample": 0,
                "order": "alternating",
                "rounds": measured[roles[0]].rounds,
                "summary": {role: measured[role].summary() for role in roles},
            }
            contention = measured.contention.as_dict()
        facts = {role: _plain_facts(runners[role]) for role in roles}
    return {
        "backend": order["backend"],
        "roles": roles,
        "precisions": {m["role"]: m["precision"] for m in order["models"]},
        "samples": done,
        "bundle_samples": samples,
        "complete": done == samples,
        "load_s": load_s,
        "run_s": run_s,
        "latency": latency,
        "contention": contention,
        "facts": facts,
        "device": dynamic_facts(),  # clocks, power mode and temperatures right after the timed rounds
        "environment": current_environment(),
    }


def check_feed_size(metadata: Mapping[str, Any], max_bytes: int) -> None:
    """Refuse a model whose inputs (dynamic sizes fed as 1) need more than ``max_bytes`` of random feed."""
    total = 0
    for name, meta in metadata.items():
        shape = [d if isinstance(d, int) and d >= 0 else 1 for d in meta.shape]
        nbytes = math.prod(shape) * np.dtype(meta.dtype).itemsize
        total += nbytes
        if total > max_bytes:
            raise LimitExceeded(
                f"the model's input {name!r} is {np.dtype(meta.dtype).name}{list(meta.shape)} ({nbytes} bytes); "
                f"this server feeds at most {max_bytes} bytes per inference ([limits] max_input_bytes)",
                status=413,
            )


def check_self_contained(model: Path) -> None:
    """Refuse an ONNX model that keeps tensors in external files (the runtime would open paths it names)."""
    if model.suffix != ".onnx":
        return
    try:
        import onnx
    except ImportError:  # no onnx on this board: ONNX Runtime's own checks apply
        return
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # not parseable: the runtime refuses it with its own message (422)
        return
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelError(
                    f"initializer {tensor.name!r} keeps its data in an external file; the server runs "
                    "self-contained models only (save with onnx.save(model, path, save_as_external_data=False))"
                )
        for node in graph.node:
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
                if attr.HasField("t") and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    raise ModelError(f"node {node.name!r} has an attribute tensor in an external file; refused")


def _limit_memory(megabytes: int | None) -> None:
    if megabytes is None:
        return
    import resource

    limit = megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _status_for(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, LimitExceeded):
        return exc.status, exc.kind
    if isinstance(exc, MemoryError):
        return 422, "out_of_memory"
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
    order.setdefault("limits", Limits().as_dict())
    model = folder / f"model{order['model_suffix']}"
    try:
        _limit_memory(order.get("memory_mb"))
        if order["op"] == "evaluate":
            for entry in order["models"]:
                try:
                    check_self_contained(folder / entry["file"])
                except ModelError as exc:
                    raise InModel(entry["role"], exc) from exc
            result = _evaluate(order, folder, parent, cap_s)
        elif order["op"] == "measure":
            check_self_contained(model)
            result = _measure(order, model, parent, cap_s)
        else:
            check_self_contained(model)
            result = _run_bundle(order, model, folder, parent)
    except _Orphaned:
        return EXIT_ORPHANED
    except Exception as caught:
        error, where = (caught.error, f"model {caught.role!r}: ") if isinstance(caught, InModel) else (caught, "")
        status, kind = _status_for(error)
        message = f"{where}{type(error).__name__}: {error}"
        if status == 500:  # a bug: the traceback goes to the server's log, not to the client
            traceback.print_exception(error, file=sys.stderr)
            message = f"{type(error).__name__} in the worker (a bug of edgematrix; the server's log has the traceback)"
        elif isinstance(error, MemoryError):
            message = "the model needed more memory than this worker may use (worker_memory_mb / the board's RAM)"
        _write_json(folder / ERROR_FILE, {"status": status, "kind": kind, "message": message[:8000]})
        return EXIT_ERROR
    _write_json(folder / RESULT_FILE, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU facts (NVML) and CUDA-event timing, interleaved like :mod:`edgematrix.measure.harness`.

What is measured
----------------

:func:`measure_cuda_interleaved` times callables that *enqueue* GPU work (``runner.infer_device``,
a CUDA-graph replay, a compiled model). Each round calls every callable once, the order
alternating every round (AB, BA, ...), exactly like :func:`~edgematrix.measure.harness.measure_interleaved`.
Around each call::

    start.record()                 # CUDA event on the current stream
    h0 = perf_counter_ns()
    fn()                           # enqueues kernels; may return before they ran
    h1 = perf_counter_ns()
    end.record()

and after the round's last call **one** ``torch.cuda.synchronize()`` (not one per call), after
which every pair's ``start.elapsed_time(end)`` is read. Two numbers per call:

- **GPU time** (the returned :class:`LatencySamples`): the time on the stream between the two
  events, i.e. from when the GPU reached the start marker until it finished the call's last
  operation. When the host enqueues faster than the GPU runs (GPU-bound), this is the kernels'
  time. When the GPU waits for the host to launch the next kernel (launch-bound, small batches in
  eager mode), the waiting gaps are inside the interval too: it is the latency a caller of this
  callable sees on the device, which is what a launch-overhead optimisation (CUDA graphs,
  compilation) reduces. A call in a round may start on the GPU only when the previous call's work
  has finished (one stream), so the calls of one round do not overlap each other.
- **host time** (``result.host``): the wall time the calling thread spent inside ``fn()`` (the
  event records are outside it). For an asynchronous call this is the enqueue (launch) cost, and it
  overlaps with GPU execution: ``host < GPU`` means GPU-bound, ``host ≈ GPU`` means launch-bound.
  For a call that ends with a host sync (``runner.infer`` returning numpy) the host time includes
  waiting for the GPU, and ``host - GPU`` is the host-side overhead not overlapped with the GPU
  (Python, argument checks, the part of a pageable copy the host does itself).

Synchronisation rules: the warm-up ends with one device synchronize (pending warm-up work must not
land in the first timed interval); each round ends with one device synchronize (events can only be
read once completed, and it bounds how far the host runs ahead). Nothing else synchronizes: a
``synchronize`` per call would add its own latency to the host time and idle the GPU between calls.

:func:`bare_cuda_event_loop` is the textbook loop (record, call, record, ``end.synchronize()``)
with no bookkeeping; comparing its p50 with the harness's p50 for the same callable shows the
harness adds nothing to the GPU interval.

``timer=`` takes :class:`HostEventTimer` instead of CUDA events: the same loop on the host clock,
for CPU smoke runs and tests of the loop itself (it measures host wall time, not GPU time).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edgematrix.errors import BackendError, EdgeMatrixError
from edgematrix.measure.harness import LatencyConfig, LatencySamples, Progress, enough_rounds, gc_paused

GpuFact = str | int | float
_DEFAULT_CONFIG = LatencyConfig()  # frozen, so a shared default is safe

# -- CUDA-event timing -------------------------------------------------------------------------


class TimingEvent(Protocol):
    def record(self) -> None: ...

    def elapsed_time(self, end: Any) -> float:
        """Milliseconds from this event to ``end`` (both completed)."""
        ...


class EventTimer(Protocol):
    """Where timing events come from and how the host waits for them."""

    name: str

    def event(self) -> TimingEvent: ...

    def synchronize(self) -> None: ...


def require_cuda(what: str) -> Any:
    """torch, when it sees a CUDA device; else :class:`BackendError` naming what is missing."""
    try:
        import torch
    except ImportError as exc:  # torch is a base dependency; a broken install lands here
        raise BackendError(f"{what} needs torch with CUDA; importing torch failed: {exc}") from None
    if not torch.cuda.is_available():
        raise BackendError(
            f"{what} needs a CUDA device, but torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda or 'none, a CPU-only build'}) reports torch.cuda.is_available() == False. "
            "Run it on a host with an NVIDIA GPU and a CUDA build of torch, or time host wall clock "
            "with edgematrix.measure.harness.measure_interleaved (or timer=HostEventTimer())."
        )
    return torch


class CudaEventTimer:
    """``torch.cuda.Event(enable_timing=True)`` on the current stream; ``synchronize`` = device sync."""

    name = "cuda_event"

    def __init__(self, device: Any = None) -> None:
        self._torch = require_cuda("CUDA-event timing")
        self._device = device

    def event(self) -> TimingEvent:
        return self._torch.cuda.Event(enable_timing=True)

    def synchronize(self) -> None:
        # Device-wide: also covers work a callable put on another stream of this device.
        self._torch.cuda.synchronize(self._device)

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return self._torch.cuda.device(self._device) if self._device is not None else contextlib.nullcontext()


class _HostEvent:
    __slots__ = ("t_ns",)

    def __init__(self) -> None:
        self.t_ns = 0

    def record(self) -> None:
        self.t_ns = time.perf_counter_ns()

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.t_ns - self.t_ns) * 1e-6


class HostEventTimer:
    """Events that read the host clock at ``record()``: the same loop without a GPU (CPU smoke runs,
    tests). It measures host wall time, never GPU time; results say ``timer = "host"``."""

    name = "host"

    def __init__(self) -> None:
        self.synchronize_calls = 0

    def event(self) -> TimingEvent:
        return _HostEvent()

    def synchronize(self) -> None:
        self.synchronize_calls += 1

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class CudaTimings(dict[str, LatencySamples]):
    """GPU time per callable (seconds per call), plus ``host``: the host wall time of the same calls.

    A plain ``dict[str, LatencySamples]`` of the GPU times, so code written for
    :func:`~edgematrix.measure.harness.measure_interleaved` reads it unchanged.
    """

    def __init__(self, gpu: Mapping[str, LatencySamples], host: Mapping[str, LatencySamples], timer: str) -> None:
        super().__init__(gpu)
        self.host: dict[str, LatencySamples] = dict(host)
        self.timer = timer
        self.synchronizations = 0

    @property
    def rounds(self) -> int:
        return min((s.rounds for s in self.values()), default=0)

    def host_facts(self, key: str) -> dict[str, str | float | int]:
        """The timing of ``key`` beside its GPU samples, as plain facts: the timer, the host time of the
        same calls (p50 / p90, ms: the enqueue cost of an asynchronous call) and the round count."""
        host = self.host[key]
        return {
            "timer": self.timer,
            "host_p50_ms": round(host.p50_ms, 4),
            "host_p90_ms": round(host.p90_ms, 4),
            "timed_rounds": int(self[key].rounds),
        }


def measure_cuda_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    config: LatencyConfig = _DEFAULT_CONFIG,
    progress: Progress | None = None,
    *,
    timer: EventTimer | None = None,
) -> CudaTimings:
    """Time each callable with a CUDA-event pair per call, in interleaved rounds (see the module doc).

    ``fns`` maps a name to a zero-argument callable that enqueues the work (it must not need a
    host sync to be correct; it may sync, which the host time then shows). Warm-up: ``config.warmup``
    calls per callable, one callable at a time, then one synchronize. Stops like the host harness:
    once ``min_rounds`` and ``min_time_s`` are both reached, or at ``max_rounds`` / ``max_time_s``
    (host clock since the first timed round). Raises :class:`BackendError` without CUDA unless a
    ``timer`` (e.g. :class:`HostEventTimer`) is given.
    """
    if not fns:
        raise EdgeMatrixError("measure_cuda_interleaved needs at least one callable")
    bad = [k for k, f in fns.items() if not callable(f)]
    if bad:
        raise EdgeMatrixError(f"measure_cuda_interleaved: {bad!r} are not callables (pass a zero-argument function)")
    timer = timer if timer is not None else CudaEventTimer()
    scope = getattr(timer, "scope", contextlib.nullcontext)
    with scope():
        return _measure_events(fns, config, timer, progress)


def _measure_events(
    fns: Mapping[str, Callable[[], Any]], config: LatencyConfig, timer: EventTimer, progress: Progress | None
) -> CudaTimings:
    order = list(fns)
    gpu = {key: LatencySamples(key) for key in order}
    host = {key: LatencySamples(key) for key in order}
    # One event pair per callable, reused every round: a round is read completely before the next
    # one records over it (the round's synchronize comes first).
    events = {key: (timer.event(), timer.event()) for key in order}
    syncs = 0

    for key in order:  # warm-up, not timed
        fn = fns[key]
        for _ in range(config.warmup):
            fn()
    timer.synchronize()  # warm-up work must not land inside the first timed interval
    syncs += 1

    with gc_paused(config):
        clock = time.perf_counter_ns
        start = clock()
        rounds = 0
        while True:
            round_order = order if rounds % 2 == 0 else order[::-1]
            host_ns: list[int] = []
            for key in round_order:
                fn = fns[key]
                ev_start, ev_end = events[key]
                ev_start.record()
                h0 = clock()
                fn()
                h1 = clock()
                ev_end.record()
                host_ns.append(h1 - h0)
            timer.synchronize()  # the round's only host-device sync: all its events are complete after it
            syncs += 1
            for key, ns in zip(round_order, host_ns, strict=True):
                ev_start, ev_end = events[key]
                gpu[key].samples_s.append(ev_start.elapsed_time(ev_end) * 1e-3)
                host[key].samples_s.append(ns * 1e-9)
            rounds += 1
            elapsed = (clock() - start) * 1e-9
            if progress is not None:
                progress(rounds, elapsed)
            if enough_rounds(config, rounds, elapsed):
                break

    result = CudaTimings(gpu, host, timer.name)
    result.synchronizations = syncs
    return result


def bare_cuda_event_loop(
    fn: Callable[[], Any], rounds: int, *, warmup: int = 10, timer: EventTimer | None = None
) -> list[float]:
    """The reference loop: ``start.record(); fn(); end.record(); end.synchronize()`` per round.

    Returns the GPU time of each call in seconds. No interleaving, no host clock, no bookkeeping
    between the events: what a hand-written benchmark measures. Used to check that
    :func:`measure_cuda_interleaved` adds no overhead to the GPU interval.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    timer = timer if timer is not None else CudaEventTimer()
    scope = getattr(timer, "scope", contextlib.nullcontext)
    with scope():
        start, end = timer.event(), timer.event()
        for _ in range(warmup):
            fn()
        timer.synchronize()
        # CUDA events have their own synchronize (waits for that event only); the host stand-in not.
        wait = getattr(end, "synchronize", None) or timer.synchronize
        out_ms: list[float] = []
        for _ in range(rounds):
            start.record()
            fn()
            end.record()
            wait()
            out_ms.append(start.elapsed_time(end))
    return [ms * 1e-3 for ms in out_ms]


# -- GPU facts (NVML) ---------------------------------------------------------------------------

#: NVML clock-event ("throttle") reason bits → short names (values fixed by nvml.h).
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
_REASON_APP_CLOCKS = 0x2

#: how ``clocks_locked`` is decided (also written into the facts as ``clocks_locked_rule``)
CLOCKS_LOCKED_RULE = (
    "yes if the application clock target differs from the default application clock for graphics "
    "or memory (nvidia-smi -ac), or if NVML's current clock-event reasons include "
    "ApplicationsClocksSetting (clocks held by -ac / -lgc / -lmc settings); no if these queries "
    "succeeded and neither holds (no evidence of a lock at query time: an idle GPU may hide an "
    "-lgc lock); unknown if neither query is supported"
)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _import_nvml() -> Any:
    with warnings.catch_warnings():  # the old `pynvml` wrapper package warns on import
        warnings.simplefilter("ignore")
        import pynvml

    return pynvml


def _torch_cuda_info(index: int | None) -> tuple[int | None, dict[str, GpuFact], str | None]:
    """(CUDA device index, facts from torch, UUID of that device) without failing."""
    facts: dict[str, GpuFact] = {}
    try:
        import torch
    except ImportError:
        return index, facts, None
    facts["cuda_runtime_version"] = str(torch.version.cuda) if torch.version.cuda else "none"
    uuid: str | None = None
    try:
        if torch.cuda.is_available():
            if index is None:
                index = int(torch.cuda.current_device())
            props = torch.cuda.get_device_properties(index)
            facts["compute_capability"] = f"{props.major}.{props.minor}"
            facts["sm_count"] = int(props.multi_processor_count)
            raw_uuid = getattr(props, "uuid", None)
            if raw_uuid is not None:
                uuid = str(raw_uuid)
                if not uuid.startswith(("GPU-", "MIG-")):
                    uuid = f"GPU-{uuid}"
            if torch.backends.cudnn.is_available():
                facts["cudnn_version"] = int(torch.backends.cudnn.version() or 0)
    except Exception:  # facts are best effort; the caller still gets NVML's view
        pass
    return index, facts, uuid


def gpu_facts(index: int | None = None, *, nvml: Any = None) -> dict[str, GpuFact]:
    """Facts about one NVIDIA GPU as flat plain values (str / int / float), never raising.

    ``index`` is the CUDA device index (default: torch's current device, else 0); the NVML device is
    found by the UUID torch reports for it (CUDA and NVML may number devices differently), else by
    index. Keys: ``gpu`` (name), ``gpu_uuid``, ``driver_version``, ``cuda_driver_version`` (the
    highest CUDA version the driver supports), ``cuda_runtime_version`` (``torch.version.cuda``),
    ``sm_clock_mhz`` / ``sm_clock_max_mhz``, ``mem_clock_mhz`` / ``mem_clock_max_mhz``,
    ``app_graphics_clock_mhz`` / ``default_app_graphics_clock_mhz`` (and memory),
    ``temperature_c``, ``power_limit_w``, ``power_draw_w``, ``persistence_mode``, ``pstate``,
    ``clock_event_reasons``, ``clocks_locked`` (``yes`` / ``no`` / ``unknown``, rule in
    :data:`CLOCKS_LOCKED_RULE`), ``memory_total_mib``. A value NVML does not support is left out and
    its query named in ``nvml_unsupported``. Clocks and temperature are a snapshot at call time.

    Without NVML (no nvidia-ml-py, no driver, no GPU): ``{"gpu": "none", "gpu_none_reason": ...}``.
    ``nvml`` replaces the ``pynvml`` module (tests).
    """
    if nvml is None:
        try:
            nvml = _import_nvml()
        except Exception as exc:
            return {"gpu": "none", "gpu_none_reason": f"nvidia-ml-py (pynvml) is not importable: {exc}"}
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return {"gpu": "none", "gpu_none_reason": f"NVML did not initialise (no NVIDIA driver?): {exc}"}
    try:
        return _gpu_facts(nvml, index)
    except Exception as exc:  # never raise: facts are context, not the measurement
        return {"gpu": "none", "gpu_none_reason": f"NVML query failed: {type(exc).__name__}: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _gpu_facts(nvml: Any, index: int | None) -> dict[str, GpuFact]:
    count = int(nvml.nvmlDeviceGetCount())
    if count == 0:
        return {"gpu": "none", "gpu_none_reason": "NVML sees no GPU"}
    cuda_index, facts, uuid = _torch_cuda_info(index)
    handle = None
    if uuid is not None:
        with contextlib.suppress(Exception):
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid.encode())  # bytes: every pynvml version takes them
    nvml_index = cuda_index if cuda_index is not None else 0
    if handle is None:
        if not 0 <= nvml_index < count:
            return {"gpu": "none", "gpu_none_reason": f"GPU index {nvml_index} out of range: NVML sees {count}"}
        handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)

    out: dict[str, GpuFact] = {"gpu": _text(nvml.nvmlDeviceGetName(handle)), "gpu_count": count}
    unsupported: list[str] = []

    def query(key: str, fn_name: str, *args: Any, convert: Callable[[Any], GpuFact] = int) -> Any:
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            unsupported.append(key or fn_name)
            return None
        try:
            value = convert(fn(*args))
        except Exception:  # NVMLError_NotSupported / NoPermission ...: leave the key out, say so
            unsupported.append(key or fn_name)
            return None
        if key:
            out[key] = value
        return value

    query("gpu_index", "nvmlDeviceGetIndex", handle)
    query("gpu_uuid", "nvmlDeviceGetUUID", handle, convert=_text)
    query("driver_version", "nvmlSystemGetDriverVersion", convert=_text)
    query("nvml_version", "nvmlSystemGetNVMLVersion", convert=_text)
    cuda_drv = query("", "nvmlSystemGetCudaDriverVersion", convert=int)
    if cuda_drv is not None:
        out["cuda_driver_version"] = f"{cuda_drv // 1000}.{(cuda_drv % 1000) // 10}"
    out.update(facts)  # cuda_runtime_version, compute_capability, sm_count, cudnn_version

    sm, mem, graphics = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_CLOCK_GRAPHICS
    query("sm_clock_mhz", "nvmlDeviceGetClockInfo", handle, sm)
    query("sm_clock_max_mhz", "nvmlDeviceGetMaxClockInfo", handle, sm)
    query("mem_clock_mhz", "nvmlDeviceGetClockInfo", handle, mem)
    query("mem_clock_max_mhz", "nvmlDeviceGetMaxClockInfo", handle, mem)
    app = {
        "graphics": query("app_graphics_clock_mhz", "nvmlDeviceGetApplicationsClock", handle, graphics),
        "memory": query("app_mem_clock_mhz", "nvmlDeviceGetApplicationsClock", handle, mem),
    }
    default = {
        "graphics": query("default_app_graphics_clock_mhz", "nvmlDeviceGetDefaultApplicationsClock", handle, graphics),
        "memory": query("default_app_mem_clock_mhz", "nvmlDeviceGetDefaultApplicationsClock", handle, mem),
    }
    temp_sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    query("temperature_c", "nvmlDeviceGetTemperature", handle, temp_sensor)
    query("power_limit_w", "nvmlDeviceGetPowerManagementLimit", handle, convert=lambda mw: round(mw / 1000.0, 1))
    query("power_limit_enforced_w", "nvmlDeviceGetEnforcedPowerLimit", handle, convert=lambda mw: round(mw / 1000.0, 1))
    query("power_draw_w", "nvmlDeviceGetPowerUsage", handle, convert=lambda mw: round(mw / 1000.0, 1))
    query(
        "persistence_mode",
        "nvmlDeviceGetPersistenceMode",
        handle,
        convert=lambda v: "enabled" if int(v) == 1 else "disabled",
    )
    query("pstate", "nvmlDeviceGetPerformanceState", handle, convert=lambda v: f"P{int(v)}")
    query("memory_total_mib", "nvmlDeviceGetMemoryInfo", handle, convert=lambda m: int(m.total) // (1024 * 1024))

    reasons_fn = (
        "nvmlDeviceGetCurrentClocksEventReasons"
        if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
        else "nvmlDeviceGetCurrentClocksThrottleReasons"
    )
    reasons = query("", reasons_fn, handle, convert=int)
    if reasons is not None:
        names = [name for bit, name in CLOCK_EVENT_REASONS.items() if reasons & bit]
        out["clock_event_reasons"] = ",".join(names) or "none"

    locked, why = _clocks_locked(app, default, reasons)
    out["clocks_locked"] = locked
    out["clocks_locked_evidence"] = why
    out["clocks_locked_rule"] = CLOCKS_LOCKED_RULE
    if unsupported:
        out["nvml_unsupported"] = ",".join(unsupported)
    return out


def _clocks_locked(
    app: Mapping[str, int | None], default: Mapping[str, int | None], reasons: int | None
) -> tuple[str, str]:
    """(``yes``/``no``/``unknown``, the evidence) by :data:`CLOCKS_LOCKED_RULE`."""
    evidence: list[str] = []
    checked = False
    for clock in ("graphics", "memory"):
        target, dflt = app.get(clock), default.get(clock)
        if target is None or dflt is None:
            continue
        checked = True
        if target != dflt:
            evidence.append(f"application {clock} clock {target} MHz != default {dflt} MHz")
    if reasons is not None:
        checked = True
        if reasons & _REASON_APP_CLOCKS:
            evidence.append("clock-event reason ApplicationsClocksSetting is active")
    if evidence:
        return "yes", "; ".join(evidence)
    if checked:
        return "no", "application clocks at their defaults and no ApplicationsClocksSetting clock-event reason"
    return "unknown", "NVML supports neither application-clock nor clock-event-reason queries here"

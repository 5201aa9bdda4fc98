"""GPU facts and the CUDA-event timing loop, on a host without a GPU.

``gpu_facts`` runs against a fake NVML module (what the clocks-locked rule decides, plain values)
and against this host's real state (no NVML: ``{"gpu": "none", ...}``). The timing loop runs with
:class:`HostEventTimer` (the same loop on the host clock): interleaving order, one synchronize per
round, sample counts, stopping. No timing assertions.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from edgematrix.errors import BackendError, EdgeMatrixError
from edgematrix.measure.gpu import (
    CLOCKS_LOCKED_RULE,
    CudaTimings,
    HostEventTimer,
    bare_cuda_event_loop,
    gpu_facts,
    measure_cuda_interleaved,
)
from edgematrix.measure.harness import LatencyConfig, LatencySamples

# -- gpu_facts ------------------------------------------------------------------------------------


class NVMLError(Exception):
    pass


class FakeNvml:
    """The pynvml calls gpu_facts makes, with settable answers. ``None`` = NVML_ERROR_NOT_SUPPORTED."""

    NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, **over: Any) -> None:
        self.answers: dict[str, Any] = {
            "count": 1,
            "name": b"NVIDIA H200",
            "clock": {1: 345, 2: 2619},
            "max_clock": {1: 1980, 2: 3201},
            "app_clock": {0: 1980, 2: 3201},
            "default_app_clock": {0: 1980, 2: 3201},
            "reasons": 0x1,  # idle
            "persistence": 1,
            "power_limit_mw": 700000,
            **over,
        }
        self.shutdowns = 0

    def _get(self, key: str, sub: int | None = None) -> Any:
        value = self.answers[key]
        if isinstance(value, dict):
            value = value.get(sub)
        if value is None:
            raise NVMLError("Not Supported")
        return value

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.answers.get("init_fails"):
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.answers["count"]

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return f"handle{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> str:  # noqa: N802
        raise NVMLError("Not Found")

    def nvmlDeviceGetName(self, handle: str) -> bytes:  # noqa: N802
        return self.answers["name"]

    def nvmlDeviceGetIndex(self, handle: str) -> int:  # noqa: N802
        return 0

    def nvmlDeviceGetUUID(self, handle: str) -> str:  # noqa: N802
        return "GPU-0000"

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "580.65.06"

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return 13000

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:  # noqa: N802
        return self._get("clock", clock)

    def nvmlDeviceGetMaxClockInfo(self, handle: str, clock: int) -> int:  # noqa: N802
        return self._get("max_clock", clock)

    def nvmlDeviceGetApplicationsClock(self, handle: str, clock: int) -> int:  # noqa: N802
        return self._get("app_clock", clock)

    def nvmlDeviceGetDefaultApplicationsClock(self, handle: str, clock: int) -> int:  # noqa: N802
        return self._get("default_app_clock", clock)

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:  # noqa: N802
        return 31

    def nvmlDeviceGetPowerManagementLimit(self, handle: str) -> int:  # noqa: N802
        return self._get("power_limit_mw")

    def nvmlDeviceGetPersistenceMode(self, handle: str) -> int:  # noqa: N802
        return self._get("persistence")

    def nvmlDeviceGetPerformanceState(self, handle: str) -> int:  # noqa: N802
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:  # noqa: N802
        return SimpleNamespace(total=143771 * 1024 * 1024)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:  # noqa: N802
        return self._get("reasons")


def test_gpu_facts_without_nvml_on_this_host_does_not_raise() -> None:
    facts = gpu_facts()
    assert isinstance(facts, dict) and "gpu" in facts
    json.dumps(facts, allow_nan=False)
    if facts["gpu"] == "none":  # this development host: no NVML / no GPU
        assert "gpu_none_reason" in facts


def test_gpu_facts_when_nvml_does_not_initialise() -> None:
    facts = gpu_facts(nvml=FakeNvml(init_fails=True))
    assert facts["gpu"] == "none"
    assert "NVML did not initialise" in str(facts["gpu_none_reason"])
    assert gpu_facts(nvml=FakeNvml(count=0))["gpu"] == "none"


def test_gpu_facts_reads_nvml_into_plain_values() -> None:
    nvml = FakeNvml()
    facts = gpu_facts(0, nvml=nvml)
    assert nvml.shutdowns == 1
    assert facts["gpu"] == "NVIDIA H200"  # bytes decoded
    assert facts["driver_version"] == "580.65.06"
    assert facts["cuda_driver_version"] == "13.0"
    assert facts["cuda_runtime_version"] == (torch.version.cuda or "none")
    assert (facts["sm_clock_mhz"], facts["sm_clock_max_mhz"]) == (345, 1980)
    assert (facts["mem_clock_mhz"], facts["mem_clock_max_mhz"]) == (2619, 3201)
    assert facts["temperature_c"] == 31
    assert facts["power_limit_w"] == 700.0
    assert facts["persistence_mode"] == "enabled"
    assert facts["pstate"] == "P0"
    assert facts["memory_total_mib"] == 143771
    assert facts["clock_event_reasons"] == "gpu_idle"
    assert facts["clocks_locked"] == "no"
    assert facts["clocks_locked_rule"] == CLOCKS_LOCKED_RULE
    assert all(type(v) in (str, int, float) for v in facts.values())
    assert "power_draw_w" not in facts and "power_draw_w" in str(facts["nvml_unsupported"])  # missing call named


@pytest.mark.parametrize(
    ("answers", "locked", "evidence"),
    [
        ({"app_clock": {0: 1500, 2: 3201}}, "yes", "application graphics clock 1500 MHz != default 1980 MHz"),
        ({"app_clock": {0: 1980, 2: 2000}}, "yes", "application memory clock 2000 MHz != default 3201 MHz"),
        ({"reasons": 0x2}, "yes", "ApplicationsClocksSetting"),  # e.g. nvidia-smi -lgc while under load
        ({"reasons": 0x4}, "no", "at their defaults"),  # power cap is not a lock
        ({"app_clock": {}, "default_app_clock": {}, "reasons": 0x1}, "no", "at their defaults"),
        ({"app_clock": {}, "default_app_clock": {}, "reasons": None}, "unknown", "supports neither"),
    ],
)
def test_clocks_locked_rule(answers: dict[str, Any], locked: str, evidence: str) -> None:
    facts = gpu_facts(0, nvml=FakeNvml(**answers))
    assert facts["clocks_locked"] == locked
    assert evidence in str(facts["clocks_locked_evidence"])


def test_gpu_facts_never_raises_on_a_broken_nvml() -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetName(self, handle: str) -> bytes:  # noqa: N802
            raise NVMLError("GPU is lost")

    nvml = Broken()
    facts = gpu_facts(nvml=nvml)
    assert facts["gpu"] == "none" and "GPU is lost" in str(facts["gpu_none_reason"])
    assert nvml.shutdowns == 1


# -- the timing loop ------------------------------------------------------------------------------

QUICK = LatencyConfig(warmup=2, min_rounds=4, max_rounds=4, min_time_s=0.0, max_time_s=60.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a host without CUDA")
def test_cuda_timing_without_cuda_raises_a_clear_error() -> None:
    with pytest.raises(BackendError, match=r"needs a CUDA device.*torch.cuda.is_available\(\) == False"):
        measure_cuda_interleaved({"a": lambda: None}, QUICK)
    with pytest.raises(EdgeMatrixError, match="needs a CUDA device"):
        bare_cuda_event_loop(lambda: None, 3)


def test_interleaved_rounds_alternate_and_sync_once_per_round() -> None:
    log: list[str] = []
    timer = HostEventTimer()
    fns = {"a": lambda: log.append("a"), "b": lambda: log.append("b"), "c": lambda: log.append("c")}
    result = measure_cuda_interleaved(fns, QUICK, timer=timer)
    warmup, timed = log[:6], log[6:]
    assert warmup == ["a", "a", "b", "b", "c", "c"]  # one callable at a time
    assert timed == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert timer.synchronize_calls == 1 + 4  # after the warm-up, then once per round, never per call
    assert result.synchronizations == 5
    assert isinstance(result, CudaTimings) and isinstance(result, dict)
    assert list(result) == ["a", "b", "c"] and list(result.host) == ["a", "b", "c"]
    for key in fns:
        assert isinstance(result[key], LatencySamples) and result[key].rounds == 4
        assert result.host[key].rounds == 4
        assert all(s >= 0 for s in result[key].samples_s + result.host[key].samples_s)
    assert result.timer == "host" and result.rounds == 4


def test_progress_and_time_limit() -> None:
    seen: list[int] = []
    config = LatencyConfig(warmup=0, min_rounds=1, max_rounds=1000, min_time_s=0.0, max_time_s=0.0)
    result = measure_cuda_interleaved(
        {"a": lambda: None}, config, lambda rounds, elapsed: seen.append(rounds), timer=HostEventTimer()
    )
    assert result["a"].rounds == 1 and seen == [1]  # max_time_s 0: one round, then stop


def test_the_gpu_interval_brackets_the_call_and_host_time_is_the_call() -> None:
    import time

    timer = HostEventTimer()
    result = measure_cuda_interleaved({"sleep": lambda: time.sleep(0.002)}, QUICK, timer=timer)
    for gpu_s, host_s in zip(result["sleep"].samples_s, result.host["sleep"].samples_s, strict=True):
        assert host_s >= 0.002 and gpu_s >= host_s  # events are recorded outside the host clock


def test_bad_input() -> None:
    with pytest.raises(EdgeMatrixError, match="at least one callable"):
        measure_cuda_interleaved({}, QUICK, timer=HostEventTimer())
    with pytest.raises(EdgeMatrixError, match="not callables"):
        measure_cuda_interleaved({"a": 3}, QUICK, timer=HostEventTimer())  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        bare_cuda_event_loop(lambda: None, 0, timer=HostEventTimer())


def test_bare_loop_syncs_every_call() -> None:
    calls: list[int] = []
    timer = HostEventTimer()
    samples = bare_cuda_event_loop(lambda: calls.append(1), 5, warmup=3, timer=timer)
    assert len(samples) == 5 and len(calls) == 8 and all(s >= 0 for s in samples)
    assert timer.synchronize_calls == 1 + 5  # after the warm-up, then after every call


def test_host_facts_are_the_host_time_beside_the_device_time() -> None:
    import time

    result = measure_cuda_interleaved(
        {"sleep": lambda: time.sleep(0.003), "none": lambda: None}, QUICK, timer=HostEventTimer()
    )
    facts = result.host_facts("sleep")
    assert set(facts) == {"timer", "host_p50_ms", "host_p90_ms", "timed_rounds"}
    assert facts["timer"] == "host" and facts["timed_rounds"] == 4
    assert facts["host_p50_ms"] == round(result.host["sleep"].p50_ms, 4) >= 3.0
    assert facts["host_p90_ms"] >= facts["host_p50_ms"]
    assert result.host_facts("none")["host_p50_ms"] < 3.0
    assert all(type(v) in (str, int, float) for v in facts.values())  # plain values: extra_info takes them

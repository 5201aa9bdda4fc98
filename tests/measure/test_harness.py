"""Latency harness: round counting, interleaving order, stopping rules and percentiles.

A fake clock makes every inference take a known time, so stopping rules are tested exactly and
no test depends on how fast this machine is.
"""

from __future__ import annotations

import gc
import types
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from edgematrix.backends.base import Runner, TensorMeta
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure import harness
from edgematrix.measure.contention import Contention
from edgematrix.measure.harness import LatencyConfig, LatencySamples, Measurement, measure_interleaved, measure_one

STEP_NS = 10_000_000  # every fake inference takes 10 ms on the fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 0

    def perf_counter_ns(self) -> int:
        return self.now_ns


class FakeRunner(Runner):
    backend_name = "fake"

    def __init__(self, name: str, log: list[str], clock: FakeClock | None = None, cost_ns: int = STEP_NS) -> None:
        super().__init__(name)
        self.log = log
        self.clock = clock
        self.cost_ns = cost_ns
        self.activations = 0
        self.releases = 0

    def activate_impl(self) -> None:
        self.activations += 1

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return {"x": TensorMeta(np.dtype(np.float32), (None, 2))}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.log.append(self.name)
        if self.clock is not None:
            self.clock.now_ns += self.cost_ns
        return {"y": feed["x"] * 2}

    def release_impl(self) -> None:
        self.releases += 1


FEED = {"x": np.ones((1, 2), np.float32)}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(perf_counter_ns=fake.perf_counter_ns))
    return fake


def exact(rounds: int, warmup: int = 0) -> LatencyConfig:
    return LatencyConfig(warmup=warmup, min_rounds=rounds, max_rounds=rounds, min_time_s=0.0, max_time_s=1e9)


# -- rounds and order -----------------------------------------------------------------------


def test_rounds_and_warmup_counts_are_honoured(clock: FakeClock) -> None:
    log: list[str] = []
    runners = {"a": FakeRunner("a", log, clock), "b": FakeRunner("b", log, clock)}
    result = measure_interleaved(runners, FEED, exact(7, warmup=3))
    assert {k: v.rounds for k, v in result.items()} == {"a": 7, "b": 7}
    assert log.count("a") == log.count("b") == 3 + 7
    assert result["a"].samples_s == pytest.approx([STEP_NS * 1e-9] * 7)


def test_order_alternates_every_round(clock: FakeClock) -> None:
    log: list[str] = []
    runners = {"ref": FakeRunner("ref", log, clock), "cand": FakeRunner("cand", log, clock)}
    measure_interleaved(runners, FEED, exact(4, warmup=1))
    warmup, rounds = log[:2], log[2:]
    assert warmup == ["ref", "cand"]
    assert rounds == ["ref", "cand", "cand", "ref", "ref", "cand", "cand", "ref"]  # AB BA AB BA


def test_order_alternates_with_three_runners(clock: FakeClock) -> None:
    log: list[str] = []
    runners = {n: FakeRunner(n, log, clock) for n in "abc"}
    measure_interleaved(runners, FEED, exact(3))
    assert log == [*"abc", *"cba", *"abc"]


def test_each_round_times_only_its_own_runner(clock: FakeClock) -> None:
    log: list[str] = []
    runners = {"fast": FakeRunner("fast", log, clock, cost_ns=1_000_000), "slow": FakeRunner("slow", log, clock)}
    result = measure_interleaved(runners, FEED, exact(6))
    assert result["fast"].samples_s == pytest.approx([1e-3] * 6)
    assert result["slow"].samples_s == pytest.approx([1e-2] * 6)
    assert result["slow"].p50_ms / result["fast"].p50_ms == pytest.approx(10.0)


# -- stopping rules -------------------------------------------------------------------------


def test_min_time_extends_past_min_rounds(clock: FakeClock) -> None:
    # two runners x 10 ms = 20 ms a round: 1 s of timed rounds needs 50 rounds
    runners = {n: FakeRunner(n, [], clock) for n in "ab"}
    config = LatencyConfig(warmup=0, min_rounds=3, max_rounds=1000, min_time_s=1.0, max_time_s=60.0)
    result = measure_interleaved(runners, FEED, config)
    assert result["a"].rounds == result["b"].rounds == 50


def test_min_rounds_extends_past_min_time(clock: FakeClock) -> None:
    runners = {n: FakeRunner(n, [], clock) for n in "ab"}
    config = LatencyConfig(warmup=0, min_rounds=80, max_rounds=1000, min_time_s=1.0, max_time_s=60.0)
    assert measure_interleaved(runners, FEED, config)["a"].rounds == 80


def test_max_time_stops_before_min_rounds(clock: FakeClock) -> None:
    runners = {n: FakeRunner(n, [], clock) for n in "ab"}
    config = LatencyConfig(warmup=0, min_rounds=100, max_rounds=1000, min_time_s=0.1, max_time_s=0.5)
    assert measure_interleaved(runners, FEED, config)["a"].rounds == 25


def test_max_rounds_stops_before_min_time(clock: FakeClock) -> None:
    runners = {n: FakeRunner(n, [], clock) for n in "ab"}
    config = LatencyConfig(warmup=0, min_rounds=5, max_rounds=12, min_time_s=100.0, max_time_s=1000.0)
    assert measure_interleaved(runners, FEED, config)["b"].rounds == 12


def test_warmup_time_does_not_count(clock: FakeClock) -> None:
    runners = {"a": FakeRunner("a", [], clock)}
    config = LatencyConfig(warmup=500, min_rounds=1, max_rounds=1000, min_time_s=0.1, max_time_s=0.2)
    assert measure_interleaved(runners, FEED, config)["a"].rounds == 10  # 0.1 s / 10 ms


def test_progress_is_called_every_round(clock: FakeClock) -> None:
    calls: list[tuple[int, float]] = []
    measure_interleaved({"a": FakeRunner("a", [], clock)}, FEED, exact(4), progress=lambda r, t: calls.append((r, t)))
    assert [r for r, _ in calls] == [1, 2, 3, 4]
    assert [t for _, t in calls] == pytest.approx([0.01, 0.02, 0.03, 0.04])


@pytest.mark.parametrize(
    "kwargs",
    [{"warmup": -1}, {"min_rounds": 0}, {"min_rounds": 10, "max_rounds": 5}, {"min_time_s": 5.0, "max_time_s": 1.0}],
)
def test_inconsistent_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LatencyConfig(**kwargs)


# -- feeds, lifecycle -----------------------------------------------------------------------


def test_per_runner_feeds(clock: FakeClock) -> None:
    seen: dict[str, tuple[int, ...]] = {}

    class Recording(FakeRunner):
        def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            seen[self.name] = feed["x"].shape
            return super().infer_impl(feed)

    runners = {"a": Recording("a", [], clock), "b": Recording("b", [], clock)}
    feeds = {"a": {"x": np.ones((1, 2), np.float32)}, "b": {"x": np.ones((4, 2), np.float32)}}
    measure_interleaved(runners, feeds, exact(2))
    assert seen == {"a": (1, 2), "b": (4, 2)}


def test_missing_feed_names_the_runner(clock: FakeClock) -> None:
    runners = {"a": FakeRunner("a", [], clock), "b": FakeRunner("b", [], clock)}
    with pytest.raises(EdgeMatrixError, match=r"no feed for runner\(s\) \['b'\]"):
        measure_interleaved(runners, {"a": FEED}, exact(1))


def test_inactive_runners_are_activated_and_released(clock: FakeClock) -> None:
    idle, active = FakeRunner("idle", [], clock), FakeRunner("active", [], clock)
    with active:
        measure_interleaved({"idle": idle, "active": active}, FEED, exact(2))
        assert active.is_active, "a runner the caller activated stays active"
    assert not idle.is_active
    assert idle.activations == 1 and idle.releases == 1


def test_same_runner_under_two_keys(clock: FakeClock) -> None:
    log: list[str] = []
    shared = FakeRunner("shared", log, clock)
    result = measure_interleaved({"reference": shared, "candidate": shared}, FEED, exact(3))
    assert result["reference"].rounds == result["candidate"].rounds == 3
    assert shared.activations == 1 and not shared.is_active


def test_gc_is_restored(clock: FakeClock) -> None:
    assert gc.isenabled()
    measure_interleaved({"a": FakeRunner("a", [], clock)}, FEED, exact(2))
    assert gc.isenabled()


def test_measure_one(clock: FakeClock) -> None:
    samples = measure_one(FakeRunner("solo", [], clock), FEED, exact(5))
    assert samples.name == "solo"
    assert samples.rounds == 5
    assert isinstance(samples.contention, Contention) and samples.contention.rounds == 5


def test_the_result_carries_the_contention_record_of_its_rounds(clock: FakeClock) -> None:
    runners = {"fast": FakeRunner("fast", [], clock, cost_ns=1_000_000), "slow": FakeRunner("slow", [], clock)}
    result = measure_interleaved(runners, FEED, exact(8))
    assert isinstance(result, Measurement) and isinstance(result, dict)
    assert list(result) == ["fast", "slow"]  # the mapping callers always had
    c = result.contention
    assert all(s.contention is c for s in result.values())
    assert c.rounds == 8
    assert c.spread == {"fast": 0.0, "slow": 0.0}  # every fake round takes exactly the same time
    assert result.busy == c.busy
    if c.runnable_mean is not None:  # /proc/loadavg was sampled once between every two rounds
        assert c.runnable_max is not None and c.runnable_max >= c.runnable_mean >= 0


# -- statistics -----------------------------------------------------------------------------


def test_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(1)
    values = (rng.lognormal(mean=-4, sigma=0.3, size=37)).tolist()  # seconds, skewed like latencies
    samples = LatencySamples("x", values)
    arr = np.array(values)
    assert samples.rounds == 37
    assert samples.p50_ms == pytest.approx(np.percentile(arr, 50) * 1e3, rel=1e-12)
    assert samples.p90_ms == pytest.approx(np.percentile(arr, 90) * 1e3, rel=1e-12)
    assert samples.p99_ms == pytest.approx(np.percentile(arr, 99) * 1e3, rel=1e-12)
    assert samples.percentile(25) == pytest.approx(np.percentile(arr, 25), rel=1e-12)
    assert samples.mean_ms == pytest.approx(arr.mean() * 1e3, rel=1e-12)
    assert samples.stddev_ms == pytest.approx(arr.std(ddof=1) * 1e3, rel=1e-12)


def test_percentiles_on_known_values() -> None:
    samples = LatencySamples("x", [0.004, 0.001, 0.003, 0.002])  # unsorted on purpose
    assert samples.p50_ms == pytest.approx(2.5)  # linear between 2 and 3
    assert samples.p90_ms == pytest.approx(3.7)  # 1 + 0.9 * 3 = index 2.7
    assert samples.mean_ms == pytest.approx(2.5)
    assert LatencySamples("one", [0.002]).stddev_ms == 0.0
    with pytest.raises(ValueError, match="no samples"):
        _ = LatencySamples("empty", []).p50_ms


# -- real runtime ---------------------------------------------------------------------------


def test_interleaves_real_onnxruntime_sessions(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgematrix.backends.onnxruntime.runner import OnnxrtRunner

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu.onnx"))
    runners = {role: OnnxrtRunner(tmp_path / "relu.onnx", name=role) for role in ("reference", "candidate")}
    config = LatencyConfig(warmup=2, min_rounds=5, max_rounds=5, min_time_s=0.0, max_time_s=30.0)
    result = measure_interleaved(runners, {"x": np.ones((1, 16), np.float32)}, config)
    assert [result[r].rounds for r in runners] == [5, 5]
    assert all(s > 0 for r in runners for s in result[r].samples_s)
    assert not any(r.is_active for r in runners.values())

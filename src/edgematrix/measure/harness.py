"""Latency harness: warm-up, then interleaved timed rounds, per-round samples and percentiles.

Runners compared with each other (FP32 reference vs candidate) are measured in the same rounds,
alternating their order every round (AB, BA, AB, ...), so slow drift of the machine (another
process, thermal state) lands on both equally and a speedup is a same-run ratio.

Drift cancels; contention does not (each runtime reacts to competing processes differently), so
every measurement also records what the machine was doing during its timed rounds
(:class:`~edgematrix.measure.contention.Contention`: other processes' CPU time, our threads'
run-queue wait, steal, runnable tasks, load, the spread of each runner's rounds). The result of
:func:`measure_interleaved` is a :class:`Measurement` — the same ``{runner key: LatencySamples}``
mapping as before, plus ``.contention`` — and each :class:`LatencySamples` carries the record of
the rounds it was measured in.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.contention import Contention, ContentionProbe

Feed = dict[str, np.ndarray]
#: called after every timed round with (rounds done, seconds since the timed rounds started)
Progress = Callable[[int, float], None]


class Runner(Protocol):
    """What the harness times: a context manager with ``infer`` (every backend's
    :class:`edgematrix.backends.base.Runner` is one). The harness enters it when it is not active."""

    name: str
    is_active: bool

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...


@dataclass(frozen=True)
class LatencyConfig:
    """How long to measure. Stops once both ``min_rounds`` and ``min_time_s`` are reached, or at
    ``max_rounds`` / ``max_time_s`` whichever comes first. A round runs every runner once."""

    warmup: int = 10
    min_rounds: int = 50
    max_rounds: int = 1000
    min_time_s: float = 5.0
    max_time_s: float = 120.0
    disable_gc: bool = True  # like pytest-benchmark's --benchmark-disable-gc; collected before the rounds

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not 1 <= self.min_rounds <= self.max_rounds:
            raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {self.min_rounds} and {self.max_rounds}")
        if not 0 <= self.min_time_s <= self.max_time_s:
            raise ValueError(f"need 0 <= min_time_s <= max_time_s, got {self.min_time_s} and {self.max_time_s}")


@dataclass
class LatencySamples:
    """Per-round wall times of one runner, in seconds."""

    name: str
    samples_s: list[float] = field(default_factory=list)
    #: what the machine was doing during the timed rounds (None for samples not taken by the harness)
    contention: Contention | None = None

    @property
    def rounds(self) -> int:
        return len(self.samples_s)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) in seconds, numpy's default (linear) method."""
        if not self.samples_s:
            raise ValueError(f"{self.name!r} has no samples")
        return float(np.percentile(np.asarray(self.samples_s, dtype=np.float64), q))

    @property
    def p50_ms(self) -> float:
        return self.percentile(50) * 1e3

    @property
    def p90_ms(self) -> float:
        return self.percentile(90) * 1e3

    @property
    def p99_ms(self) -> float:
        return self.percentile(99) * 1e3

    @property
    def mean_ms(self) -> float:
        if not self.samples_s:
            raise ValueError(f"{self.name!r} has no samples")
        return float(np.mean(self.samples_s)) * 1e3

    @property
    def stddev_ms(self) -> float:
        """Sample standard deviation (ddof=1, as pytest-benchmark); 0 for a single round."""
        if len(self.samples_s) < 2:
            return 0.0
        return float(np.std(self.samples_s, ddof=1)) * 1e3

    def summary(self) -> dict[str, float | int]:
        return {
            "rounds": self.rounds,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "stddev_ms": self.stddev_ms,
        }


class Measurement(dict[str, LatencySamples]):
    """``{runner key: LatencySamples}`` of one interleaved measurement, plus its contention record."""

    def __init__(self, samples: Mapping[str, LatencySamples], contention: Contention) -> None:
        super().__init__(samples)
        self.contention = contention

    @property
    def busy(self) -> bool:
        """The machine was busy during the rounds (``contention.reasons()`` says why)."""
        return self.contention.busy


def _feeds_per_runner(
    runners: Mapping[str, Runner], feeds: Mapping[str, Mapping[str, np.ndarray]] | Mapping[str, np.ndarray]
) -> dict[str, Feed]:
    if not feeds:  # models without inputs
        return {name: {} for name in runners}
    if all(isinstance(v, np.ndarray) for v in feeds.values()):
        shared = cast(Mapping[str, np.ndarray], feeds)
        return {name: dict(shared) for name in runners}  # one feed shared by every runner
    if not all(isinstance(v, Mapping) for v in feeds.values()):
        raise EdgeMatrixError(
            "feeds must be one feed {input name: ndarray} shared by all runners, "
            "or {runner name: feed}; got a mapping that mixes both"
        )
    missing = [n for n in runners if n not in feeds]
    if missing:
        raise EdgeMatrixError(f"no feed for runner(s) {missing!r}; feeds given for {sorted(feeds)!r}")
    per_runner = cast(Mapping[str, Mapping[str, np.ndarray]], feeds)
    return {name: dict(per_runner[name]) for name in runners}


def measure_interleaved(
    runners: Mapping[str, Runner],
    feeds: Mapping[str, Mapping[str, np.ndarray]] | Mapping[str, np.ndarray],
    config: LatencyConfig = LatencyConfig(),  # frozen, so a shared default is safe
    progress: Progress | None = None,
) -> Measurement:
    """Measure all ``runners`` in the same rounds, alternating their order every round.

    ``feeds`` is either one feed shared by all runners or ``{runner key: feed}``. Runners that are
    not active are activated here and deactivated afterwards; active ones are left active.
    Only ``runner.infer`` is inside the timer (``time.perf_counter_ns``). Between rounds, outside
    the timer, a :class:`ContentionProbe` samples the machine; the returned :class:`Measurement`
    carries its record as ``.contention`` (also set on every :class:`LatencySamples`).
    """
    if not runners:
        raise EdgeMatrixError("measure_interleaved needs at least one runner")
    per_runner = _feeds_per_runner(runners, feeds)
    order = list(runners)
    results = {key: LatencySamples(key) for key in order}

    with ExitStack() as stack:
        for runner in {id(r): r for r in runners.values()}.values():  # one runner may appear under two keys
            if not runner.is_active:
                stack.enter_context(runner)

        for key in order:  # warm-up: one runner at a time, not timed
            runner, feed = runners[key], per_runner[key]
            for _ in range(config.warmup):
                runner.infer(feed)

        probe = ContentionProbe()
        with gc_paused(config):
            clock = time.perf_counter_ns
            probe.start()
            start = clock()
            rounds = 0
            while True:
                round_order = order if rounds % 2 == 0 else order[::-1]
                for key in round_order:
                    runner, feed = runners[key], per_runner[key]
                    t0 = clock()
                    runner.infer(feed)
                    t1 = clock()
                    results[key].samples_s.append((t1 - t0) * 1e-9)
                rounds += 1
                elapsed = (clock() - start) * 1e-9
                probe.sample()
                if progress is not None:
                    progress(rounds, elapsed)
                if enough_rounds(config, rounds, elapsed):
                    break
            contention = probe.stop({key: s.samples_s for key, s in results.items()})

    for s in results.values():
        s.contention = contention
    return Measurement(results, contention)


@contextmanager
def gc_paused(config: LatencyConfig) -> Iterator[None]:
    """Collect, then keep the garbage collector off during timed rounds (when ``config.disable_gc``)."""
    was_enabled = gc.isenabled()
    if config.disable_gc:
        gc.collect()
        gc.disable()
    try:
        yield
    finally:
        if config.disable_gc and was_enabled:
            gc.enable()


def enough_rounds(config: LatencyConfig, rounds: int, elapsed_s: float) -> bool:
    """The stop rule shared by every harness: both minimums reached, or either maximum."""
    if rounds >= config.max_rounds or elapsed_s >= config.max_time_s:
        return True
    return rounds >= config.min_rounds and elapsed_s >= config.min_time_s


def measure_one(
    runner: Runner,
    feed: Mapping[str, np.ndarray],
    config: LatencyConfig = LatencyConfig(),
    progress: Progress | None = None,
) -> LatencySamples:
    """Measure a single runner (same loop as :func:`measure_interleaved`)."""
    return measure_interleaved({runner.name: runner}, {runner.name: dict(feed)}, config, progress)[runner.name]

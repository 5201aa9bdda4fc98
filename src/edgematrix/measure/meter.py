"""One interface for "how fast is this model file on the target?".

The latency-aware pruning search, the ``edgematrix measure`` command and the device cells ask a
:class:`LatencyMeter` for a model's latency without knowing where it runs: :class:`LocalMeter`
measures with a backend of this host (ONNX Runtime now), the latency-server client measures on
the device over HTTP. Both return :class:`LatencyReport`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgematrix.measure.harness import LatencySamples

Fact = str | int | float


@dataclass(frozen=True)
class LatencyReport:
    """Latency statistics of one model on one backend, in milliseconds, plus where they came from."""

    backend: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    rounds: int
    samples_ms: tuple[float, ...] = ()
    facts: dict[str, Fact] = field(default_factory=dict)

    @classmethod
    def from_samples(
        cls, backend: str, samples: LatencySamples, facts: Mapping[str, Fact] | None = None
    ) -> LatencyReport:
        """The harness's statistics (numpy's linear percentiles) of per-round times ``samples``."""
        return cls(
            backend=backend,
            p50_ms=samples.p50_ms,
            p90_ms=samples.p90_ms,
            p99_ms=samples.p99_ms,
            mean_ms=samples.mean_ms,
            rounds=samples.rounds,
            samples_ms=tuple(s * 1e3 for s in samples.samples_s),
            facts=dict(facts or {}),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "rounds": self.rounds,
            "samples_ms": list(self.samples_ms),
            "facts": dict(self.facts),
        }


@runtime_checkable
class LatencyMeter(Protocol):
    """Measures a model file. ``options`` are backend options (threads, precision, ...)."""

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport: ...

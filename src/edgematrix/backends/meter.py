"""Latency meters that run a model file on this host with a registered backend.

:class:`LocalMeter` is a :class:`~edgematrix.measure.meter.LatencyMeter` (the pruning search and the
``measure`` verb take any meter: this one, or a device's latency server through
:class:`edgematrix.server.client.RemoteMeter`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import create_runner
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.harness import LatencyConfig, measure_one
from edgematrix.measure.meter import LatencyReport


def random_feed(input_metadata: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic random feed for a runner's inputs; dynamic dims become 1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name, meta in input_metadata.items():
        shape = tuple(d if isinstance(d, int) else 1 for d in meta.shape)
        if np.issubdtype(meta.dtype, np.floating):
            feed[name] = rng.standard_normal(shape).astype(meta.dtype)
        else:
            feed[name] = rng.integers(0, 2, size=shape).astype(meta.dtype)
    return feed


@dataclass
class LocalMeter:
    """Measures on this host with a registered backend (``create_runner(backend, path=model, **options)``)."""

    backend: str = "onnxruntime"
    config: LatencyConfig = field(default_factory=lambda: LatencyConfig(warmup=5, min_rounds=30, min_time_s=2.0))
    runner_options: dict[str, Any] = field(default_factory=dict)

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        model = Path(model)
        if not model.is_file():
            raise EdgeMatrixError(f"model file {model} does not exist; export the model first or check the path")
        kwargs = {**self.runner_options, **(options or {})}
        with create_runner(self.backend, path=model, **kwargs) as runner:
            feed = random_feed(dict(runner.input_metadata()))
            samples = measure_one(runner, feed, self.config)
            facts = runner.facts()
        return LatencyReport.from_samples(self.backend, samples, facts)

"""Latency meters that run a model file on this host with a registered backend.

:class:`LocalMeter` is a :class:`~edgematrix.measure.meter.LatencyMeter` (the pruning search and the
``measure`` verb take any meter: this one, or a device's latency server through
:class:`edgematrix.server.client.RemoteMeter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import create_runner
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.harness import LatencyConfig, measure_one
from edgematrix.measure.meter import LatencyReport


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"images:1x3x640x640"`` (trtexec's ``--shapes`` form; ``=`` works too) → ``("images", (1, 3, 640, 640))``."""
    name, sep, dims = text.rpartition("=") if "=" in text else text.rpartition(":")  # a name may hold ':'
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise EdgeMatrixError(
            f"--shape {text!r} must be NAME:DIMS with positive sizes joined by 'x', e.g. images:1x3x640x640"
        )
    return name, shape


def feed_shapes(
    input_metadata: Mapping[str, Any], shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape to feed each input: the model's fixed dims, ``shapes`` for the others. An input with a
    dynamic dimension and no shape, a shape for an unknown input, or one that contradicts a fixed dim is an
    :class:`EdgeMatrixError` naming the input, its dims and the ``--shape`` that fixes it (nothing is guessed:
    a dynamic dimension silently set to 1 measured a detector at 1×3×1×1)."""
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - set(input_metadata))
    if unknown:
        raise EdgeMatrixError(
            f"--shape names input(s) {', '.join(unknown)}, which the model does not have; its inputs: "
            + ", ".join(f"{n} {m.describe()}" for n, m in input_metadata.items())
        )
    out: dict[str, tuple[int, ...]] = {}
    missing = []
    for name, meta in input_metadata.items():
        dims = tuple(meta.shape)
        if name in shapes:
            given = tuple(int(d) for d in shapes[name])
            if not meta.accepts_shape(given):
                raise EdgeMatrixError(
                    f"--shape {name}:{'x'.join(map(str, given))} does not fit input {name!r} {meta.describe()} "
                    "(its fixed dims must be kept)"
                )
            out[name] = given
            continue
        dynamic = [
            f"{i} ({d!r})" if isinstance(d, str) else str(i) for i, d in enumerate(dims) if not isinstance(d, int)
        ]
        if dynamic:
            example = "x".join(str(d) if isinstance(d, int) else "N" for d in dims)
            missing.append(
                f"input {name!r} {meta.describe()}: dynamic dim(s) {', '.join(dynamic)} (--shape {name}:{example})"
            )
            continue
        out[name] = tuple(int(d) for d in dims)
    if missing:
        raise EdgeMatrixError(
            "the model has dynamic input dimensions and no shape to measure them at: "
            + "; ".join(missing)
            + ". Give each such input its shape with --shape NAME:DIMS (repeatable)"
        )
    return out


def shape_text(shapes: Mapping[str, Sequence[int]]) -> str:
    """``images:1x3x640x640,scale:1x2`` (the recorded ``input_shape`` of a measurement)."""
    return ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items())


def random_feed(
    input_metadata: Mapping[str, Any], seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """A deterministic random feed for a runner's inputs, at the fixed dims and ``shapes`` for the dynamic
    ones (:func:`feed_shapes`: a dynamic dimension without a shape is refused, never guessed)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name, shape in feed_shapes(input_metadata, shapes).items():
        meta = input_metadata[name]
        if np.issubdtype(meta.dtype, np.floating):
            feed[name] = rng.standard_normal(shape).astype(meta.dtype)
        else:
            feed[name] = rng.integers(0, 2, size=shape).astype(meta.dtype)
    return feed


@dataclass
class LocalMeter:
    """Measures on this host with a registered backend (``create_runner(backend, path=model, **options)``).

    ``shapes``: input name → shape for inputs with dynamic dimensions (``edgematrix measure --shape``); the
    report's facts record the shapes measured at (``input_shape``).
    """

    backend: str = "onnxruntime"
    config: LatencyConfig = field(default_factory=lambda: LatencyConfig(warmup=5, min_rounds=30, min_time_s=2.0))
    runner_options: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        model = Path(model)
        if not model.is_file():
            raise EdgeMatrixError(f"model file {model} does not exist; export the model first or check the path")
        kwargs = {**self.runner_options, **(options or {})}
        with create_runner(self.backend, path=model, **kwargs) as runner:
            metadata = dict(runner.input_metadata())
            feed = random_feed(metadata, shapes=self.shapes)
            samples = measure_one(runner, feed, self.config)
            facts = runner.facts()
        dynamic = sorted(n for n, m in metadata.items() if not all(isinstance(d, int) for d in m.shape))
        facts["input_shape"] = shape_text({n: a.shape for n, a in feed.items()})
        facts["input_shape_source"] = (
            f"--shape for dynamic input(s) {', '.join(dynamic)}" if dynamic else "the model's fixed input dims"
        )
        return LatencyReport.from_samples(self.backend, samples, facts)

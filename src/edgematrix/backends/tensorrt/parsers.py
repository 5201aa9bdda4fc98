"""Parsers for what ``trtexec`` writes: ``--exportTimes``, ``--exportProfile``, ``--exportLayerInfo``
and the "Performance summary" of its standard output, plus the realized-precision check.

Pure Python (no TensorRT import): the files are parsed on whichever host reads them. Every parser
is tested on recorded output of real trtexec runs (``tests/backends/tensorrt/data/PROVENANCE.md``).

Formats handled
---------------

``--exportTimes`` (one record per timed inference, times in ms since the run started)::

    [ { "startEnqMs": ..., "endEnqMs": ..., "startH2dMs": ..., "endH2dMs": ...,
        "startComputeMs": ..., "endComputeMs": ..., "startD2hMs": ..., "endD2hMs": ...,
        "h2dMs": ..., "computeMs": ..., "d2hMs": ..., "latencyMs": ... }, ... ]

  Older trtexec (TensorRT 7) named the transfers ``startInMs`` / ``inMs`` / ``outMs`` and had no
  enqueue times; both spellings are read.

``--exportProfile`` (per layer, summed over the profiled iterations; the first element is the
iteration count)::

    [ { "count": N }, { "name": ..., "timeMs": ..., "averageMs": ..., "medianMs": ..., "percentage": ... }, ... ]

  ``medianMs`` appears in later TensorRT releases only.

``--exportLayerInfo`` (the engine inspector's JSON). With ``--profilingVerbosity=detailed`` every
layer is an object (``Name``, ``LayerType``, ``Inputs``/``Outputs`` with ``Format/Datatype``,
``Weights``, ``TacticName`` ...; TensorRT 10 adds ``StreamId`` and ``Metadata`` naming the ONNX
nodes, separated by U+001E). Without it (``layer_names_only``, the default) ``Layers`` is a list of
names only, from which no precision can be read.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgematrix.errors import BackendError, PrecisionMismatchError
from edgematrix.measure.harness import LatencySamples
from edgematrix.measure.meter import LatencyReport

Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8", "unknown"]
RequestedPrecision = Literal["fp32", "fp16", "int8"]
TimesMetric = Literal["latency", "compute", "enqueue"]

#: bits per realized precision; a layer "meets" a request when it computes in as few bits or fewer
_BITS: dict[str, int] = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8}


def _load(source: str | os.PathLike[str] | Any, what: str) -> Any:
    """A parsed JSON document from a path, a JSON string, or an already parsed object."""
    if isinstance(source, (str, os.PathLike)):
        text: str
        path = Path(source)
        if isinstance(source, str) and source.lstrip().startswith(("[", "{")):
            text, where = source, "the given text"
        else:
            if not path.is_file():
                raise BackendError(f"trtexec {what} file {str(path)!r} does not exist; did trtexec run to the end?")
            text, where = path.read_text(encoding="utf-8", errors="replace"), repr(str(path))
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BackendError(
                f"trtexec {what} in {where} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                "the file is truncated or trtexec crashed while writing it"
            ) from None
    return source


def _number(record: Mapping[str, Any], key: str, where: str) -> float:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BackendError(f"{where}: {key!r} is {value!r}, not a finite number")
    return float(value)


# -- exportTimes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceTiming:
    """One timed inference of ``--exportTimes`` (milliseconds)."""

    latency_ms: float  # host latency: H2D + compute + D2H
    compute_ms: float  # GPU compute time
    h2d_ms: float
    d2h_ms: float
    enqueue_ms: float | None  # host time to enqueue (None in TensorRT 7 traces)
    start_compute_ms: float  # since the start of the timed run


@dataclass(frozen=True)
class TimingTrace:
    """All records of one ``--exportTimes`` file, in order."""

    records: tuple[InferenceTiming, ...]

    def values_ms(self, metric: TimesMetric = "latency") -> list[float]:
        if metric == "latency":
            return [r.latency_ms for r in self.records]
        if metric == "compute":
            return [r.compute_ms for r in self.records]
        if metric == "enqueue":
            values = [r.enqueue_ms for r in self.records]
            if any(v is None for v in values):
                raise BackendError("this trace has no enqueue times (TensorRT 7 format); use metric 'latency'")
            return [float(v) for v in values if v is not None]
        raise BackendError(f"unknown metric {metric!r}; choose latency, compute or enqueue")

    def samples(self, name: str = "trtexec", metric: TimesMetric = "latency") -> LatencySamples:
        """The trace as the harness's :class:`LatencySamples` (seconds per inference)."""
        return LatencySamples(name, [v * 1e-3 for v in self.values_ms(metric)])

    @property
    def span_ms(self) -> float:
        """Wall time from the first to the last compute end (what trtexec calls host walltime)."""
        first, last = self.records[0], self.records[-1]
        return last.start_compute_ms + last.compute_ms - first.start_compute_ms


def parse_times(source: str | os.PathLike[str] | Sequence[Mapping[str, Any]]) -> TimingTrace:
    """Parse ``--exportTimes`` output (a path, JSON text or the parsed list)."""
    data = _load(source, "--exportTimes")
    if not isinstance(data, list) or not data:
        raise BackendError(
            "trtexec --exportTimes output must be a non-empty JSON list of per-inference records; "
            f"got {type(data).__name__}{' (empty)' if data == [] else ''}. Did the run time any inference?"
        )
    records = []
    for index, record in enumerate(data):
        where = f"--exportTimes record {index}"
        if not isinstance(record, Mapping):
            raise BackendError(f"{where} is {type(record).__name__}, not an object")
        missing = [k for k in ("latencyMs", "computeMs", "startComputeMs") if k not in record]
        if missing:
            raise BackendError(f"{where} lacks {missing!r}; keys present: {sorted(record)}")
        h2d_key = "h2dMs" if "h2dMs" in record else "inMs"
        d2h_key = "d2hMs" if "d2hMs" in record else "outMs"
        enqueue = None
        if "startEnqMs" in record and "endEnqMs" in record:
            enqueue = _number(record, "endEnqMs", where) - _number(record, "startEnqMs", where)
        records.append(
            InferenceTiming(
                latency_ms=_number(record, "latencyMs", where),
                compute_ms=_number(record, "computeMs", where),
                h2d_ms=_number(record, h2d_key, where) if h2d_key in record else 0.0,
                d2h_ms=_number(record, d2h_key, where) if d2h_key in record else 0.0,
                enqueue_ms=enqueue,
                start_compute_ms=_number(record, "startComputeMs", where),
            )
        )
    return TimingTrace(tuple(records))


def latency_report_from_times(
    trace: TimingTrace,
    *,
    backend: str = "tensorrt",
    metric: TimesMetric = "latency",
    facts: Mapping[str, str | int | float] | None = None,
) -> LatencyReport:
    """A :class:`LatencyReport` with the harness's percentile method over every traced inference."""
    samples = trace.samples(metric=metric)
    all_facts: dict[str, str | int | float] = {"latency_metric": f"trtexec {metric}Ms"}
    all_facts.update(facts or {})
    return LatencyReport.from_samples(backend, samples, all_facts)


# -- exportProfile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTime:
    name: str
    time_ms: float  # summed over all profiled iterations
    average_ms: float
    median_ms: float | None
    percentage: float


@dataclass(frozen=True)
class LayerProfile:
    iterations: int
    layers: tuple[LayerTime, ...]

    @property
    def total_average_ms(self) -> float:
        """Sum of the per-layer averages: the engine time per inference with profiling on."""
        return sum(layer.average_ms for layer in self.layers)

    def slowest(self, n: int = 5) -> list[LayerTime]:
        return sorted(self.layers, key=lambda layer: layer.average_ms, reverse=True)[:n]


def parse_profile(source: str | os.PathLike[str] | Sequence[Any]) -> LayerProfile:
    """Parse ``--exportProfile`` output."""
    data = _load(source, "--exportProfile")
    if not isinstance(data, list) or not data or not isinstance(data[0], Mapping) or "count" not in data[0]:
        raise BackendError(
            'trtexec --exportProfile output must be a JSON list whose first element is {"count": N}; '
            f"got {str(data)[:120]!r}"
        )
    count = data[0]["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BackendError(f"--exportProfile count is {count!r}, not a non-negative integer")
    layers = []
    for index, record in enumerate(data[1:], start=1):
        where = f"--exportProfile record {index}"
        if not isinstance(record, Mapping) or "name" not in record:
            raise BackendError(f"{where} is not a layer record with a name: {str(record)[:120]!r}")
        layers.append(
            LayerTime(
                name=str(record["name"]),
                time_ms=_number(record, "timeMs", where),
                average_ms=_number(record, "averageMs", where),
                median_ms=_number(record, "medianMs", where) if "medianMs" in record else None,
                percentage=_number(record, "percentage", where),
            )
        )
    return LayerProfile(count, tuple(layers))


# -- stdout performance summary ----------------------------------------------------------------

_PREFIX = re.compile(r"^\[[^\]]*\]\s*\[[A-Z]\]\s*")  # "[10/03/2024-10:47:59] [I] "
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([-+0-9.eE]+)\s*ms")


@dataclass(frozen=True)
class MetricStats:
    """One line of the summary, e.g. ``GPU Compute Time: min = ..., percentile(99%) = ...`` (ms)."""

    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    percentiles_ms: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PerformanceSummary:
    throughput_qps: float
    metrics: dict[str, MetricStats]  # "Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", ...
    total_host_walltime_s: float | None
    total_gpu_compute_s: float | None

    def metric(self, name: str) -> MetricStats:
        try:
            return self.metrics[name]
        except KeyError:
            raise BackendError(f"trtexec summary has no {name!r} line; it has {sorted(self.metrics)}") from None


def parse_performance_summary(stdout: str) -> PerformanceSummary:
    """Parse the ``=== Performance summary ===`` block of trtexec's standard output."""
    lines = [_PREFIX.sub("", line).strip() for line in stdout.splitlines()]
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("=== Performance summary ==="))
    except StopIteration:
        raise BackendError(
            "trtexec output has no '=== Performance summary ===' block: the run did not reach inference "
            "(build failed, or --skipInference / --buildOnly was given). Last lines: "
            + " | ".join(line for line in lines[-5:] if line)
        ) from None
    throughput: float | None = None
    metrics: dict[str, MetricStats] = {}
    walltime = gpu_total = None
    for line in lines[start + 1 :]:
        if line.startswith("==="):
            break
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        key, rest = key.strip(), rest.strip()
        if key == "Throughput":
            throughput = float(rest.split()[0])
        elif key == "Total Host Walltime":
            walltime = float(rest.split()[0])
        elif key == "Total GPU Compute Time":
            gpu_total = float(rest.split()[0])
        else:
            stats = {m.group(1): float(m.group(3)) for m in _STAT.finditer(rest)}
            if {"min", "max", "mean", "median"} <= set(stats):
                percentiles = {float(m.group(2)): float(m.group(3)) for m in _STAT.finditer(rest) if m.group(2)}
                metrics[key] = MetricStats(stats["min"], stats["max"], stats["mean"], stats["median"], percentiles)
    if throughput is None or not metrics:
        raise BackendError("trtexec performance summary lacks the Throughput line or the per-metric lines")
    return PerformanceSummary(throughput, metrics, walltime, gpu_total)


# -- exportLayerInfo -------------------------------------------------------------------------

# Layers whose math dominates a CNN: their realized precision is what "INT8 engine" means.
_COMPUTE_PARAMETER_TYPES = {"Convolution", "Deconvolution", "FullyConnected", "MatrixMultiply", "Gemm"}
_COMPUTE_LAYER_WORDS = ("convolution", "conv", "gemm", "matrixmultiply", "fullyconnected", "deconvolution")
# words in TensorRT tensor format strings / tactic names → precision (first match wins, order matters)
_FORMAT_WORDS: tuple[tuple[str, Precision], ...] = (
    ("int8", "int8"),
    ("fp8", "fp8"),
    ("bf16", "bf16"),
    ("bfloat16", "bf16"),
    ("fp16", "fp16"),
    ("half", "fp16"),
    ("fp32", "fp32"),
    ("float", "fp32"),
)
_TACTIC_WORDS: tuple[tuple[str, Precision], ...] = (
    ("i8i8", "int8"),
    ("int8", "int8"),
    ("i8f32", "int8"),
    ("i8816", "int8"),
    ("imma", "int8"),
    ("e4m3", "fp8"),
    ("bf16", "bf16"),
    ("f16f16", "fp16"),
    ("fp16", "fp16"),
    ("h884", "fp16"),
    ("h1688", "fp16"),
    ("h16816", "fp16"),
    ("hmma", "fp16"),
    ("f32f32", "fp32"),
    ("tf32", "fp32"),
    ("fp32", "fp32"),
    ("s884", "fp32"),
    ("scudnn", "fp32"),
    ("sgemm", "fp32"),
)


def precision_of_format(text: str) -> Precision:
    """``"Thirty-two wide channel vectorized row major Int8 format"`` → ``int8`` etc."""
    lowered = text.lower()
    for word, precision in _FORMAT_WORDS:
        if word in lowered:
            return precision
    return "unknown"


def _precision_of_tactic(name: str) -> Precision:
    lowered = name.lower()
    for word, precision in _TACTIC_WORDS:
        if word in lowered:
            return precision
    return "unknown"


@dataclass(frozen=True)
class EngineLayer:
    """One layer of ``--exportLayerInfo`` (detailed form)."""

    name: str
    layer_type: str
    parameter_type: str
    input_formats: tuple[str, ...]
    output_formats: tuple[str, ...]
    weights_type: str | None
    tactic_name: str | None
    onnx_nodes: tuple[str, ...]  # from TensorRT 10's Metadata ("[ONNX Layer: a]\x1e[ONNX Layer: b]")

    @property
    def is_compute(self) -> bool:
        """Convolution / GEMM / MatMul / FullyConnected layers (fused or not, on GPU or DLA)."""
        if self.parameter_type in _COMPUTE_PARAMETER_TYPES:
            return True
        lowered = self.layer_type.lower()
        return any(word in lowered for word in _COMPUTE_LAYER_WORDS)

    @property
    def precision(self) -> Precision:
        """The precision the layer computes in.

        Its first input's data type (a TensorRT kernel computes in its input type: an INT8
        convolution reads INT8 and may write FP16/FP32, like ``i8f32`` tactics); when the format
        is not known ("N/A due to dynamic shapes"), the weights' type, then the tactic name.
        """
        for fmt in self.input_formats[:1]:
            found = precision_of_format(fmt)
            if found != "unknown":
                return found
        if self.weights_type:
            found = precision_of_format(self.weights_type)
            if found != "unknown":
                return found
        if self.tactic_name:
            return _precision_of_tactic(self.tactic_name)
        return "unknown"


@dataclass(frozen=True)
class EngineInfo:
    """``--exportLayerInfo`` content: the layers and the I/O bindings."""

    layers: tuple[EngineLayer, ...]
    layer_names: tuple[str, ...]
    bindings: tuple[str, ...]
    detailed: bool  # False when built without --profilingVerbosity=detailed (names only)

    @property
    def compute_layers(self) -> tuple[EngineLayer, ...]:
        return tuple(layer for layer in self.layers if layer.is_compute)

    def precision_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.compute_layers:
            counts[layer.precision] = counts.get(layer.precision, 0) + 1
        return counts


def _formats(entries: Any) -> tuple[str, ...]:
    if not isinstance(entries, list):
        return ()
    return tuple(str(e.get("Format/Datatype", "")) for e in entries if isinstance(e, Mapping))


def parse_layer(record: Mapping[str, Any]) -> EngineLayer:
    """One detailed layer record (TensorRT 8.x or 10.x shape)."""
    if "Name" not in record:
        raise BackendError(f"layer record has no 'Name': keys {sorted(record)}")
    weights = record.get("Weights")
    metadata = str(record.get("Metadata", "") or "")
    nodes = tuple(m.group(1).strip() for m in re.finditer(r"\[ONNX Layer: ([^\]]*)\]", metadata))
    return EngineLayer(
        name=str(record["Name"]),
        layer_type=str(record.get("LayerType", "")),
        parameter_type=str(record.get("ParameterType", "")),
        input_formats=_formats(record.get("Inputs")),
        output_formats=_formats(record.get("Outputs")),
        weights_type=str(weights["Type"]) if isinstance(weights, Mapping) and "Type" in weights else None,
        tactic_name=str(record["TacticName"]) if record.get("TacticName") else None,
        onnx_nodes=nodes,
    )


def parse_layer_info(source: str | os.PathLike[str] | Mapping[str, Any]) -> EngineInfo:
    """Parse ``--exportLayerInfo`` output (detailed or names-only)."""
    data = _load(source, "--exportLayerInfo")
    if not isinstance(data, Mapping) or not isinstance(data.get("Layers"), list):
        raise BackendError(
            f'trtexec --exportLayerInfo output must be a JSON object with a "Layers" list; got {str(data)[:120]!r}'
        )
    raw_layers = data["Layers"]
    bindings = tuple(str(b) for b in data.get("Bindings", []) if isinstance(b, str))
    if all(isinstance(layer, str) for layer in raw_layers):
        return EngineInfo((), tuple(raw_layers), bindings, detailed=False)
    layers = []
    for index, record in enumerate(raw_layers):
        if not isinstance(record, Mapping):
            raise BackendError(f"--exportLayerInfo layer {index} mixes names and objects: {str(record)[:80]!r}")
        layers.append(parse_layer(record))
    return EngineInfo(tuple(layers), tuple(layer.name for layer in layers), bindings, detailed=True)


# -- realized precision -------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionReport:
    requested: str
    compute_layers: int
    in_requested: int  # computing in the requested precision or fewer bits
    fraction: float
    counts: dict[str, int]  # realized precision -> compute layers
    fp32_layers: tuple[str, ...]
    below_request: tuple[str, ...]  # compute layers above the requested bit width (fp32 included)
    allowed: tuple[str, ...]  # offenders excused by allow_layers

    def facts(self) -> dict[str, str | int | float]:
        out: dict[str, str | int | float] = {
            "realized_precision_fraction": round(self.fraction, 4),
            "compute_layers": self.compute_layers,
        }
        for precision, count in sorted(self.counts.items()):
            out[f"compute_layers_{precision}"] = count
        return out


def check_precision(
    info: EngineInfo,
    requested: RequestedPrecision,
    *,
    min_fraction: float = 0.8,
    allow_layers: Iterable[str] = (),
) -> PrecisionReport:
    """Check that the engine computes in the precision it was built for.

    The rule (documented in docs/tensorrt.md):

    - Only *compute layers* count: convolutions, deconvolutions, GEMM / MatMul / FullyConnected,
      fused or not, GPU or DLA. Reformat, pooling, point-wise and shuffle layers are not judged.
    - A compute layer *meets* the request when it computes in the requested precision or in fewer
      bits (INT8 meets an FP16 request). Its precision is its input's data type (see
      :attr:`EngineLayer.precision`).
    - Fail when any compute layer computes in FP32 although FP16 or INT8 was requested (the silent
      fallback: a layer without Q/DQ around it, or one the DLA cannot run), unless its name contains
      one of ``allow_layers``; or when fewer than ``min_fraction`` of the compute layers meet the
      request (an INT8 engine that quietly runs most convolutions in FP16).
    - Layer info without ``--profilingVerbosity=detailed`` cannot be judged and fails.
    """
    if requested not in ("fp32", "fp16", "int8"):
        raise BackendError(f"requested precision {requested!r} is not one of fp32, fp16, int8")
    if not 0.0 <= min_fraction <= 1.0:
        raise BackendError(f"min_fraction must be within [0, 1], got {min_fraction}")
    if not info.detailed:
        raise PrecisionMismatchError(
            f"cannot check the realized precision ({requested} requested): the layer info has layer names only "
            f"({len(info.layer_names)} layers). Build the engine with --profilingVerbosity=detailed "
            "(TrtexecBuildOptions does this by default) and --exportLayerInfo"
        )
    compute = info.compute_layers
    if not compute:
        raise PrecisionMismatchError(
            f"the engine's layer info has no convolution / GEMM / MatMul layer among its {len(info.layers)} layers, "
            f"so its realized precision ({requested} requested) cannot be checked; layer types: "
            + ", ".join(sorted({layer.layer_type for layer in info.layers}))
        )
    allow = tuple(allow_layers)
    want_bits = _BITS[requested]
    meets = [layer for layer in compute if _BITS.get(layer.precision, 99) <= want_bits]
    offenders = [layer for layer in compute if _BITS.get(layer.precision, 99) > want_bits]
    excused = tuple(layer.name for layer in offenders if any(a in layer.name for a in allow))
    fp32 = tuple(
        layer.name for layer in offenders if layer.precision in ("fp32", "unknown") and layer.name not in excused
    )
    fraction = len(meets) / len(compute)
    report = PrecisionReport(
        requested=requested,
        compute_layers=len(compute),
        in_requested=len(meets),
        fraction=fraction,
        counts=info.precision_counts(),
        fp32_layers=fp32,
        below_request=tuple(layer.name for layer in offenders),
        allowed=excused,
    )
    problems = []
    if requested != "fp32" and fp32:
        problems.append(
            f"{len(fp32)} compute layer(s) run in FP32 (or an unreadable precision): " + "; ".join(fp32[:10])
        )
    if fraction < min_fraction:
        others = [f"{layer.name} [{layer.precision}]" for layer in offenders if layer.name not in excused]
        problems.append(
            f"only {len(meets)}/{len(compute)} compute layers ({fraction:.0%}) run in {requested} or below, "
            f"the minimum is {min_fraction:.0%}; the others: " + "; ".join(others[:10])
        )
    if problems:
        raise PrecisionMismatchError(
            f"engine built for {requested} did not realize it: "
            + " | ".join(problems)
            + ". Typical causes: a layer without QuantizeLinear/DequantizeLinear around it (explicit quantization), "
            "a missing calibration entry, or a layer the DLA cannot run (it fell back to the GPU in FP32). "
            "Fix the Q/DQ placement, or pass allow_layers=[...] for layers meant to stay in higher precision."
        )
    return report

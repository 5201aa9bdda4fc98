"""INT8 post-training static quantization of an ONNX model to QDQ form (ONNX Runtime's quantizer).

Two forms from one calibration pipeline, both QuantizeLinear/DequantizeLinear pairs with int8
per-channel weights and float model outputs:

- ``QuantizeConfig()`` (default): uint8 asymmetric activations, the form ONNX Runtime's x86 CPU
  provider runs fastest (ResNet-18 UFLD 288×800 on the 2-core AVX-512 VNNI machine: ~4× FP32).
- ``QuantizeConfig.tensorrt()``: TensorRT's explicit quantization, int8 with zero point 0 for
  activations and weights. It runs on ORT CPU too, ~25-30% slower than the default there
  (~3× FP32), because each Relu stays a float op between Q/DQ pairs.

``benchmarks/quantize_speed.py`` measures both; the numbers are in QuantizeConfig's docstring.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from edgematrix.errors import EdgeMatrixError, ModelError, UnknownNameError

if TYPE_CHECKING:
    import onnx

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethodName)
QuantTypeName = Literal["int8", "uint8"]
QUANT_TYPES: tuple[str, ...] = get_args(QuantTypeName)
ActivationTypeName = Literal["auto", "int8", "uint8"]

# Ops whose int8 kernels pay off (ORT CPU: QLinearConv, QGemm, QLinearAdd ...; TensorRT: fused
# int8 layers) ...
COMPUTE_OP_TYPES: tuple[str, ...] = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Relu", "Clip",
    "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Resize",
)  # fmt: skip
# ... and data-movement ops, quantized with their input's scale so that int8 flows through them
# (Conv → Flatten → Gemm stays int8). Pairs left on a path that reaches no compute op (a head's
# Slice/Reshape into the model outputs) are removed afterwards: outputs stay float.
MOVEMENT_OP_TYPES: tuple[str, ...] = (
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity",
)  # fmt: skip
DEFAULT_OP_TYPES: tuple[str, ...] = COMPUTE_OP_TYPES + MOVEMENT_OP_TYPES

# Histogram methods keep every intermediate tensor of a chunk in memory; this many images per chunk
# bounds that (ResNet-18 at 288×800 holds ~40 MB of activations per image).
_CALIBRATION_CHUNK = 8

# Calibration ranges of the last models quantized in this process, by (model bytes, data,
# calibration settings): a mixed-precision sensitivity search quantizes one model dozens of times
# with different nodes_to_exclude, and the ranges do not depend on which nodes are excluded.
_RANGES_MEMO: dict[str, Any] = {}
_RANGES_MEMO_SIZE = 4


def _ranges_key(fp32_path: Path, samples: list[dict[str, np.ndarray]], config: QuantizeConfig) -> str:
    h = hashlib.sha256(fp32_path.read_bytes())
    for sample in samples:
        for name in sorted(sample):
            h.update(sample[name].tobytes())
    settings = (config.method, config.percentile, config.histogram_bins, config.symmetric_activations)
    h.update(repr((settings, config.op_types, config.preprocess)).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize.

    The defaults are for ONNX Runtime's x86 CPU provider: uint8 activations with asymmetric ranges
    (Relu/Clip fold into the zero point and vanish), int8 per-channel weights (U8S8, the VNNI
    kernels' native form). That model is *not* TensorRT-consumable; :meth:`tensorrt` gives the
    explicit-quantization form TensorRT needs (int8, zero point 0 everywhere), which also runs on
    ORT CPU but slower: its Relus stay as float ops between Q/DQ pairs. Measured with
    ``benchmarks/quantize_speed.py`` (ResNet-18 UFLD 288×800, mid 512, 2-core AMD EPYC with
    AVX-512 VNNI, ORT 1.31, FP32/INT8 p50 in one interleaved run): default 3.75-4.07×, tensorrt()
    2.88-3.26× (INT8 p50 ~30-36 ms vs ~23-27 ms). On a 16-core Intel Xeon (AMX) host with two
    threads: 2.76× vs 1.76×.

    - ``method``: calibration, one of ``minmax``, ``entropy`` (KL divergence), ``percentile``.
      Default ``percentile``: on ResNet-18 UFLD (288×800, synthetic lane frames) it tracked FP32
      best (min output correlation 0.994 vs minmax 0.992, entropy 0.985 at 512 bins and 0.924 at
      1024: ONNX Runtime's KL search on signed histograms clips post-ReLU tensors hard).
    - ``calibration_images``: at most this many arrays are taken from the calibration iterable.
    - ``per_channel``: one weight scale per output channel (Conv axis 0, Gemm along its N axis).
    - ``percentile``: the percentile kept by ``method="percentile"``.
    - ``symmetric_activations``: activation ranges made symmetric around 0, so int8 activations
      get zero point 0 (TensorRT's explicit quantization requires it).
    - ``activation_type``: ``int8`` (S8S8, TensorRT) or ``uint8`` (U8S8, ORT x86's fast form; not
      TensorRT-consumable). ``auto`` (default) follows ``symmetric_activations``: symmetric → int8,
      asymmetric → uint8. uint8 with symmetric ranges (zero point 128) is refused: it is neither
      TensorRT-consumable nor fast (Relus cannot fold).
    - ``weight_type``: ``int8`` (per-channel symmetric; what every runtime here expects).
    - ``op_types``: op types to quantize (default :data:`DEFAULT_OP_TYPES`); empty means ONNX
      Runtime's whole registry, data-movement ops and model outputs included.
    - ``exclude_nodes``: node names left in float.
    - ``keep_removable_activations``: keep Relu/Clip between Q/DQ pairs (the quantizer drops them
      only for asymmetric activations, where the clip is implied by the zero point).
    - ``dedicated_qdq_pair``: ORT's DedicatedQDQPair (one pair per consumer, identical scales).
    - ``split_fanout``: give every consumer of a quantized activation its own Q/DQ pair with a
      scale a few ULP apart (relative 1e-7: numerically nil). ONNX Runtime's x86 CPU provider runs
      int8 activations by rewriting each Q→DQ pair to uint8, but only a pair whose Q has a single
      consumer; it merges identical pairs back (constant sharing + CSE), so a shared pair, as on
      every ResNet block input (conv and skip connection), leaves that Conv in float. Distinct
      scales keep them apart. No effect for uint8 activations, harmless for TensorRT.
    - ``add_qdq_pair_to_weight``: keep float weights behind Q→DQ instead of int8 initializers.
    - ``histogram_bins``: histogram size for ``entropy`` / ``percentile``. The entropy search tries
      thresholds from 255/bins of the largest |value| up: more bins clip harder and search slower.
    - ``preprocess``: run ``quant_pre_process`` (ORT graph optimization + shape inference) first.
    """

    method: CalibrationMethodName = "percentile"
    calibration_images: int = 64
    per_channel: bool = True
    percentile: float = 99.999
    symmetric_activations: bool = False
    activation_type: ActivationTypeName = "auto"
    weight_type: QuantTypeName = "int8"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude_nodes: tuple[str, ...] = ()
    keep_removable_activations: bool = False
    dedicated_qdq_pair: bool = False
    split_fanout: bool = True
    add_qdq_pair_to_weight: bool = False
    preprocess: bool = True
    histogram_bins: int = 512

    @classmethod
    def tensorrt(cls, **overrides: Any) -> QuantizeConfig:
        """TensorRT explicit quantization: int8 activations and weights, zero point 0 everywhere."""
        return cls(**{"activation_type": "int8", "weight_type": "int8", "symmetric_activations": True, **overrides})

    @classmethod
    def ort_cpu(cls, **overrides: Any) -> QuantizeConfig:
        """ONNX Runtime x86 CPU: uint8 asymmetric activations (the default)."""
        return cls(**{"symmetric_activations": False, **overrides})

    @property
    def resolved_activation_type(self) -> QuantTypeName:
        if self.activation_type == "auto":
            return "int8" if self.symmetric_activations else "uint8"
        return self.activation_type

    @property
    def tensorrt_compatible(self) -> bool:
        """True when every Q/DQ pair is signed int8 with zero point 0 (TensorRT explicit quantization)."""
        return self.resolved_activation_type == "int8" and self.weight_type == "int8" and self.symmetric_activations


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    method: str
    calibration_images: int
    quantized_nodes: int  # float ops that run on quantized inputs (Conv, Gemm, Add, ...)
    qdq_pairs: int  # QuantizeLinear nodes (each feeding one or more DequantizeLinear)


def quantize_static_qdq(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration: Iterable[np.ndarray | Mapping[str, np.ndarray]],
    *,
    input_name: str,
    config: QuantizeConfig = QuantizeConfig(),
) -> QuantizeResult:
    """Quantize ``fp32_path`` to an INT8 QDQ model at ``out_path``, calibrated on ``calibration``.

    ``calibration`` yields float32 NCHW arrays of input ``input_name``'s shape (batch 1), or, for a model
    of several inputs, one feed per sample (input name → array, every runtime input); the first
    ``config.calibration_images`` are used.
    """
    _validate_config(config)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    proto = _load_model(fp32_path)
    inputs = {i.name: i for i in proto.graph.input}
    initializers = {t.name for t in proto.graph.initializer}
    runtime_inputs = [n for n in inputs if n not in initializers]
    if input_name not in runtime_inputs:
        raise EdgeMatrixError(
            f"input {input_name!r} asked, but {fp32_path} has input(s) {', '.join(runtime_inputs) or '(none)'}; "
            "pass one of those as input_name."
        )
    expected = {n: _static_shape(inputs[n]) for n in runtime_inputs}
    floats = {n for n in runtime_inputs if inputs[n].type.tensor_type.elem_type in (1, 10, 11)}  # float, f16, f64
    arrays = _take_calibration(calibration, config.calibration_images, expected, input_name, floats)
    node_names = {n.name for n in proto.graph.node}
    missing = [n for n in config.exclude_nodes if n not in node_names]
    if missing:
        raise EdgeMatrixError(
            f"exclude_nodes names node(s) not in {fp32_path}: {', '.join(missing)}. "
            "Use the node names of the FP32 model (e.g. from onnx.load(path).graph.node)."
        )
    if out_path.resolve() == fp32_path.resolve():
        raise EdgeMatrixError(f"out_path {out_path} is the FP32 model itself; write the INT8 model elsewhere.")
    del proto
    return _quantize_impl(fp32_path, out_path, arrays, input_name=input_name, config=config)


def _validate_config(config: QuantizeConfig) -> None:
    if config.method not in CALIBRATION_METHODS:
        raise UnknownNameError(
            f"unknown calibration method {config.method!r}; valid methods: {', '.join(CALIBRATION_METHODS)}"
        )
    if config.activation_type not in get_args(ActivationTypeName):
        raise UnknownNameError(
            f"unknown activation_type {config.activation_type!r}; valid: {', '.join(get_args(ActivationTypeName))}"
        )
    if config.weight_type not in QUANT_TYPES:
        raise UnknownNameError(f"unknown weight_type {config.weight_type!r}; valid: {', '.join(QUANT_TYPES)}")
    if config.resolved_activation_type == "uint8" and config.symmetric_activations:
        raise EdgeMatrixError(
            "activation_type='uint8' with symmetric_activations=True gives zero point 128: not TensorRT-consumable "
            "and slow on ONNX Runtime (Relus cannot fold). Use QuantizeConfig() (uint8, asymmetric: ORT CPU) or "
            "QuantizeConfig.tensorrt() (int8, zero point 0)."
        )
    if config.calibration_images < 1:
        raise EdgeMatrixError(f"calibration_images must be >= 1; got {config.calibration_images}")
    if config.histogram_bins < 256:
        raise EdgeMatrixError(f"histogram_bins must be >= 256 (int8 has 255 levels); got {config.histogram_bins}")
    if not 0.0 < config.percentile <= 100.0:
        raise EdgeMatrixError(f"percentile must be in (0, 100]; got {config.percentile}")


def _load_model(path: Path) -> onnx.ModelProto:
    from edgematrix.export.onnx_export import load_onnx

    return load_onnx(path)


def _static_shape(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def _take_calibration(
    calibration: Iterable[np.ndarray | Mapping[str, np.ndarray]],
    limit: int,
    expected: dict[str, tuple[int | None, ...]],
    input_name: str,
    floats: set[str] | None = None,
) -> list[dict[str, np.ndarray]]:
    arrays: list[dict[str, np.ndarray]] = []
    for index, item in enumerate(calibration):
        if len(arrays) >= limit:
            break
        sample = dict(item) if isinstance(item, Mapping) else {input_name: item}
        missing = sorted(set(expected) - set(sample))
        if missing:
            raise EdgeMatrixError(
                f"calibration sample {index} feeds {', '.join(sorted(sample))}; the model's input(s) "
                f"{', '.join(missing)} are missing: pass one array per runtime input ({', '.join(expected)})."
            )
        fed: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            arr = np.asarray(sample[name])
            if name in (floats if floats is not None else {input_name}) and not np.issubdtype(arr.dtype, np.floating):
                raise EdgeMatrixError(
                    f"calibration array {index} has dtype {arr.dtype}; pass float32 NCHW arrays, preprocessed as "
                    "the model expects (e.g. edgematrix.data.lanes.preprocess)."
                )
            if arr.ndim == len(shape) - 1:
                arr = arr[None]  # a CHW image: add the batch axis
            if arr.ndim != len(shape) or any(e is not None and e != a for e, a in zip(shape, arr.shape, strict=True)):
                raise EdgeMatrixError(
                    f"calibration array {index} has shape {arr.shape}; input {name!r} of the model takes "
                    f"{tuple('?' if e is None else e for e in shape)}."
                )
            floating = np.issubdtype(arr.dtype, np.floating)
            fed[name] = np.ascontiguousarray(arr, dtype=np.float32 if floating else arr.dtype)
        arrays.append(fed)
    if not arrays:
        raise EdgeMatrixError(
            "no calibration data: the calibration iterable yielded no arrays. Pass at least one preprocessed "
            f"float32 image of the model's input shape (config asks for up to {limit})."
        )
    return arrays


class _ArrayReader:
    """CalibrationDataReader over in-memory arrays; ``set_range`` lets ORT calibrate in chunks."""

    def __init__(self, arrays: list[dict[str, np.ndarray]]) -> None:
        self._arrays = arrays
        self._iter: Iterator[dict[str, np.ndarray]] = iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def __len__(self) -> int:
        return len(self._arrays)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._arrays[start_index:end_index])


def _extra_options(config: QuantizeConfig) -> dict[str, Any]:
    return {
        # Symmetric ranges → zero point 0 for int8 (TensorRT). For uint8 activations this gives
        # zero point 128, which nothing needs; the flag is honoured anyway.
        "ActivationSymmetric": config.symmetric_activations,
        "WeightSymmetric": True,
        "QDQKeepRemovableActivations": config.keep_removable_activations,
        "DedicatedQDQPair": config.dedicated_qdq_pair,
        "AddQDQPairToWeight": config.add_qdq_pair_to_weight,
    }


def _quantize_impl(
    fp32_path: Path, out_path: Path, arrays: list[dict[str, np.ndarray]], *, input_name: str, config: QuantizeConfig
) -> QuantizeResult:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    qtypes = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgematrix-quant-") as tmp_dir:
        tmp = Path(tmp_dir)
        source = fp32_path
        if config.preprocess:
            prepped = tmp / "preprocessed.onnx"
            try:
                with _quiet():
                    quant_pre_process(str(fp32_path), str(prepped))
                source = prepped
            except Exception as exc:
                raise ModelError(
                    f"quant_pre_process (shape inference + ORT optimization) failed on {fp32_path}: "
                    f"{type(exc).__name__}: {exc}. Retry with QuantizeConfig(preprocess=False) or re-export the model."
                ) from exc
        cache = tmp / "calibration.json"
        staged = tmp / "quantized.onnx"
        try:
            with _quiet():
                memo_key = _ranges_key(fp32_path, arrays, config)
                ranges = _RANGES_MEMO.get(memo_key)
                if ranges is None:
                    ranges = _calibrate(source, tmp, arrays, config, methods[config.method])
                    while len(_RANGES_MEMO) >= _RANGES_MEMO_SIZE:
                        _RANGES_MEMO.pop(next(iter(_RANGES_MEMO)))
                    _RANGES_MEMO[memo_key] = ranges
                save_tensors_data(ranges, cache)
                quantize_static(
                    str(source),
                    str(staged),
                    None,  # ranges come from the cache written above
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(config.op_types) or None,
                    per_channel=config.per_channel,
                    reduce_range=False,  # VNNI / TensorRT: full 8-bit weights
                    activation_type=qtypes[config.resolved_activation_type],
                    weight_type=qtypes[config.weight_type],
                    nodes_to_exclude=list(config.exclude_nodes) or None,
                    calibrate_method=methods[config.method],
                    calibration_cache_path=str(cache),
                    extra_options=_extra_options(config),
                )
        except EdgeMatrixError:
            raise
        except Exception as exc:
            raise ModelError(
                f"ONNX Runtime could not quantize {fp32_path} ({config.method} calibration on {len(arrays)} "
                f"image(s)): {type(exc).__name__}: {exc}. Check that the model runs in ONNX Runtime "
                "(edgematrix.export.onnx_export.check_numerics) and that the calibration arrays match its input."
            ) from exc
        int8_acts = config.resolved_activation_type == "int8"
        if (config.split_fanout and int8_acts) or config.op_types:
            import onnx

            model = onnx.load(str(staged))
            if config.op_types:
                _strip_unused_pairs(model, set(config.op_types))
            if config.split_fanout and int8_acts:
                _split_fanout(model)
            onnx.save_model(model, str(staged))
        # Stage inside the destination folder, then rename: no partial file at out_path.
        fd, final_tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
        os.close(fd)
        try:
            shutil.copyfile(staged, final_tmp)
            quantized = _load_model(Path(final_tmp))
            os.replace(final_tmp, out_path)
        finally:
            Path(final_tmp).unlink(missing_ok=True)

    ops = [n.op_type for n in quantized.graph.node]
    return QuantizeResult(
        path=out_path,
        method=config.method,
        calibration_images=len(arrays),
        quantized_nodes=_count_quantized_nodes(quantized),
        qdq_pairs=ops.count("QuantizeLinear"),
    )


def _calibrate(
    model_path: Path, tmp: Path, arrays: list[dict[str, np.ndarray]], config: QuantizeConfig, method: Any
) -> Any:
    """Tensor ranges (ORT ``TensorsData``) from ``arrays``, collected chunk by chunk.

    Done here rather than inside ``quantize_static`` because quantize_static cannot set the
    histogram size: its entropy calibrator then uses 128 bins for 128 quantized bins, which leaves
    a single candidate threshold (the min/max range), i.e. "entropy" silently equals "minmax".
    """
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = list(config.op_types) or sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    calibrator = create_calibrator(
        model_path,
        op_types,
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=method,
        providers=["CPUExecutionProvider"],
        extra_options={
            "symmetric": config.symmetric_activations,
            "num_bins": config.histogram_bins,
            # int8: 255 levels across the symmetric range
            "num_quantized_bins": 255,
            "percentile": config.percentile,
        },
    )
    reader = _ArrayReader(arrays)
    for start in range(0, len(arrays), _CALIBRATION_CHUNK):
        reader.set_range(start, start + _CALIBRATION_CHUNK)
        calibrator.collect_data(reader)
    return calibrator.compute_data()


def _is_activation_q(node: onnx.NodeProto, initializers: set[str]) -> bool:
    return node.op_type == "QuantizeLinear" and node.input[0] not in initializers


def _strip_unused_pairs(model: onnx.ModelProto, op_types: set[str]) -> None:
    """Remove activation Q→DQ pairs from which no quantized compute op can be reached.

    The quantizer puts a pair on every quantized op's output; where that output only feeds
    data-movement ops and graph outputs (the last Gemm of a head, then Slice/Reshape), the pairs
    just round the model outputs to int8. Dropping them gives float outputs (ORT: QGemm with a
    float output; TensorRT: an int8 GEMM with a float output).
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    compute = op_types - set(MOVEMENT_OP_TYPES)
    transparent = (set(MOVEMENT_OP_TYPES) & op_types) | {"QuantizeLinear", "DequantizeLinear"}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    memo: dict[str, bool] = {}

    def reaches_compute(tensor: str) -> bool:
        if tensor not in memo:
            memo[tensor] = False  # cycle guard (graphs are acyclic; cheap insurance)
            memo[tensor] = any(
                user.op_type in compute
                or (user.op_type in transparent and any(reaches_compute(o) for o in user.output))
                for user in consumers.get(tensor, [])
            )
        return memo[tensor]

    doomed: list[onnx.NodeProto] = []
    renames: dict[str, str] = {}
    for q in graph.node:
        if not _is_activation_q(q, initializers) or q.output[0] in outputs:
            continue
        dqs = consumers.get(q.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or reaches_compute(dqs[0].output[0]):
            continue
        dq = dqs[0]
        doomed += [q, dq]
        if dq.output[0] in outputs:  # the producer takes the graph output's name
            renames[q.input[0]] = dq.output[0]
        else:  # the DQ's consumers read the producer's tensor
            renames[dq.output[0]] = q.input[0]
    if not doomed:
        return
    for node in doomed:
        graph.node.remove(node)
    for _ in range(len(renames)):  # resolve chains (a → b → c) introduced by consecutive pairs
        changed = False
        for key, value in renames.items():
            if value in renames and renames[value] != value:
                renames[key] = renames[value]
                changed = True
        if not changed:
            break
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    stale = [vi for vi in graph.value_info if vi.name in renames]
    for vi in stale:
        graph.value_info.remove(vi)
    used = {name for node in graph.node for name in node.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)  # the removed pairs' scales and zero points


def _split_fanout(model: onnx.ModelProto) -> None:
    """One Q→DQ pair per consumer, each with its own scale initializer (see ``split_fanout``)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    # 1. a DQ feeding several nodes: clone Q and DQ for every consumer after the first
    inserts: dict[str, list[onnx.NodeProto]] = {}  # consumer (by first output) -> nodes before it
    for q in list(graph.node):
        if not _is_activation_q(q, set(initializers)):
            continue
        dqs = [n for n in consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
        for dq in dqs:
            users = consumers.get(dq.output[0], [])
            if dq.output[0] in outputs or len(users) < 2:
                continue
            for k, user in enumerate(users[1:], start=1):
                q_out, dq_out = f"{q.output[0]}_split{k}", f"{dq.output[0]}_split{k}"
                q2 = helper.make_node("QuantizeLinear", list(q.input), [q_out], name=f"{q.name}_split{k}")
                q2.attribute.extend(q.attribute)
                dq2 = helper.make_node("DequantizeLinear", [q_out, *dq.input[1:]], [dq_out], name=f"{dq.name}_split{k}")
                dq2.attribute.extend(dq.attribute)
                for i, name in enumerate(user.input):
                    if name == dq.output[0]:
                        user.input[i] = dq_out
                inserts.setdefault(user.output[0], []).extend([q2, dq2])
    if inserts:  # rebuild the node list with each new pair just before its consumer (topological)
        ordered: list[onnx.NodeProto] = []
        for node in graph.node:
            ordered.extend(inserts.get(node.output[0], []))
            ordered.append(node)
        ordered = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
        del graph.node[:]
        graph.node.extend(ordered)

    # 2. several Qs of one tensor: give each its own scale value, nudged by k ULP
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for q in graph.node:
        if _is_activation_q(q, set(initializers)):
            by_input.setdefault(q.input[0], []).append(q)
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for qs in by_input.values():
        for k, q in enumerate(qs[1:], start=1):
            scale = initializers.get(q.input[1])
            if scale is None:
                continue
            value = numpy_helper.to_array(scale).astype(np.float32)
            for _ in range(k):
                value = np.nextafter(value, np.float32(np.inf), dtype=np.float32)
            name = f"{q.input[1]}_fanout{k}_{q.name}"
            graph.initializer.append(numpy_helper.from_array(value, name))
            initializers[name] = graph.initializer[-1]
            q.input[1] = name
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    dq.input[1] = name


def _count_quantized_nodes(model: onnx.ModelProto) -> int:
    """Float ops with at least one input coming from a DequantizeLinear."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(
        1
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs advice through the root logger and prints tqdm bars; keep that out."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Zero point of every QuantizeLinear, by node name (helper for tests and gates)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consts = {
        n.output[0]: next(a.t for a in n.attribute if a.name == "value")
        for n in model.graph.node
        if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)
    }
    out: dict[str, np.ndarray] = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        zp_name = n.input[2] if len(n.input) > 2 else ""
        tensor = inits.get(zp_name) or consts.get(zp_name)
        out[n.name] = numpy_helper.to_array(tensor) if tensor is not None else np.zeros((), np.uint8)
    return out

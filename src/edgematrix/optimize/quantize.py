"""INT8 post-training static quantization of an ONNX model to QDQ form (ONNX Runtime's quantizer).

The default output is *explicit* quantization as TensorRT consumes it: QuantizeLinear /
DequantizeLinear pairs with signed int8 and zero point 0 for activations and weights, weights
per output channel (axis 0 for Conv). ONNX Runtime's CPU provider fuses the same pairs into
QLinearConv / QGemm, so one file serves both; ``benchmarks/quantize_speed.py`` measures it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
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

# Histogram methods keep every intermediate tensor of a chunk in memory; this many images per chunk
# bounds that (ResNet-18 at 288×800 holds ~40 MB of activations per image).
_CALIBRATION_CHUNK = 8


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize. The defaults give a TensorRT-consumable QDQ model (see ``tensorrt_compatible``).

    - ``method``: calibration, one of ``minmax``, ``entropy`` (KL divergence), ``percentile``.
    - ``calibration_images``: at most this many arrays are taken from the calibration iterable.
    - ``per_channel``: one weight scale per output channel (Conv axis 0, Gemm along its N axis).
    - ``percentile``: the percentile kept by ``method="percentile"``.
    - ``symmetric_activations``: activation ranges made symmetric around 0, so int8 activations
      get zero point 0 (TensorRT's explicit quantization requires it).
    - ``activation_type`` / ``weight_type``: ``int8`` (S8S8, TensorRT) or ``uint8`` activations
      (U8S8, ONNX Runtime's historic x86 choice; not TensorRT-consumable).
    - ``op_types``: op types to quantize; empty means ONNX Runtime's full QDQ registry (Conv, Gemm,
      MatMul, Add, MaxPool, Relu, ...), which keeps activations int8 between ops.
    - ``exclude_nodes``: node names left in float.
    - ``keep_removable_activations``: keep Relu/Clip between Q/DQ pairs (the quantizer drops them
      only for asymmetric activations, where the clip is implied by the zero point).
    - ``dedicated_qdq_pair``: one Q/DQ pair per consumer instead of one shared pair.
    - ``add_qdq_pair_to_weight``: keep float weights behind Q→DQ instead of int8 initializers.
    - ``histogram_bins``: histogram size for ``entropy`` / ``percentile`` (the entropy search tries
      thresholds from ~1/4 of the largest |value| up; more bins reach lower, slower to search).
    - ``preprocess``: run ``quant_pre_process`` (ORT graph optimization + shape inference) first.
    """

    method: CalibrationMethodName = "entropy"
    calibration_images: int = 64
    per_channel: bool = True
    percentile: float = 99.999
    symmetric_activations: bool = True
    activation_type: QuantTypeName = "int8"
    weight_type: QuantTypeName = "int8"
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    keep_removable_activations: bool = False
    dedicated_qdq_pair: bool = False
    add_qdq_pair_to_weight: bool = False
    preprocess: bool = True
    histogram_bins: int = 1024

    @property
    def tensorrt_compatible(self) -> bool:
        """True when every Q/DQ pair is signed int8 with zero point 0 (TensorRT explicit quantization)."""
        return self.activation_type == "int8" and self.weight_type == "int8" and self.symmetric_activations


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
    calibration: Iterable[np.ndarray],
    *,
    input_name: str,
    config: QuantizeConfig = QuantizeConfig(),
) -> QuantizeResult:
    """Quantize ``fp32_path`` to an INT8 QDQ model at ``out_path``, calibrated on ``calibration``.

    ``calibration`` yields float32 NCHW arrays of the model's input shape (batch 1); the first
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
    expected = _static_shape(inputs[input_name])
    arrays = _take_calibration(calibration, config.calibration_images, expected, input_name)
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
    for field_name in ("activation_type", "weight_type"):
        value = getattr(config, field_name)
        if value not in QUANT_TYPES:
            raise UnknownNameError(f"unknown {field_name} {value!r}; valid: {', '.join(QUANT_TYPES)}")
    if config.calibration_images < 1:
        raise EdgeMatrixError(f"calibration_images must be >= 1; got {config.calibration_images}")
    if config.histogram_bins < 512:
        raise EdgeMatrixError(f"histogram_bins must be >= 512 (int8 needs 255 quantized bins); got {config.histogram_bins}")
    if not 0.0 < config.percentile <= 100.0:
        raise EdgeMatrixError(f"percentile must be in (0, 100]; got {config.percentile}")


def _load_model(path: Path) -> onnx.ModelProto:
    from edgematrix.export.onnx_export import load_onnx

    return load_onnx(path)


def _static_shape(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def _take_calibration(
    calibration: Iterable[np.ndarray], limit: int, expected: tuple[int | None, ...], input_name: str
) -> list[np.ndarray]:
    arrays: list[np.ndarray] = []
    for index, item in enumerate(calibration):
        if len(arrays) >= limit:
            break
        arr = np.asarray(item)
        if not np.issubdtype(arr.dtype, np.floating):
            raise EdgeMatrixError(
                f"calibration array {index} has dtype {arr.dtype}; pass float32 NCHW arrays, preprocessed as "
                "the model expects (e.g. edgematrix.data.lanes.preprocess)."
            )
        if arr.ndim == len(expected) - 1:
            arr = arr[None]  # a CHW image: add the batch axis
        if arr.ndim != len(expected) or any(e is not None and e != a for e, a in zip(expected, arr.shape, strict=True)):
            raise EdgeMatrixError(
                f"calibration array {index} has shape {arr.shape}; input {input_name!r} of the model takes "
                f"{tuple('?' if e is None else e for e in expected)}."
            )
        arrays.append(np.ascontiguousarray(arr, dtype=np.float32))
    if not arrays:
        raise EdgeMatrixError(
            "no calibration data: the calibration iterable yielded no arrays. Pass at least one preprocessed "
            f"float32 image of the model's input shape (config asks for up to {limit})."
        )
    return arrays


class _ArrayReader:
    """CalibrationDataReader over in-memory arrays; ``set_range`` lets ORT calibrate in chunks."""

    def __init__(self, input_name: str, arrays: list[np.ndarray]) -> None:
        self._input_name = input_name
        self._arrays = arrays
        self._iter: Iterator[np.ndarray] = iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        arr = next(self._iter, None)
        return None if arr is None else {self._input_name: arr}

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
    fp32_path: Path, out_path: Path, arrays: list[np.ndarray], *, input_name: str, config: QuantizeConfig
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
                ranges = _calibrate(source, tmp, arrays, input_name, config, methods[config.method])
                save_tensors_data(ranges, cache)
                quantize_static(
                    str(source),
                    str(staged),
                    None,  # ranges come from the cache written above
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(config.op_types) or None,
                    per_channel=config.per_channel,
                    reduce_range=False,  # VNNI / TensorRT: full 8-bit weights
                    activation_type=qtypes[config.activation_type],
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
    model_path: Path, tmp: Path, arrays: list[np.ndarray], input_name: str, config: QuantizeConfig, method: Any
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
    reader = _ArrayReader(input_name, arrays)
    for start in range(0, len(arrays), _CALIBRATION_CHUNK):
        reader.set_range(start, start + _CALIBRATION_CHUNK)
        calibrator.collect_data(reader)
    return calibrator.compute_data()


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


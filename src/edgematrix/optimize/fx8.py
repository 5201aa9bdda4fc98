"""FX8 emulation: a symmetric INT8 QDQ model rewritten to the power-of-two scales TI's TIDL uses.

TI's deep-learning accelerator (C7x + MMA on TDA4VM) computes in 8-bit fixed point. TI's
quantization guide (TexasInstruments/edgeai-tidl-tools ``docs/tidl_fsg_quantization.md``, "B.1
Simple Calibration") states that TIDL "supports only power of 2 scales for feature maps" and power of
2 or non power of 2 scales for parameters (``advanced_options:quantization_scale_type``: 1 = power of
2, TI's recommendation for TDA4VM in edgeai-benchmark), and that asymmetric quantization is
supported "by all devices except TDA4VM/AM68PA". A power-of-two scale turns every requantization into
a bit shift, which is what the fixed-point hardware does.

:func:`fx8_from_qdq` takes the QDQ model edgematrix's quantizer writes in TensorRT/TIDL form
(``QuantizeConfig.tensorrt()``: int8, zero point 0, per-channel weights) and rewrites, for every
QuantizeLinear / DequantizeLinear:

- each scale ``s`` (per-tensor or per-channel) to ``2**ceil(log2(s))``: rounded **up**, so the
  calibrated range still fits in 8 bits and no value that INT8 represents gets clipped; the price is
  up to one bit of resolution (a step at most 2× the INT8 step). Rounding to the nearest power of two
  would halve some steps but clip ranges by up to 2×; TI's calibration picks the scale from the
  range's min/max, so covering the range is the rule followed here. A scale less than 1e-5 above a
  power of two rounds down to it (edgematrix's fan-out split nudges copies of a scale by a few ULPs).
- int8 weight initializers behind a DequantizeLinear: requantized to the new scale,
  ``round(w * s_old / s_new)``, per output channel.
- int32 biases (scale = input scale × weight scale): their scale becomes the product of the new
  power-of-two input and weight scales (itself a power of two) and the values are requantized.

Zero points stay 0 (and must be 0 on input). The result runs on ONNX Runtime like any QDQ model,
so the accuracy it gives is the accuracy of an 8-bit power-of-two fixed-point deployment (up to
TIDL's own rounding details, which this emulation does not model: it was not compared with TIDL's
output on TI tools or a TDA4 here). :func:`verify_power_of_two` checks every Q/DQ node.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgematrix.errors import EdgeMatrixError, ModelError, QuantizationFormatError

if TYPE_CHECKING:
    import onnx

_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: a scale at most this much (relative) above a power of two rounds down to it instead of up
_POW2_TOLERANCE = 1e-5
_INT_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255), np.dtype(np.int32): (-(2**31), 2**31 - 1)}

TensorKind = Literal["activation", "weight", "bias"]


def pow2_ceil(scale: np.ndarray) -> np.ndarray:
    """Each positive scale rounded up to a power of two (see the module docstring for the tolerance)."""
    s = np.asarray(scale, dtype=np.float64)
    exponent = np.ceil(np.log2(s) - math.log2(1.0 + _POW2_TOLERANCE))
    return np.exp2(exponent).astype(np.float32)


def is_power_of_two(values: np.ndarray) -> np.ndarray:
    """Elementwise: a positive finite float whose mantissa is exactly 0.5 (frexp) is a power of two."""
    v = np.asarray(values, dtype=np.float64)
    mantissa, _ = np.frexp(v)
    return np.isfinite(v) & (v > 0) & (mantissa == 0.5)


@dataclass(frozen=True)
class ScaleChange:
    """One rewritten scale tensor."""

    tensor: str
    kind: TensorKind
    nodes: tuple[str, ...]  # the Q/DQ nodes that use it
    channels: int
    max_ratio: float  # max new/old over channels: [1, 2) for activations / weights, [1, 4) for biases
    mean_log2_ratio: float  # bits of resolution given up, averaged over channels


@dataclass(frozen=True)
class Fx8Report:
    path: Path
    qdq_nodes: int
    changes: tuple[ScaleChange, ...]
    weights_requantized: int
    biases_requantized: int

    def summary(self) -> dict[str, float | int]:
        """Plain numbers for ``extra_info``."""
        ratios = [c.max_ratio for c in self.changes]
        bits = [c.mean_log2_ratio for c in self.changes]
        by_kind = {kind: sum(1 for c in self.changes if c.kind == kind) for kind in ("activation", "weight", "bias")}
        return {
            "fx8_qdq_nodes": self.qdq_nodes,
            "fx8_scales_rewritten": len(self.changes),
            "fx8_activation_scales": by_kind["activation"],
            "fx8_weight_scales": by_kind["weight"],
            "fx8_bias_scales": by_kind["bias"],
            "fx8_weights_requantized": self.weights_requantized,
            "fx8_biases_requantized": self.biases_requantized,
            "fx8_max_scale_ratio": max(ratios) if ratios else 1.0,
            "fx8_mean_bits_lost": float(np.mean(bits)) if bits else 0.0,
        }


@dataclass(frozen=True)
class Fx8Verification:
    qdq_nodes: int
    scale_tensors: int


class _Tensors:
    """Constant tensors of a graph by name: initializers and Constant nodes (both editable in place)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.protos: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.protos[node.output[0]] = attr.t

    def get(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        proto = self.protos.get(name)
        return None if proto is None else numpy_helper.to_array(proto)

    def set(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        proto = self.protos[name]
        proto.CopyFrom(numpy_helper.from_array(value, proto.name))


def _load(model: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelError(
            f"QDQ model {str(path)!r} does not exist; quantize the model first (edgematrix.optimize.quantize)"
        )
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def _qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in _QDQ]


def _axis(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 1)


def _broadcast(scale: np.ndarray, data: np.ndarray, axis: int) -> np.ndarray:
    if scale.ndim == 0:
        return scale
    shape = [1] * data.ndim
    shape[axis % data.ndim] = scale.size
    return scale.reshape(shape)


def _check_symmetric(model: onnx.ModelProto, tensors: _Tensors) -> list[str]:
    """Names of Q/DQ nodes whose zero point is not all zeros."""
    offenders = []
    for node in _qdq_nodes(model):
        if len(node.input) > 2 and node.input[2]:
            zp = tensors.get(node.input[2])
            if zp is None:
                offenders.append(
                    f"{node.name or node.output[0]} (zero point {node.input[2]!r} is computed, not constant)"
                )
            elif np.any(zp != 0):
                offenders.append(f"{node.name or node.output[0]} (zero point {zp.ravel()[:4].tolist()})")
    return offenders


def _kinds(model: onnx.ModelProto, tensors: _Tensors) -> Iterator[tuple[onnx.NodeProto, TensorKind]]:
    for node in _qdq_nodes(model):
        data = tensors.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if data is None:
            yield node, "activation"
        elif data.dtype == np.int32:
            yield node, "bias"
        else:
            yield node, "weight"


def fx8_from_qdq(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Fx8Report:
    """Write ``src`` (symmetric INT8 QDQ ONNX) to ``dst`` with power-of-two scales; see the module docstring."""
    import onnx

    src_path, dst_path = Path(src), Path(dst)
    if src_path.resolve() == dst_path.resolve():
        raise EdgeMatrixError(f"dst {dst_path} is the source model itself; write the FX8 model elsewhere")
    model = _load(src_path)
    qdq = _qdq_nodes(model)
    if not qdq:
        raise QuantizationFormatError(
            f"{src_path} has no QuantizeLinear/DequantizeLinear nodes: FX8 rewrites the scales of a QDQ model. "
            "Quantize it first: edgematrix.optimize.quantize.quantize_static_qdq(..., config=QuantizeConfig.tensorrt())"
        )
    tensors = _Tensors(model)
    asymmetric = _check_symmetric(model, tensors)
    if asymmetric:
        raise QuantizationFormatError(
            f"{src_path} is asymmetrically quantized: {len(asymmetric)} Q/DQ node(s) have non-zero zero points: "
            + "; ".join(asymmetric[:8])
            + ". TDA4VM's TIDL supports symmetric quantization only (zero point 0); requantize with "
            "QuantizeConfig.tensorrt() (int8, symmetric activations)"
        )

    # 1. new scales for activations and weights (biases follow from them)
    users: dict[str, list[onnx.NodeProto]] = {}
    kinds: dict[str, TensorKind] = {}
    for node, kind in _kinds(model, tensors):
        users.setdefault(node.input[1], []).append(node)
        kinds[node.input[1]] = kind if kinds.get(node.input[1]) in (None, kind) else "activation"
    new_scales: dict[str, np.ndarray] = {}
    old_scales: dict[str, np.ndarray] = {}
    for name, kind in kinds.items():
        old = tensors.get(name)
        if old is None:
            raise QuantizationFormatError(
                f"scale {name!r} of {users[name][0].name or users[name][0].op_type} is computed at run time, not a "
                "constant; FX8 needs constant scales (static quantization)"
            )
        if not np.all(np.isfinite(old)) or np.any(old <= 0):
            raise QuantizationFormatError(f"scale {name!r} has non-positive or non-finite values {old.ravel()[:4]}")
        old_scales[name] = old.astype(np.float32)
        if kind != "bias":
            new_scales[name] = pow2_ceil(old).reshape(old.shape)

    # 2. biases: scale = new input scale × new weight scale, from the consumer's other inputs
    dq_by_output = {n.output[0]: n for n in qdq if n.op_type == "DequantizeLinear"}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for name, kind in kinds.items():
        if kind != "bias":
            continue
        product = None
        for dq in users[name]:
            for op in consumers.get(dq.output[0], []):
                x_dq, w_dq = (dq_by_output.get(op.input[i]) if len(op.input) > i else None for i in (0, 1))
                if (
                    x_dq is not None
                    and w_dq is not None
                    and x_dq.input[1] in new_scales
                    and w_dq.input[1] in new_scales
                ):
                    product = (new_scales[x_dq.input[1]] * new_scales[w_dq.input[1]]).astype(np.float32)
        new_scales[name] = (
            product.reshape(old_scales[name].shape) if product is not None else pow2_ceil(old_scales[name])
        )

    # 3. requantize constant int8 weights / int32 biases to their new scales
    weights = biases = 0
    for node, kind in _kinds(model, tensors):
        if kind == "activation":
            continue
        data = tensors.get(node.input[0])
        assert data is not None
        ratio = _broadcast(old_scales[node.input[1]], data, _axis(node)) / _broadcast(
            new_scales[node.input[1]], data, _axis(node)
        )
        lo, hi = _INT_RANGES.get(data.dtype, (None, None))
        if lo is None:
            raise QuantizationFormatError(f"{node.name}: quantized constant {node.input[0]!r} has dtype {data.dtype}")
        values = np.rint(data.astype(np.float64) * ratio)
        if np.any(values < lo) or np.any(values > hi):
            raise QuantizationFormatError(f"{node.name}: requantized {node.input[0]!r} overflows {data.dtype}")
        tensors.set(node.input[0], values.astype(data.dtype))
        if kind == "weight":
            weights += 1
        else:
            biases += 1

    for name, value in new_scales.items():
        tensors.set(name, value.astype(np.float32).reshape(old_scales[name].shape))

    changes = []
    for name, kind in kinds.items():
        ratio = (new_scales[name].astype(np.float64) / old_scales[name].astype(np.float64)).ravel()
        changes.append(
            ScaleChange(
                tensor=name,
                kind=kind,
                nodes=tuple(n.name or n.output[0] for n in users[name]),
                channels=int(ratio.size),
                max_ratio=float(ratio.max()),
                mean_log2_ratio=float(np.mean(np.log2(ratio))),
            )
        )
    verify_power_of_two(model)
    onnx.checker.check_model(model)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{dst_path.name}.", suffix=".tmp", dir=dst_path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, staged)
        os.replace(staged, dst_path)
    finally:
        Path(staged).unlink(missing_ok=True)
    return Fx8Report(dst_path, len(qdq), tuple(changes), weights, biases)


def verify_power_of_two(model: str | os.PathLike[str] | onnx.ModelProto) -> Fx8Verification:
    """Check every QuantizeLinear / DequantizeLinear: constant power-of-two scales, zero points 0.

    Raises :class:`~edgematrix.errors.QuantizationFormatError` listing every offending node.
    """
    proto = _load(model)
    qdq = _qdq_nodes(proto)
    if not qdq:
        raise QuantizationFormatError("the model has no QuantizeLinear/DequantizeLinear nodes to verify")
    tensors = _Tensors(proto)
    offenders = _check_symmetric(proto, tensors)
    scale_names = set()
    for node in qdq:
        scale_names.add(node.input[1])
        scale = tensors.get(node.input[1])
        label = node.name or node.output[0]
        if scale is None:
            offenders.append(f"{label} (scale {node.input[1]!r} is not a constant)")
        elif not np.all(is_power_of_two(scale)):
            bad = np.asarray(scale).ravel()[~is_power_of_two(scale).ravel()]
            offenders.append(f"{label} (scale {node.input[1]!r}: {bad[:3].tolist()} not powers of two)")
    if offenders:
        raise QuantizationFormatError(
            f"{len(offenders)} of {len(qdq)} Q/DQ node(s) are not FX8 (power-of-two scale, zero point 0): "
            + "; ".join(offenders[:12])
            + (f"; ... {len(offenders) - 12} more" if len(offenders) > 12 else "")
            + ". Rewrite the model with edgematrix.optimize.fx8.fx8_from_qdq"
        )
    return Fx8Verification(qdq_nodes=len(qdq), scale_tensors=len(scale_names))

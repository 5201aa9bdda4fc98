"""Quantization-aware training with NVIDIA ModelOpt, exported to QDQ ONNX.

``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`` inserts fake quantizers (int8,
per-channel weights, per-tensor activations, symmetric: TensorRT's explicit-quantization form) and
calibrates their ranges on ``forward_loop``; the model is then fine-tuned with the quantizers in
the graph (straight-through estimator), here by distillation from the FP32 model
(:mod:`edgematrix.train.distill`). The TorchScript exporter writes each fake quantizer as a
QuantizeLinear/DequantizeLinear pair, the same form as PTQ's ``QuantizeConfig.tensorrt()`` model;
ONNX Runtime and TensorRT run it. (torch's dynamo exporter cannot trace ModelOpt's quantizers,
and torch.ao's FX QAT does not export: DESIGN.md, "Paths checked".)

BatchNorm is folded into the preceding convolution first: a Conv → BatchNormalization between
Q/DQ pairs would keep the convolution in float on every runtime.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import itertools
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgematrix.errors import EdgeMatrixError, ModelError

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

    from edgematrix.data.lanes import LaneSplit
    from edgematrix.train.distill import DistillConfig


@dataclass(frozen=True)
class QatResult:
    path: Path  # ModelOpt's QDQ export (TensorRT's explicit-quantization form)
    fp32_path: Path  # the QAT-trained weights without the fake quantizers, FP32 ONNX (for the PTQ pipeline)
    qdq_pairs: int
    max_rel_diff: float  # max |ORT - torch fake-quant| / max |torch| on a calibration image
    folded_batchnorms: int
    calibration_images: int
    history: list[dict[str, float]]
    seconds: float


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution into it (in place, eval semantics).

    Pairs found: consecutive ``Conv, BatchNorm`` in an ``nn.Sequential`` and sibling attributes
    ``convX`` / ``bnX`` (torchvision's ResNet layout). The BatchNorm becomes ``nn.Identity``.
    Returns the number folded.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    was_training = model.training
    model.eval()
    folded = 0
    for parent in list(model.modules()):
        if isinstance(parent, nn.Sequential):
            keys = list(parent._modules)
            for a, b in itertools.pairwise(keys):
                first, second = parent._modules[a], parent._modules[b]
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                    parent._modules[a] = fuse_conv_bn_eval(first, second)
                    parent._modules[b] = nn.Identity()
                    folded += 1
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and name.startswith("conv"):
                bn_name = "bn" + name[len("conv") :]
                norm = parent._modules.get(bn_name)
                if isinstance(norm, nn.BatchNorm2d):
                    setattr(parent, name, fuse_conv_bn_eval(child, norm))
                    setattr(parent, bn_name, nn.Identity())
                    folded += 1
    model.train(was_training)
    return folded


def fold_weight_quantizers(proto: onnx.ModelProto) -> int:
    """Replace each QuantizeLinear of a constant weight by its int8 result (in place): the exporter
    writes float weights behind Q → DQ; PTQ's form, which runtimes fuse into int8 kernels and which
    is 4× smaller, stores the int8 weights behind DQ only. Returns the number folded."""
    from onnx import numpy_helper

    graph = proto.graph
    # Constant nodes (the exporter's scales and zero points) become initializers, as PTQ writes them
    constant_nodes = [n for n in graph.node if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)]
    for n in constant_nodes:
        tensor = next(a.t for a in n.attribute if a.name == "value")
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tensor), n.output[0]))
        graph.node.remove(n)
    inits = {t.name: t for t in graph.initializer}
    consts: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    folded = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in inits or len(q.input) < 3:
            continue
        w, scale, zp = value(q.input[0]), value(q.input[1]), value(q.input[2])
        if w is None or scale is None or zp is None:
            continue
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        info = np.iinfo(zp.dtype)
        qw = np.clip(np.rint(w.astype(np.float64) / scale) + zp.astype(np.int64), info.min, info.max).astype(zp.dtype)
        graph.initializer.append(numpy_helper.from_array(qw, q.output[0]))
        folded.append(q)
    for q in folded:
        graph.node.remove(q)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return len(folded)


def _modelopt() -> Any:
    try:
        with warnings.catch_warnings():  # its import scripts modules with torch.jit (deprecated in torch 2.13)
            warnings.simplefilter("ignore", DeprecationWarning)
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise EdgeMatrixError(
            f"QAT needs NVIDIA ModelOpt ({exc}); install nvidia-modelopt together with requests and huggingface_hub "
            "(its imports need them but it does not declare them)"
        ) from exc
    return mtq


def quantize_for_qat(model: nn.Module, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """Insert ModelOpt int8 fake quantizers into ``model`` (in place) calibrated on ``calibration``."""
    mtq = _modelopt()
    if not calibration:
        raise EdgeMatrixError("QAT calibration needs at least one preprocessed input tensor")

    def forward_loop(m: nn.Module) -> None:
        import torch

        with torch.no_grad():
            for x in calibration:
                m(x)

    model.eval()
    with _quiet():
        return mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)


def export_qdq_onnx(
    model: nn.Module, input_shape: Sequence[int], path: Path, output_names: Sequence[str], example: np.ndarray
) -> tuple[int, float]:
    """Export a fake-quantized model to QDQ ONNX (atomically).

    Returns (DequantizeLinear nodes, max |ORT - torch| / max |torch| over the outputs).

    Weights are stored as int8 initializers behind DequantizeLinear (:func:`fold_weight_quantizers`), and
    every consumer of a quantized activation gets its own Q/DQ pair, as PTQ's models.
    """
    import onnx
    import onnxruntime as ort
    import torch

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32)).reshape(*input_shape)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model, (x,), str(tmp), input_names=["input"], output_names=list(output_names), opset_version=17,
                dynamo=False, do_constant_folding=True,
            )  # fmt: skip
            reference = [t.numpy() for t in model(x)]
        proto = onnx.load(str(tmp))
        fold_weight_quantizers(proto)
        from edgematrix.optimize.quantize import _split_fanout

        _split_fanout(proto)  # one Q/DQ pair per consumer: ORT's int8 kernels need it (see QuantizeConfig)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
        pairs = sum(1 for n in proto.graph.node if n.op_type == "DequantizeLinear")
        if pairs == 0:
            raise ModelError(
                f"the QAT export of {type(model).__name__} has no DequantizeLinear nodes; it is not quantized"
            )
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(list(output_names), {"input": x.numpy()})
        scale = max(float(np.abs(r).max()) for r in reference) or 1.0
        diff = max(float(np.abs(g - r).max()) for g, r in zip(got, reference, strict=True)) / scale
        os.replace(tmp, path)
    except EdgeMatrixError:
        raise
    except Exception as exc:
        raise ModelError(f"QAT ONNX export failed ({type(exc).__name__}: {exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return pairs, diff


def qat_lane_model(
    model: nn.Module,
    teacher: nn.Module,
    train: LaneSplit,
    calibration: Iterable[np.ndarray],
    config: DistillConfig,
    out_path: Path,
    fp32_path: Path,
    *,
    input_shape: Sequence[int],
    output_names: Sequence[str],
    progress: bool = True,
) -> QatResult:
    """:func:`qat_model` of a lane model, fine-tuned by distillation from ``teacher`` on ``train``."""
    from edgematrix.train.distill import distill_lane_model

    config.validate()
    no_cl = dataclasses.replace(config, channels_last=False)  # see DistillConfig.channels_last

    def finetune(student: nn.Module) -> Any:
        return distill_lane_model(student, teacher, train, no_cl, None, progress=progress, label="qat")

    return qat_model(
        model, calibration, finetune, out_path, fp32_path, input_shape=input_shape, output_names=output_names
    )


def qat_model(
    model: nn.Module,
    calibration: Iterable[np.ndarray],
    finetune: Callable[[nn.Module], Any],
    out_path: Path,
    fp32_path: Path,
    *,
    input_shape: Sequence[int],
    output_names: Sequence[str],
) -> QatResult:
    """QAT of a trained model: fold BN, fake-quantize, ``finetune(student)`` (the task's loop, which
    returns an object with ``history`` and ``seconds``), export.

    Writes two files: ``out_path``, ModelOpt's QDQ export (int8 symmetric, quantizers at the layer
    inputs: TensorRT's explicit-quantization form), and ``fp32_path``, the QAT-trained weights without
    the quantizers as FP32 ONNX, for runtimes whose int8 kernels need the PTQ form (ONNX Runtime CPU
    fuses a Conv into int8 only with a Q on its output: ModelOpt's QDQ runs slower than FP32 there).
    ``model`` is not modified (a copy is trained). ``calibration`` yields preprocessed float32 arrays
    of ``input_shape``. The student holds fake quantizers: ``finetune`` must keep it in contiguous
    memory format (ModelOpt's CPU fake quantization fails in backward on channels-last tensors).
    """
    import torch

    from edgematrix.export.onnx_export import export_onnx

    arrays = [np.asarray(a, dtype=np.float32).reshape(*input_shape) for a in calibration]
    if not arrays:
        raise EdgeMatrixError("QAT needs calibration images; none were given")
    student: Any = copy.deepcopy(model).eval()
    if getattr(student, "use_aux", False):  # training-only branch: not deployed, not quantized
        student.use_aux = False
        for name in ("aux", "aux_head"):
            if hasattr(student, name):
                delattr(student, name)
    folded = fold_batchnorm(student)
    plain = copy.deepcopy(student)
    quantize_for_qat(student, [torch.from_numpy(a) for a in arrays])
    trained = finetune(student)
    student.eval()
    pairs, diff = export_qdq_onnx(student, input_shape, out_path, output_names, arrays[0])
    weights = plain.state_dict()
    plain.load_state_dict({k: v for k, v in student.state_dict().items() if k in weights}, strict=True)
    export_onnx(plain.eval(), tuple(input_shape), fp32_path, output_names=output_names, input_name="input")
    return QatResult(out_path, fp32_path, pairs, diff, folded, len(arrays), trained.history, trained.seconds)


@contextlib.contextmanager
def _quiet() -> Any:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)

"""ONNX Runtime runner (CPU / CUDA / TensorRT execution providers)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.backends.onnxruntime.loader import ProviderSpec, SessionFromOnnx
from edgematrix.errors import BackendError

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

_QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "MatMulNBits",
}


def _np_dtype(ort_type: str, input_name: str) -> np.dtype:
    try:
        return np.dtype(_ORT_DTYPES[ort_type])
    except KeyError:
        raise BackendError(
            f"input {input_name!r} has type {ort_type}, which edgematrix does not feed; "
            f"supported: {', '.join(_ORT_DTYPES)}"
        ) from None


def graph_precision(path: str | os.PathLike[str]) -> str:
    """Precision a model file computes in, from its graph: ``int8`` (Q/DQ or integer ops), ``fp16``,
    ``bf16``, ``fp32``; ``unknown`` when ``onnx`` is not installed or the file cannot be parsed."""
    try:
        import onnx
    except ImportError:
        return "unknown"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return "unknown"
    ops = {node.op_type for node in model.graph.node}
    if ops & _QUANT_OPS:
        return "int8"
    counts: dict[int, int] = {}
    for init in model.graph.initializer:
        counts[init.data_type] = counts.get(init.data_type, 0) + 1
    tp = onnx.TensorProto
    float_types: dict[int, str] = {tp.FLOAT: "fp32", tp.FLOAT16: "fp16", tp.BFLOAT16: "bf16", tp.DOUBLE: "fp64"}
    found = {k: v for k, v in counts.items() if k in float_types}
    if not found:
        return "fp32" if any(i.type.tensor_type.elem_type == tp.FLOAT for i in model.graph.input) else "unknown"
    return float_types[max(found, key=lambda k: found[k])]


@backends.register("onnxruntime")
class OnnxrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime.

    ``path`` is an ONNX file (the loader options below then apply) or a ready loader such as
    :class:`SessionFromOnnx` (any callable returning an ``InferenceSession``). ``precision``
    overrides the precision detected from the graph (``int8`` for Q/DQ, ``fp16``, ``fp32``).
    """

    backend_name = "onnxruntime"
    runtime_modules = ("onnxruntime",)

    def __init__(
        self,
        path: str | os.PathLike[str] | Callable[[], Any],
        *,
        name: str | None = None,
        providers: Sequence[ProviderSpec] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        optimization: str = "all",
        precision: str | None = None,
    ) -> None:
        super().__init__(name)
        if callable(path):
            self.loader = path
        else:
            self.loader = SessionFromOnnx(
                path,
                providers=providers,
                intra_op_threads=intra_op_threads,
                allow_spinning=allow_spinning,
                optimization=optimization,
            )
        self._precision = precision
        self.session: Any = None
        self._output_names: list[str] = []

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """The target's execution providers in order (none named: the CPU provider, as when ONNX Runtime stands
        in for a device's runtime under emulation) and its thread count (0 = physical cores), every role."""
        providers = tuple(target.get("providers") or ("CPUExecutionProvider",))
        return {"providers": providers, "intra_op_threads": int(target.get("threads", 0))}

    def activate_impl(self) -> None:
        self.session = self.loader()
        self._output_names = [o.name for o in self.session.get_outputs()]

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return {i.name: TensorMeta(_np_dtype(i.type, i.name), tuple(i.shape)) for i in self.session.get_inputs()}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self._output_names, feed)
        except Exception as exc:
            raise BackendError(
                f"runner {self.name!r}: ONNX Runtime failed to run: {type(exc).__name__}: {exc}"
            ) from exc
        return dict(zip(self._output_names, outputs, strict=True))

    def release_impl(self) -> None:
        self.session = None
        self._output_names = []

    def facts_impl(self) -> Mapping[str, Fact]:
        import onnxruntime as ort

        facts: dict[str, Fact] = {"version": ort.__version__}
        model_path = getattr(self.loader, "path", None)
        if model_path is not None:
            facts["model"] = str(model_path)
            if Path(model_path).is_file():
                facts["model_bytes"] = Path(model_path).stat().st_size
        if self._precision is None:
            self._precision = graph_precision(model_path) if model_path is not None else "unknown"
        facts["precision"] = self._precision
        if self.session is not None:
            options = self.session.get_session_options()
            facts["provider"] = self.session.get_providers()[0]
            facts["providers"] = ",".join(self.session.get_providers())
            facts["intra_op_threads"] = int(options.intra_op_num_threads)
            facts["inter_op_threads"] = int(options.inter_op_num_threads)
            facts["graph_optimization"] = str(options.graph_optimization_level).rsplit(".", 1)[-1]
            for key, fact in (
                ("session.intra_op.allow_spinning", "intra_op_allow_spinning"),
                ("session.inter_op.allow_spinning", "inter_op_allow_spinning"),
            ):
                try:
                    facts[fact] = int(options.get_session_config_entry(key))
                except RuntimeError:  # not set: ONNX Runtime's default is to spin
                    facts[fact] = 1
        else:
            loader_threads = getattr(self.loader, "intra_op_threads_used", None)
            if loader_threads is not None:
                facts["intra_op_threads"] = int(loader_threads)
        return facts

"""ONNX Runtime runner (CPU / CUDA / TensorRT execution providers).

Two ways to run
---------------

- ``infer(feed)``: numpy in, numpy out (``InferenceSession.run``); on a GPU provider ONNX Runtime copies the
  inputs to the device and the outputs back and synchronizes at the end of the run. Accuracy passes use it.
- ``infer_device(x)``: torch tensors in, torch tensors out, through I/O binding: the inputs are bound where
  they already are (GPU memory for the CUDA / TensorRT providers, host memory for the CPU provider) and the
  outputs to tensors this runner allocates once per input shape on the same device, so no host copy happens
  in the call. On a GPU provider the run is *enqueued only*: the run option
  ``disable_synchronize_execution_providers=1`` skips ONNX Runtime's end-of-run stream synchronization,
  exactly like the torch runner's ``infer_device``. The latency harness times it with CUDA events.

Streams (GPU providers)
-----------------------

The session computes on a CUDA stream the runner takes from torch at activation
(``user_compute_stream``): torch's current stream when it is not the legacy default stream (the local
executor makes one stream current for all of its runners, so ONNX Runtime's kernels land on the very
stream the CUDA events are recorded on), else a stream of its own. ``infer_device`` called while another
stream is current makes the session's stream wait for it before the run and the current stream wait for the
session's after it (event waits on the device, no host sync), so events on the current stream still
bracket the run. Deactivation synchronizes the device before the session is dropped.

A QDQ (INT8) model on the CUDA execution provider without TensorRT runs dequantized float kernels: that is
not an INT8 measurement, so the runner refuses it and names the TensorRT execution provider.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.backends.onnxruntime.loader import (
    GPU_PROVIDERS,
    ProviderSpec,
    SessionFromOnnx,
    check_providers,
    cuda_provider_options,
    normalize_providers,
    provider_names,
)
from edgematrix.errors import BackendError

#: run option that leaves the end-of-run stream synchronization out (ONNX Runtime's
#: kOrtRunOptionsConfigDisableSynchronizeExecutionProviders)
DISABLE_SYNC = "disable_synchronize_execution_providers"
_TORCH_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}

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


class _Binding:
    """One I/O binding: the inputs' addresses and shapes it was bound with, and the output tensors."""

    __slots__ = ("io", "outputs", "ptrs")

    def __init__(self, io: Any, ptrs: tuple[int, ...], outputs: tuple[Any, ...]) -> None:
        self.io = io
        self.ptrs = ptrs
        self.outputs = outputs


@backends.register("onnxruntime")
class OnnxrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime.

    ``path`` is an ONNX file (the loader options below then apply) or a ready loader such as
    :class:`SessionFromOnnx` (any callable returning an ``InferenceSession``). ``precision``
    overrides the precision detected from the graph (``int8`` for Q/DQ, ``fp16``, ``fp32``).
    ``compute_stream`` (GPU providers): ``"torch"`` computes on a torch CUDA stream (see the module
    docstring), ``"ort"`` leaves the stream to ONNX Runtime (``infer`` only: such a run cannot be timed with
    events on torch's stream).
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
        compute_stream: str = "torch",
    ) -> None:
        super().__init__(name)
        if compute_stream not in ("torch", "ort"):
            raise BackendError(f"runner {self.name!r}: compute_stream must be 'torch' or 'ort', got {compute_stream!r}")
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
        self.compute_stream = compute_stream
        self.session: Any = None
        self._output_names: list[str] = []
        # what activation produced (device path)
        self._gpu = False
        self._device_id = 0
        self._stream: Any = None  # the torch stream the session computes on (GPU providers)
        self._stream_ptr: int | None = None
        self._stream_source = "none"
        self._run_options: Any = None
        self._bindings: dict[tuple[tuple[int, ...], ...], _Binding] = {}

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """The target's execution providers in order (none named: the CPU provider, as when ONNX Runtime stands
        in for a device's runtime under emulation) and its thread count (0 = physical cores), every role.

        A target naming ``CUDAExecutionProvider`` gets it with :func:`cuda_provider_options` (device 0, TF32 off
        so FP32 is FP32 — the FP32 reference and the float32 ops an FP16 model keeps alike, as the torch
        backend runs them —, exhaustive cuDNN algorithm search, arena grown as requested). An INT8 role
        on such a target runs on the TensorRT execution provider (INT8 and FP16 kernels enabled; what
        TensorRT rejects falls to CUDA): the CUDA provider alone would run a QDQ model's dequantized float
        kernels, which is not INT8.
        """
        names = tuple(target.get("providers") or ("CPUExecutionProvider",))
        threads = int(target.get("threads", 0))
        if "CUDAExecutionProvider" not in names:
            return {"providers": names, "intra_op_threads": threads}
        cuda = cuda_provider_options()
        providers: list[ProviderSpec] = []
        if precision == "int8" and role != "reference" and "TensorrtExecutionProvider" not in names:
            providers.append(
                (
                    "TensorrtExecutionProvider",
                    {"device_id": cuda["device_id"], "trt_int8_enable": True, "trt_fp16_enable": True},
                )
            )
        for name in names:
            if name == "CUDAExecutionProvider":
                providers.append((name, dict(cuda)))
            elif name == "TensorrtExecutionProvider":
                int8 = precision == "int8" and role != "reference"
                trt = {"device_id": cuda["device_id"], "trt_int8_enable": int8, "trt_fp16_enable": int8}
                providers.append((name, trt))
            else:
                providers.append(name)
        return {"providers": tuple(providers), "intra_op_threads": threads}

    # -- activation ------------------------------------------------------------------------------

    def _prepare_stream(self) -> None:
        """GPU providers of a :class:`SessionFromOnnx`: compute on a torch stream (``user_compute_stream``)."""
        loader = self.loader
        if not isinstance(loader, SessionFromOnnx) or self.compute_stream != "torch":
            return
        if not set(provider_names(loader.providers)) & GPU_PROVIDERS:
            return
        check_providers(loader.providers)  # a CPU-only onnxruntime: name the package, not the missing GPU
        torch = _cuda_torch(self.name)
        specs = list(loader.providers)
        self._device_id = _device_id(specs)
        device = torch.device("cuda", self._device_id)
        current = torch.cuda.current_stream(device)
        if current.cuda_stream != 0:  # ONNX Runtime reads stream 0 as "none given" and makes its own
            self._stream, self._stream_source = current, "torch current stream"
        else:
            self._stream, self._stream_source = torch.cuda.Stream(device), "runner's own torch stream"
        self._stream_ptr = int(self._stream.cuda_stream)
        out: list[ProviderSpec] = []
        for spec in specs:
            stream = {"has_user_compute_stream": True, "user_compute_stream": str(self._stream_ptr)}
            if isinstance(spec, tuple) and spec[0] in GPU_PROVIDERS:
                spec = (spec[0], {**spec[1], **stream})
            elif isinstance(spec, str) and spec in GPU_PROVIDERS:
                spec = (spec, {"device_id": self._device_id, **stream})
            out.append(spec)
        loader.providers = normalize_providers(out)

    def activate_impl(self) -> None:
        import onnxruntime as ort

        self._prepare_stream()
        self.session = self.loader()
        self._output_names = [o.name for o in self.session.get_outputs()]
        used = list(self.session.get_providers())
        self._gpu = bool(used) and used[0] in GPU_PROVIDERS
        if self._gpu:
            if self._precision is None:
                self._precision = self._graph_precision()
            if self._precision == "int8" and used[0] == "CUDAExecutionProvider":
                raise BackendError(
                    f"runner {self.name!r}: the model is quantized (QDQ / integer ops) and the session runs on "
                    "CUDAExecutionProvider without TensorRT: the CUDA provider computes it with dequantized float "
                    "kernels, which is not an INT8 measurement. INT8 on the GPU needs TensorrtExecutionProvider "
                    "(onnxruntime-gpu plus TensorRT 10 libraries)"
                )
            options = self.session.get_provider_options().get(used[0], {})
            self._device_id = int(options.get("device_id", self._device_id) or 0)
            ptr = int(options.get("user_compute_stream", 0) or 0)
            if self._stream is None and ptr and self.compute_stream == "torch":  # a ready loader set the stream
                torch = _cuda_torch(self.name)
                self._stream = torch.cuda.ExternalStream(ptr, device=torch.device("cuda", self._device_id))
                self._stream_ptr, self._stream_source = ptr, "the loader's user_compute_stream"
        self._run_options = ort.RunOptions()
        if self._gpu:
            self._run_options.add_run_config_entry(DISABLE_SYNC, "1")

    def _graph_precision(self) -> str:
        model_path = getattr(self.loader, "path", None)
        return graph_precision(model_path) if model_path is not None else "unknown"

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

    # -- the device path (I/O binding) --------------------------------------------------------------

    @property
    def on_gpu(self) -> bool:
        """The session computes on a GPU provider (CUDA / TensorRT); valid while active."""
        return self._gpu

    def infer_device(self, x: Any) -> tuple[Any, ...]:
        """Run once on torch tensors through I/O binding; on a GPU provider enqueue only (no host sync).

        ``x`` is a tensor (one-input models) or a mapping input name → tensor, of the input's dtype, on the
        session's device (``cuda:N`` for a GPU provider, the CPU otherwise). Returns the output tensors in
        output order: buffers of this runner, overwritten by the next call with the same input shapes
        (consume or ``clone()`` them first). Checks read tensor metadata only, which never syncs.
        """
        self._require_active("infer_device")
        feeds = self._device_feeds(x)
        binding = self._binding(feeds)
        if not self._gpu:
            self._run_binding(binding)
            return binding.outputs
        if self._stream is None:
            raise BackendError(
                f"runner {self.name!r}: the session computes on a stream of ONNX Runtime's own (compute_stream="
                f"{self.compute_stream!r}, no user_compute_stream), which work on torch's streams cannot be ordered "
                "with; use compute_stream='torch' for infer_device, or infer()"
            )
        torch = _cuda_torch(self.name)
        current = torch.cuda.current_stream(torch.device("cuda", self._device_id))
        if current.cuda_stream == self._stream_ptr:
            self._run_binding(binding)
        else:  # another stream is current: order the session's stream after it, and it after the session's
            self._stream.wait_stream(current)
            self._run_binding(binding)
            current.wait_stream(self._stream)
        return binding.outputs

    def _run_binding(self, binding: _Binding) -> None:
        try:
            self.session.run_with_iobinding(binding.io, self._run_options)
        except Exception as exc:
            raise BackendError(
                f"runner {self.name!r}: ONNX Runtime failed to run (I/O binding): {type(exc).__name__}: {exc}"
            ) from exc

    def _device_feeds(self, x: Any) -> dict[str, Any]:
        torch = _torch_module(self.name)
        meta = self.input_metadata()
        if isinstance(x, Mapping):
            feeds = dict(x)
        elif len(meta) == 1:
            feeds = {next(iter(meta)): x}
        else:
            raise BackendError(
                f"runner {self.name!r}: the model has {len(meta)} inputs ({', '.join(meta)}); pass infer_device "
                "a mapping input name -> tensor"
            )
        if set(feeds) != set(meta):
            raise BackendError(
                f"runner {self.name!r}: infer_device got inputs {sorted(feeds)}; expected {sorted(meta)}"
            )
        want_device = f"cuda:{self._device_id}" if self._gpu else "cpu"
        for input_name, want in meta.items():
            t = feeds[input_name]
            ok = (
                isinstance(t, torch.Tensor)
                and str(t.dtype).removeprefix("torch.") == str(want.dtype)
                and want.accepts_shape(tuple(t.shape))
                and str(t.device) == want_device
                and t.is_contiguous()
            )
            if not ok:
                got = (
                    f"a {str(t.dtype).removeprefix('torch.')} tensor of shape {list(t.shape)} on {t.device}"
                    + ("" if t.is_contiguous() else " (not contiguous)")
                    if isinstance(t, torch.Tensor)
                    else type(t).__name__
                )
                raise BackendError(
                    f"runner {self.name!r}: infer_device input {input_name!r} got {got}; expected a contiguous "
                    f"{want.describe()} tensor on {want_device}"
                )
        return feeds

    def _binding(self, feeds: dict[str, Any]) -> _Binding:
        """The binding for these input shapes (made once per shape), re-pointed when an input moved."""
        shapes = tuple(tuple(int(d) for d in feeds[n].shape) for n in sorted(feeds))
        ptrs = tuple(int(feeds[n].data_ptr()) for n in sorted(feeds))
        binding = self._bindings.get(shapes)
        if binding is None:
            binding = self._new_binding(feeds)
            self._bindings[shapes] = binding
        elif binding.ptrs != ptrs:
            self._bind_inputs(binding.io, feeds)
            binding.ptrs = ptrs
        return binding

    def _bind_inputs(self, io: Any, feeds: Mapping[str, Any]) -> None:
        device = "cuda" if self._gpu else "cpu"
        for input_name, t in feeds.items():
            dtype = np.dtype(str(t.dtype).removeprefix("torch."))
            io.bind_input(input_name, device, self._device_id, dtype, tuple(t.shape), int(t.data_ptr()))

    def _new_binding(self, feeds: Mapping[str, Any]) -> _Binding:
        """Bind the inputs; find the output shapes (from the graph, else from one run with outputs ONNX Runtime
        allocates), allocate the output tensors on the session's device and bind them."""
        torch = _torch_module(self.name)
        device = "cuda" if self._gpu else "cpu"
        io = self.session.io_binding()
        self._bind_inputs(io, feeds)
        outs = self.session.get_outputs()
        static = all(isinstance(o.shape, list) and all(isinstance(d, int) and d >= 0 for d in o.shape) for o in outs)
        static = static and all(isinstance(d, int) for i in self.session.get_inputs() for d in i.shape)
        if static:
            shapes = [tuple(int(d) for d in o.shape) for o in outs]
        else:  # one run (not timed: the first call of a shape is warm-up) tells the output shapes
            for o in outs:
                io.bind_output(o.name, device, self._device_id)
            self._run_binding(_Binding(io, (), ()))
            if self._gpu:
                torch.cuda.synchronize(self._device_id)
            shapes = [tuple(int(d) for d in v.shape()) for v in io.get_outputs()]
            io.clear_binding_outputs()
        torch_device = torch.device("cuda", self._device_id) if self._gpu else torch.device("cpu")
        tensors = []
        for o, shape in zip(outs, shapes, strict=True):
            dtype_name = _TORCH_DTYPES.get(o.type)
            if dtype_name is None:
                raise BackendError(
                    f"runner {self.name!r}: output {o.name!r} has type {o.type}, which infer_device does not bind; "
                    f"supported: {', '.join(_TORCH_DTYPES)}"
                )
            t = torch.empty(shape, dtype=getattr(torch, dtype_name), device=torch_device)
            io.bind_output(o.name, device, self._device_id, np.dtype(dtype_name), shape, int(t.data_ptr()))
            tensors.append(t)
        ptrs = tuple(int(feeds[n].data_ptr()) for n in sorted(feeds))
        return _Binding(io, ptrs, tuple(tensors))

    def deactivate_impl(self) -> None:
        if self._gpu:
            _cuda_torch(self.name).cuda.synchronize(self._device_id)  # queued runs finish before anything is freed

    def release_impl(self) -> None:
        self._bindings = {}
        self.session = None
        self._output_names = []
        self._run_options = None
        self._stream = None
        self._stream_ptr = None
        self._gpu = False

    # -- facts -----------------------------------------------------------------------------------

    def facts_impl(self) -> Mapping[str, Fact]:
        import onnxruntime as ort

        facts: dict[str, Fact] = {"version": ort.__version__}
        model_path = getattr(self.loader, "path", None)
        if model_path is not None:
            facts["model"] = str(model_path)
            if Path(model_path).is_file():
                facts["model_bytes"] = Path(model_path).stat().st_size
        if self._precision is None:
            self._precision = self._graph_precision()
        facts["precision"] = self._precision
        if self.session is not None:
            options = self.session.get_session_options()
            used = list(self.session.get_providers())
            facts["provider"] = used[0]
            facts["providers"] = ",".join(used)
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
            facts.update(self._gpu_facts(used))
        else:
            loader_threads = getattr(self.loader, "intra_op_threads_used", None)
            if loader_threads is not None:
                facts["intra_op_threads"] = int(loader_threads)
        return facts

    def _gpu_facts(self, used: list[str]) -> dict[str, Fact]:
        """The GPU providers' options exactly as the session reports them, and how the device path runs."""
        reported = self.session.get_provider_options()
        facts: dict[str, Fact] = {}
        parts = [
            f"{p}{{{';'.join(f'{k}={v}' for k, v in sorted(reported.get(p, {}).items()))}}}"
            for p in used
            if p in GPU_PROVIDERS
        ]
        if not parts:
            return {"io_binding": "cpu"}
        facts["provider_options"] = " ".join(parts)
        cuda = reported.get("CUDAExecutionProvider", {})
        if "use_tf32" in cuda:
            facts["use_tf32"] = int(str(cuda["use_tf32"]) in ("1", "True", "true"))
        if "cudnn_conv_algo_search" in cuda:
            facts["cudnn_conv_algo_search"] = str(cuda["cudnn_conv_algo_search"])
        facts["device_id"] = self._device_id
        facts["io_binding"] = "cuda"
        facts["compute_stream"] = self._stream_source
        facts["end_of_run_sync"] = 0
        if self._precision == "int8":
            facts["inference_precision"] = "int8" if used[0] == "TensorrtExecutionProvider" else "fp32"
        with contextlib.suppress(Exception):
            facts["device_name"] = str(_torch_module(self.name).cuda.get_device_name(self._device_id))
        return facts


def _torch_module(runner: str) -> Any:
    try:
        import torch
    except ImportError as exc:  # torch is a base dependency; a broken install lands here
        raise BackendError(
            f"runner {runner!r}: infer_device works on torch tensors; importing torch failed: {exc}"
        ) from None
    return torch


def _cuda_torch(runner: str) -> Any:
    torch = _torch_module(runner)
    if not torch.cuda.is_available():
        raise BackendError(
            f"runner {runner!r}: a GPU execution provider computes on a CUDA stream of torch, but torch "
            f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none, a CPU-only build'}) sees no CUDA "
            "device. Run on a host with an NVIDIA GPU and a CUDA build of torch, or pass compute_stream='ort' "
            "(infer only)"
        )
    return torch


def _device_id(specs: Sequence[ProviderSpec]) -> int:
    for spec in specs:
        if isinstance(spec, tuple) and spec[0] in GPU_PROVIDERS and "device_id" in spec[1]:
            return int(spec[1]["device_id"])
    return 0

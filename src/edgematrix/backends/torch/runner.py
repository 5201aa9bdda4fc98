"""PyTorch runner: one ``torch.nn.Module`` on a CUDA device (or the CPU, for tests).

Modes
-----

- ``fp32``: float32 math. TF32 is switched *off* for cuBLAS and cuDNN (PyTorch's default lets
  cuDNN convolutions use TF32 on Ampere and newer, which is not FP32).
- ``tf32``: float32 tensors, TF32 tensor-core math in cuBLAS and cuDNN
  (``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``). CUDA only.
- ``fp16`` / ``bf16``: ``torch.autocast`` to that dtype (weights stay float32 and are cast by
  autocast inside each forward; ops autocast keeps in float32 run with TF32 off).

``channels_last`` converts the weights once at activation and the input inside every call (a
copy kernel, counted in the latency: a deployed pipeline hands over NCHW tensors).
``cuda_graph`` captures one forward on a static input buffer after warm-up; a call copies its input
into that buffer and replays the graph. ``compile`` wraps the module in ``torch.compile(mode=...)``;
the first calls (compilation, autotuning) happen in activation and are timed as ``compile_s``.

The backend flags (TF32, ``cudnn.benchmark``) are process-global. They are set around *every*
call and restored after it, not once per activation, because several runners are active at the
same time when measured interleaved (FP32 and TF32 in the same rounds): set at activation, the
runner activated last would decide the math of all of them. Activation (warm-up, cuDNN autotuning,
graph capture, compilation) runs under the same flags, so a captured graph or a compiled kernel
bakes in this runner's choice. After a call, the flags are what they were before it.

Synchronisation (CUDA)
----------------------

- ``infer_device(x)`` enqueues work on the current stream and returns without any host sync. Its
  outputs are valid for work enqueued later on the same stream. With ``cuda_graph`` (and inductor
  modes that use CUDA graphs) the outputs are static buffers that the next call overwrites:
  consume or ``clone()`` them before calling again.
- ``infer(feed)`` (numpy in, numpy out) copies the input to the device, runs, and copies the
  outputs back with ``.cpu()``. That device→host copy is queued after the forward on the same
  stream and blocks the host until it is done: the one implicit sync per call, unavoidable because
  numpy arrays live in host memory. No explicit ``torch.cuda.synchronize()`` is needed.
- Activation ends with ``torch.cuda.synchronize``: warm-up, autotuning, capture and compilation
  must be finished (and their errors raised here) before anyone times a call.
- The CUDA-graph warm-up runs on a side stream that waits for the current stream, and the current
  stream then waits for it (as PyTorch documents for capture): lazy initialisation (cuBLAS
  workspaces, cuDNN autotuning, autocast) must not happen during capture.
- Deactivation synchronizes before releasing: errors of enqueued work surface in the runner that
  enqueued it, and no graph or buffer is freed while a queued replay may still read it.

torch is imported inside the methods, so registering this backend imports no torch.
"""

from __future__ import annotations

import contextlib
import copy
import platform
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.errors import BackendError

if TYPE_CHECKING:
    import torch

MODES = ("fp32", "tf32", "fp16", "bf16")
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs")
#: inductor modes that replay CUDA graphs themselves (cudagraph trees)
_COMPILE_MODES_WITH_CUDAGRAPHS = frozenset({"max-autotune"})
DEVICE_TYPES = ("cuda", "cpu")


def _torch() -> Any:
    import torch

    return torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("model name", "hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _BackendFlags:
    """Set TF32 / ``cudnn.benchmark`` for the duration of one call; restore them afterwards.

    Only the legacy setters are used (``allow_tf32``): they write the legacy and the new
    ``fp32_precision`` state together, so torch never sees a mix of the two. Reading ``allow_tf32``
    raises when someone else set only the new API; then this call's values are set anyway (which
    repairs the state) and that flag is left at this call's value afterwards.
    """

    __slots__ = ("_backends", "_saved", "_want")

    def __init__(self, torch_backends: Any, tf32: bool, benchmark: bool) -> None:
        self._backends = torch_backends
        self._want = (tf32, tf32, benchmark)
        self._saved: tuple[bool | None, bool | None, bool] = (None, None, False)

    def __enter__(self) -> None:
        b = self._backends
        try:
            matmul: bool | None = b.cuda.matmul.allow_tf32
        except RuntimeError:  # "mix of the legacy and new APIs": cannot be read, set below
            matmul = None
        try:
            cudnn: bool | None = b.cudnn.allow_tf32
        except RuntimeError:
            cudnn = None
        self._saved = (matmul, cudnn, b.cudnn.benchmark)
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = self._want

    def __exit__(self, *exc: object) -> None:
        b = self._backends
        matmul, cudnn, benchmark = self._saved
        if matmul is not None:
            b.cuda.matmul.allow_tf32 = matmul
        if cudnn is not None:
            b.cudnn.allow_tf32 = cudnn
        b.cudnn.benchmark = benchmark


def _model_field(model: Any, name: str) -> Any:
    """``model[name]`` of a mapping, ``model.name`` of an object, None when absent."""
    if model is None:
        return None
    if isinstance(model, Mapping):
        return model.get(name)
    return getattr(model, name, None)


def _as_tuple(out: Any) -> tuple[Any, ...]:
    if isinstance(out, tuple):
        return out
    if isinstance(out, list):
        return tuple(out)
    if isinstance(out, Mapping):
        return tuple(out.values())
    return (out,)


@backends.register("torch")
class TorchRunner(Runner):
    """Runs a ``torch.nn.Module`` with PyTorch, on ``device`` (``cuda``, ``cuda:N`` or ``cpu``).

    The runner works on its own copy of ``module`` (deep-copied at activation, in eval mode, no
    gradients), so runners built from one module do not change each other (memory format,
    compilation, device). The input is float32 of the fixed ``input_shape``; outputs of ``infer``
    are float32 numpy arrays (bf16 has no numpy dtype), ``infer_device`` returns the tensors in
    the dtype the model produced. ``cuda_graph`` and ``compile`` need CUDA; ``tf32`` too.
    """

    backend_name = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_shape: Sequence[int],
        device: str | Any = "cuda",
        mode: str = "fp32",
        channels_last: bool = False,
        cuda_graph: bool = False,
        compile: str | None = None,
        name: str | None = None,
        input_name: str = "input",
        output_names: Sequence[str] | None = None,
        warmup: int = 3,
        cudnn_benchmark: bool = True,
    ) -> None:
        super().__init__(name)
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise BackendError(f"runner {self.name!r}: module must be a torch.nn.Module, got {type(module).__name__}")
        if mode not in MODES:
            raise BackendError(f"runner {self.name!r}: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if compile is not None and compile not in COMPILE_MODES:
            raise BackendError(
                f"runner {self.name!r}: unknown compile mode {compile!r}; choose None or one of {', '.join(COMPILE_MODES)}"
            )
        shape = tuple(input_shape)
        if not shape or not all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0 for d in shape):
            raise BackendError(
                f"runner {self.name!r}: input_shape must be positive ints (fixed shape, e.g. [1, 3, 288, 800]); got {list(shape)}"
            )
        if channels_last and len(shape) != 4:
            raise BackendError(
                f"runner {self.name!r}: channels_last needs a 4-D NCHW input; input_shape is {list(shape)}"
            )
        if warmup < 0:
            raise BackendError(f"runner {self.name!r}: warmup must be >= 0, got {warmup}")
        device_type = str(device).split(":", 1)[0]
        if device_type not in DEVICE_TYPES:
            raise BackendError(
                f"runner {self.name!r}: device {str(device)!r} is not supported; use one of "
                f"{', '.join(DEVICE_TYPES)} (cuda:N for a specific GPU)"
            )
        if device_type == "cpu":
            refused = [
                what
                for what, asked in (
                    ("cuda_graph=True (CUDA graphs exist only on CUDA devices)", cuda_graph),
                    (f"compile={compile!r} (torch.compile is measured on CUDA only here)", compile is not None),
                    ("mode='tf32' (TF32 is a CUDA tensor-core math mode; use fp32 or bf16 on the CPU)", mode == "tf32"),
                )
                if asked
            ]
            if refused:
                raise BackendError(
                    f"runner {self.name!r}: device='cpu' cannot run {'; '.join(refused)}. "
                    "Use device='cuda' on a host with an NVIDIA GPU, or drop these options for a CPU run"
                )
        if cuda_graph and compile is not None:
            raise BackendError(
                f"runner {self.name!r}: cuda_graph=True with compile={compile!r} is not supported (capturing a "
                "compiled model is inductor's job); use compile='max-autotune' (it replays CUDA graphs itself) "
                "or cuda_graph=True without compile"
            )
        self._module = module
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in shape)
        self.device = str(device)
        self.mode = mode
        self.channels_last = bool(channels_last)
        self.cuda_graph = bool(cuda_graph)
        self.compile = compile
        self.input_name = input_name
        self.output_names: tuple[str, ...] | None = tuple(output_names) if output_names is not None else None
        self.warmup = int(warmup)
        self.cudnn_benchmark = bool(cudnn_benchmark)
        self.is_cuda = device_type == "cuda"
        # what activation produced
        self._device: Any = None
        self._model: Any = None
        self._autocast_dtype: Any = None
        self._graph: Any = None
        self._static_in: Any = None
        self._static_out: tuple[Any, ...] | None = None
        self._mark_step = False
        self._compile_s: float | None = None
        self._activation_s: float | None = None
        self._gpu_facts: dict[str, Fact] | None = None

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """The trained module on CUDA: FP32 eager for the reference and every non-FP16 role; an FP16
        role runs under autocast, channels-last, replayed as a CUDA graph (the fastest batch-1 form
        measured). ``model`` gives ``input_shape`` and ``output_names`` (a mapping or attributes)."""
        input_shape = _model_field(model, "input_shape")
        if input_shape is None:
            raise BackendError(
                "the torch backend runs a module of fixed input shape: pass model= with input_shape "
                "(and output_names) to TorchRunner.options_for"
            )
        output_names = _model_field(model, "output_names")
        fast = role != "reference" and precision == "fp16"
        return {
            "input_shape": tuple(input_shape),
            "device": "cuda",
            "mode": "fp16" if fast else "fp32",
            "channels_last": fast,
            "cuda_graph": fast,
            "output_names": None if output_names is None else tuple(output_names),
        }

    # -- activation ------------------------------------------------------------------------------

    def _resolve_device(self, torch: Any) -> Any:
        if not self.is_cuda:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise BackendError(
                f"runner {self.name!r}: device {self.device!r} asked for, but torch {torch.__version__} "
                f"(CUDA build: {torch.version.cuda or 'none, a CPU-only build'}) sees no CUDA device. "
                "Run on a host with an NVIDIA GPU and a CUDA build of torch, or use device='cpu'"
            )
        try:
            dev = torch.device(self.device)
        except RuntimeError as exc:
            raise BackendError(f"runner {self.name!r}: bad device {self.device!r}: {exc}") from None
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if not 0 <= index < torch.cuda.device_count():
            raise BackendError(
                f"runner {self.name!r}: device {self.device!r} does not exist; this host has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index)  # explicit index: tensors report cuda:N, compared in infer_device

    def _flags(self) -> contextlib.AbstractContextManager[Any]:
        if not self.is_cuda:
            return contextlib.nullcontext()
        return _BackendFlags(_torch().backends, self.mode == "tf32", self.cudnn_benchmark)

    def activate_impl(self) -> None:
        torch = _torch()
        t_start = time.perf_counter()
        dev = self._resolve_device(torch)
        model = copy.deepcopy(self._module)
        model.eval()
        model.requires_grad_(False)  # autocast then never caches casts of leaf weights (and no autograd)
        model.to(dev)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self._device = dev
        self._model = model
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mode)
        generator = torch.Generator().manual_seed(0)
        example = torch.rand(self.input_shape, generator=generator, dtype=torch.float32).to(dev)

        with self._flags():
            if self.compile is not None:
                self._compile(torch, example)
            if self.cuda_graph:
                self._capture(torch, example)  # warm-up on a side stream, then capture
            else:
                self._warm_up(example)
        if self.is_cuda:
            torch.cuda.synchronize(dev)  # activation's work done and its errors raised here, not in a timed call
        self._activation_s = time.perf_counter() - t_start

    def _warm_up(self, example: Any) -> None:
        try:
            out = None
            for _ in range(self.warmup):  # lazy init, cuDNN autotuning (cudnn.benchmark)
                out = self._call_model(example)
            if out is None:
                out = self._call_model(example)  # one call anyway: it tells the number of outputs
        except Exception as exc:
            raise BackendError(
                f"runner {self.name!r}: the first forward ({self.mode}, channels_last={self.channels_last}) "
                f"failed on {self._device}: {type(exc).__name__}: {str(exc).strip()[:2000]}"
            ) from exc
        self._check_names(out)

    def _check_names(self, out: tuple[Any, ...]) -> None:
        if self.output_names is None:
            self.output_names = tuple(f"output_{i}" for i in range(len(out)))
        elif len(self.output_names) != len(out):
            raise BackendError(
                f"runner {self.name!r}: the module returns {len(out)} outputs but output_names has "
                f"{len(self.output_names)}: {list(self.output_names)}"
            )

    def _compile(self, torch: Any, example: Any) -> None:
        self._mark_step = self.compile in _COMPILE_MODES_WITH_CUDAGRAPHS
        t0 = time.perf_counter()
        try:
            self._model = torch.compile(self._model, mode=self.compile)
            # Compilation (and autotuning) happens in the first calls; cudagraph trees record on the
            # first ones too. Run them here so compile_s holds it all and timed calls do not.
            for _ in range(max(self.warmup, 3)):
                self._call_model(example)
            if self.is_cuda:
                torch.cuda.synchronize(self._device)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"runner {self.name!r}: torch.compile(mode={self.compile!r}) failed after "
                f"{time.perf_counter() - t0:.1f} s: {type(exc).__name__}: {str(exc).strip()[:2000]}"
            ) from exc
        self._compile_s = time.perf_counter() - t0

    def _capture(self, torch: Any, example: Any) -> None:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        static_in = torch.empty(self.input_shape, dtype=torch.float32, device=self._device, memory_format=fmt)
        static_in.copy_(example)
        try:
            side = torch.cuda.Stream(device=self._device)
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(max(self.warmup, 3)):  # lazy init + cuDNN autotuning before capture
                    self._call_model(static_in)
            torch.cuda.current_stream(self._device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._call_model(static_in)
        except Exception as exc:
            raise BackendError(
                f"runner {self.name!r}: CUDA graph capture failed ({self.mode}, channels_last="
                f"{self.channels_last}): {type(exc).__name__}: {str(exc).strip()[:2000]}"
            ) from exc
        self._check_names(static_out)
        self._graph, self._static_in, self._static_out = graph, static_in, static_out

    # -- the forward -----------------------------------------------------------------------------

    def _call_model(self, x: Any) -> tuple[Any, ...]:
        """One forward, no flags and no sync: the caller holds :meth:`_flags` where it matters."""
        torch = _torch()
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)  # no-op when it already is
            if self._mark_step:
                torch.compiler.cudagraph_mark_step_begin()  # a new inference step for cudagraph trees
            if self._autocast_dtype is None:
                return _as_tuple(self._model(x))
            # cache_enabled=False: required under CUDA-graph capture, and the weights do not require
            # grad, so autocast would not cache their casts anyway.
            with torch.autocast(self._device.type, dtype=self._autocast_dtype, cache_enabled=False):
                return _as_tuple(self._model(x))

    def _run(self, x: Any) -> tuple[Any, ...]:
        if self._graph is not None:
            # Both the copy and the replay go to the current stream, in order: no sync needed. The
            # replay's math (TF32, cuDNN algorithms) was fixed at capture, so no flags either.
            self._static_in.copy_(x)
            self._graph.replay()
            assert self._static_out is not None
            return self._static_out
        with self._flags():
            return self._call_model(x)

    def infer_device(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run once on a device tensor; enqueue only, no host sync (see the module docstring).

        ``x`` is float32 of ``input_shape`` on this runner's device. Checks use tensor metadata
        only (shape, dtype, device), which never syncs.
        """
        self._require_active("infer_device")
        if tuple(x.shape) != self.input_shape or x.dtype != _torch().float32 or x.device != self._device:
            raise BackendError(
                f"runner {self.name!r}: infer_device got a {str(x.dtype).removeprefix('torch.')} tensor of shape "
                f"{list(x.shape)} on {x.device}; expected float32 {list(self.input_shape)} on {self._device}"
            )
        return self._run(x)

    # -- Runner interface ------------------------------------------------------------------------

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return {self.input_name: TensorMeta(np.dtype(np.float32), self.input_shape)}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _torch()
        host = torch.from_numpy(np.ascontiguousarray(feed[self.input_name]))
        try:
            # Host→device copy on the current stream (from pageable memory the host waits for the
            # staging itself; correct without any sync).
            x = host.to(self._device)
            outs = self._run(x)
            # .cpu() queues the device→host copy after the forward and blocks until the data is in
            # host memory: the single (implicit) sync of infer(). float(): bf16 has no numpy dtype.
            arrays = [o.detach().float().cpu().numpy() for o in outs]
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"runner {self.name!r}: PyTorch failed to run: {type(exc).__name__}: {exc}") from exc
        assert self.output_names is not None
        return dict(zip(self.output_names, arrays, strict=True))

    def deactivate_impl(self) -> None:
        if self.is_cuda and self._device is not None:
            _torch().cuda.synchronize(self._device)  # errors of queued work surface here; nothing freed mid-replay

    def release_impl(self) -> None:
        self._graph = None
        self._static_in = None
        self._static_out = None
        self._model = None
        self._mark_step = False
        self._gpu_facts = None

    # -- facts -----------------------------------------------------------------------------------

    def facts_impl(self) -> Mapping[str, Fact]:
        torch = _torch()
        facts: dict[str, Fact] = {
            "version": str(torch.__version__),
            "device": str(self._device if self._device is not None else self.device),
            "mode": self.mode,
            "precision": self.mode,
            "autocast_dtype": {"fp16": "float16", "bf16": "bfloat16"}.get(self.mode, "none"),
            "allow_tf32": int(self.mode == "tf32"),
            "channels_last": int(self.channels_last),
            "cuda_graph": int(self.cuda_graph),
            "compile": self.compile or "none",
            "cudnn_benchmark": int(self.is_cuda and self.cudnn_benchmark),
            "input_shape": "x".join(str(d) for d in self.input_shape),
            "warmup": self.warmup,
        }
        if self._compile_s is not None:
            facts["compile_s"] = round(self._compile_s, 3)
        if self._activation_s is not None:
            facts["activation_s"] = round(self._activation_s, 3)
        if not self.is_cuda:
            facts["device_name"] = _cpu_name()
            return facts
        facts["cuda_runtime_version"] = str(torch.version.cuda or "none")
        with contextlib.suppress(Exception):
            facts["cudnn_version"] = int(torch.backends.cudnn.version() or 0)
        index = self._device.index if self._device is not None else None
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):
                facts["device_name"] = str(torch.cuda.get_device_name(index))
        if self._gpu_facts is None:
            from edgematrix.measure.gpu import gpu_facts

            self._gpu_facts = gpu_facts(index)  # NVML snapshot: once per activation
        for key, value in self._gpu_facts.items():
            facts.setdefault(key, value)
        return facts

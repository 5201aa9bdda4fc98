"""Loaders for ONNX Runtime sessions (Polygraphy style: ``XFromY`` callables, lazy runtime import)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgematrix.backends.base import usable_physical_cores
from edgematrix.errors import BackendError, ModelError

#: ``optimization=`` values → ``onnxruntime.GraphOptimizationLevel`` member names
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

#: which package provides an execution provider that the installed build lacks
PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu (uninstall onnxruntime first: the two conflict; extra `gpu`)",
    "TensorrtExecutionProvider": "onnxruntime-gpu plus TensorRT libraries (extra `tensorrt`)",
    "NvTensorRTRTXExecutionProvider": "onnxruntime-trt-rtx",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "DmlExecutionProvider": "onnxruntime-directml (Windows)",
    "QNNExecutionProvider": "onnxruntime-qnn",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "CoreMLExecutionProvider": "onnxruntime on macOS",
    "DnnlExecutionProvider": "an ONNX Runtime build with --use_dnnl",
}

# ONNX Runtime exception class names that mean "the file is not a usable model"
_MODEL_ERRORS = {"InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel", "InvalidArgument", "NotImplemented"}

ProviderSpec = str | tuple[str, dict[str, Any]]


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def check_providers(providers: Sequence[ProviderSpec]) -> None:
    """Raise :class:`BackendError` unless every requested provider is in this ONNX Runtime build.

    ONNX Runtime itself only warns and silently falls back to the CPU, which would turn a GPU
    benchmark into a CPU one without anyone noticing.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [_provider_name(p) for p in providers if _provider_name(p) not in available]
    if not missing:
        return
    known = set(ort.get_all_providers())
    hints = []
    for name in missing:
        if name in PROVIDER_PACKAGES:
            hints.append(f"{name} comes with {PROVIDER_PACKAGES[name]}")
        elif name in known:
            hints.append(f"{name} needs an ONNX Runtime build that includes it")
        else:
            hints.append(f"{name} is not an ONNX Runtime execution provider (known: {', '.join(sorted(known))})")
    raise BackendError(
        f"execution provider(s) {missing!r} are not available in onnxruntime {ort.__version__}; "
        f"available here: {', '.join(available)}. " + "; ".join(hints)
    )


class SessionFromOnnx:
    """Callable that creates an ``onnxruntime.InferenceSession`` from an ONNX file.

    ``intra_op_threads=0`` means "physical cores this process may use"; the number actually used is
    in :attr:`intra_op_threads_used` after the call. Spinning is off by default because sessions
    measured interleaved slow each other down when their idle threads spin (see DESIGN.md).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[ProviderSpec] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        optimization: str = "all",
    ) -> None:
        if optimization not in OPTIMIZATION_LEVELS:
            raise BackendError(
                f"unknown graph optimization {optimization!r}; choose one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if intra_op_threads < 0:
            raise BackendError(f"intra_op_threads must be >= 0 (0 = physical cores), got {intra_op_threads}")
        if not providers:
            raise BackendError("providers is empty; give at least one, e.g. ('CPUExecutionProvider',)")
        self.path = Path(path)
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.optimization = optimization
        self.intra_op_threads_used: int | None = None

    def session_options(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        threads = self.intra_op_threads or usable_physical_cores()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[self.optimization])
        spin = "1" if self.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self.intra_op_threads_used = threads
        return options

    def __call__(self) -> Any:
        import onnxruntime as ort

        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "does not exist"
            raise ModelError(
                f"ONNX model {str(self.path)!r} {what}; export the model first "
                "(edgematrix export / the cell's export stage) or fix the path"
            )
        check_providers(self.providers)
        try:
            session = ort.InferenceSession(
                str(self.path), sess_options=self.session_options(), providers=list(self.providers)
            )
        except Exception as exc:
            kind = type(exc).__name__
            if kind in _MODEL_ERRORS:
                size = self.path.stat().st_size
                raise ModelError(
                    f"ONNX Runtime cannot load {str(self.path)!r} ({size} bytes): {kind}: {exc}. "
                    "The file is corrupt, truncated or not an ONNX model; re-export it "
                    "(or check it with `python -m onnx.checker` / onnx.checker.check_model)"
                ) from exc
            raise BackendError(
                f"ONNX Runtime failed to create a session for {str(self.path)!r}: {kind}: {exc}"
            ) from exc
        wanted = [_provider_name(p) for p in self.providers]
        used = session.get_providers()
        dropped = [p for p in wanted if p not in used]
        if dropped:
            raise BackendError(
                f"ONNX Runtime could not initialise {dropped!r} for {str(self.path)!r} and fell back to "
                f"{used!r}; check the runtime libraries of that provider (CUDA/cuDNN/TensorRT versions)"
            )
        return session

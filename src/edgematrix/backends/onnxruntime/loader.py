"""Loaders for ONNX Runtime sessions (Polygraphy style: ``XFromY`` callables, lazy runtime import)."""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgematrix.errors import BackendError, ModelError
from edgematrix.measure.environment import usable_physical_cores

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


# Provider options edgematrix validates, with their kind: bool / int / str, or the allowed values.
# Keys from ONNX Runtime's TensorRT and CUDA execution provider documentation (onnxruntime.ai,
# "NVIDIA - TensorRT" / "NVIDIA - CUDA" pages); both providers need onnxruntime-gpu (not run here).
_TRT_OPTION_NAMES_BOOL = (
    "trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable", "trt_int8_use_native_calibration_table",
    "trt_dla_enable", "trt_dump_subgraphs", "trt_engine_cache_enable", "trt_engine_decryption_enable",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable",
    "trt_sparsity_enable", "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_weight_stripped_engine_enable",
    "trt_engine_hw_compatible", "trt_load_user_initializer", "has_user_compute_stream",
)  # fmt: skip
_TRT_OPTION_NAMES_INT = (
    "device_id", "trt_max_workspace_size", "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_dla_core",
    "trt_builder_optimization_level", "trt_auxiliary_streams", "trt_ep_context_embed_mode",
)  # fmt: skip
_TRT_OPTION_NAMES_STR = (
    "user_compute_stream", "trt_int8_calibration_table_name", "trt_engine_cache_path", "trt_engine_cache_prefix",
    "trt_engine_decryption_lib_path", "trt_timing_cache_path", "trt_tactic_sources", "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_ep_context_file_path",
    "trt_onnx_model_folder_path", "trt_op_types_to_exclude",
)  # fmt: skip
PROVIDER_OPTIONS: dict[str, dict[str, Any]] = {
    "TensorrtExecutionProvider": {
        **dict.fromkeys(_TRT_OPTION_NAMES_BOOL, bool),
        **dict.fromkeys(_TRT_OPTION_NAMES_INT, int),
        **dict.fromkeys(_TRT_OPTION_NAMES_STR, str),
    },
    "CUDAExecutionProvider": {
        "device_id": int,
        "gpu_mem_limit": int,
        "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
        "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
        "do_copy_in_default_stream": bool,
        "cudnn_conv_use_max_workspace": bool,
        "cudnn_conv1d_pad_to_nc1d": bool,
        "enable_cuda_graph": bool,
        "enable_skip_layer_norm_strict_mode": bool,
        "use_tf32": bool,
        "prefer_nhwc": bool,
        "use_ep_level_unified_stream": bool,
        "tunable_op_enable": bool,
        "tunable_op_tuning_enable": bool,
        "tunable_op_max_tuning_duration_ms": int,
        "has_user_compute_stream": bool,
        "user_compute_stream": str,
        "gpu_external_alloc": str,
        "gpu_external_free": str,
        "gpu_external_empty_cache": str,
        "sdpa_kernel": int,
        "fuse_conv_bias": bool,
    },
}
_TRUE, _FALSE = {"1", "true", "on", "yes"}, {"0", "false", "off", "no"}


def _option_value(provider: str, key: str, kind: Any, value: Any) -> str:
    """One provider option as the string ONNX Runtime parses (bools as "True"/"False"), or an error."""
    where = f"{provider} option {key!r}"
    if kind is bool:
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in _TRUE | _FALSE:
            return "True" if (value if isinstance(value, bool) else text in _TRUE) else "False"
        raise BackendError(f"{where} must be a boolean (True/False, 1/0), got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise BackendError(f"{where} must be an integer, got {value!r}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise BackendError(f"{where} must be an integer, got {value!r}") from None
        if number < 0:
            raise BackendError(f"{where} must be >= 0, got {number}")
        return str(number)
    if kind is str:
        if not isinstance(value, (str, os.PathLike)):
            raise BackendError(f"{where} must be a string or path, got {type(value).__name__} {value!r}")
        return str(value)
    if str(value) not in kind:
        raise BackendError(f"{where} must be one of {', '.join(kind)}, got {value!r}")
    return str(value)


def normalize_providers(providers: Sequence[ProviderSpec]) -> tuple[ProviderSpec, ...]:
    """Validate the options of the TensorRT / CUDA providers and write them as ONNX Runtime parses them.

    ``["TensorrtExecutionProvider", ...]`` or ``[("TensorrtExecutionProvider", {"trt_fp16_enable": True}), ...]``.
    An unknown option key raises (ONNX Runtime itself fails late, at session creation, or ignores it).
    Options of other providers are passed through as given.
    """
    out: list[ProviderSpec] = []
    for spec in providers:
        if isinstance(spec, str):
            out.append(spec)
            continue
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict)):
            raise BackendError(
                f"provider {spec!r} must be a name or a (name, options dict) pair, "
                "e.g. ('CUDAExecutionProvider', {'device_id': 0})"
            )
        name, options = spec
        known = PROVIDER_OPTIONS.get(name)
        if known is None:
            out.append((name, dict(options)))
            continue
        unknown = [k for k in options if k not in known]
        if unknown:
            hints = [
                f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                for k in unknown
            ]
            raise BackendError(
                f"unknown {name} option(s) {', '.join(hints)}; valid options: {', '.join(sorted(known))}"
            )
        normalized = {k: _option_value(name, k, known[k], v) for k, v in options.items()}
        low_precision = "True" in (normalized.get("trt_fp16_enable"), normalized.get("trt_int8_enable"))
        if name == "TensorrtExecutionProvider" and normalized.get("trt_dla_enable") == "True" and not low_precision:
            raise BackendError(
                "TensorrtExecutionProvider: trt_dla_enable needs trt_fp16_enable or trt_int8_enable "
                "(the DLA runs FP16 / INT8 only)"
            )
        out.append((name, normalized))
    return tuple(out)


def tensorrt_providers(
    *,
    fp16: bool = True,
    int8: bool = False,
    device_id: int = 0,
    engine_cache_dir: str | os.PathLike[str] | None = None,
    timing_cache_dir: str | os.PathLike[str] | None = None,
    dla_core: int | None = None,
    **options: Any,
) -> list[ProviderSpec]:
    """Providers for an onnxruntime-gpu host: TensorRT first, CUDA for what TensorRT rejects, then CPU.

    ``int8`` sets ``trt_int8_enable`` (a QDQ model carries its scales; an FP32 model also needs
    ``trt_int8_calibration_table_name``). Engine and timing caches are enabled when a folder is given.
    Extra ``options`` are TensorRT provider options (validated).
    """
    trt: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": fp16, "trt_int8_enable": int8}
    if engine_cache_dir is not None:
        trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_cache_dir))
    if timing_cache_dir is not None:
        trt.update(trt_timing_cache_enable=True, trt_timing_cache_path=str(timing_cache_dir))
    if dla_core is not None:
        trt.update(trt_dla_enable=True, trt_dla_core=dla_core)
    trt.update(options)
    specs: list[ProviderSpec] = [
        ("TensorrtExecutionProvider", trt),
        ("CUDAExecutionProvider", {"device_id": device_id}),
        "CPUExecutionProvider",
    ]
    return list(normalize_providers(specs))


#: execution providers that compute on an NVIDIA GPU (their runners are timed with CUDA events)
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def provider_names(providers: Sequence[ProviderSpec]) -> list[str]:
    return [_provider_name(p) for p in providers]


def cuda_provider_options(
    *,
    device_id: int = 0,
    use_tf32: bool = False,
    cudnn_conv_algo_search: str = "EXHAUSTIVE",
    arena_extend_strategy: str = "kSameAsRequested",
    **options: Any,
) -> dict[str, Any]:
    """The CUDA execution provider's options as edgematrix sets them (validated by :func:`normalize_providers`).

    ``use_tf32`` is off by default: ONNX Runtime's CUDA EP uses TF32 tensor cores for float32 convolutions
    and GEMMs unless told otherwise (1.6e-3 relative error vs FP32 measured on an H100), so an FP32 model
    computes in FP32 only with ``use_tf32=0``. ``cudnn_conv_algo_search=EXHAUSTIVE`` benchmarks cuDNN's
    algorithms once per input shape (in the warm-up), as torch's ``cudnn.benchmark`` does;
    ``cudnn_conv_use_max_workspace`` lets those algorithms use the workspace they ask for;
    ``arena_extend_strategy=kSameAsRequested`` grows the device arena by what is asked, not in powers of two.
    """
    return {
        "device_id": device_id,
        "use_tf32": use_tf32,
        "cudnn_conv_algo_search": cudnn_conv_algo_search,
        "cudnn_conv_use_max_workspace": True,
        "arena_extend_strategy": arena_extend_strategy,
        **options,
    }


def _tiny_relu_model() -> bytes:
    """A one-node float32 model (x → Relu → y) to find out whether a provider can create a session."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _provider_library_error(ort: Any, provider: str) -> str:
    """Why ONNX Runtime's shared library of ``provider`` does not load (the dynamic linker's message)."""
    import ctypes

    lib = {
        "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
        "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    }[provider]
    path = Path(ort.__file__).parent / "capi" / lib
    if not path.is_file():
        return f"{lib} is not part of this onnxruntime build ({path.parent})"
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return f"loading {path} failed: {exc}"
    return f"{lib} loads, but ONNX Runtime did not create the provider (see its log above)"


def tensorrt_ep_unavailable(device_id: int = 0) -> str:
    """Why ONNX Runtime's TensorRT execution provider cannot run on this host; "" when it can.

    ONNX Runtime lists ``TensorrtExecutionProvider`` in ``get_available_providers()`` whenever the
    onnxruntime-gpu build has it, whether or not TensorRT's libraries are installed: only creating a session
    tells. This creates one on a one-node model and, when ONNX Runtime falls back to another provider, loads
    the provider's library to name what the dynamic linker is missing (e.g. ``libnvinfer.so.10``).
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not importable ({exc}); the TensorRT EP comes with onnxruntime-gpu plus TensorRT 10"
    version, available = ort.__version__, list(ort.get_available_providers())
    if "TensorrtExecutionProvider" not in available:
        return (
            f"onnxruntime {version} has no TensorrtExecutionProvider (providers here: {', '.join(available)}); "
            f"it comes with {PROVIDER_PACKAGES['TensorrtExecutionProvider']}"
        )
    with contextlib.suppress(ImportError):  # onnxruntime-gpu uses the CUDA libraries torch loads: torch first
        import torch  # noqa: F401
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fallback warning is what this function reports
    spec = [("TensorrtExecutionProvider", {"device_id": str(device_id)})]
    try:
        session = ort.InferenceSession(_tiny_relu_model(), sess_options=options, providers=spec)
    except Exception as exc:
        return (
            f"onnxruntime {version} lists TensorrtExecutionProvider, but creating a session with it failed: "
            f"{type(exc).__name__}: {str(exc).strip()[:600]}; {_provider_library_error(ort, spec[0][0])}"
        )
    used = list(session.get_providers())
    if used and used[0] == "TensorrtExecutionProvider":
        return ""
    return (
        f"onnxruntime {version} lists TensorrtExecutionProvider, but a session asked for it ran on "
        f"{', '.join(used)}: {_provider_library_error(ort, spec[0][0])} (TensorRT's libraries are missing or do "
        "not match this build: install TensorRT 10 for this CUDA version, e.g. the `tensorrt` extra)"
    )


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
        self.providers = normalize_providers(providers)
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

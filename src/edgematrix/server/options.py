"""What a client may ask the latency server for: request keys, harness settings and runner options,
each with its type and bounds (docs/security.md).

The server executes nothing a client names. A client chooses among *remote options*: an
allow-list per backend of plain values (thread counts, precisions, booleans, bounded integers).
Everything that names a program, a library, a folder or a file on the board (``executable``,
``workdir``, engine and timing caches, plugin libraries, ONNX Runtime provider options that load
code or take pointers) is refused with a 400 that says so, and comes from the server's own
configuration only (:class:`BackendSettings`, merged over the client's options by the server).
Harness settings (warm-up, rounds, time) are bounded by :class:`Limits`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgematrix.core.registries import backends
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.harness import LatencyConfig

#: top-level keys of a request's ``meta`` per operation
REQUEST_KEYS = {
    "measure": ("op", "backend", "model_suffix", "config", "runner_options", "return_samples", "seed"),
    "run": ("op", "backend", "model_suffix", "runner_options"),
    "evaluate": ("op", "backend", "models", "runner_options", "target", "config", "measure", "partial"),
}
#: keys of one entry of ``/v1/evaluate``'s ``models``
MODEL_KEYS = ("role", "precision", "model_suffix", "runner_options")
#: keys of ``/v1/evaluate``'s ``target``: what :meth:`Runner.options_for` reads of a matrix target
TARGET_KEYS = ("providers", "threads")
#: the target of a request that names none (or an empty provider list): the runners' own defaults
DEFAULT_TARGET: dict[str, Any] = {"providers": ["CPUExecutionProvider"], "threads": 0}
#: precisions a model of ``/v1/evaluate`` may declare: the matrix's ``Precision`` names (a test keeps them
#: equal; not imported from the schema, which would load pydantic into every worker)
PRECISIONS = ("fp32", "fp16", "int8", "fx8")
#: a role name: also the suffix of the model's and its outputs' blob names (``model.<role>``)
ROLE_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,31}"
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(LatencyConfig))
#: harness settings of a request that names none (those of ``LocalMeter``)
DEFAULT_CONFIG: dict[str, Any] = {"warmup": 5, "min_rounds": 30, "min_time_s": 2.0}
#: model file suffixes a client may send (the name itself never becomes a path on the server)
MODEL_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")
#: serialized TensorRT engines: accepted only when the server's configuration allows them
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
#: the largest 64-bit integer a client may send anywhere (seeds, sizes)
_INT_MAX = 2**63 - 1


class OptionError(EdgeMatrixError):
    """A request option is unknown or has a bad value (the server answers 400)."""


@dataclass(frozen=True)
class Limits:
    """Server-side bounds of every request (``[limits]`` of the server configuration)."""

    max_warmup: int = 1000
    max_rounds: int = 100_000
    #: the longest a measurement may run (``min_time_s`` / ``max_time_s``); also capped by the timeout
    max_time_s: float = 300.0
    #: one random feed (``/v1/measure``) or one bundle sample (``/v1/run``), all inputs together
    max_input_bytes: int = 256 * 2**20
    #: a bundle's arrays, uncompressed, all together
    max_bundle_bytes: int = 1024 * 2**20
    #: the outputs ``/v1/run`` / ``/v1/evaluate`` return, all samples (and models) together
    max_response_bytes: int = 256 * 2**20
    max_arrays: int = 64
    max_ndim: int = 8
    #: models of one ``/v1/evaluate`` request
    max_models: int = 8
    #: nesting of the request's JSON header (objects and lists)
    max_json_depth: int = 16

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise EdgeMatrixError(f"server limit {f.name} must be a number > 0, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# value checks: each takes (where, value) and returns the value as the runner gets it

Check = Callable[[str, Any], Any]


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{where} must be true or false, got {value!r}")
    return value


def _finite(value: float) -> bool:
    return isinstance(value, int) or math.isfinite(value)


def _int(lo: int, hi: int) -> Check:
    def check(where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise OptionError(f"{where} must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    return check


def _float(lo: float, hi: float) -> Check:
    def check(where: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
        if not ok or not lo <= value <= hi:
            raise OptionError(f"{where} must be a number in [{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    return check


def _choice(*values: str) -> Check:
    def check(where: str, value: Any) -> str:
        if not isinstance(value, str) or value not in values:
            raise OptionError(f"{where} must be one of {', '.join(values)}, got {value!r}")
        return value

    return check


def _pattern(regex: str, what: str, max_len: int = 256) -> Check:
    compiled = re.compile(regex)

    def check(where: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > max_len or not compiled.fullmatch(value):
            raise OptionError(f"{where} must be {what} (at most {max_len} characters), got {value!r}")
        return value

    return check


_NAME = r"[A-Za-z0-9_.:/-]{1,128}"
_name = _pattern(_NAME, "a tensor / layer name of letters, digits and _.:/-")
_shape_spec = _pattern(
    rf"{_NAME}:\d{{1,7}}(x\d{{1,7}}){{0,7}}(,{_NAME}:\d{{1,7}}(x\d{{1,7}}){{0,7}}){{0,63}}",
    "name:AxBxC[,name:...]",
    4096,
)


def _names(max_items: int) -> Check:
    def check(where: str, value: Any) -> list[str]:
        if not isinstance(value, list) or len(value) > max_items:
            raise OptionError(f"{where} must be a list of at most {max_items} names, got {value!r}")
        return [_name(f"{where}[{i}]", v) for i, v in enumerate(value)]

    return check


def _shapes(where: str, value: Any) -> dict[str, list[int]]:
    if not isinstance(value, dict) or len(value) > 64:
        raise OptionError(f"{where} must be an object {{input name: [sizes]}} of at most 64 inputs, got {value!r}")
    dim = _int(1, 1 << 20)
    out = {}
    for name, dims in value.items():
        _name(f"{where} key", name)
        if not isinstance(dims, list) or not 1 <= len(dims) <= 8:
            raise OptionError(f"{where}[{name!r}] must be a list of 1 to 8 sizes, got {dims!r}")
        out[name] = [dim(f"{where}[{name!r}]", d) for d in dims]
    return out


_THREADS = _int(0, 1024)
_DEVICE_ID = _int(0, 63)

#: ONNX Runtime provider options a client may set (plain values); the rest of ONNX Runtime's keys
#: load libraries, read or write files, or take pointers, and only the server's configuration sets them
PROVIDER_REMOTE_OPTIONS: dict[str, dict[str, Check]] = {
    "CPUExecutionProvider": {},
    "CUDAExecutionProvider": {
        "device_id": _DEVICE_ID,
        "gpu_mem_limit": _int(0, 1 << 44),
        "arena_extend_strategy": _choice("kNextPowerOfTwo", "kSameAsRequested"),
        "cudnn_conv_algo_search": _choice("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
        "do_copy_in_default_stream": _bool,
        "cudnn_conv_use_max_workspace": _bool,
        "cudnn_conv1d_pad_to_nc1d": _bool,
        "enable_cuda_graph": _bool,
        "enable_skip_layer_norm_strict_mode": _bool,
        "use_tf32": _bool,
        "prefer_nhwc": _bool,
        "use_ep_level_unified_stream": _bool,
        "tunable_op_enable": _bool,
        "tunable_op_tuning_enable": _bool,
        "tunable_op_max_tuning_duration_ms": _int(0, 600_000),
        "sdpa_kernel": _int(0, 1 << 16),
        "fuse_conv_bias": _bool,
    },
    "TensorrtExecutionProvider": {
        "device_id": _DEVICE_ID,
        "trt_max_workspace_size": _int(0, 1 << 44),
        "trt_max_partition_iterations": _int(1, 100_000),
        "trt_min_subgraph_size": _int(1, 100_000),
        "trt_fp16_enable": _bool,
        "trt_bf16_enable": _bool,
        "trt_int8_enable": _bool,
        "trt_dla_enable": _bool,
        "trt_dla_core": _int(0, 7),
        "trt_force_sequential_engine_build": _bool,
        "trt_context_memory_sharing_enable": _bool,
        "trt_layer_norm_fp32_fallback": _bool,
        "trt_builder_optimization_level": _int(0, 5),
        "trt_auxiliary_streams": _int(0, 64),
        "trt_cuda_graph_enable": _bool,
        "trt_sparsity_enable": _bool,
        "trt_build_heuristics_enable": _bool,
        "trt_detailed_build_log": _bool,
        "trt_engine_hw_compatible": _bool,
        "trt_tactic_sources": _pattern(r"[-+A-Za-z_,]{0,256}", "a list like -CUDNN,+CUBLAS"),
        "trt_profile_min_shapes": _shape_spec,
        "trt_profile_max_shapes": _shape_spec,
        "trt_profile_opt_shapes": _shape_spec,
        "trt_op_types_to_exclude": _pattern(r"[A-Za-z0-9_,]{0,1024}", "op types separated by commas", 1024),
    },
}


def _providers(where: str, value: Any) -> list[Any]:
    """``["CPUExecutionProvider", ["CUDAExecutionProvider", {"device_id": 0}], ...]``."""
    if not isinstance(value, list) or not 1 <= len(value) <= 4:
        raise OptionError(f"{where} must be a list of 1 to 4 providers, got {value!r}")
    out: list[Any] = []
    for i, spec in enumerate(value):
        name, options = (spec, {}) if isinstance(spec, str) else (spec[0], spec[1]) if _pair(spec) else (None, None)
        if name is None or not isinstance(options, dict):
            raise OptionError(f"{where}[{i}] must be a provider name or [name, {{options}}], got {spec!r}")
        allowed = PROVIDER_REMOTE_OPTIONS.get(name)
        if allowed is None:
            raise OptionError(
                f"{where}[{i}]: provider {name!r} is not served to clients; "
                f"remote providers: {', '.join(PROVIDER_REMOTE_OPTIONS)}"
            )
        checked = {}
        for key, option in options.items():
            if key not in allowed:
                raise OptionError(
                    f"{where}[{i}]: {name} option {key!r} is not a remote option (options that load libraries, "
                    "name files or folders on the board, or take pointers come from the server's configuration "
                    f"only); remote {name} options: {', '.join(sorted(allowed)) or '(none)'}"
                )
            checked[key] = allowed[key](f"{where}[{i}] {name} option {key!r}", option)
        out.append([name, checked] if checked else name)
    return out


def _pair(spec: Any) -> bool:
    return isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)


#: the runner options a client may send, per backend, with their checks
REMOTE_OPTIONS: dict[str, dict[str, Check]] = {
    "onnxruntime": {
        "providers": _providers,
        "intra_op_threads": _THREADS,
        "allow_spinning": _bool,
        "optimization": _choice("disable", "basic", "extended", "all"),
        "precision": _choice("fp32", "fp16", "bf16", "int8"),
    },
    "openvino": {
        "device": _pattern(
            r"(CPU|GPU|NPU|AUTO|HETERO|MULTI)([.:,][A-Z0-9.,]{1,32})?", "an OpenVINO device like CPU, GPU.0"
        ),
        "intra_op_threads": _THREADS,
        "exact_fp32": _bool,
        "performance_hint": _choice("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"),
    },
    "tensorrt": {
        "precision": _choice("fp32", "fp16", "int8"),
        "check_precision": _bool,
        "min_fraction": _float(0.0, 1.0),
        "allow_layers": _names(1024),
        "fp16_fallback": _bool,
        "dla_core": _int(0, 7),
        "allow_gpu_fallback": _bool,
        "workspace_mib": _int(0, 1 << 20),
        "shapes": _shapes,
        "use_spin_wait": _bool,
        "use_cuda_graph": _bool,
        "no_data_transfers": _bool,
        "profiling_verbosity": _choice("detailed", "layer_names_only", "none"),
        "inference": _choice("polygraphy", "trtexec", "none"),
    },
}

#: runner options that name programs, folders or files on the board: the server's configuration
#: sets them (``[backends.<name>]``); a client that sends one gets a 400 saying so
SERVER_ONLY_OPTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("provider_options",),
    "openvino": (),
    "tensorrt": (
        "executable",
        "workdir",
        "timeout_s",
        "save_engine",
        "timing_cache",
        "calibration_cache",
        "extra_args",
        "layer_info",
        "profile",
        "times",
        "onnx",
        "engine",
    ),
}


@dataclass(frozen=True)
class BackendSettings:
    """The server's own runner options for one backend (``[backends.<name>]`` of its configuration).

    ``options`` are passed to the runner as they are and win over a client's (``executable`` of
    trtexec, ``timing_cache``, ``extra_args``); ``provider_options`` (ONNX Runtime) are merged into
    the options of the named provider when a request uses it (``trt_engine_cache_path`` ...).
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def apply(self, backend: str, client: dict[str, Any]) -> dict[str, Any]:
        """The runner options of a request: the client's checked options with the server's over them."""
        merged = {**client, **dict(self.options)}
        if backend == "onnxruntime" and self.provider_options and "providers" in merged:
            specs = []
            for spec in merged["providers"]:
                name, opts = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
                extra = dict(self.provider_options.get(name, {}))
                specs.append([name, {**opts, **extra}] if (opts or extra) else name)
            merged["providers"] = specs
        return merged


@dataclass(frozen=True)
class WorkOrder:
    """A validated request, as the worker process gets it (all JSON values)."""

    op: str
    backend: str
    model_suffix: str = ".onnx"
    runner_options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    return_samples: bool = True
    seed: int = 0
    limits: dict[str, Any] = field(default_factory=lambda: Limits().as_dict())
    #: address-space limit of the worker in MiB (the server's ``worker_memory_mb``); None = none
    memory_mb: int | None = None
    #: ``evaluate``: one entry per model, in the request's order: ``{"role", "precision", "model_suffix",
    #: "file" (its name in the request folder), "runner_options" (the runner's keyword arguments)}``
    models: list[dict[str, Any]] = field(default_factory=list)
    #: ``evaluate``: measure the models interleaved after their outputs (False: outputs only)
    measure: bool = True
    #: ``evaluate``: answer the leading samples whose outputs fit ``max_response_bytes`` instead of refusing
    partial: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unknown(kind: str, given: set[str], valid: tuple[str, ...] | list[str]) -> OptionError:
    names = ", ".join(sorted(given))
    return OptionError(f"unknown {kind} {names}; valid {kind}s: {', '.join(sorted(valid)) or '(none)'}")


def remote_backends(served: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Backends a client may ask for: those with remote options, limited to ``served`` when given."""
    return tuple(b for b in REMOTE_OPTIONS if served is None or b in served)


def runner_option_names(backend: str) -> list[str]:
    """The runner options a client may send for ``backend`` (``path`` and ``name`` are the server's)."""
    if backend not in REMOTE_OPTIONS:
        raise OptionError(f"backend {backend!r} is not served to clients; remote backends: {', '.join(REMOTE_OPTIONS)}")
    return sorted(REMOTE_OPTIONS[backend])


def check_runner_options(backend: str, options: Any) -> dict[str, Any]:
    """A client's runner options for ``backend``, checked against the allow-list (types and bounds)."""
    if not isinstance(options, dict):
        raise OptionError(f"'runner_options' must be an object, got {type(options).__name__}")
    allowed = REMOTE_OPTIONS[backend]
    server_only = sorted(set(options) & set(SERVER_ONLY_OPTIONS.get(backend, ())))
    if server_only:
        raise OptionError(
            f"{backend} runner option(s) {', '.join(server_only)} name programs, folders or files on the board "
            "and come from the server's configuration only ([backends."
            f"{backend}] of `edgematrix serve --config`); remote {backend} options: {', '.join(sorted(allowed))}"
        )
    unknown = set(options) - set(allowed)
    if unknown:
        raise _unknown(f"{backend} runner option", unknown, list(allowed))
    return {key: allowed[key](f"{backend} runner option {key!r}", value) for key, value in options.items()}


def _check_suffix(where: str, suffix: Any, allow_engine_files: bool) -> str:
    if not isinstance(suffix, str) or suffix not in MODEL_SUFFIXES:
        raise OptionError(f"{where} {suffix!r} is not accepted; valid: {', '.join(MODEL_SUFFIXES)}")
    if suffix in ENGINE_SUFFIXES and not allow_engine_files:
        raise OptionError(
            f"this server does not accept prebuilt TensorRT engines ({suffix}) from clients: an engine is code-like "
            "input the runtime does not check. Send the ONNX model (the engine is built on the board), or start "
            "the server with allow_engine_files = true in its configuration"
        )
    return suffix


def _flag(meta: Mapping[str, Any], key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise OptionError(f"{key!r} must be true or false, got {value!r}")
    return value


_role = _pattern(ROLE_PATTERN, "a role name: a letter, then letters, digits, '_' or '-'", 32)
_precision = _choice(*PRECISIONS)


def check_target(target: Any) -> dict[str, Any]:
    """The target a request's runners are configured for (:meth:`Runner.options_for` reads it).

    ``providers`` are checked like the ``providers`` runner option (an empty list means the default);
    ``threads`` is an intra-op thread count (0 = the cores available).
    """
    out = dict(DEFAULT_TARGET)
    if target is None:
        return out
    if not isinstance(target, dict):
        raise OptionError(f"'target' must be an object with keys {', '.join(TARGET_KEYS)}, got {target!r}")
    if set(target) - set(TARGET_KEYS):
        raise _unknown("target key", set(target) - set(TARGET_KEYS), TARGET_KEYS)
    if target.get("providers"):
        out["providers"] = _providers("target 'providers'", target["providers"])
    if "threads" in target:
        out["threads"] = _THREADS("target 'threads'", target["threads"])
    return out


def _json_values(options: Mapping[str, Any]) -> dict[str, Any]:
    """Runner keyword arguments as JSON values (tuples become lists), as the worker's order carries them."""
    return dict(json.loads(json.dumps(dict(options))))


def check_models(
    backend: str,
    models: Any,
    *,
    shared: Mapping[str, Any],
    target: Mapping[str, Any],
    limits: Limits,
    allow_engine_files: bool,
) -> list[dict[str, Any]]:
    """The models of an ``evaluate`` request, each with the runner options it gets.

    A model's runner options are, later ones winning: what the backend derives for its role and
    precision on ``target`` (:meth:`Runner.options_for`, the same call a local cell makes), the
    request's shared ``runner_options``, the model's own ``runner_options`` (both allow-listed).
    The server's configuration goes over all of them (:meth:`BackendSettings.apply`, in the server).
    """
    if not isinstance(models, list) or not 1 <= len(models) <= limits.max_models:
        raise OptionError(
            f"'models' must be a list of 1 to {limits.max_models} models ([limits] max_models), each "
            f"{{{', '.join(MODEL_KEYS)}}}; got {models if not isinstance(models, list) else f'{len(models)} models'}"
        )
    runner_class = backends.get(backend)
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(models):
        where = f"models[{i}]"
        if not isinstance(entry, dict):
            raise OptionError(f"{where} must be an object {{{', '.join(MODEL_KEYS)}}}, got {entry!r}")
        if set(entry) - set(MODEL_KEYS):
            raise _unknown(f"{where} key", set(entry) - set(MODEL_KEYS), MODEL_KEYS)
        role = _role(f"{where} 'role'", entry.get("role"))
        if any(m["role"] == role for m in out):
            raise OptionError(f"{where}: role {role!r} appears twice; every model needs its own role")
        precision = _precision(f"{where} 'precision'", entry.get("precision"))
        suffix = _check_suffix(f"{where} 'model_suffix'", entry.get("model_suffix", ".onnx"), allow_engine_files)
        own = check_runner_options(backend, entry.get("runner_options") or {})
        try:
            derived = runner_class.options_for(target, role=role, precision=precision)
        except EdgeMatrixError as exc:
            raise OptionError(f"{where} (role {role!r}, precision {precision!r}): {exc}") from None
        out.append(
            {
                "role": role,
                "precision": precision,
                "model_suffix": suffix,
                "file": f"model-{i}{suffix}",
                "runner_options": {**_json_values(derived), **shared, **own},
            }
        )
    return out


def _check_config(config: Any, limits: Limits, timeout_s: float) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise OptionError(f"'config' must be an object, got {type(config).__name__}")
    if set(config) - set(CONFIG_KEYS):
        raise _unknown("config option", set(config) - set(CONFIG_KEYS), CONFIG_KEYS)
    time_cap = min(limits.max_time_s, timeout_s)
    bounds: dict[str, tuple[float, float]] = {
        "warmup": (0, limits.max_warmup),
        "min_rounds": (1, limits.max_rounds),
        "max_rounds": (1, math.inf),  # clients ask for generous maxima: capped below
        "min_time_s": (0.0, time_cap),
        "max_time_s": (0.0, math.inf),  # capped below
    }
    for key, value in config.items():
        want = bool if key == "disable_gc" else int if key in ("warmup", "min_rounds", "max_rounds") else float
        if want is bool:
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, want | int) and not isinstance(value, bool) and _finite(value)
        if not ok:
            raise OptionError(f"config option {key!r} must be {want.__name__}, got {value!r}")
        lo, hi = bounds.get(key, (0, 1))
        if want is not bool and not lo <= value <= hi:
            raise OptionError(
                f"config option {key!r} is {value!r}; this server allows {lo:g} to {hi:g} (its limits: warmup <= "
                f"{limits.max_warmup}, rounds <= {limits.max_rounds}, time <= {time_cap:g} s); ask for less, or "
                "raise [limits] in the server's configuration"
            )
    merged = {**dataclasses.asdict(LatencyConfig()), **DEFAULT_CONFIG, **config}
    merged["max_rounds"] = min(merged["max_rounds"], limits.max_rounds)
    merged["max_time_s"] = min(float(merged["max_time_s"]), time_cap)
    if merged["min_time_s"] >= timeout_s:
        raise OptionError(
            f"config min_time_s={merged['min_time_s']} does not fit the server's per-request timeout of "
            f"{timeout_s:g} s; ask for less, or start the server with a larger --timeout-s"
        )
    try:
        LatencyConfig(**merged)
    except ValueError as exc:
        raise OptionError(f"bad latency config: {exc}") from None
    return merged


def validate_request(
    meta: dict[str, Any],
    *,
    default_backend: str,
    timeout_s: float,
    limits: Limits | None = None,
    served: tuple[str, ...] | None = None,
    allow_engine_files: bool = False,
) -> WorkOrder:
    """Check a request's ``meta``; raise :class:`OptionError` naming what is wrong and what is valid."""
    limits = limits or Limits()
    op = meta.get("op")
    if not isinstance(op, str) or op not in REQUEST_KEYS:
        raise OptionError(f"'op' is {op!r}; valid operations: {', '.join(REQUEST_KEYS)}")
    unknown = set(meta) - set(REQUEST_KEYS[op])
    if unknown:
        raise _unknown("option", unknown, REQUEST_KEYS[op])
    backend = meta.get("backend") or default_backend
    if not isinstance(backend, str):
        raise OptionError(f"'backend' must be a string, got {backend!r}")
    available = remote_backends(served)
    if backend not in available:
        raise OptionError(
            f"unknown backend {backend!r} for this server; it serves: {', '.join(available) or '(none)'} "
            f"(the server's default is {default_backend!r})"
        )
    runner_options = check_runner_options(backend, meta.get("runner_options") or {})
    suffix = _check_suffix("'model_suffix'", meta.get("model_suffix", ".onnx"), allow_engine_files)
    config = _check_config(meta.get("config") or {}, limits, timeout_s) if op in ("measure", "evaluate") else {}
    return_samples = _flag(meta, "return_samples", True)
    seed = meta.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _INT_MAX:
        raise OptionError(f"'seed' must be an integer >= 0, got {seed!r}")
    models: list[dict[str, Any]] = []
    measure = _flag(meta, "measure", True)
    if op == "evaluate":
        target = check_target(meta.get("target"))
        models = check_models(
            backend,
            meta.get("models"),
            shared=runner_options,
            target=target,
            limits=limits,
            allow_engine_files=allow_engine_files,
        )
        for model in models:  # a trtexec process per inference would time the process, not the engine
            inference = model["runner_options"].get("inference", "polygraphy") if backend == "tensorrt" else ""
            if measure and inference not in ("", "polygraphy"):
                raise OptionError(
                    f"model {model['role']!r}: tensorrt runner option inference={inference!r} cannot be measured "
                    "interleaved (each inference would start a trtexec process); use inference='polygraphy' "
                    "(in-process), or measure=false for outputs only"
                )
    return WorkOrder(
        op=op,
        backend=backend,
        model_suffix=suffix,
        runner_options=runner_options,
        config=config,
        return_samples=return_samples,
        seed=seed,
        limits=limits.as_dict(),
        models=models,
        measure=measure,
        partial=_flag(meta, "partial", False),
    )

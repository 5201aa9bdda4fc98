"""Validation of the options a client sends with a request (unknown names are refused, with the valid ones)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from edgematrix.backends.base import backends, load_builtin_backends
from edgematrix.errors import EdgeMatrixError, UnknownNameError
from edgematrix.measure.harness import LatencyConfig

#: top-level keys of a request's ``meta`` per operation
REQUEST_KEYS = {
    "measure": ("op", "backend", "model_suffix", "config", "runner_options", "return_samples", "seed"),
    "run": ("op", "backend", "model_suffix", "runner_options"),
}
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(LatencyConfig))
#: harness settings of a request that names none (those of ``LocalMeter``)
DEFAULT_CONFIG: dict[str, Any] = {"warmup": 5, "min_rounds": 30, "min_time_s": 2.0}
#: model file suffixes a client may send (the name itself never becomes a path on the server)
MODEL_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")


class OptionError(EdgeMatrixError):
    """A request option is unknown or has a bad value (the server answers 400)."""


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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unknown(kind: str, given: set[str], valid: tuple[str, ...] | list[str]) -> OptionError:
    names = ", ".join(sorted(given))
    return OptionError(f"unknown {kind} {names}; valid {kind}s: {', '.join(sorted(valid)) or '(none)'}")


def runner_option_names(backend: str) -> list[str] | None:
    """Keyword options the backend's runner takes (``path`` and ``name`` are set by the server);
    None when it accepts any keyword (``**kwargs``)."""
    load_builtin_backends()
    cls = backends.get(backend)
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    allowed = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in allowed and p.name not in ("self", "path", "name")]


def validate_request(meta: dict[str, Any], *, default_backend: str, timeout_s: float) -> WorkOrder:
    """Check a request's ``meta``; raise :class:`OptionError` naming what is wrong and what is valid."""
    op = meta.get("op")
    if op not in REQUEST_KEYS:
        raise OptionError(f"'op' is {op!r}; valid operations: {', '.join(REQUEST_KEYS)}")
    unknown = set(meta) - set(REQUEST_KEYS[op])
    if unknown:
        raise _unknown("option", unknown, REQUEST_KEYS[op])
    backend = meta.get("backend") or default_backend
    if not isinstance(backend, str):
        raise OptionError(f"'backend' must be a string, got {backend!r}")
    try:
        valid_runner = runner_option_names(backend)
    except UnknownNameError as exc:
        raise OptionError(f"{exc}; the server's default is {default_backend!r}") from None
    runner_options = meta.get("runner_options") or {}
    if not isinstance(runner_options, dict):
        raise OptionError(f"'runner_options' must be an object, got {type(runner_options).__name__}")
    if valid_runner is not None and set(runner_options) - set(valid_runner):
        raise _unknown(f"{backend} runner option", set(runner_options) - set(valid_runner), valid_runner)
    suffix = meta.get("model_suffix", ".onnx")
    if suffix not in MODEL_SUFFIXES:
        raise OptionError(f"'model_suffix' {suffix!r} is not accepted; valid: {', '.join(MODEL_SUFFIXES)}")
    config = meta.get("config") or {}
    if not isinstance(config, dict):
        raise OptionError(f"'config' must be an object, got {type(config).__name__}")
    if set(config) - set(CONFIG_KEYS):
        raise _unknown("config option", set(config) - set(CONFIG_KEYS), CONFIG_KEYS)
    for key, value in config.items():
        want = bool if key == "disable_gc" else (int if key.endswith("rounds") or key == "warmup" else float)
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise OptionError(f"config option {key!r} must be {want.__name__}, got {value!r}")
    merged = {**dataclasses.asdict(LatencyConfig()), **DEFAULT_CONFIG, **config}
    try:
        resolved = LatencyConfig(**merged)
    except ValueError as exc:
        raise OptionError(f"bad latency config: {exc}") from None
    if op == "measure" and resolved.min_time_s >= timeout_s:
        raise OptionError(
            f"config min_time_s={resolved.min_time_s} does not fit the server's per-request timeout of "
            f"{timeout_s:g} s; ask for less, or start the server with a larger --timeout-s"
        )
    return_samples = meta.get("return_samples", True)
    seed = meta.get("seed", 0)
    if not isinstance(return_samples, bool):
        raise OptionError(f"'return_samples' must be true or false, got {return_samples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise OptionError(f"'seed' must be an integer >= 0, got {seed!r}")
    return WorkOrder(
        op=op,
        backend=backend,
        model_suffix=suffix,
        runner_options=dict(runner_options),
        config=merged if op == "measure" else {},
        return_samples=return_samples,
        seed=seed,
    )

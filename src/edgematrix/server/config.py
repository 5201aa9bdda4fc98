"""The latency server's configuration: :class:`ServerConfig`, and ``edgematrix serve --config FILE``.

Everything that names a program, a folder, a library or an environment variable on the board comes
from here, never from a request (docs/security.md). A configuration file is TOML::

    [server]
    backend = "onnxruntime"              # requests that name no backend
    backends = ["onnxruntime", "tensorrt"]  # what clients may ask for (default: every remote backend)
    max_body_mb = 512
    queue_limit = 8
    timeout_s = 600
    allow_engine_files = false           # prebuilt TensorRT engines from clients (code-like input)
    worker_memory_mb = 8192              # address-space limit of a worker (leave unset with CUDA)
    power_mode = "MAXN"                  # the board's power mode, reported by /v1/evaluate and /v1/device
                                         # ($EDGEMATRIX_POWER_MODE of the server wins; else nvpmodel's)

    [limits]                             # edgematrix.server.options.Limits (defaults in docs/latency-server.md)
    max_warmup = 1000
    max_rounds = 100000
    max_bundle_bytes = 1073741824        # one request's evaluation bundle, uncompressed
    max_response_bytes = 268435456       # the outputs one request answers

    [worker]
    env = { CUDA_VISIBLE_DEVICES = "0" }  # set in every worker
    pass_env = ["LD_LIBRARY_PATH"]        # copied from the server's environment when set

    [backends.tensorrt]                  # runner options only the server sets
    executable = "/usr/src/tensorrt/bin/trtexec"
    timing_cache = "/var/cache/edgematrix/trt-timing.cache"

    [backends.onnxruntime.provider_options.TensorrtExecutionProvider]
    trt_engine_cache_enable = true
    trt_engine_cache_path = "/var/cache/edgematrix/ort-trt"

Command-line flags of ``edgematrix serve`` (``--backend``, ``--max-body-mb``, ``--queue-limit``,
``--timeout-s``) win over the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError
from edgematrix.server.options import (
    PROVIDER_REMOTE_OPTIONS,
    REMOTE_OPTIONS,
    SERVER_ONLY_OPTIONS,
    BackendSettings,
    Limits,
    remote_backends,
)
from edgematrix.server.token import TOKEN_ENV

MIN_TOKEN_CHARS = 16
#: environment variable names a worker never gets: the worker runs a client's model
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|PRIVATE_KEY", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECTIONS = {"server", "limits", "worker", "backends"}
_SERVER_KEYS = {
    "backend",
    "backends",
    "max_body_mb",
    "queue_limit",
    "timeout_s",
    "allow_engine_files",
    "worker_memory_mb",
    "power_mode",
}
#: the server's environment variable naming the board's power mode (as on device runners); wins over the file
POWER_MODE_ENV = "EDGEMATRIX_POWER_MODE"
_POWER_MODE = re.compile(r"^[A-Za-z0-9_.:+ -]{1,64}$")


@dataclass(frozen=True)
class ServerConfig:
    """How the server behaves; ``token`` is required (see :func:`edgematrix.server.token.load_token`).

    ``backends``: the backends clients may ask for (``None``: every backend with remote options);
    ``settings``: the server's own runner options per backend; ``worker_env`` / ``pass_env``: the
    only environment a worker gets besides PATH, locale, HOME / TMPDIR (its request folder) and
    PYTHONPATH; ``worker_memory_mb``: an address-space limit of each worker (``RLIMIT_AS``).
    """

    token: str
    backend: str = "onnxruntime"
    max_body_bytes: int = 512 * 1024 * 1024
    queue_limit: int = 8
    timeout_s: float = 600.0
    socket_timeout_s: float = 60.0
    limits: Limits = field(default_factory=Limits)
    backends: tuple[str, ...] | None = None
    settings: Mapping[str, BackendSettings] = field(default_factory=dict)
    worker_env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    allow_engine_files: bool = False
    worker_memory_mb: int | None = None
    #: the board's power mode as the operator declares it (``[server] power_mode``); see :meth:`power_mode_now`
    power_mode: str | None = None

    def __post_init__(self) -> None:
        if len(self.token) < MIN_TOKEN_CHARS:
            raise EdgeMatrixError(
                f"the server token has {len(self.token)} characters; use at least {MIN_TOKEN_CHARS} "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if self.max_body_bytes < 1 or self.queue_limit < 0 or self.timeout_s <= 0:
            raise EdgeMatrixError(
                f"need max_body_bytes >= 1, queue_limit >= 0, timeout_s > 0; got {self.max_body_bytes}, "
                f"{self.queue_limit}, {self.timeout_s}"
            )
        unknown = sorted(set(self.backends or ()) - set(REMOTE_OPTIONS))
        if unknown:
            raise EdgeMatrixError(
                f"server backends {unknown} cannot be served to clients; remote backends: {', '.join(REMOTE_OPTIONS)}"
            )
        if self.backend not in self.served:
            raise EdgeMatrixError(
                f"the default backend {self.backend!r} is not among the served backends "
                f"({', '.join(self.served) or 'none'}); remote backends: {', '.join(REMOTE_OPTIONS)}"
            )
        for backend, settings in self.settings.items():
            _check_settings(backend, settings)
        for name in [*self.worker_env, *self.pass_env]:
            if not _ENV_NAME.match(name) or name == TOKEN_ENV or _SECRET_NAME.search(name):
                raise EdgeMatrixError(
                    f"worker environment variable {name!r} is refused: a worker runs a client's model and gets no "
                    f"secrets ({TOKEN_ENV}, *TOKEN*, *SECRET*, *PASSWORD*, *CREDENTIAL*); name plain settings only"
                )
        if self.worker_memory_mb is not None and self.worker_memory_mb < 64:
            raise EdgeMatrixError(f"worker_memory_mb must be >= 64 (MiB), got {self.worker_memory_mb}")
        if self.power_mode is not None and not (
            isinstance(self.power_mode, str) and _POWER_MODE.match(self.power_mode)
        ):
            raise EdgeMatrixError(
                f'power_mode {self.power_mode!r} must be 1 to 64 letters, digits, spaces or _.:+- (e.g. "MAXN", "15W")'
            )

    def power_mode_now(self, device_facts: Mapping[str, Any]) -> tuple[str, str]:
        """The board's power mode and where it came from: ``$EDGEMATRIX_POWER_MODE`` of the server
        (``"env"``), else ``power_mode`` of the configuration (``"config"``), else what ``nvpmodel -q``
        said (``"nvpmodel"``, in ``device_facts``), else ``("", "none")``."""
        declared = os.environ.get(POWER_MODE_ENV, "").strip()
        if declared:
            return declared[:64], "env"
        if self.power_mode:
            return self.power_mode, "config"
        measured = device_facts.get("power_mode")
        if isinstance(measured, str) and measured:
            return measured, "nvpmodel"
        return "", "none"

    @property
    def served(self) -> tuple[str, ...]:
        return remote_backends(self.backends)

    def settings_for(self, backend: str) -> BackendSettings:
        return self.settings.get(backend, BackendSettings())


def _check_settings(backend: str, settings: BackendSettings) -> None:
    if backend not in REMOTE_OPTIONS:
        raise EdgeMatrixError(
            f"[backends.{backend}]: {backend!r} is not a remote backend; remote backends: {', '.join(REMOTE_OPTIONS)}"
        )
    valid = sorted({*REMOTE_OPTIONS[backend], *SERVER_ONLY_OPTIONS[backend]} - {"provider_options"})
    unknown = sorted(set(settings.options) - set(valid))
    if unknown:
        raise EdgeMatrixError(f"[backends.{backend}]: unknown runner option(s) {unknown}; valid: {', '.join(valid)}")
    if settings.provider_options and backend != "onnxruntime":
        raise EdgeMatrixError(f"[backends.{backend}]: provider_options apply to the onnxruntime backend only")
    for provider, options in settings.provider_options.items():
        if provider not in PROVIDER_REMOTE_OPTIONS or not isinstance(options, Mapping):
            raise EdgeMatrixError(
                f"[backends.onnxruntime.provider_options.{provider}]: need a table of options of one of "
                f"{', '.join(PROVIDER_REMOTE_OPTIONS)}"
            )


def _table(raw: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise EdgeMatrixError(f"{path}: [{key}] must be a table, got {type(value).__name__}")
    return value


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML of a server configuration file, with its sections checked (unknown keys refused)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise EdgeMatrixError(f"cannot read the server configuration {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise EdgeMatrixError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgeMatrixError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise EdgeMatrixError(f"{path}: unknown section(s) {unknown}; sections: {', '.join(sorted(_SECTIONS))}")
    unknown = sorted(set(_table(raw, "server", path)) - _SERVER_KEYS)
    if unknown:
        raise EdgeMatrixError(f"{path}: [server] unknown key(s) {unknown}; keys: {', '.join(sorted(_SERVER_KEYS))}")
    limit_keys = {f.name for f in dataclasses.fields(Limits)}
    unknown = sorted(set(_table(raw, "limits", path)) - limit_keys)
    if unknown:
        raise EdgeMatrixError(f"{path}: [limits] unknown key(s) {unknown}; keys: {', '.join(sorted(limit_keys))}")
    unknown = sorted(set(_table(raw, "worker", path)) - {"env", "pass_env"})
    if unknown:
        raise EdgeMatrixError(f"{path}: [worker] unknown key(s) {unknown}; keys: env, pass_env")
    return raw


def build_config(
    token: str,
    config_file: str | os.PathLike[str] | None = None,
    *,
    backend: str | None = None,
    max_body_mb: float | None = None,
    queue_limit: int | None = None,
    timeout_s: float | None = None,
) -> ServerConfig:
    """A :class:`ServerConfig` from ``config_file`` (optional) with the given values over it."""
    path = Path(config_file) if config_file is not None else Path("(none)")
    raw = read_config_file(config_file) if config_file is not None else {}
    server = _table(raw, "server", path)
    worker = _table(raw, "worker", path)
    env = worker.get("env", {})
    pass_env = worker.get("pass_env", [])
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise EdgeMatrixError(f"{path}: [worker] env must be a table of strings")
    if not isinstance(pass_env, list) or not all(isinstance(v, str) for v in pass_env):
        raise EdgeMatrixError(f"{path}: [worker] pass_env must be a list of variable names")
    settings = {}
    for name, table in _table(raw, "backends", path).items():
        if not isinstance(table, dict):
            raise EdgeMatrixError(f"{path}: [backends.{name}] must be a table")
        options = {k: v for k, v in table.items() if k != "provider_options"}
        settings[name] = BackendSettings(options, dict(table.get("provider_options", {})))
    served = server.get("backends")
    try:
        limits = Limits(**_table(raw, "limits", path))
        return ServerConfig(
            token=token,
            backend=backend or server.get("backend", "onnxruntime"),
            max_body_bytes=int((max_body_mb if max_body_mb is not None else server.get("max_body_mb", 512)) * 2**20),
            queue_limit=queue_limit if queue_limit is not None else int(server.get("queue_limit", 8)),
            timeout_s=float(timeout_s if timeout_s is not None else server.get("timeout_s", 600.0)),
            limits=limits,
            backends=tuple(served) if served is not None else None,
            settings=settings,
            worker_env=dict(env),
            pass_env=tuple(pass_env),
            allow_engine_files=bool(server.get("allow_engine_files", False)),
            worker_memory_mb=server.get("worker_memory_mb"),
            power_mode=server.get("power_mode"),
        )
    except EdgeMatrixError as exc:
        raise EdgeMatrixError(f"{path}: {exc}" if config_file is not None else str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise EdgeMatrixError(f"{path}: bad value: {exc}") from None

"""The device-side latency server (stdlib ``http.server`` only, so it runs on a bare board).

Endpoints (wire format in :mod:`edgematrix.server.wire`, details in docs/latency-server.md):

- ``GET /v1/health`` — no token: ``{"status": "ok", "busy": ..., "queued": ..., ...}``; says nothing about the device.
- ``GET /v1/device`` — token: device facts (model, OS / L4T / JetPack, runtime versions, power mode, clocks, temps).
- ``POST /v1/measure`` — token; frame with blob ``model`` and meta options → JSON latency report.
- ``POST /v1/run`` — token; frame with blobs ``model`` and ``bundle`` (npz) → frame with blob ``outputs`` (npz).

Every request is authenticated with ``Authorization: Bearer <token>`` (compared with
``hmac.compare_digest``). Bodies above the size limit get 413, a busy device with a full queue
503 + ``Retry-After``, a measurement past the timeout 504; the server keeps serving after each.
Measurements run one at a time, first come first served, each in a fresh worker process.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import edgematrix
from edgematrix.backends.base import Fact, backends, load_builtin_backends
from edgematrix.errors import EdgeMatrixError, WireFormatError
from edgematrix.server import worker
from edgematrix.server.device import dynamic_facts, static_facts
from edgematrix.server.options import OptionError, WorkOrder, validate_request
from edgematrix.server.wire import CONTENT_TYPE, decode_frame, encode_frame, npz_to_arrays

log = logging.getLogger("edgematrix.server")

SERVICE = "edgematrix-latency-server"
API = "/v1"
MIN_TOKEN_CHARS = 16
_DRAIN_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """How the server behaves; ``token`` is required (see :func:`edgematrix.server.token.load_token`)."""

    token: str
    backend: str = "onnxruntime"
    max_body_bytes: int = 512 * 1024 * 1024
    queue_limit: int = 8
    timeout_s: float = 600.0
    socket_timeout_s: float = 60.0

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


class Busy(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeviceSlot:
    """One measurement at a time, first come first served; at most ``queue_limit`` requests wait."""

    def __init__(self, queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self._cond = threading.Condition()
        self._busy = False
        self._queue: collections.deque[object] = collections.deque()
        self._durations: collections.deque[float] = collections.deque(maxlen=20)

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def queued(self) -> int:
        return len(self._queue)

    def retry_after_s(self, position: int) -> int:
        typical = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(typical * (position + 1)))

    @contextlib.contextmanager
    def hold(self, wait_s: float) -> Iterator[float]:
        """Wait for the device (yields seconds waited); :class:`Busy` when the queue is full or the wait is too long."""
        ticket = object()
        t0 = time.monotonic()
        with self._cond:
            if (self._busy or self._queue) and len(self._queue) >= self.queue_limit:
                raise Busy(
                    f"device busy: one measurement running and {len(self._queue)} queued (queue limit "
                    f"{self.queue_limit}); retry later",
                    self.retry_after_s(len(self._queue)),
                )
            self._queue.append(ticket)
            try:
                ready = self._cond.wait_for(lambda: not self._busy and self._queue[0] is ticket, timeout=wait_s)
                if not ready:
                    raise Busy(f"device busy: waited {wait_s:g} s in the queue without a turn", self.retry_after_s(1))
                self._busy = True
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
        started = time.monotonic()
        try:
            yield started - t0
        finally:
            with self._cond:
                self._durations.append(time.monotonic() - started)
                self._busy = False
                self._cond.notify_all()


class HttpError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


@dataclass
class Measurement:
    """When one request held the device (``time.monotonic`` seconds); the server keeps these for tests."""

    request_id: int
    start: float
    end: float
    op: str


@dataclass
class _State:
    config: ServerConfig
    slot: DeviceSlot
    device: dict[str, Fact]
    history: list[Measurement] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    def next_id(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter


def _package_root() -> str:
    return str(Path(edgematrix.__file__).resolve().parents[1])


def run_worker(order: WorkOrder, blobs: dict[str, bytes], timeout_s: float) -> tuple[dict[str, Any], bytes | None]:
    """Run one order in a fresh worker process; returns (result, outputs npz or None) or raises HttpError."""
    folder = Path(tempfile.mkdtemp(prefix="edgematrix-req-"))
    try:
        (folder / worker.ORDER_FILE).write_text(json.dumps(order.as_dict()), encoding="utf-8")
        (folder / f"model{order.model_suffix}").write_bytes(blobs["model"])
        if "bundle" in blobs:
            (folder / worker.BUNDLE_FILE).write_bytes(blobs["bundle"])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "edgematrix.server.worker", str(folder), str(os.getpid()), str(0.8 * timeout_s)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise HttpError(
                504,
                "timeout",
                f"the measurement took longer than the server's per-request timeout of {timeout_s:g} s and was "
                "stopped; measure fewer rounds (config max_time_s) or start the server with a larger --timeout-s",
            ) from None
        if proc.returncode == worker.EXIT_ERROR and (folder / worker.ERROR_FILE).is_file():
            err = json.loads((folder / worker.ERROR_FILE).read_text(encoding="utf-8"))
            raise HttpError(int(err["status"]), str(err["kind"]), str(err["message"]))
        if proc.returncode != 0 or not (folder / worker.RESULT_FILE).is_file():
            code = proc.returncode
            how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            tail = stderr.decode("utf-8", "replace")[-2000:].strip()
            raise HttpError(500, "worker_crashed", f"the measurement worker {how}; its last output: {tail or '(none)'}")
        result = json.loads((folder / worker.RESULT_FILE).read_text(encoding="utf-8"))
        outputs = (folder / worker.OUTPUTS_FILE).read_bytes() if (folder / worker.OUTPUTS_FILE).is_file() else None
        return result, outputs
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Handler(BaseHTTPRequestHandler):
    server_version = f"{SERVICE}/{edgematrix.__version__}"
    protocol_version = "HTTP/1.1"
    state: _State  # set on the subclass made per server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.state.config.socket_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s - %s", self.address_string(), format % args)

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data, allow_nan=False).encode("utf-8"), "application/json", headers)

    def _send_error(self, err: HttpError) -> None:
        body = {"error": {"status": err.status, "kind": err.kind, "message": err.message}}
        log.warning("%s %s -> %d %s: %s", self.command, self.path, err.status, err.kind, err.message.splitlines()[0])
        self._send_json(err.status, body, err.headers)

    def _drain(self, remaining: int) -> None:
        """Read and drop an unread body so the client sees our answer instead of a reset connection."""
        limit = self.state.config.max_body_bytes + (64 << 20)
        if remaining > limit:
            self.close_connection = True
            return
        with contextlib.suppress(OSError):
            while remaining > 0:
                chunk = self.rfile.read(min(_DRAIN_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "length_required", "chunked bodies are not accepted; send a Content-Length")
        if raw is None or not raw.isdigit():
            raise HttpError(411, "length_required", f"Content-Length is {raw!r}; send the body's length in bytes")
        return int(raw)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        expected = self.state.config.token.encode("utf-8")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8"), expected)

    def _require_auth(self) -> None:
        if not self._authorized():
            raise HttpError(
                401,
                "unauthorized",
                "missing or wrong token: send `Authorization: Bearer <token>` with the server's token "
                "(EDGEMATRIX_TOKEN or --token-file on both sides)",
                {"WWW-Authenticate": 'Bearer realm="edgematrix"'},
            )

    # -- routes ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        try:
            if self.path == f"{API}/health":
                slot = self.state.slot
                self._send_json(
                    200,
                    {
                        "status": "ok",
                        "service": SERVICE,
                        "version": edgematrix.__version__,
                        "wire_version": 1,
                        "busy": slot.busy,
                        "queued": slot.queued,
                        "queue_limit": slot.queue_limit,
                        "max_body_bytes": self.state.config.max_body_bytes,
                        "timeout_s": self.state.config.timeout_s,
                    },
                )
            elif self.path == f"{API}/device":
                self._require_auth()
                load_builtin_backends()
                facts = {**self.state.device, **dynamic_facts()}
                self._send_json(
                    200, {"facts": facts, "backends": backends.names(), "default_backend": self.state.config.backend}
                )
            else:
                raise self._not_found()
        except HttpError as err:
            self._send_error(err)

    def _not_found(self) -> HttpError:
        return HttpError(
            404,
            "not_found",
            f"no endpoint {self.command} {self.path}; endpoints: GET {API}/health, GET {API}/device, "
            f"POST {API}/measure, POST {API}/run",
        )

    def do_POST(self) -> None:
        length = 0
        body_read = False
        try:
            op = {f"{API}/measure": "measure", f"{API}/run": "run"}.get(self.path)
            if op is None:
                raw_length = self.headers.get("Content-Length") or ""
                length = int(raw_length) if raw_length.isdigit() else 0
                raise self._not_found()
            length = self._content_length()
            self._require_auth()
            limit = self.state.config.max_body_bytes
            if length > limit:
                raise HttpError(
                    413,
                    "too_large",
                    f"body is {length} bytes; this server accepts at most {limit} bytes "
                    f"({limit / 2**20:.0f} MiB); start it with a larger --max-body-mb if the model needs it",
                )
            body = self.rfile.read(length)
            body_read = True
            if len(body) != length:
                self.close_connection = True
                raise HttpError(400, "truncated", f"body ended after {len(body)} of {length} bytes")
            self._post(op, body)
        except HttpError as err:
            if not body_read:
                self._drain(length)
            self._send_error(err)
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("internal error")
            self.close_connection = True
            self._send_error(HttpError(500, "internal_error", f"{type(exc).__name__}: {exc}"))

    def _post(self, op: str, body: bytes) -> None:
        cfg = self.state.config
        try:
            meta, blobs = decode_frame(body)
        except WireFormatError as exc:
            raise HttpError(400, "bad_frame", str(exc)) from None
        meta = {"op": op, **meta}
        if meta["op"] != op:
            raise HttpError(400, "bad_request", f"meta 'op' is {meta['op']!r} but the endpoint is {self.path}")
        try:
            order = validate_request(meta, default_backend=cfg.backend, timeout_s=cfg.timeout_s)
        except OptionError as exc:
            raise HttpError(400, "unknown_option" if "unknown" in str(exc) else "bad_option", str(exc)) from None
        need = {"measure": {"model"}, "run": {"model", "bundle"}}[op]
        if set(blobs) != need:
            raise HttpError(400, "bad_request", f"{self.path} takes blobs {sorted(need)}; got {sorted(blobs)}")
        if op == "run":
            try:  # checked here so a bad bundle gets 400 before it waits for the device
                npz_to_arrays(blobs["bundle"], max_bytes=4 * cfg.max_body_bytes, what="bundle")
            except WireFormatError as exc:
                raise HttpError(400, "bad_bundle", str(exc)) from None
        request_id = self.state.next_id()
        try:
            with self.state.slot.hold(cfg.timeout_s) as waited_s:
                start = time.monotonic()
                try:
                    result, outputs = run_worker(order, blobs, cfg.timeout_s)
                finally:
                    with self.state.lock:
                        self.state.history.append(Measurement(request_id, start, time.monotonic(), op))
        except Busy as exc:
            raise HttpError(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
        result["queued_s"] = waited_s
        result["request_id"] = request_id
        result["facts"] = {**self.state.device, **result.get("facts", {})}
        if op == "measure":
            self._send_json(200, result)
        else:
            self._send(200, encode_frame(result, {"outputs": outputs or b""}), CONTENT_TYPE)


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's default backlog of 5 resets a burst of concurrent clients
    daemon_threads = True


class DeviceServer:
    """The latency server. ``with DeviceServer(cfg) as url:`` serves on a thread (port 0 = any free port)."""

    def __init__(self, config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        load_builtin_backends()
        backends.get(config.backend)  # an unknown default backend fails at start, listing the known ones
        self.config = config
        self.state = _State(config=config, slot=DeviceSlot(config.queue_limit), device=static_facts())
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = _HTTPServer((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = str(host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    @property
    def history(self) -> list[Measurement]:
        with self.state.lock:
            return list(self.state.history)

    def serve_forever(self) -> None:
        log.info("%s %s serving on %s (backend %s)", SERVICE, edgematrix.__version__, self.url, self.config.backend)
        self.httpd.serve_forever()

    def start(self) -> str:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="edgematrix-server", daemon=True
        )
        self._thread.start()
        return self.url

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def serve_in_thread(config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> Iterator[DeviceServer]:
    """Start a server on a background thread (tests, benchmarks); yields it (``server.url``); always closed."""
    server = DeviceServer(config, host, port)
    server.start()
    try:
        yield server
    finally:
        server.close()

"""The device-side latency server (stdlib ``http.server`` only, so it runs on a bare board).

Endpoints (wire format in :mod:`edgematrix.server.wire`, details in docs/latency-server.md):

- ``GET /v1/health`` — no token: ``{"status": "ok", "busy": ..., "queued": ..., ...}``; says nothing about the device.
- ``GET /v1/device`` — token: device facts (model, OS / L4T / JetPack, runtime versions, power mode, clocks, temps).
- ``POST /v1/measure`` — token; frame with blob ``model`` and meta options → JSON latency report.
- ``POST /v1/run`` — token; frame with blobs ``model`` and ``bundle`` (npz) → frame with blob ``outputs`` (npz).
- ``POST /v1/evaluate`` — token; frame with blobs ``model.<role>`` (one per model) and ``bundle`` (npz), meta
  ``models`` / ``runner_options`` / ``target`` / ``config`` → frame with blobs ``outputs.<role>`` and
  ``samples`` (npz: per-round seconds of the models measured interleaved) and meta: runner and device
  facts, the environment key, the power mode and the contention record.

Every request is authenticated with ``Authorization: Bearer <token>`` (compared with
``hmac.compare_digest``). Bodies above the size limit get 413, a busy device with a full queue
503 + ``Retry-After``, a measurement past the timeout 504; the server keeps serving after each.
A request's blobs are streamed from the socket into its private folder (the server holds about
1 MiB of a request in memory), answers are streamed from the worker's files. Measurements run one
at a time, first come first served, each in a fresh worker process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
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
from edgematrix.server.config import MIN_TOKEN_CHARS, ServerConfig
from edgematrix.server.device import dynamic_facts, static_facts
from edgematrix.server.options import Limits, OptionError, WorkOrder, runner_option_names, validate_request
from edgematrix.server.token import TOKEN_ENV
from edgematrix.server.wire import (
    CONTENT_TYPE,
    MAX_HEADER_BYTES,
    NpzSource,
    copy_blob,
    file_entry,
    frame_head,
    npz_members,
    read_frame_head,
)

log = logging.getLogger("edgematrix.server")

SERVICE = "edgematrix-latency-server"
API = "/v1"
_DRAIN_CHUNK = 1 << 20
__all__ = ["MIN_TOKEN_CHARS", "DeviceServer", "HttpError", "ServerConfig", "Workers", "serve", "serve_in_thread"]


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
    workers: Workers
    history: list[Measurement] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    def next_id(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter


def _package_root() -> str:
    return str(Path(edgematrix.__file__).resolve().parents[1])


def worker_environment(config: ServerConfig | None, folder: Path) -> dict[str, str]:
    """The whole environment of a worker: nothing of the server's but PATH and what the configuration names.

    HOME and TMPDIR are the request folder (removed with it); PYTHONPATH is the server's import path,
    so the worker imports the same edgematrix and runtimes. Never the token.
    """
    python_path = [_package_root(), *(p for p in sys.path if p and Path(p).is_dir())]
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(folder),
        "TMPDIR": str(folder),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(python_path)),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if config is not None:
        env.update({name: os.environ[name] for name in config.pass_env if name in os.environ})
        env.update(config.worker_env)
    env.pop(TOKEN_ENV, None)
    return env


class Workers:
    """The worker processes of one server and their request folders (all under one private ``root``).

    A request's blobs go straight from the socket into its folder (:meth:`spool`), where it waits for
    the device; :meth:`run` starts the worker on that folder. :meth:`stop_all` (server shutdown) ends
    every worker's process group and removes ``root``; a request that arrives afterwards gets 503.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config
        self.root = Path(tempfile.mkdtemp(prefix=f"edgematrix-serve-{os.getpid()}-"))
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self.closing = False

    @property
    def running(self) -> list[int]:
        with self._lock:
            return list(self._procs)

    def _shutting_down(self) -> HttpError:
        return HttpError(503, "shutting_down", "the server is shutting down; retry against its next start")

    @contextlib.contextmanager
    def spool(self) -> Iterator[Path]:
        """A new private request folder, removed with everything in it (the client's models) at the end."""
        with self._lock:
            if self.closing:
                raise self._shutting_down()
            folder = Path(tempfile.mkdtemp(prefix="req-", dir=self.root))
        try:
            yield folder
        except OSError as exc:  # writing the request's files
            if self.closing:
                raise self._shutting_down() from None
            if exc.errno == errno.ENOSPC:
                raise HttpError(
                    507,
                    "insufficient_storage",
                    f"the board's temporary folder ({self.root.parent}) is full; send a smaller request, or free space",
                ) from None
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def run(self, order: WorkOrder, folder: Path, timeout_s: float) -> tuple[dict[str, Any], dict[str, Path]]:
        """Run one order in a fresh worker process on a spooled folder holding its files (:func:`blob_files`);
        returns (result, the outputs files to answer by blob name) or raises HttpError."""
        (folder / worker.ORDER_FILE).write_text(json.dumps(order.as_dict()), encoding="utf-8")
        cmd = [sys.executable, "-m", "edgematrix.server.worker", str(folder), str(os.getpid()), str(0.8 * timeout_s)]
        with self._lock:
            if self.closing:
                raise self._shutting_down()
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=worker_environment(self.config, folder),
                cwd=folder,
                start_new_session=True,  # its own process group: a timeout or shutdown kills it and its children
            )
            self._procs[proc.pid] = proc
        try:
            try:
                _, stderr = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill(proc)
                proc.communicate()
                raise HttpError(
                    504,
                    "timeout",
                    f"the measurement took longer than the server's per-request timeout of {timeout_s:g} s and was "
                    "stopped; measure fewer rounds (config max_time_s) or start the server with a larger --timeout-s",
                ) from None
        finally:
            with self._lock:
                self._procs.pop(proc.pid, None)
        if self.closing:
            raise self._shutting_down()
        return _worker_answer(folder, proc.returncode, stderr, answer_files(order))

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop_all(self, grace_s: float = 2.0) -> None:
        """End every worker (SIGTERM to its process group, SIGKILL after ``grace_s``) and remove ``root``."""
        with self._lock:
            self.closing = True
            procs = list(self._procs.values())
        for proc in procs:
            self._kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            self._kill(proc)  # the group too: children of a worker that exited still hold the device
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def blob_files(order: WorkOrder) -> dict[str, str]:
    """Where each blob a request may carry goes in its folder: fixed names, so a blob or role never becomes a path."""
    files = {"bundle": worker.BUNDLE_FILE}
    if order.op == "evaluate":
        files.update({f"model.{model['role']}": model["file"] for model in order.models})
    else:
        files["model"] = f"model{order.model_suffix}"
    return files


def answer_files(order: WorkOrder) -> dict[str, str]:
    """The files of a worker's request folder that go back to the client, by their blob name in the answer."""
    if order.op == "evaluate":
        files = {
            f"outputs.{model['role']}": worker.EVAL_OUTPUTS_FILE.format(index=index)
            for index, model in enumerate(order.models)
        }
        return {**files, "samples": worker.EVAL_SAMPLES_FILE} if order.measure else files
    return {"outputs": worker.OUTPUTS_FILE}


def _worker_answer(
    folder: Path, code: int, stderr: bytes, files: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Path]]:
    if code == worker.EXIT_ERROR and (folder / worker.ERROR_FILE).is_file():
        err = json.loads((folder / worker.ERROR_FILE).read_text(encoding="utf-8"))
        if int(err["status"]) >= 500:
            log.error("worker error %s; its output:\n%s", err["kind"], stderr.decode("utf-8", "replace")[-8000:])
        raise HttpError(int(err["status"]), str(err["kind"]), str(err["message"]))
    if code != 0 or not (folder / worker.RESULT_FILE).is_file():
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        tail = stderr.decode("utf-8", "replace")[-4000:].strip()
        log.warning("worker %s; its last output:\n%s", how, tail or "(none)")
        raise HttpError(
            422,
            "worker_crashed",
            f"the measurement worker {how} while running this model (a runtime crash, or it ran out of memory); "
            "the server kept running and its log has the worker's output",
        )
    result = json.loads((folder / worker.RESULT_FILE).read_text(encoding="utf-8"))
    return result, {name: folder / file for name, file in files.items() if (folder / file).is_file()}


def run_worker(order: WorkOrder, blobs: dict[str, bytes], timeout_s: float) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run one order in a fresh worker process of a one-off :class:`Workers` (tests, tools); returns
    (result, the outputs by blob name)."""
    workers = Workers()
    try:
        with workers.spool() as folder:
            files = blob_files(order)
            for name, data in blobs.items():
                (folder / files[name]).write_bytes(data)
            result, outputs = workers.run(order, folder, timeout_s)
            return result, {name: path.read_bytes() for name, path in outputs.items()}
    finally:
        workers.stop_all()


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

    def _send_frame(self, meta: dict[str, Any], files: dict[str, Path]) -> None:
        """A frame answer whose blobs are files, streamed from disk (never all in memory)."""
        head = frame_head(meta, [file_entry(name, path) for name, path in files.items()])
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(head) + sum(path.stat().st_size for path in files.values())))
        self.end_headers()
        self.wfile.write(head)
        for path in files.values():
            with path.open("rb") as fh:
                shutil.copyfileobj(fh, self.wfile, _DRAIN_CHUNK)

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
                cfg = self.state.config
                facts = {**self.state.device, **dynamic_facts()}
                power_mode, source = cfg.power_mode_now(facts)
                self._send_json(
                    200,
                    {
                        "facts": facts,
                        "backends": list(cfg.served),
                        "default_backend": cfg.backend,
                        "runner_options": {b: runner_option_names(b) for b in cfg.served},
                        "limits": cfg.limits.as_dict(),
                        "max_body_bytes": cfg.max_body_bytes,
                        "timeout_s": cfg.timeout_s,
                        "allow_engine_files": cfg.allow_engine_files,
                        "power_mode": power_mode,
                        "power_mode_source": source,
                    },
                )
            else:
                raise self._not_found()
        except HttpError as err:
            self._send_error(err)

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._send_error(
            HttpError(
                405, "method_not_allowed", f"{self.command} is not served; use GET or POST", {"Allow": "GET, POST"}
            )
        )

    # http.server's names for the handlers of these methods
    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_HEAD = _method_not_allowed  # noqa: N815

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, headers too long) as JSON, like ours."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        with contextlib.suppress(OSError):
            self._send_json(code, {"error": {"status": code, "kind": "bad_http", "message": text}})

    def _not_found(self) -> HttpError:
        return HttpError(
            404,
            "not_found",
            f"no endpoint {self.command} {self.path}; endpoints: GET {API}/health, GET {API}/device, "
            f"POST {API}/measure, POST {API}/run, POST {API}/evaluate",
        )

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` more bytes of the request's body (a 400 when the client sent fewer)."""
        data = self.rfile.read(n)
        self._consumed += len(data)
        if len(data) != n:
            self.close_connection = self._ended = True
            raise HttpError(400, "truncated", f"body ended after {self._consumed} of {self._length} bytes")
        return data

    def do_POST(self) -> None:
        self._length = self._consumed = 0
        self._ended = False  # the client's body ended early: nothing left to drain
        try:
            op = {f"{API}/measure": "measure", f"{API}/run": "run", f"{API}/evaluate": "evaluate"}.get(self.path)
            if op is None:
                raw_length = self.headers.get("Content-Length") or ""
                self._length = int(raw_length) if raw_length.isdigit() else 0
                raise self._not_found()
            self._length = self._content_length()
            self._require_auth()
            limit = self.state.config.max_body_bytes
            if self._length > limit:
                raise HttpError(
                    413,
                    "too_large",
                    f"body is {self._length} bytes; this server accepts at most {limit} bytes "
                    f"({limit / 2**20:.0f} MiB); start it with a larger --max-body-mb if the model needs it",
                )
            self._post(op)
        except HttpError as err:
            if not self._ended:
                self._drain(self._length - self._consumed)
            self._send_error(err)
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("internal error")
            self.close_connection = True
            self._send_error(HttpError(500, "internal_error", f"{type(exc).__name__}: {exc}"))

    def _post(self, op: str) -> None:
        """One POST: its frame's header first (validated), then its blobs streamed into a request folder,
        where it waits for the device; the server holds no more than 1 MiB of a request in memory."""
        cfg = self.state.config
        limits = cfg.limits
        try:
            meta, entries = read_frame_head(self._read, self._length, max_depth=limits.max_json_depth)
        except WireFormatError as exc:
            raise HttpError(400, "bad_frame", str(exc)) from None
        meta = {"op": op, **meta}
        if meta["op"] != op:
            raise HttpError(400, "bad_request", f"meta 'op' is {meta['op']!r} but the endpoint is {self.path}")
        try:
            order = validate_request(
                meta,
                default_backend=cfg.backend,
                timeout_s=cfg.timeout_s,
                limits=limits,
                served=cfg.served,
                allow_engine_files=cfg.allow_engine_files,
            )
        except OptionError as exc:
            raise HttpError(400, "unknown_option" if "unknown" in str(exc) else "bad_option", str(exc)) from None
        files = blob_files(order)
        need = {"measure": {"model"}, "run": {"model", "bundle"}, "evaluate": set(files)}[op]
        got = [entry.name for entry in entries]
        if set(got) != need or len(got) != len(need):
            raise HttpError(400, "bad_request", f"{self.path} takes blobs {sorted(need)}; got {sorted(got)}")
        # the server's own runner options (executables, caches, libraries) over the client's checked ones
        settings = cfg.settings_for(order.backend)
        order = dataclasses.replace(
            order,
            runner_options=settings.apply(order.backend, order.runner_options),
            models=[{**m, "runner_options": settings.apply(order.backend, m["runner_options"])} for m in order.models],
            memory_mb=cfg.worker_memory_mb,
        )
        with self.state.workers.spool() as folder:
            for entry in entries:
                try:
                    copy_blob(self._read, entry, folder / files[entry.name])
                except WireFormatError as exc:
                    raise HttpError(400, "bad_frame", str(exc)) from None
            # the bundle's headers, checked here so a bad bundle gets its 4xx before it waits for the device
            if op == "evaluate":
                check_eval_bundle(folder / worker.BUNDLE_FILE, limits)
            elif op == "run":
                try:
                    npz_members(
                        folder / worker.BUNDLE_FILE,
                        max_bytes=limits.max_bundle_bytes,
                        what="bundle",
                        max_arrays=limits.max_arrays,
                        max_ndim=limits.max_ndim + 1,  # + the sample axis
                    )
                except WireFormatError as exc:
                    raise HttpError(400, "bad_bundle", str(exc)) from None
            self._answer(op, order, folder)

    def _answer(self, op: str, order: WorkOrder, folder: Path) -> None:
        """Wait for the device, run the order in a worker, answer (outputs streamed from the request folder)."""
        cfg = self.state.config
        request_id = self.state.next_id()
        try:
            with self.state.slot.hold(cfg.timeout_s) as waited_s:
                start = time.monotonic()
                try:
                    result, outputs = self.state.workers.run(order, folder, cfg.timeout_s)
                finally:
                    with self.state.lock:
                        self.state.history.append(Measurement(request_id, start, time.monotonic(), op))
        except Busy as exc:
            raise HttpError(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
        result["queued_s"] = waited_s
        result["request_id"] = request_id
        if op == "evaluate":
            result["device"] = {**self.state.device, **result.get("device", {})}
            result["power_mode"], result["power_mode_source"] = cfg.power_mode_now(result["device"])
        else:
            result["facts"] = {**self.state.device, **result.get("facts", {})}
        if op == "measure":
            self._send_json(200, result)
            return
        if set(outputs) != set(answer_files(order)):  # the worker wrote every outputs file or failed
            raise RuntimeError(f"the worker answered blobs {sorted(outputs)}; expected {sorted(answer_files(order))}")
        size = sum(path.stat().st_size for path in outputs.values())
        # the worker bounds the arrays by max_response_bytes; this bounds what it wrote (npz headers included)
        if size > cfg.limits.max_response_bytes + MAX_HEADER_BYTES:
            raise HttpError(
                422,
                "response_too_large",
                f"the outputs are {size} bytes; this server answers at most "
                f"{cfg.limits.max_response_bytes} bytes (send fewer samples per request)",
            )
        self._send_frame(result, outputs)


def check_eval_bundle(bundle: NpzSource, limits: Limits) -> None:
    """An evaluation bundle's npz headers against the limits, before it waits for the device (nothing is read).

    Too many bytes in all, or in one sample, is a 413 naming the limit and the size; a malformed npz,
    or arrays that disagree on the number of samples, a 400.
    """
    try:
        members = npz_members(bundle, what="bundle", max_arrays=limits.max_arrays, max_ndim=limits.max_ndim + 1)
    except WireFormatError as exc:
        raise HttpError(400, "bad_bundle", str(exc)) from None
    counts = {m.name: m.shape[0] if m.shape else 0 for m in members}
    if not members or len(set(counts.values())) != 1 or 0 in counts.values():
        raise HttpError(
            400, "bad_bundle", f"the bundle needs arrays with the same number (>= 1) of samples (first axis): {counts}"
        )
    samples = next(iter(counts.values()))
    total = sum(m.nbytes for m in members)
    per_sample = total // samples
    if total > limits.max_bundle_bytes:
        fit = limits.max_bundle_bytes // per_sample
        raise HttpError(
            413,
            "too_large",
            f"the bundle is {total} bytes of arrays ({samples} samples of {per_sample} bytes); this server takes at "
            f"most {limits.max_bundle_bytes} bytes of bundle per request ([limits] max_bundle_bytes): send at most "
            f"{fit} sample(s) per request (RemoteSession.evaluate splits a bundle by itself), or raise the limit",
        )
    if per_sample > limits.max_input_bytes:
        raise HttpError(
            413,
            "too_large",
            f"one bundle sample is {per_sample} bytes of inputs; this server feeds at most "
            f"{limits.max_input_bytes} bytes per inference ([limits] max_input_bytes)",
        )


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's default backlog of 5 resets a burst of concurrent clients
    daemon_threads = True


class DeviceServer:
    """The latency server. ``with DeviceServer(cfg) as url:`` serves on a thread (port 0 = any free port)."""

    def __init__(self, config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        load_builtin_backends()
        for name in config.served:  # a backend of the configuration that is not installed fails at start
            backends.get(name)
        self.config = config
        self.httpd = _HTTPServer((host, port), _Handler)  # bind first: a taken port leaves nothing behind
        self.workers = Workers(config)
        self.state = _State(config, DeviceSlot(config.queue_limit), static_facts(), self.workers)
        self.httpd.RequestHandlerClass = type("Handler", (_Handler,), {"state": self.state})
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
        """Stop serving, end every worker (process group) and remove every request folder."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.workers.stop_all()
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


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> int:
    """``edgematrix serve``: serve until SIGTERM / SIGINT, then end every worker and remove request folders.

    The token leaves this process's environment first, so no command the server runs inherits it.
    """
    os.environ.pop(TOKEN_ENV, None)
    try:
        server = DeviceServer(config, host, port)
    except OSError as e:
        raise EdgeMatrixError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None

    def stop(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(
        f"edgematrix serve: listening on {server.url} (backends {', '.join(config.served)}; default {config.backend})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

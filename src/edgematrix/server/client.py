"""Client of the latency server: :class:`RemoteMeter` (a :class:`~edgematrix.measure.meter.LatencyMeter`),
:func:`run_bundle_remote` (run an evaluation bundle on the device, get the raw outputs back) and
:class:`RemoteSession` (a set of models on a bundle through the device's backend: outputs per model,
then the models measured interleaved; what a cell's ``remote`` executor uses).

``protocol="native"`` talks to ``edgematrix serve``; ``protocol="enot"`` to a server built on ENOT's
``enot_latency_server.LatencyServer`` (see :mod:`edgematrix.server.enot`). Connection errors and
``503 busy`` answers are retried with exponential backoff (``backoff_s * 2**k``, at most
``max_backoff_s``, or the server's ``Retry-After`` when it is larger, up to that cap); when every attempt
failed, :class:`~edgematrix.errors.DeviceUnreachableError` names the URL, the attempts and the last error.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgematrix.backends.base import Fact
from edgematrix.errors import DeviceUnreachableError, EdgeMatrixError, RemoteError, WireFormatError
from edgematrix.measure.contention import Contention
from edgematrix.measure.harness import LatencyConfig, LatencySamples, Measurement
from edgematrix.measure.meter import LatencyReport
from edgematrix.server.bundle import EvalBundle
from edgematrix.server.enot import ENOT_DEFAULT_ENDPOINT, enot_request_body
from edgematrix.server.options import MODEL_SUFFIXES, ROLE_PATTERN, TARGET_KEYS
from edgematrix.server.token import load_token
from edgematrix.server.wire import CONTENT_TYPE, arrays_to_npz, decode_frame, encode_frame, npz_to_arrays

Protocol = Literal["native", "enot"]
PROTOCOLS = ("native", "enot")
_RETRYABLE = (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError, OSError)


@dataclass
class Transport:
    """HTTP with retries. ``request`` returns ``(status, headers, body)`` of a 2xx answer or raises."""

    url: str
    token: str | None = None
    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    timeout_s: float = 900.0
    sleep: Callable[[float], None] = time.sleep
    attempts_made: int = 0  # of the last request

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise EdgeMatrixError(f"remote URL {self.url!r} must look like http://HOST:PORT")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise EdgeMatrixError(
                f"need retries >= 0, backoff_s >= 0, timeout_s > 0; got {self.retries}, {self.backoff_s}, {self.timeout_s}"
            )
        self.url = self.url.rstrip("/")

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, auth: bool = True
    ) -> tuple[int, Mapping[str, str], bytes]:
        target = self.url + path
        headers = {"Accept": "application/json, " + CONTENT_TYPE}
        if content_type:
            headers["Content-Type"] = content_type
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempts = self.retries + 1
        last = "no attempt made"
        started = time.monotonic()
        busy_message: str | None = None
        for attempt in range(1, attempts + 1):
            self.attempts_made = attempt
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(target, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return resp.status, dict(resp.headers), resp.read()
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                message = _error_message(payload) or exc.reason
                if exc.code != 503:
                    raise RemoteError(f"{method} {target} answered {exc.code}: {message}", status=exc.code) from None
                busy_message = f"{exc.code}: {message}"
                last = f"HTTP {busy_message}"
                retry_after = exc.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    wait = min(self.max_backoff_s, max(wait, float(retry_after)))
            except _RETRYABLE as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                last = f"{type(reason).__name__}: {reason}"
                busy_message = None
            if attempt < attempts:
                self.sleep(wait)
        elapsed = time.monotonic() - started
        if busy_message is not None:
            raise RemoteError(
                f"{target} stayed busy through {attempts} attempt(s) over {elapsed:.1f} s; last answer {busy_message}. "
                "Another job holds the device: retry later, or raise the server's --queue-limit",
                status=503,
            )
        raise DeviceUnreachableError(
            f"cannot reach the latency server at {self.url}: {attempts} attempt(s) over {elapsed:.1f} s failed "
            f"({method} {path}); last error: {last}. Check that `edgematrix serve` (or the ENOT server) is running on "
            f"the device and listening on that host and port (try `curl {self.url}/v1/health`), that no firewall "
            "blocks it, and that the URL is right"
        )


def _error_message(payload: bytes) -> str:
    try:
        data = json.loads(payload)
        return str(data["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return payload.decode("utf-8", "replace").strip()[:2000]


def _facts(raw: Any) -> dict[str, Fact]:
    """Keep plain str/int/float values (what :class:`LatencyReport` carries)."""
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str | int | float)}


def _model_suffix(model: Path) -> str:
    suffix = model.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise EdgeMatrixError(f"model {model} has suffix {suffix!r}; the server accepts {', '.join(MODEL_SUFFIXES)}")
    return suffix


def _read_model(model: Path) -> bytes:
    if not model.is_file():
        raise EdgeMatrixError(f"model file {model} does not exist; export the model first or check the path")
    return model.read_bytes()


@dataclass
class RemoteMeter:
    """Measures a model file on a remote device (``LatencyMeter``): ``RemoteMeter(url).measure(path)``.

    ``token`` defaults to ``$EDGEMATRIX_TOKEN`` (native protocol only; ENOT servers take none).
    ``backend`` is the device backend (``None``: the server's default); ``config`` the harness settings
    used on the device; ``options`` of :meth:`measure` are runner options, as for ``LocalMeter``.
    With ``protocol="enot"`` each of ``enot_requests`` requests returns one latency figure (the ENOT
    server decides which statistic); the report's percentiles are over those figures.
    """

    url: str
    token: str | None = None
    protocol: Protocol = "native"
    backend: str | None = None
    config: LatencyConfig = field(default_factory=lambda: LatencyConfig(warmup=5, min_rounds=30, min_time_s=2.0))
    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 900.0
    return_samples: bool = True
    enot_requests: int = 1
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EdgeMatrixError(f"protocol {self.protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
        if self.enot_requests < 1:
            raise EdgeMatrixError(f"enot_requests must be >= 1, got {self.enot_requests}")
        if self.token is None and self.protocol == "native":
            self.token = load_token(required=False)
        self.transport = Transport(
            self.url,
            self.token if self.protocol == "native" else None,
            retries=self.retries,
            backoff_s=self.backoff_s,
            timeout_s=self.timeout_s,
            sleep=self.sleep,
        )

    def _need_native(self, what: str) -> None:
        if self.protocol != "native":
            raise EdgeMatrixError(f"{what} needs an edgematrix server (protocol 'native'); ENOT servers only measure")
        if not self.token:
            load_token(required=True)  # raises the "no token" message

    # -- native ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /v1/health`` (no token needed)."""
        _, _, body = self.transport.request("GET", "/v1/health", auth=False)
        return dict(json.loads(body))

    def device_facts(self) -> dict[str, Fact]:
        """Device facts (model, L4T / JetPack, runtime versions, power mode, clocks, temperatures)."""
        self._need_native("device_facts")
        _, _, body = self.transport.request("GET", "/v1/device")
        return _facts(json.loads(body).get("facts"))

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        model = Path(model)
        if self.protocol == "enot":
            return self._measure_enot(model, options or {})
        self._need_native("measure")
        meta: dict[str, Any] = {
            "model_suffix": _model_suffix(model),
            "config": dataclasses.asdict(self.config),
            "runner_options": dict(options or {}),
            "return_samples": self.return_samples,
        }
        if self.backend:
            meta["backend"] = self.backend
        body = encode_frame(meta, {"model": _read_model(model)})
        _, _, answer = self.transport.request("POST", "/v1/measure", body, CONTENT_TYPE)
        data = json.loads(answer)
        facts = _facts(data.get("facts"))
        facts.update({"remote": self.url, "protocol": "native", "queued_s": float(data.get("queued_s", 0.0))})
        return LatencyReport(
            backend=str(data["backend"]),
            p50_ms=float(data["p50_ms"]),
            p90_ms=float(data["p90_ms"]),
            p99_ms=float(data["p99_ms"]),
            mean_ms=float(data["mean_ms"]),
            rounds=int(data["rounds"]),
            samples_ms=tuple(float(s) for s in data.get("samples_ms", ())),
            facts=facts,
        )

    def run_bundle(
        self, model: Path, bundle: EvalBundle, *, options: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """Run every sample of ``bundle`` on the device; ``outputs[name][i]`` is sample ``i``'s output."""
        model = Path(model)
        self._need_native("run_bundle")
        meta: dict[str, Any] = {"model_suffix": _model_suffix(model), "runner_options": dict(options or {})}
        if self.backend:
            meta["backend"] = self.backend
        body = encode_frame(meta, {"model": _read_model(model), "bundle": arrays_to_npz(bundle.inputs)})
        _, _, answer = self.transport.request("POST", "/v1/run", body, CONTENT_TYPE)
        result, blobs = decode_frame(answer)
        if "outputs" not in blobs:
            raise WireFormatError(f"{self.url}/v1/run answered without an 'outputs' blob (got {sorted(blobs)})")
        outputs = npz_to_arrays(blobs["outputs"], what="device outputs")
        counts = {n: a.shape[0] for n, a in outputs.items()}
        if any(c != bundle.samples for c in counts.values()) or int(result.get("samples", -1)) != bundle.samples:
            raise WireFormatError(f"the device returned {counts} samples per output; the bundle has {bundle.samples}")
        return outputs

    # -- ENOT -----------------------------------------------------------------------------------

    def _enot_url_path(self) -> str:
        path = urllib.parse.urlsplit(self.transport.url).path
        return "" if path not in ("", "/") else f"/{ENOT_DEFAULT_ENDPOINT}"

    def _measure_enot(self, model: Path, options: dict[str, Any]) -> LatencyReport:
        body = enot_request_body(_read_model(model), options)
        latencies: list[float] = []
        extra: dict[str, Fact] = {}
        for _ in range(self.enot_requests):
            _, _, answer = self.transport.request(
                "POST", self._enot_url_path(), body, "application/octet-stream", auth=False
            )
            try:
                data = json.loads(answer)
                latencies.append(float(data["latency"]))
            except (ValueError, KeyError, TypeError):
                raise RemoteError(
                    f"ENOT server at {self.url} answered {answer[:200]!r}; expected JSON with a 'latency' (ms)"
                ) from None
            extra = {f"enot_{k}": v for k, v in _facts(data).items() if k != "latency"}
        arr = np.asarray(latencies, dtype=np.float64)
        facts: dict[str, Fact] = {
            "remote": self.url,
            "protocol": "enot",
            "enot_requests": len(latencies),
            "statistic": "one latency figure per request, as the ENOT server's measure_latency computes it",
            **extra,
        }
        return LatencyReport(
            backend="enot",
            p50_ms=float(np.percentile(arr, 50)),
            p90_ms=float(np.percentile(arr, 90)),
            p99_ms=float(np.percentile(arr, 99)),
            mean_ms=float(arr.mean()),
            rounds=len(latencies),
            samples_ms=tuple(latencies),
            facts=facts,
        )


def run_bundle_remote(
    url: str,
    model: str | os.PathLike[str],
    bundle: EvalBundle,
    *,
    token: str | None = None,
    backend: str | None = None,
    runner_options: dict[str, Any] | None = None,
    retries: int = 3,
    timeout_s: float = 900.0,
) -> dict[str, np.ndarray]:
    """Run ``bundle`` through ``model`` on the device behind ``url`` (``edgematrix serve``); returns
    ``{output name: array}`` with ``outputs[name][i]`` the device's output for sample ``i``."""
    meter = RemoteMeter(url, token=token, backend=backend, retries=retries, timeout_s=timeout_s)
    return meter.run_bundle(Path(model), bundle, options=runner_options)


# ---------------------------------------------------------------------------------------------
# /v1/evaluate: a set of models on a bundle, outputs and interleaved latency from the device

#: room in a request's body for the frame header and the npz's own headers besides the arrays (a few
#: kB of JSON; under 1 kB of zip and .npy headers per array, at most [limits] max_arrays = 64 of them)
FRAME_MARGIN_BYTES = 128 << 10
#: harness settings of an evaluation that names none (those of :class:`RemoteMeter`)
DEFAULT_LATENCY = LatencyConfig(warmup=5, min_rounds=30, min_time_s=2.0)
_ROLE = re.compile(ROLE_PATTERN)


@dataclass(frozen=True)
class RemoteEvaluation:
    """What a board answered for a set of models on a bundle (:meth:`RemoteSession.evaluate`).

    ``outputs[role][name][i]`` is the device's output ``name`` of model ``role`` for bundle sample
    ``i``; ``samples_s[role]`` are that model's per-round times in seconds, every role measured in
    the same rounds (alternating order) on the bundle's first sample; ``facts[role]`` what its runner
    used; ``device`` the board's facts (clocks, power mode and temperatures read right after the
    rounds); ``environment`` the device's environment key (:func:`edgematrix.core.toolchain.current_environment`);
    ``contention`` the :meth:`~edgematrix.measure.contention.Contention.as_dict` record of the rounds.
    Without a measurement (``measure=False``) ``samples_s`` are empty and ``contention`` is None.
    """

    url: str
    backend: str
    roles: tuple[str, ...]
    precisions: dict[str, str]
    samples: int
    outputs: dict[str, dict[str, np.ndarray]]
    samples_s: dict[str, tuple[float, ...]]
    config: dict[str, Any]
    facts: dict[str, dict[str, Fact]]
    device: dict[str, Fact]
    environment: dict[str, str]
    power_mode: str
    power_mode_source: str
    contention: dict[str, Any] | None
    load_s: dict[str, float]
    #: how many requests the bundle took (it is split when it does not fit the server's limits)
    requests: int

    @property
    def rounds(self) -> int:
        return len(next(iter(self.samples_s.values()), ()))

    def measurement(self) -> Measurement:
        """The latency as the local harness returns it: ``{role: LatencySamples}`` with ``.contention``."""
        if self.contention is None:
            raise EdgeMatrixError("this evaluation ran without a measurement (measure=False): no latency samples")
        contention = Contention.from_dict(self.contention)
        return Measurement(
            {role: LatencySamples(role, list(self.samples_s[role]), contention) for role in self.roles}, contention
        )


def _role_models(models: Mapping[str, tuple[str | os.PathLike[str], str]]) -> dict[str, tuple[Path, str]]:
    if not models:
        raise EdgeMatrixError("evaluate needs at least one model: {role: (path, precision)}")
    out = {}
    for role, spec in models.items():
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise EdgeMatrixError(
                f"role {role!r} is not a role name: a letter, then up to 31 letters, digits, '_' or '-'"
            )
        if not isinstance(spec, tuple | list) or len(spec) != 2:
            raise EdgeMatrixError(f"model of role {role!r} must be (path, precision), got {spec!r}")
        out[role] = (Path(spec[0]), str(spec[1]))
    return out


def plan_samples_per_request(per_sample_bytes: int, models_bytes: int, device: Mapping[str, Any]) -> int:
    """How many bundle samples one request may carry under the server's limits (``GET /v1/device``):
    its body (``max_body_bytes``, less the models and the frame) and its bundle (``max_bundle_bytes``).
    At least 1: a sample that does not fit is sent alone and the server's 413 names the limit."""
    limits = device.get("limits", {})
    room = int(device.get("max_body_bytes", 0)) - models_bytes - FRAME_MARGIN_BYTES
    fits = (
        [room // per_sample_bytes, int(limits.get("max_bundle_bytes", 0)) // per_sample_bytes]
        if per_sample_bytes
        else []
    )
    return max(1, min(fits)) if fits else 2**31


@dataclass
class RemoteSession:
    """A board's ``edgematrix serve``, for a cell's ``remote`` executor:
    ``RemoteSession(url).evaluate({"reference": (fp32, "fp32"), "candidate": (int8, "int8")}, bundle, "onnxruntime")``.

    ``token`` defaults to ``$EDGEMATRIX_TOKEN``. Connection errors and ``503 busy`` are retried
    (:class:`Transport`: ``retries``, ``backoff_s``); any other refusal raises
    :class:`~edgematrix.errors.RemoteError` with the server's message and HTTP status.
    """

    url: str
    token: str | None = None
    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 900.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.token is None:
            self.token = load_token(required=False)
        self.transport = Transport(
            self.url,
            self.token,
            retries=self.retries,
            backoff_s=self.backoff_s,
            timeout_s=self.timeout_s,
            sleep=self.sleep,
        )

    def _need_token(self) -> None:
        if not self.token:
            load_token(required=True)  # raises the "no token" message

    def health(self) -> dict[str, Any]:
        """``GET /v1/health`` (no token needed)."""
        _, _, body = self.transport.request("GET", "/v1/health", auth=False)
        return dict(json.loads(body))

    def device(self) -> dict[str, Any]:
        """``GET /v1/device``: facts, served backends and their remote options, limits, power mode."""
        self._need_token()
        _, _, body = self.transport.request("GET", "/v1/device")
        return dict(json.loads(body))

    def evaluate(
        self,
        models: Mapping[str, tuple[str | os.PathLike[str], str]],
        bundle: EvalBundle,
        backend: str | None = None,
        options: Mapping[str, Any] | None = None,
        latency: LatencyConfig | None = None,
        *,
        target: Mapping[str, Any] | None = None,
        role_options: Mapping[str, Mapping[str, Any]] | None = None,
        measure: bool = True,
        samples_per_request: int | None = None,
    ) -> RemoteEvaluation:
        """Every sample of ``bundle`` through every model on the device's ``backend`` (None: the server's
        default), then the models measured interleaved with ``latency`` (default :data:`DEFAULT_LATENCY`).

        ``models``: ``{role: (model file, precision)}``; the device configures each runner as a local
        cell does (``Runner.options_for(target, role=..., precision=...)``), then ``options`` (runner
        options for every model) and ``role_options[role]`` over it, then its own configuration.
        ``target``: the cell's target config (``Target.model_dump()``, as ``options_for`` takes it locally),
        of which its ``providers`` and ``threads`` are sent. A bundle larger than
        the server's limits goes in several requests of ``samples_per_request`` samples (default: as
        many as fit, from ``GET /v1/device``); the first one measures, and each answers the samples
        whose outputs fit the server's response limit, the next request going on from there.
        """
        self._need_token()
        specs = _role_models(models)
        unknown = sorted(set(role_options or {}) - set(specs))
        if unknown:
            raise EdgeMatrixError(f"role_options for unknown role(s) {unknown}; roles: {', '.join(specs)}")
        if samples_per_request is not None and samples_per_request < 1:
            raise EdgeMatrixError(f"samples_per_request must be >= 1, got {samples_per_request}")
        blobs = {f"model.{role}": _read_model(path) for role, (path, _) in specs.items()}
        entries: list[dict[str, Any]] = []
        for role, (path, precision) in specs.items():
            entry: dict[str, Any] = {"role": role, "precision": precision, "model_suffix": _model_suffix(path)}
            if role_options and role_options.get(role):
                entry["runner_options"] = dict(role_options[role])
            entries.append(entry)
        total = bundle.samples
        if total < 1:
            raise EdgeMatrixError(
                "the bundle has no samples; evaluate needs at least one (the first is the latency feed)"
            )
        if samples_per_request is None:
            per_sample = sum(int(np.asarray(a).nbytes) // total for a in bundle.inputs.values())
            models_bytes = sum(len(b) for b in blobs.values())
            samples_per_request = plan_samples_per_request(per_sample, models_bytes, self.device())
        config = dataclasses.asdict(latency or DEFAULT_LATENCY)
        collected = _Collected(total)
        first: dict[str, Any] = {}
        start = requests = 0
        while start < total:
            stop = min(total, start + samples_per_request)
            meta: dict[str, Any] = {
                "models": entries,
                "runner_options": dict(options or {}),
                "measure": measure and start == 0,
                "partial": True,
            }
            if start == 0 and measure:
                meta["config"] = config
            if backend:
                meta["backend"] = backend
            if target is not None:  # what options_for reads of it; the server refuses other keys
                meta["target"] = {key: target[key] for key in TARGET_KEYS if key in target}
            chunk = {name: np.asarray(arr)[start:stop] for name, arr in bundle.inputs.items()}
            body = encode_frame(meta, {**blobs, "bundle": arrays_to_npz(chunk)})
            _, _, answer = self.transport.request("POST", "/v1/evaluate", body, CONTENT_TYPE)
            del body
            result, outputs = decode_frame(answer)
            del answer
            done = collected.add(self.url, start, stop - start, list(specs), result, outputs)
            if start == 0:
                first = result
                if measure:
                    collected.add_samples(self.url, list(specs), result, outputs)
            start += done
            requests += 1
        return _evaluation(self.url, first, collected, requests)


class _Collected:
    """The outputs of every request of one evaluation, written into arrays of the whole bundle, and the
    per-round samples of the request that measured."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.outputs: dict[str, dict[str, np.ndarray]] = {}
        self.samples_s: dict[str, tuple[float, ...]] = {}

    def add_samples(self, url: str, roles: list[str], result: Mapping[str, Any], blobs: Mapping[str, bytes]) -> None:
        latency = result.get("latency")
        if not isinstance(latency, dict) or "samples" not in blobs:
            raise WireFormatError(f"{url}/v1/evaluate measured without answering its latency and 'samples' blob")
        arrays = npz_to_arrays(blobs["samples"], what="the device's latency samples")
        rounds = {role: arrays[role].shape if role in arrays else None for role in roles}
        if set(arrays) != set(roles) or set(rounds.values()) != {(latency.get("rounds"),)}:
            raise WireFormatError(
                f"{url}/v1/evaluate answered latency samples of shapes {rounds} for {latency.get('rounds')} rounds"
            )
        self.samples_s = {role: tuple(float(v) for v in arrays[role]) for role in roles}

    def add(
        self, url: str, start: int, sent: int, roles: list[str], result: Mapping[str, Any], blobs: Mapping[str, bytes]
    ) -> int:
        done = result.get("samples")
        if list(result.get("roles", ())) != roles or not isinstance(done, int) or not 1 <= done <= sent:
            raise WireFormatError(
                f"{url}/v1/evaluate answered roles {result.get('roles')!r} and {done!r} samples for a request of "
                f"roles {roles} and {sent} samples"
            )
        for role in roles:
            name = f"outputs.{role}"
            if name not in blobs:
                raise WireFormatError(f"{url}/v1/evaluate answered without {name!r} (got {sorted(blobs)})")
            arrays = npz_to_arrays(blobs[name], what=f"the device's outputs of {role!r}")
            store = self.outputs.setdefault(role, {})
            if start == 0:
                for out, arr in arrays.items():
                    store[out] = np.empty((self.samples, *arr.shape[1:]), arr.dtype)
            if set(arrays) != set(store):
                raise WireFormatError(f"model {role!r} answered outputs {sorted(arrays)}; earlier {sorted(store)}")
            for out, arr in arrays.items():
                if arr.shape[0] != done or arr.shape[1:] != store[out].shape[1:] or arr.dtype != store[out].dtype:
                    raise WireFormatError(
                        f"model {role!r} output {out!r}: the device answered {arr.dtype}{list(arr.shape)} for "
                        f"{done} samples; expected {store[out].dtype}[{done}, {', '.join(map(str, store[out].shape[1:]))}]"
                    )
                store[out][start : start + done] = arr
        return done


def _evaluation(url: str, first: Mapping[str, Any], collected: _Collected, requests: int) -> RemoteEvaluation:
    roles = tuple(str(r) for r in first["roles"])
    latency = first.get("latency") or {}
    samples_s = {role: collected.samples_s.get(role, ()) for role in roles}
    facts = first.get("facts", {})
    environment = first.get("environment", {})
    return RemoteEvaluation(
        url=url,
        backend=str(first["backend"]),
        roles=roles,
        precisions={role: str(first.get("precisions", {}).get(role, "")) for role in roles},
        samples=collected.samples,
        outputs=collected.outputs,
        samples_s=samples_s,
        config=dict(latency.get("config", {})),
        facts={role: _facts(facts.get(role)) for role in roles},
        device=_facts(first.get("device")),
        environment={str(k): str(v) for k, v in environment.items()} if isinstance(environment, dict) else {},
        power_mode=str(first.get("power_mode", "")),
        power_mode_source=str(first.get("power_mode_source", "none")),
        contention=first.get("contention"),
        load_s={role: float(first.get("load_s", {}).get(role, 0.0)) for role in roles},
        requests=requests,
    )

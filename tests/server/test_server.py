"""The latency server on loopback with real ONNX Runtime workers: answers, serialization, errors, busy."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgematrix.errors import RemoteError
from edgematrix.measure.harness import LatencyConfig
from edgematrix.measure.meter import LatencyMeter
from edgematrix.server.app import DeviceServer, HttpError, ServerConfig, run_worker, serve_in_thread
from edgematrix.server.client import RemoteMeter
from edgematrix.server.options import WorkOrder
from edgematrix.server.wire import encode_frame

from .serverkit import QUICK, TOKEN, make_relu, raw


def measure_body(model: Path, **meta: Any) -> bytes:
    meta.setdefault("config", {"warmup": 1, "min_rounds": 5, "max_rounds": 5, "min_time_s": 0.0})
    return encode_frame(meta, {"model": model.read_bytes()})


def meter(url: str, **kw: Any) -> RemoteMeter:
    kw.setdefault("config", QUICK)
    kw.setdefault("backoff_s", 0.05)
    return RemoteMeter(url, token=TOKEN, **kw)


def test_measure_returns_statistics_samples_and_device_facts(server: DeviceServer, relu_model: Path) -> None:
    m = meter(server.url)
    assert isinstance(m, LatencyMeter)
    report = m.measure(relu_model, options={"intra_op_threads": 1})
    assert report.rounds == 5 == len(report.samples_ms)
    assert report.p50_ms == pytest.approx(float(np.percentile(report.samples_ms, 50)))
    assert report.p99_ms == pytest.approx(float(np.percentile(report.samples_ms, 99)))
    assert report.mean_ms == pytest.approx(float(np.mean(report.samples_ms)))
    assert report.backend == "onnxruntime"
    facts = report.facts
    assert facts["intra_op_threads"] == 1  # the runner option reached the device's runner
    assert facts["model_bytes"] == relu_model.stat().st_size
    assert facts["onnxruntime_version"] == facts["version"]
    assert facts["device_model"] and facts["arch"]
    assert facts["remote"] == server.url and facts["protocol"] == "native"
    assert "model" not in facts  # the server's temporary path is not reported


def test_health_needs_no_token_and_device_needs_one(server: DeviceServer) -> None:
    health = RemoteMeter(server.url, token="wrong-token-wrong-token").health()
    assert health["status"] == "ok" and health["busy"] is False and health["queue_limit"] == 32
    assert "device_model" not in health  # nothing about the device without the token
    assert meter(server.url).device_facts()["arch"]
    status, headers, _ = raw(server.url, "/v1/device", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.slow
def test_twenty_concurrent_clients_each_get_their_answer_serialized(tmp_path: Path) -> None:
    models = [make_relu(tmp_path / f"m{i}.onnx", pad=10 * i) for i in range(20)]
    assert len({p.stat().st_size for p in models}) == 20
    cfg = ServerConfig(token=TOKEN, queue_limit=19, timeout_s=60)
    with serve_in_thread(cfg) as srv, ThreadPoolExecutor(20) as pool:
        reports = list(pool.map(lambda p: meter(srv.url, retries=0).measure(p), models))
        history = srv.history
    for path, report in zip(models, reports, strict=True):  # each got the answer for its own model
        assert report.facts["model_bytes"] == path.stat().st_size
        assert report.rounds == 5
    assert len(history) == 20 and len({h.request_id for h in history}) == 20
    spans = sorted((h.start, h.end) for h in history)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "two measurements overlapped"
    waited = sorted(r.facts["queued_s"] for r in reports)
    assert waited[-1] > waited[0]  # later clients waited for earlier ones


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("wrong_token", 401, "missing or wrong token"),
        ("oversize", 413, "accepts at most 262144 bytes"),
        ("corrupt_model", 422, "ONNX Runtime cannot load"),
        ("unknown_option", 400, "unknown option rounds; valid options: backend, config, model_suffix, op"),
        ("unknown_config", 400, "valid config options: disable_gc, max_rounds, max_time_s, min_rounds"),
        ("unknown_runner_option", 400, "unknown onnxruntime runner option threads; valid"),
        ("unknown_backend", 400, "unknown backend 'tensorflow' for this server; it serves: onnxruntime, openvino"),
        ("bad_frame", 400, "does not start with b'EMXF'"),
    ],
)
def test_bad_request_gets_clear_4xx_and_the_server_keeps_serving(
    server: DeviceServer, relu_model: Path, tmp_path: Path, case: str, status: int, needle: str
) -> None:
    token = TOKEN
    if case == "wrong_token":
        body, token = measure_body(relu_model), "not-the-token-not-the-token"
    elif case == "oversize":
        body = encode_frame({}, {"model": b"\0" * (256 * 1024 + 1)})
    elif case == "corrupt_model":
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"this is not a protobuf" * 10)
        body = measure_body(bad)
    elif case == "unknown_option":
        body = measure_body(relu_model, rounds=3)
    elif case == "unknown_config":
        body = measure_body(relu_model, config={"iterations": 3})
    elif case == "unknown_runner_option":
        body = measure_body(relu_model, runner_options={"threads": 2})
    elif case == "unknown_backend":
        body = measure_body(relu_model, backend="tensorflow")
    else:
        body = b"\x80\x04pickle?" + b"\0" * 20
    got, _, answer = raw(server.url, "/v1/measure", body, token=token)
    assert got == status, answer
    assert answer["error"]["status"] == status
    assert needle in answer["error"]["message"]
    report = meter(server.url).measure(relu_model)  # the next request still succeeds
    assert report.rounds == 5


def test_client_raises_remote_error_with_the_servers_message(server: DeviceServer, relu_model: Path) -> None:
    with pytest.raises(RemoteError, match=r"answered 400: unknown onnxruntime runner option bogus") as info:
        meter(server.url).measure(relu_model, options={"bogus": 1})
    assert info.value.status == 400


def test_queue_full_gets_busy_503_with_retry_after(mlp_model: Path, relu_model: Path) -> None:
    cfg = ServerConfig(token=TOKEN, queue_limit=0, timeout_s=60)
    with serve_in_thread(cfg) as srv:
        slow = LatencyConfig(warmup=0, min_rounds=1, max_rounds=10**7, min_time_s=2.0, max_time_s=2.0)
        first: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: first.update(r=meter(srv.url, config=slow).measure(mlp_model)))
        thread.start()
        deadline = time.monotonic() + 20
        while not meter(srv.url).health()["busy"]:
            assert time.monotonic() < deadline, "the first measurement never started"
            time.sleep(0.02)
        status, headers, answer = raw(srv.url, "/v1/measure", measure_body(relu_model))
        assert status == 503 and answer["error"]["kind"] == "busy"
        assert "queue limit 0" in answer["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        sleeps: list[float] = []
        with pytest.raises(RemoteError, match=r"stayed busy through 2 attempt\(s\)") as info:
            meter(srv.url, retries=1, sleep=sleeps.append).measure(relu_model)
        assert info.value.status == 503 and len(sleeps) == 1 and sleeps[0] >= 1  # honoured Retry-After
        thread.join()
        assert first["r"].rounds > 1
        assert meter(srv.url).measure(relu_model).rounds == 5  # free again


def test_worker_past_the_timeout_answers_504(relu_model: Path) -> None:
    order = WorkOrder(op="measure", backend="onnxruntime", config={"warmup": 0, "min_rounds": 1, "min_time_s": 0.0})
    with pytest.raises(HttpError) as info:
        run_worker(order, {"model": relu_model.read_bytes()}, timeout_s=0.01)
    assert info.value.status == 504 and "per-request timeout of 0.01 s" in info.value.message


def test_unknown_endpoint_lists_the_endpoints(server: DeviceServer) -> None:
    status, _, answer = raw(server.url, "/v2/measure", b"")
    assert status == 404 and "POST /v1/measure" in answer["error"]["message"]


def test_server_refuses_a_short_token() -> None:
    with pytest.raises(Exception, match="use at least 16"):
        ServerConfig(token="short")

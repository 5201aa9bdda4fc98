"""`POST /v1/evaluate` and `RemoteSession.evaluate` against a real server on loopback: several models on
one bundle through the device's ONNX Runtime, their outputs, and their latency measured interleaved."""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest

from edgematrix.core.toolchain import current_environment
from edgematrix.errors import EdgeMatrixError, RemoteError
from edgematrix.matrix.schema import Precision
from edgematrix.measure.contention import Contention
from edgematrix.measure.harness import LatencyConfig
from edgematrix.server import worker
from edgematrix.server.app import DeviceServer, ServerConfig, serve_in_thread
from edgematrix.server.bundle import EvalBundle, run_bundle_local
from edgematrix.server.client import RemoteEvaluation, RemoteSession, plan_samples_per_request
from edgematrix.server.config import POWER_MODE_ENV, build_config
from edgematrix.server.options import PRECISIONS, BackendSettings, Limits
from edgematrix.server.wire import arrays_to_npz, decode_frame, encode_frame, npz_to_arrays

from .serverkit import (
    QUICK,
    TOKEN,
    alive,
    make_heads,
    make_mlp,
    make_pool,
    raw,
    run_until_worker,
    served_process,
    worker_pids,
)

SAMPLES = 9
#: one sample of the bundle: x float32[1, 16]
SAMPLE_BYTES = 64
#: one sample's outputs through the three models: probs 16 + probs 16 + logits 16 + features 32
OUTPUT_BYTES = 80
QUICK_CONFIG = dataclasses.asdict(QUICK)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """A reference, its explicitly quantized candidate and a two-headed model, all fed x: float32[1, 16]."""
    return {
        "reference": (make_mlp(tmp_path / "fp32.onnx", seed=0), "fp32"),
        "candidate": (make_mlp(tmp_path / "int8.onnx", seed=0, qdq=True), "int8"),
        "heads": (make_heads(tmp_path / "heads.onnx"), "fp32"),
    }


@pytest.fixture
def bundle() -> EvalBundle:
    rng = np.random.default_rng(7)
    return EvalBundle.from_batch({"x": rng.standard_normal((SAMPLES, 16)).astype(np.float32)})


def session(url: str, **kw: Any) -> RemoteSession:
    kw.setdefault("backoff_s", 0.05)
    return RemoteSession(url, token=TOKEN, **kw)


def local_outputs(models: dict[str, tuple[Path, str]], bundle: EvalBundle) -> dict[str, dict[str, np.ndarray]]:
    return {
        role: run_bundle_local(path, bundle, runner_options={"intra_op_threads": 1})
        for role, (path, _) in models.items()
    }


def assert_outputs_equal(got: RemoteEvaluation, want: dict[str, dict[str, np.ndarray]]) -> None:
    assert set(got.outputs) == set(want)
    for role, outputs in want.items():
        assert set(got.outputs[role]) == set(outputs), role
        for name, arr in outputs.items():
            assert got.outputs[role][name].shape == arr.shape == (SAMPLES, *arr.shape[1:])
            np.testing.assert_array_equal(got.outputs[role][name], arr, err_msg=f"{role}/{name}")


def evaluate_body(files: dict[str, tuple[Path, str]], inputs: dict[str, np.ndarray] | bytes, **meta: Any) -> bytes:
    """A request as any client could write it: blobs ``model.<role>`` of ``files`` and ``bundle``; ``meta``."""
    meta.setdefault("models", [{"role": role, "precision": precision} for role, (_, precision) in files.items()])
    meta.setdefault("config", QUICK_CONFIG)
    blobs = {f"model.{role}": path.read_bytes() for role, (path, _) in files.items()}
    blobs["bundle"] = inputs if isinstance(inputs, bytes) else arrays_to_npz(inputs)
    return encode_frame(meta, blobs)


# ---------------------------------------------------------------------------------------------
# outputs, latency, facts


def test_every_models_outputs_equal_local_onnxruntime_and_all_are_measured_in_the_same_rounds(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    ev = session(server.url).evaluate(models, bundle, "onnxruntime", {"intra_op_threads": 1}, QUICK)
    assert ev.requests == 1 and ev.samples == SAMPLES
    assert ev.roles == ("reference", "candidate", "heads")
    assert ev.precisions == {"reference": "fp32", "candidate": "int8", "heads": "fp32"}
    assert_outputs_equal(ev, local_outputs(models, bundle))
    assert not np.array_equal(ev.outputs["reference"]["probs"], ev.outputs["candidate"]["probs"])  # the QDQ model

    # every model measured in the same 5 rounds, per-round samples
    assert {role: len(s) for role, s in ev.samples_s.items()} == {"reference": 5, "candidate": 5, "heads": 5}
    assert ev.rounds == 5 and all(s > 0 for samples in ev.samples_s.values() for s in samples)
    assert ev.config["min_rounds"] == ev.config["max_rounds"] == 5 and ev.config["warmup"] == 1
    measurement = ev.measurement()
    assert list(measurement) == list(ev.roles)
    assert measurement["candidate"].samples_s == list(ev.samples_s["candidate"])
    assert measurement["heads"].p50_ms == pytest.approx(float(np.median(ev.samples_s["heads"])) * 1e3)

    # the contention record of exactly those rounds
    assert ev.contention is not None
    assert ev.contention["rounds"] == 5 and set(ev.contention["spread"]) == set(ev.roles)
    assert isinstance(ev.contention["busy"], bool) and isinstance(ev.contention["reasons"], list)
    assert measurement.contention == Contention.from_dict(ev.contention)
    assert measurement["reference"].contention is measurement.contention

    # each runner's facts, the device's, its environment key
    for role, (path, _) in models.items():
        facts = ev.facts[role]
        assert facts["runner"] == role and facts["backend"] == "onnxruntime"
        assert facts["intra_op_threads"] == 1 and facts["intra_op_allow_spinning"] == 0
        assert facts["model_bytes"] == path.stat().st_size
        assert "model" not in facts  # the server's temporary path is not reported
    assert ev.facts["candidate"]["precision"] == "int8" and ev.facts["reference"]["precision"] == "fp32"
    assert ev.device["arch"] and ev.device["device_model"]
    assert ev.device["onnxruntime_version"] == ev.facts["reference"]["version"]
    assert ev.environment == current_environment()
    assert set(ev.load_s) == set(ev.roles) and all(s > 0 for s in ev.load_s.values())
    assert ev.backend == "onnxruntime" and ev.url == server.url
    assert server.history[-1].op == "evaluate"


def test_outputs_only_without_a_measurement(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    ev = session(server.url).evaluate(models, bundle, options={"intra_op_threads": 1}, measure=False)
    assert_outputs_equal(ev, local_outputs(models, bundle))
    assert ev.samples_s == {"reference": (), "candidate": (), "heads": ()} and ev.rounds == 0
    assert ev.contention is None and ev.config == {}
    with pytest.raises(EdgeMatrixError, match="without a measurement"):
        ev.measurement()


def test_the_answer_on_the_wire(server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle) -> None:
    status, _, answer = _post_raw(
        server.url, evaluate_body(models, bundle.inputs, runner_options={"intra_op_threads": 1})
    )
    assert status == 200
    meta, blobs = decode_frame(answer)
    assert set(blobs) == {"outputs.reference", "outputs.candidate", "outputs.heads", "samples"}
    assert set(npz_to_arrays(blobs["outputs.heads"])) == {"logits", "features"}
    samples = npz_to_arrays(blobs["samples"])  # per-round seconds: binary, up to max_rounds of them
    assert {role: (arr.dtype, arr.shape) for role, arr in samples.items()} == {
        role: (np.dtype(np.float64), (5,)) for role in ("reference", "candidate", "heads")
    }
    assert meta["samples"] == meta["bundle_samples"] == SAMPLES and meta["complete"] is True
    latency = meta["latency"]
    assert latency["feed_sample"] == 0 and latency["order"] == "alternating" and latency["rounds"] == 5
    assert set(latency["summary"]["heads"]) == {"rounds", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "stddev_ms"}
    assert latency["config"]["max_time_s"] <= 0.8 * 60  # the server's timeout (60 s) caps the rounds' time
    assert {"queued_s", "request_id", "environment", "power_mode", "power_mode_source", "contention"} <= set(meta)


def _post_raw(url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/vnd.edgematrix.frame"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + "/v1/evaluate", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# ---------------------------------------------------------------------------------------------
# runner options: derived per role, the client's allow-listed ones over them, the server's over all


def test_runner_options_come_from_the_target_the_client_and_the_server_in_that_order(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    two = {"reference": models["reference"], "candidate": models["candidate"]}
    with serve_in_thread(ServerConfig(token=TOKEN, timeout_s=60)) as srv:
        target = {"description": "x86 CPU", "backend": "onnxruntime", "threads": 2, "providers": []}  # a Target dump
        ev = session(srv.url).evaluate(two, bundle, target=target, measure=False)
        assert {r: ev.facts[r]["intra_op_threads"] for r in two} == {"reference": 2, "candidate": 2}  # options_for
        assert ev.facts["reference"]["providers"] == "CPUExecutionProvider"
        ev = session(srv.url).evaluate(
            two,
            bundle,
            options={"intra_op_threads": 2},
            role_options={"candidate": {"intra_op_threads": 1}},
            measure=False,
        )
        assert {r: ev.facts[r]["intra_op_threads"] for r in two} == {"reference": 2, "candidate": 1}
    pinned = BackendSettings({"intra_op_threads": 1})
    with serve_in_thread(ServerConfig(token=TOKEN, timeout_s=60, settings={"onnxruntime": pinned})) as srv:
        ev = session(srv.url).evaluate(
            two, bundle, options={"intra_op_threads": 2}, target={"threads": 2}, measure=False
        )
        assert {r: ev.facts[r]["intra_op_threads"] for r in two} == {"reference": 1, "candidate": 1}  # the server's


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"backend": "tensorrt", "runner_options": {"executable": "/bin/sh"}},
            "come from the server's configuration only",
        ),
        ({"runner_options": {"provider_options": {}}}, "come from the server's configuration only"),
        ({"model_options": {"threads": 2}}, "unknown onnxruntime runner option threads; valid"),
        (
            {"target": {"providers": [["CUDAExecutionProvider", {"gpu_external_alloc": "1"}]]}},
            "option 'gpu_external_alloc' is not a remote option",
        ),
        ({"target": {"image": "x86_cpu"}}, "unknown target key image; valid target keys: providers, threads"),
        ({"target": {"threads": -1}}, "target 'threads' must be an integer in [0, 1024]"),
        ({"role": "../etc"}, "models[0] 'role' must be a role name"),
        ({"role": "candidate"}, "models[1]: role 'candidate' appears twice; every model needs its own role"),
        ({"precision": "int4"}, "models[0] 'precision' must be one of fp32, fp16, int8, fx8"),
        ({"model_suffix": ".engine"}, "does not accept prebuilt TensorRT engines"),
        ({"backend": "tensorrt", "precision": "fx8", "role": "base"}, "TensorRT builds fp32, fp16 or int8 engines"),
        (
            {"backend": "tensorrt", "model_options": {"inference": "trtexec"}},
            "model 'reference': tensorrt runner option inference='trtexec' cannot be measured interleaved",
        ),
        ({"extra_model_key": True}, "unknown models[0] key file; valid models[0] keys: model_suffix, precision"),
        ({"models": []}, "'models' must be a list of 1 to 8 models ([limits] max_models)"),
        ({"config": {"warmup": 10**6}}, "config option 'warmup' is 1000000; this server allows 0 to 1000"),
        ({"partial": "yes"}, "'partial' must be true or false"),
        ({"seed": 1}, "unknown option seed; valid options: backend, config, measure, models, op, partial"),
    ],
)
def test_what_a_client_may_not_choose_is_a_400_and_nothing_runs(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle, change: dict[str, Any], needle: str
) -> None:
    change = dict(change)
    entries: list[dict[str, Any]] = [{"role": role, "precision": p} for role, (_, p) in models.items()]
    first = entries[0]
    for key in ("role", "precision", "model_suffix"):
        if key in change:
            first[key] = change.pop(key)
    if "model_options" in change:
        first["runner_options"] = change.pop("model_options")
    if change.pop("extra_model_key", False):
        first["file"] = "/etc/passwd"
    meta: dict[str, Any] = {"models": entries, **change}
    before = len(server.history)
    status, _, answer = raw(server.url, "/v1/evaluate", evaluate_body(models, bundle.inputs, **meta))
    assert status == 400, answer
    assert needle in answer["error"]["message"]
    assert len(server.history) == before  # refused before it waited for the device


def test_blobs_must_match_the_models(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    body = evaluate_body(models, bundle.inputs, models=[{"role": "reference", "precision": "fp32"}])
    status, _, answer = raw(server.url, "/v1/evaluate", body)
    assert status == 400
    assert (
        "takes blobs ['bundle', 'model.reference']; got ['bundle', 'model.candidate', 'model.heads'"
        in (answer["error"]["message"])
    )


def test_more_models_than_the_limit_are_refused(models: dict[str, tuple[Path, str]], bundle: EvalBundle) -> None:
    config = ServerConfig(token=TOKEN, timeout_s=60, limits=Limits(max_models=2))
    refused = r"answered 400: 'models' must be a list of 1 to 2 models"
    with serve_in_thread(config) as srv, pytest.raises(RemoteError, match=refused) as info:
        session(srv.url).evaluate(models, bundle, measure=False)
    assert info.value.status == 400


# ---------------------------------------------------------------------------------------------
# sizes: a bundle too large for one request is refused with the limit and its size, or split


def test_a_bundle_over_the_limit_is_a_413_naming_the_limit_and_its_size(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    limits = Limits(max_bundle_bytes=4 * SAMPLE_BYTES)
    with serve_in_thread(ServerConfig(token=TOKEN, timeout_s=60, limits=limits)) as srv:
        status, _, answer = raw(srv.url, "/v1/evaluate", evaluate_body(models, bundle.inputs))
        assert status == 413 and answer["error"]["kind"] == "too_large"
        message = answer["error"]["message"]
        assert (
            f"the bundle is {SAMPLES * SAMPLE_BYTES} bytes of arrays ({SAMPLES} samples of {SAMPLE_BYTES} bytes)"
            in message
        )
        assert f"at most {4 * SAMPLE_BYTES} bytes of bundle per request ([limits] max_bundle_bytes)" in message
        assert "send at most 4 sample(s) per request" in message
        # the client told to send it whole gets the server's message
        with pytest.raises(RemoteError, match=r"answered 413: the bundle is 576 bytes") as info:
            session(srv.url).evaluate(models, bundle, samples_per_request=SAMPLES)
        assert info.value.status == 413
        assert srv.history == []  # nothing ran


def test_a_body_over_the_servers_body_limit_is_a_413(server: DeviceServer, models: dict[str, tuple[Path, str]]) -> None:
    big = {"x": np.zeros((5000, 1, 16), np.float32)}  # 320 kB, over the fixture's 256 KiB body limit
    status, _, answer = raw(server.url, "/v1/evaluate", evaluate_body(models, big))
    assert status == 413 and "this server accepts at most 262144 bytes" in answer["error"]["message"]


def test_outputs_over_the_response_limit_are_a_422_naming_the_limit(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    limits = Limits(max_response_bytes=4 * OUTPUT_BYTES)
    with serve_in_thread(ServerConfig(token=TOKEN, timeout_s=60, limits=limits)) as srv:
        status, _, answer = raw(srv.url, "/v1/evaluate", evaluate_body(models, bundle.inputs))
    assert status == 422 and answer["error"]["kind"] == "response_too_large"
    message = answer["error"]["message"]
    assert f"would be {SAMPLES * OUTPUT_BYTES} bytes ({OUTPUT_BYTES} bytes per sample)" in message
    assert f"answers at most {4 * OUTPUT_BYTES} bytes per request ([limits] max_response_bytes)" in message
    assert "send at most 4 sample(s) per request" in message


def test_one_samples_outputs_over_the_response_limit_cannot_be_split(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    limits = Limits(max_response_bytes=OUTPUT_BYTES - 1)
    refused = rf"the outputs of one sample through 3 model\(s\) are {OUTPUT_BYTES} bytes"
    with (
        serve_in_thread(ServerConfig(token=TOKEN, timeout_s=60, limits=limits)) as srv,
        pytest.raises(RemoteError, match=refused),
    ):
        session(srv.url).evaluate(models, bundle)


def test_the_client_splits_a_bundle_over_the_request_limits_and_measures_once(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    limits = Limits(max_bundle_bytes=4 * SAMPLE_BYTES)
    with serve_in_thread(ServerConfig(token=TOKEN, timeout_s=60, limits=limits)) as srv:
        ev = session(srv.url).evaluate(models, bundle, options={"intra_op_threads": 1}, latency=QUICK)
        ops = [h.op for h in srv.history]
    assert ev.requests == 3 == len(ops)  # 4 + 4 + 1 samples
    assert_outputs_equal(ev, local_outputs(models, bundle))
    assert ev.rounds == 5 and ev.contention is not None and ev.contention["rounds"] == 5


def test_the_server_answers_the_samples_that_fit_and_the_client_goes_on_from_there(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    limits = Limits(max_response_bytes=2 * OUTPUT_BYTES + 10)
    with serve_in_thread(ServerConfig(token=TOKEN, timeout_s=60, limits=limits)) as srv:
        ev = session(srv.url).evaluate(models, bundle, options={"intra_op_threads": 1}, latency=QUICK)
    assert ev.requests == 5  # 2 + 2 + 2 + 2 + 1 samples
    assert_outputs_equal(ev, local_outputs(models, bundle))
    assert ev.rounds == 5


def test_the_outputs_stop_in_time_for_the_measurement_and_the_next_request_goes_on(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    # 10 s per request: 8 s for the worker; a 5 s measurement (+ half as much again, + 1 s) leaves no time
    # for a second sample's outputs, so the first request answers one sample and measures
    five = LatencyConfig(warmup=0, min_rounds=1, max_rounds=10**7, min_time_s=5.0, max_time_s=5.0)
    with serve_in_thread(ServerConfig(token=TOKEN, timeout_s=10)) as srv:
        ev = session(srv.url).evaluate(models, bundle, options={"intra_op_threads": 1}, latency=five)
    assert ev.requests == 2  # 1 sample, then the other 8 (outputs only)
    assert_outputs_equal(ev, local_outputs(models, bundle))
    assert ev.config["min_time_s"] == ev.config["max_time_s"] == 5.0  # the measurement kept its time
    assert ev.rounds > 1 and ev.contention is not None and ev.contention["rounds"] == ev.rounds


def test_a_measurement_that_cannot_fit_the_servers_time_is_a_504_saying_why(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    # 10 s per request, 8 s for the worker, all of which an 8 s measurement needs
    long = LatencyConfig(warmup=0, min_rounds=1, max_rounds=100_000, min_time_s=8.0, max_time_s=8.0)
    with (
        serve_in_thread(ServerConfig(token=TOKEN, timeout_s=10)) as srv,
        pytest.raises(RemoteError, match=r"answered 504: LimitExceeded: the outputs of 1 sample\(s\) took") as info,
    ):
        session(srv.url).evaluate(models, bundle, latency=long)
    message = str(info.value)
    assert "of this worker's 8 s (0.8 x the server's --timeout-s) for a measurement that needs about 8.0 s" in message
    assert info.value.status == 504


def test_a_lane_cell_takes_two_requests_at_the_default_limits_and_one_at_640_mib() -> None:
    per_sample = 3 * 288 * 800 * 4  # float32[1, 3, 288, 800]: 150 of them are the lane test bundle
    models = 129_607_125 + 33_136_166  # UFLD-v2 ResNet-18, FP32 and INT8 ONNX files
    default = ServerConfig(token=TOKEN)
    device = {"max_body_bytes": default.max_body_bytes, "limits": default.limits.as_dict()}
    assert plan_samples_per_request(per_sample, models, device) == 135  # 135 + 15
    device["max_body_bytes"] = 640 * 2**20
    assert plan_samples_per_request(per_sample, models, device) >= 150


def test_requests_are_planned_from_the_body_and_bundle_limits() -> None:
    device = {"max_body_bytes": 10 << 20, "limits": {"max_bundle_bytes": 8 << 20}}
    assert plan_samples_per_request(1 << 20, 4 << 20, device) == 5  # body: 10 - 4 MiB - 128 kB of frame
    assert plan_samples_per_request(1 << 20, 0, device) == 8  # the bundle limit
    assert plan_samples_per_request(1 << 20, 20 << 20, device) == 1  # the models alone are over: the server says so


# ---------------------------------------------------------------------------------------------
# token, power mode, runtime errors, shutdown


def test_evaluate_needs_the_token(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = evaluate_body(models, bundle.inputs)
    for token in (None, "not-the-token-not-the-token"):
        status, headers, answer = raw(server.url, "/v1/evaluate", body, token=token)
        assert status == 401 and "missing or wrong token" in answer["error"]["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    monkeypatch.delenv("EDGEMATRIX_TOKEN", raising=False)
    with pytest.raises(EdgeMatrixError, match="EDGEMATRIX_TOKEN"):
        RemoteSession(server.url).evaluate(models, bundle)
    assert server.history == []


def test_power_mode_from_the_servers_environment_else_its_configuration(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    one = {"reference": models["reference"]}
    config_file = tmp_path / "server.toml"
    config_file.write_text('[server]\npower_mode = "15W"\n\n[limits]\nmax_models = 3\n')
    config = build_config(TOKEN, config_file, timeout_s=60)
    assert config.power_mode == "15W" and config.limits.max_models == 3
    monkeypatch.delenv(POWER_MODE_ENV, raising=False)
    with serve_in_thread(config) as srv:
        ev = session(srv.url).evaluate(one, bundle, measure=False)
        assert (ev.power_mode, ev.power_mode_source) == ("15W", "config")
        monkeypatch.setenv(POWER_MODE_ENV, "MAXN")
        ev = session(srv.url).evaluate(one, bundle, measure=False)
        assert (ev.power_mode, ev.power_mode_source) == ("MAXN", "env")
        device = session(srv.url).device()
        assert (device["power_mode"], device["power_mode_source"]) == ("MAXN", "env")
        assert device["max_body_bytes"] == config.max_body_bytes and device["limits"]["max_models"] == 3
    with pytest.raises(EdgeMatrixError, match="power_mode '\\$\\(reboot\\)' must be 1 to 64 letters"):
        ServerConfig(token=TOKEN, power_mode="$(reboot)")


def test_a_model_the_runtime_refuses_is_a_422_and_the_server_goes_on(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    broken = {**models, "candidate": (bad, "int8")}
    with pytest.raises(RemoteError, match=r"answered 422: .*ONNX Runtime cannot load") as info:
        session(server.url).evaluate(broken, bundle)
    assert info.value.status == 422
    wrong_feed = EvalBundle.from_batch({"y": np.zeros((2, 16), np.float32)})
    with pytest.raises(RemoteError, match=r"answered 422: .*feed has inputs \['y'\]"):
        session(server.url).evaluate(models, wrong_feed)
    ev = session(server.url).evaluate(models, bundle, latency=QUICK)  # still serving
    assert ev.rounds == 5


def test_the_client_checks_roles_before_sending(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    with pytest.raises(EdgeMatrixError, match="role 'a/b' is not a role name"):
        session(server.url).evaluate({"a/b": models["reference"]}, bundle)
    with pytest.raises(EdgeMatrixError, match=r"role_options for unknown role\(s\) \['base'\]"):
        session(server.url).evaluate(models, bundle, role_options={"base": {"intra_op_threads": 1}})
    assert server.history == []


def test_sigterm_mid_evaluate_ends_the_worker_and_removes_the_models(
    models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    slow = LatencyConfig(warmup=0, min_rounds=1, max_rounds=10**7, min_time_s=30.0, max_time_s=30.0)
    with served_process() as (proc, url):
        evaluate = functools.partial(RemoteSession(url, token=TOKEN, retries=0).evaluate, latency=slow)
        client, outcome = run_until_worker(evaluate, proc, models, bundle)
        (pid,) = worker_pids(proc.pid)
        folder = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3].decode())
        for index, (path, _) in enumerate(models.values()):  # the clients' models, on the board
            assert (folder / f"model-{index}.onnx").read_bytes() == path.read_bytes()
        assert (folder / worker.BUNDLE_FILE).is_file()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10  # well before the 30 s of rounds would have ended
        client.join(30)
    assert not alive(pid), f"worker {pid} outlived the server"
    assert not folder.exists() and not folder.parent.exists(), "the request folder (the models) was left behind"
    assert "error" in outcome


# ---------------------------------------------------------------------------------------------
# pieces


def test_precisions_are_the_matrix_precisions() -> None:
    assert get_args(Precision) == PRECISIONS


def test_the_time_left_caps_the_rounds_time() -> None:
    order = {"config": {"warmup": 0, "min_rounds": 3, "max_rounds": 100, "min_time_s": 10.0, "max_time_s": 60.0}}
    cfg = worker._capped_config(order, remaining_s=4.0)
    assert cfg.max_time_s == 4.0 and cfg.min_time_s == 4.0 and cfg.min_rounds == 3
    cfg = worker._capped_config(order, remaining_s=100.0)
    assert (cfg.min_time_s, cfg.max_time_s) == (10.0, 60.0)


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.slow
def test_the_server_streams_a_large_request_to_disk_and_its_answer_from_disk(tmp_path: Path) -> None:
    pooled = make_pool(tmp_path / "pool.onnx")  # float32[1, 256, 32, 32] (1 MiB) → float32[1, 256, 1, 1]
    rng = np.random.default_rng(3)
    big = EvalBundle({"x": rng.standard_normal((96, 1, 256, 32, 32), dtype=np.float32)})  # 96 MiB
    with served_process() as (proc, url):
        session(url).evaluate({"warm": (pooled, "fp32")}, EvalBundle({"x": big.inputs["x"][:1]}), measure=False)
        before = _vm_hwm_kib(proc.pid)
        ev = session(url).evaluate({"a": (pooled, "fp32"), "b": (pooled, "fp32")}, big, measure=False)
        grew_mib = (_vm_hwm_kib(proc.pid) - before) / 1024
    assert ev.requests == 1 and ev.outputs["a"]["y"].shape == (96, 1, 256, 1, 1)
    np.testing.assert_allclose(ev.outputs["b"]["y"][:, 0, :, 0, 0], big.inputs["x"][:, 0].mean(axis=(2, 3)), atol=1e-6)
    assert grew_mib < 16, f"the server's peak memory grew by {grew_mib:.0f} MiB for a 96 MiB bundle"


def test_a_body_that_ends_early_is_a_400_and_its_request_folder_is_gone(
    server: DeviceServer, models: dict[str, tuple[Path, str]], bundle: EvalBundle
) -> None:
    body = evaluate_body(models, bundle.inputs)
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/evaluate HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body[:-100])  # the bundle's last 100 bytes never come
        sock.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:300]
    message = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["message"]
    assert message == f"body ended after {len(body) - 100} of {len(body)} bytes"
    assert list(server.workers.root.iterdir()) == [] and server.history == []

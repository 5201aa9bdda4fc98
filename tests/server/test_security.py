"""Issue 15's attacks on `edgematrix serve`, replayed over real HTTP on loopback: each now fails to do harm.

- a token holder named the program the server runs (``runner_options.executable``), its folders and
  files, and ONNX Runtime provider options that load libraries or take pointers;
- the worker inherited the server's environment, token included;
- client-chosen warm-up counts were unchecked;
- an npz header declaring 6 GiB reserved the memory before being refused, 10.9 TiB was a 500;
  an input of 1x3x100000x100000 was a 500 with a traceback; JSON nested 100k deep was a 500; a
  616-byte request returned 300 MB.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import struct
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgematrix.errors import EdgeMatrixError, RemoteError
from edgematrix.measure.harness import LatencyConfig
from edgematrix.server.app import DeviceServer, ServerConfig, serve_in_thread
from edgematrix.server.client import RemoteMeter
from edgematrix.server.config import build_config
from edgematrix.server.options import BackendSettings, Limits
from edgematrix.server.wire import MAGIC, VERSION, arrays_to_npz, encode_frame

from .serverkit import (
    TOKEN,
    alive,
    make_expander,
    make_external_data,
    make_huge_input,
    make_qdq,
    process_environ,
    raw,
    worker_pids,
)

QUICK_CONFIG = {"warmup": 0, "min_rounds": 3, "max_rounds": 3, "min_time_s": 0.0}
TRT_DATA = Path(__file__).resolve().parents[1] / "backends" / "tensorrt" / "data"
FAKE_TRTEXEC = Path(__file__).resolve().parents[1] / "backends" / "tensorrt" / "fake_trtexec.py"


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _frame(meta: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    """A frame as any client could write it: NaN / Infinity and huge numbers included (the JSON module allows them)."""
    entries = [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in blobs.items()]
    head = json.dumps({"meta": meta, "blobs": entries}).encode()
    return struct.pack(">4sBI", MAGIC, VERSION, len(head)) + head + b"".join(blobs.values())


def measure(url: str, model: Path | bytes, **meta: Any) -> tuple[int, dict, Any]:
    meta.setdefault("config", QUICK_CONFIG)
    data = model if isinstance(model, bytes) else model.read_bytes()
    return raw(url, "/v1/measure", _frame(meta, {"model": data}))


def run(url: str, model: Path, bundle: bytes, **meta: Any) -> tuple[int, dict, Any]:
    return raw(url, "/v1/run", encode_frame(meta, {"model": model.read_bytes(), "bundle": bundle}))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A program a client would like the board to run, and the file it writes when it runs."""
    marker = tmp_path / "pwned"
    return _script(tmp_path / "evil.sh", f'echo "$@" >> "{marker}"'), marker


# ---------------------------------------------------------------------------------------------
# (2) the server executes nothing a client names


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("executable", "EVIL"),
        ("workdir", "/etc"),
        ("save_engine", "/home/runner/.bashrc"),
        ("timing_cache", "/tmp/shared.cache"),
        ("extra_args", ["--plugins=/tmp/libevil.so"]),
        ("calibration_cache", "/etc/shadow"),
        ("timeout_s", 1e9),
    ],
)
def test_a_client_cannot_name_the_program_folders_or_files_of_the_board(
    server: DeviceServer, tmp_path: Path, evil: tuple[Path, Path], option: str, value: Any
) -> None:
    script, marker = evil
    model = make_qdq(tmp_path / "m.onnx")
    value = str(script) if value == "EVIL" else value
    status, _, answer = measure(server.url, model, backend="tensorrt", runner_options={option: value})
    assert status == 400, answer
    message = answer["error"]["message"]
    assert f"tensorrt runner option(s) {option} name programs, folders or files on the board" in message
    assert "come from the server's configuration only" in message
    assert not marker.exists(), "the client's program ran on the board"


@pytest.mark.parametrize(
    ("provider", "option", "value"),
    [
        ("TensorrtExecutionProvider", "trt_extra_plugin_lib_paths", "/tmp/libevil.so"),
        ("TensorrtExecutionProvider", "trt_engine_decryption_lib_path", "/tmp/libevil.so"),
        ("TensorrtExecutionProvider", "trt_engine_decryption_enable", True),
        ("TensorrtExecutionProvider", "trt_engine_cache_path", "/etc"),
        ("TensorrtExecutionProvider", "user_compute_stream", "140737488355328"),
        ("CUDAExecutionProvider", "gpu_external_alloc", "140737488355328"),
        ("CUDAExecutionProvider", "gpu_external_free", "140737488355328"),
    ],
)
def test_provider_options_that_load_libraries_or_take_pointers_are_refused(
    server: DeviceServer, relu_model: Path, provider: str, option: str, value: Any
) -> None:
    providers = [[provider, {option: value}], "CPUExecutionProvider"]
    status, _, answer = measure(server.url, relu_model, runner_options={"providers": providers})
    assert status == 400, answer
    message = answer["error"]["message"]
    assert f"{provider} option {option!r} is not a remote option" in message
    assert "come from the server's configuration only" in message


def test_remote_options_are_typed_and_bounded(server: DeviceServer, relu_model: Path) -> None:
    cases = {
        "intra_op_threads": (10**9, "must be an integer in [0, 1024]"),
        "allow_spinning": ("yes", "must be true or false"),
        "optimization": ("none", "must be one of disable, basic, extended, all"),
        "providers": (["MyLibraryExecutionProvider"], "provider 'MyLibraryExecutionProvider' is not served"),
    }
    for option, (value, needle) in cases.items():
        status, _, answer = measure(server.url, relu_model, runner_options={option: value})
        assert status == 400 and needle in answer["error"]["message"], (option, answer)
    # plain options still work: the provider list arrives as the runner takes it
    status, _, answer = measure(
        server.url, relu_model, runner_options={"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}
    )
    assert status == 200, answer
    assert answer["facts"]["providers"] == "CPUExecutionProvider" and answer["facts"]["intra_op_threads"] == 1


def test_the_servers_configuration_names_the_program_and_the_client_still_chooses_plain_options(
    tmp_path: Path, evil: tuple[Path, Path]
) -> None:
    # the operator's trtexec (here: the replay of real trtexec output) runs; the client picks the precision
    bindir = tmp_path / "operator"
    bindir.mkdir()
    trtexec = _script(bindir / "trtexec", f'exec "{sys.executable}" "{FAKE_TRTEXEC}" "$@"')
    log = tmp_path / "trtexec-argv.log"
    config = ServerConfig(
        token=TOKEN,
        timeout_s=60,
        settings={"tensorrt": BackendSettings({"executable": str(trtexec)})},
        worker_env={"FAKE_TRTEXEC_DATA": str(TRT_DATA), "FAKE_TRTEXEC_LOG": str(log)},
    )
    model = make_qdq(tmp_path / "qdq.onnx")
    with serve_in_thread(config) as srv:
        options = {"precision": "int8", "inference": "none"}  # build and time: no TensorRT Python module here
        status, _, answer = measure(srv.url, model, backend="tensorrt", runner_options=options)
        assert status == 200, answer
        assert answer["backend"] == "tensorrt" and answer["facts"]["compute_layers_int8"] == 8
        script, marker = evil
        status, _, answer = measure(srv.url, model, backend="tensorrt", runner_options={"executable": str(script)})
        assert status == 400 and not marker.exists()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2  # build, then time: both by the configured program
    assert calls[0][0].startswith("--onnx=") and "--int8" in calls[0]
    assert calls[1][0].startswith("--loadEngine=") and any(a.startswith("--exportTimes=") for a in calls[1])
    engine = Path(calls[1][0].split("=", 1)[1])
    assert not engine.exists(), "the engine stayed on the board after the request"


def test_the_worker_gets_no_token_and_no_server_environment(mlp_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEMATRIX_TOKEN", TOKEN)
    monkeypatch.setenv("BOARD_DEPLOY_KEY", "s3cr3t")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/vendor/lib")
    config = ServerConfig(
        token=TOKEN, timeout_s=60, pass_env=("LD_LIBRARY_PATH",), worker_env={"OMP_WAIT_POLICY": "PASSIVE"}
    )
    slow = LatencyConfig(warmup=0, min_rounds=1, max_rounds=10**7, min_time_s=20.0, max_time_s=20.0)
    outcome: dict[str, Any] = {}

    def client(url: str) -> None:
        try:
            RemoteMeter(url, token=TOKEN, config=slow, retries=0).measure(mlp_model)
        except RemoteError as exc:
            outcome["error"] = exc

    with serve_in_thread(config) as srv:
        thread = threading.Thread(target=client, args=(srv.url,))
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not worker_pids(os.getpid()):
                assert time.monotonic() < deadline, "no worker started"
                time.sleep(0.05)
            (pid,) = worker_pids(os.getpid())
            env = process_environ(pid)
        finally:
            srv.workers.stop_all()  # end the 20 s measurement now
            thread.join(30)
    assert "EDGEMATRIX_TOKEN" not in env and TOKEN not in "".join(env.values())
    assert "BOARD_DEPLOY_KEY" not in env
    assert env["LD_LIBRARY_PATH"] == "/opt/vendor/lib" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["HOME"] == env["TMPDIR"] and Path(env["HOME"]).parent == srv.workers.root
    assert set(env) == {
        "PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "LD_LIBRARY_PATH",
        "OMP_WAIT_POLICY",
    }  # fmt: skip
    assert not alive(pid)
    assert outcome["error"].status == 503 and "shutting down" in str(outcome["error"])


@pytest.mark.parametrize("name", ["EDGEMATRIX_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"])
def test_a_configuration_cannot_hand_a_secret_to_the_worker(name: str) -> None:
    with pytest.raises(EdgeMatrixError, match=f"worker environment variable '{name}' is refused"):
        ServerConfig(token=TOKEN, pass_env=(name,))


def test_prebuilt_engines_from_clients_are_refused_unless_the_operator_allows_them(server: DeviceServer) -> None:
    status, _, answer = measure(server.url, b"serialized engine", backend="tensorrt", model_suffix=".engine")
    assert status == 400 and "does not accept prebuilt TensorRT engines (.engine)" in answer["error"]["message"]


def test_a_model_with_external_data_is_refused_before_the_runtime_opens_it(
    server: DeviceServer, tmp_path: Path
) -> None:
    model = make_external_data(tmp_path / "ext.onnx", "../../../../../../etc/passwd")
    status, _, answer = measure(server.url, model)
    assert status == 422 and answer["error"]["kind"] == "model_rejected"
    assert "initializer 'w' keeps its data in an external file" in answer["error"]["message"]


# ---------------------------------------------------------------------------------------------
# (3) warm-up, rounds and time are bounded server-side


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"warmup": 10**9}, "'warmup' is 1000000000; this server allows 0 to 1000"),
        ({"min_rounds": 10**9, "max_rounds": 10**9}, "'min_rounds' is 1000000000; this server allows 1 to 100000"),
        ({"min_time_s": 1e6, "max_time_s": 1e6}, "'min_time_s' is 1000000.0; this server allows 0 to 60"),
        ({"min_time_s": float("nan")}, "config option 'min_time_s' must be float, got nan"),
    ],
)
def test_warmup_rounds_and_time_are_capped_by_the_server(
    server: DeviceServer, relu_model: Path, config: dict[str, Any], needle: str
) -> None:
    status, _, answer = measure(server.url, relu_model, config=config)
    assert status == 400 and needle in answer["error"]["message"], answer


def test_a_generous_max_time_is_cut_to_the_servers_limits(relu_model: Path) -> None:
    config = ServerConfig(token=TOKEN, timeout_s=60, limits=Limits(max_time_s=1.5))
    with serve_in_thread(config) as srv:
        cfg = {"warmup": 0, "min_rounds": 1, "max_rounds": 10**9, "min_time_s": 0.0, "max_time_s": 1e9}
        status, _, answer = measure(srv.url, relu_model, config=cfg)
    assert status == 200, answer
    assert answer["config"]["max_rounds"] == 100_000 and answer["config"]["max_time_s"] <= 1.5


# ---------------------------------------------------------------------------------------------
# (4) bad input is a 4xx, checked before anything is allocated


def _lying_npz(shape: tuple[int, ...], dtype: str = "<u1") -> bytes:
    """An npz whose .npy header declares ``shape`` but which holds 16 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", npy)
    return buf.getvalue()


def _vm_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1])
    raise AssertionError("no VmPeak in /proc/self/status")


@pytest.mark.parametrize(("shape", "what"), [((6 * 2**30,), "6 GiB"), ((12 * 2**40,), "10.9 TiB")])
def test_an_npz_header_declaring_gigabytes_is_refused_before_any_allocation(
    server: DeviceServer, relu_model: Path, shape: tuple[int, ...], what: str
) -> None:
    peak = _vm_peak_kib()
    status, _, answer = run(server.url, relu_model, _lying_npz(shape))
    assert status == 400 and answer["error"]["kind"] == "bad_bundle", answer
    assert (
        f"declares {shape[0]} bytes of arrays" in answer["error"]["message"]
        or "but its member holds 16 bytes" in (answer["error"]["message"])
    )
    assert _vm_peak_kib() - peak < 256 * 1024, f"the server reserved memory for the declared {what}"


@pytest.mark.parametrize(
    ("npz", "needle"),
    [
        (_lying_npz((4,), "|O"), "has dtype object; only bool, integer and float arrays travel"),
        (_lying_npz((2, 2), "<U4"), "has dtype <U4; only bool, integer and float arrays travel"),
        (_lying_npz((1,) * 40), "at most 9 sizes >= 0"),
        (_lying_npz((16,)), None),  # honest: 16 bytes as declared, but a 1-d array has no sample of x[1,8]
    ],
)
def test_bundle_headers_are_checked_for_dtype_shape_and_size(
    server: DeviceServer, relu_model: Path, npz: bytes, needle: str | None
) -> None:
    status, _, answer = run(server.url, relu_model, npz)
    assert 400 <= status < 500 and "Traceback" not in answer["error"]["message"], answer
    if needle is not None:
        assert status == 400 and needle in answer["error"]["message"]


def test_an_input_of_120_gigabytes_is_a_413_not_a_traceback(server: DeviceServer, tmp_path: Path) -> None:
    status, _, answer = measure(server.url, make_huge_input(tmp_path / "huge.onnx"))
    assert status == 413 and answer["error"]["kind"] == "over_limit", answer
    message = answer["error"]["message"]
    assert "input 'x' is float32[1, 3, 100000, 100000] (120000000000 bytes)" in message
    assert "feeds at most 268435456 bytes per inference" in message and "Traceback" not in message


@pytest.mark.parametrize("depth", [100_000, 40])
def test_deeply_nested_json_is_a_400(server: DeviceServer, relu_model: Path, depth: int) -> None:
    head = (
        json.dumps({"meta": {"runner_options": {"x": "[" * depth + "]" * depth}}}).replace('"[', "[").replace(']"', "]")
    )
    head_bytes = head.encode()
    body = struct.pack(">4sBI", MAGIC, VERSION, len(head_bytes)) + head_bytes
    status, _, answer = raw(server.url, "/v1/measure", body)
    assert status == 400 and "nests objects / lists deeper than 16 levels" in answer["error"]["message"], answer


def test_a_tiny_request_cannot_make_the_server_answer_hundreds_of_megabytes(tmp_path: Path) -> None:
    model = make_expander(tmp_path / "expand.onnx", 1 << 20)  # 4 MiB of output per sample
    bundle = arrays_to_npz({"x": np.ones((8, 1), np.float32)})
    request = encode_frame({}, {"model": model.read_bytes(), "bundle": bundle})
    assert len(request) < 2000
    config = ServerConfig(token=TOKEN, timeout_s=60, limits=Limits(max_response_bytes=10 * 2**20))
    with serve_in_thread(config) as srv:
        status, _, answer = raw(srv.url, "/v1/run", request)
        assert status == 422 and answer["error"]["kind"] == "response_too_large", answer
        assert "returns at most 10485760 bytes per request" in answer["error"]["message"]
        small = arrays_to_npz({"x": np.ones((2, 1), np.float32)})  # 8 MiB: within the limit
        status, _, _ = raw_frame(srv.url, encode_frame({}, {"model": model.read_bytes(), "bundle": small}))
        assert status == 200


def raw_frame(url: str, body: bytes) -> tuple[int, dict, bytes]:
    import urllib.request

    req = urllib.request.Request(url + "/v1/run", data=body, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, dict(resp.headers), resp.read()


# ---------------------------------------------------------------------------------------------
# every client error is a 4xx with a message


MALFORMED_META: list[dict[str, Any]] = [
    {"op": ["measure"]},
    {"backend": {"name": "onnxruntime"}},
    {"backend": "torch"},
    {"backend": "tidl"},
    {"model_suffix": [".onnx"]},
    {"runner_options": "executable=/bin/sh"},
    {"runner_options": {"providers": [["CUDAExecutionProvider"]]}},
    {"runner_options": {"providers": [["CPUExecutionProvider", {"x": 1}, 3]]}},
    {"runner_options": {"providers": []}},
    {"runner_options": {"intra_op_threads": 2**70}},
    {"config": {"warmup": float("inf")}},
    {"config": {"min_time_s": 10**400}},
    {"config": ["warmup", 1]},
    {"seed": 2**70},
    {"return_samples": None},
]


@pytest.mark.parametrize("meta", MALFORMED_META, ids=[json.dumps(m)[:60] for m in MALFORMED_META])
def test_malformed_requests_are_4xx_with_a_message(server: DeviceServer, relu_model: Path, meta: dict) -> None:
    status, _, answer = measure(server.url, relu_model, **meta)
    assert 400 <= status < 500, answer
    assert answer["error"]["message"] and "Traceback" not in answer["error"]["message"]


def _http(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"PUT /v1/measure HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /v1/device HTTP/1.1\r\n\r\n", 405),
        (b"GET /v1/health HTTP/1.1\r\n" + b"X-A: b\r\n" * 120 + b"\r\n", 431),
        (b"POST /v1/measure HTTP/1.1\r\nConnection: close\r\nContent-Length: -5\r\n\r\n", 411),
    ],
)
def test_http_level_errors_are_4xx_json(server: DeviceServer, request_bytes: bytes, status: int) -> None:
    answer = _http(server.url, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode(), answer[:300]
    assert json.loads(body)["error"]["status"] == status


# ---------------------------------------------------------------------------------------------
# the configuration file


@pytest.fixture
def config_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "server.toml"
    path.write_text(
        '[server]\nbackend = "onnxruntime"\nbackends = ["onnxruntime", "tensorrt"]\ntimeout_s = 30\n\n'
        "[limits]\nmax_warmup = 10\n\n"
        '[worker]\nenv = { OMP_NUM_THREADS = "1" }\npass_env = ["LD_LIBRARY_PATH"]\n\n'
        '[backends.tensorrt]\nexecutable = "/usr/src/tensorrt/bin/trtexec"\n\n'
        "[backends.onnxruntime.provider_options.TensorrtExecutionProvider]\n"
        'trt_engine_cache_enable = true\ntrt_engine_cache_path = "/var/cache/edgematrix/ort-trt"\n'
    )
    yield path


def test_configuration_file_sets_what_clients_cannot(config_file: Path) -> None:
    config = build_config(TOKEN, config_file, queue_limit=3)
    assert config.served == ("onnxruntime", "tensorrt") and config.queue_limit == 3 and config.timeout_s == 30
    assert config.limits.max_warmup == 10 and config.worker_env == {"OMP_NUM_THREADS": "1"}
    trt = config.settings_for("tensorrt").apply("tensorrt", {"precision": "int8"})
    assert trt == {"precision": "int8", "executable": "/usr/src/tensorrt/bin/trtexec"}
    ort = config.settings_for("onnxruntime").apply(
        "onnxruntime", {"providers": [["TensorrtExecutionProvider", {"trt_fp16_enable": True}], "CPUExecutionProvider"]}
    )
    assert ort["providers"] == [
        [
            "TensorrtExecutionProvider",
            {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": "/var/cache/edgematrix/ort-trt",
            },
        ],
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nport = 1\n", "[server] unknown key(s) ['port']"),
        ("[backends.tensorrt]\nexecutabel = 'x'\n", "[backends.tensorrt]: unknown runner option(s) ['executabel']"),
        ("[server]\nbackends = ['tidl']\n", "server backends ['tidl'] cannot be served to clients"),
        ("[worker]\npass_env = ['EDGEMATRIX_TOKEN']\n", "worker environment variable 'EDGEMATRIX_TOKEN' is refused"),
        ("[limits]\nmax_rounds = 0\n", "server limit max_rounds must be a number > 0"),
    ],
)
def test_a_bad_configuration_file_is_refused_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(EdgeMatrixError) as info:
        build_config(TOKEN, path)
    assert str(path) in str(info.value) and needle in str(info.value)

"""ENOT protocol: our client against an unmodified enot_latency_server.LatencyServer subclass on loopback."""

from __future__ import annotations

import os
import pickle
import pickletools
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import enot_latency_server  # noqa: F401  (test dependency group: the server side of the ENOT protocol)
import pytest

from edgematrix.errors import DeviceUnreachableError, EdgeMatrixError, RemoteError
from edgematrix.server.client import RemoteMeter
from edgematrix.server.enot import enot_request_body

SRC = str(Path(__file__).resolve().parents[2] / "src")

# The server side, as an ENOT user writes it: subclass LatencyServer, implement measure_latency.
ENOT_SERVER = textwrap.dedent(
    """
    import sys
    import tempfile
    from pathlib import Path

    from enot_latency_server import LatencyServer

    from edgematrix.measure.harness import LatencyConfig
    from edgematrix.backends.meter import LocalMeter


    class OrtLatencyServer(LatencyServer):
        def measure_latency(self, model: bytes, **kwargs):
            rounds = kwargs.pop("rounds", 10)
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.onnx"
                path.write_bytes(model)
                config = LatencyConfig(warmup=1, min_rounds=rounds, max_rounds=rounds, min_time_s=0.0)
                report = LocalMeter(config=config).measure(path)
            return {"latency": report.p50_ms, "rounds": report.rounds, "model_bytes": len(model),
                    "other_kwargs": ",".join(sorted(kwargs))}


    OrtLatencyServer(host="127.0.0.1", port=int(sys.argv[1])).run()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def enot_url(tmp_path: Path) -> Iterator[str]:
    script = tmp_path / "enot_server.py"
    script.write_text(ENOT_SERVER)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the ENOT server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.slow
def test_measures_against_an_unmodified_enot_latency_server(enot_url: str, relu_model: Path) -> None:
    meter = RemoteMeter(enot_url, protocol="enot", enot_requests=3)
    report = meter.measure(relu_model, options={"rounds": 7, "tag": "run-1"})
    assert report.backend == "enot" and report.rounds == 3 and len(report.samples_ms) == 3
    assert all(s > 0 for s in report.samples_ms)
    assert report.p50_ms == sorted(report.samples_ms)[1]
    assert report.facts["enot_rounds"] == 7  # our options reached measure_latency as kwargs
    assert report.facts["enot_other_kwargs"] == "tag"
    assert report.facts["enot_model_bytes"] == relu_model.stat().st_size
    assert report.facts["protocol"] == "enot"


@pytest.mark.slow
def test_enot_server_error_is_reported_not_retried(enot_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    meter = RemoteMeter(enot_url, protocol="enot", retries=3, backoff_s=0.01)
    with pytest.raises(RemoteError, match=r"answered 500") as info:
        meter.measure(bad)
    assert info.value.status == 500 and meter.transport.attempts_made == 1


def test_enot_unreachable_names_url_and_attempts(relu_model: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    meter = RemoteMeter(url, protocol="enot", retries=1, backoff_s=0.0)
    with pytest.raises(DeviceUnreachableError, match=rf"{url}: 2 attempt\(s\).*ConnectionRefusedError"):
        meter.measure(relu_model)


def test_request_body_is_the_enot_dict_and_holds_no_code() -> None:
    body = enot_request_body(b"\x08\x01model", {"rounds": 3, "shape": [1, 3], "opts": {"fp16": True}})
    opcodes = {op.name for op, _, _ in pickletools.genops(body)}
    assert not opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ"}
    # what LatencyServer's handler does with it: pickle.loads, then measure_latency(**data)
    assert pickle.loads(body) == {"model": b"\x08\x01model", "rounds": 3, "shape": [1, 3], "opts": {"fp16": True}}


def test_request_body_refuses_objects_and_the_reserved_key() -> None:
    with pytest.raises(EdgeMatrixError, match=r"ENOT option cfg is a set; only bytes, str"):
        enot_request_body(b"m", {"cfg": {1, 2}})
    with pytest.raises(EdgeMatrixError, match=r"'model' is reserved"):
        enot_request_body(b"m", {"model": b"other"})

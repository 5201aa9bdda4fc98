"""Killing `edgematrix serve` mid-measurement: the client fails clearly after its retries; the worker exits."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from edgematrix.errors import DeviceUnreachableError
from edgematrix.measure.harness import LatencyConfig
from edgematrix.server.client import RemoteMeter

from .serverkit import TOKEN, alive, run_until_worker, served_process, worker_pids

SLOW = LatencyConfig(warmup=0, min_rounds=1, max_rounds=10**7, min_time_s=30.0, max_time_s=30.0)


@pytest.mark.slow
def test_killing_the_server_mid_run_fails_clearly_after_retries(mlp_model: Path) -> None:
    sleeps: list[float] = []
    with served_process() as (proc, url):
        meter = RemoteMeter(url, token=TOKEN, config=SLOW, retries=2, backoff_s=0.1, sleep=sleeps.append)
        client, outcome = run_until_worker(lambda: meter.measure(mlp_model), proc)
        workers = worker_pids(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        client.join(30)
        assert not client.is_alive()
    error = outcome["error"]
    assert isinstance(error, DeviceUnreachableError)
    message = str(error)
    assert f"cannot reach the latency server at {url}: 3 attempt(s)" in message
    assert "last error: ConnectionRefusedError" in message
    assert "edgematrix serve" in message and f"curl {url}/v1/health" in message
    assert meter.transport.attempts_made == 3
    assert sleeps == [0.1, 0.2]  # exponential backoff between the attempts
    deadline = time.monotonic() + 5  # well before its 30 s of rounds end, the orphaned worker notices and exits
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, f"worker(s) {workers} outlived the server"
        time.sleep(0.05)


def test_sigterm_stops_the_server_cleanly() -> None:
    with served_process() as (proc, url):
        assert RemoteMeter(url).health()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_server_ends_its_workers_and_removes_the_clients_model(
    mlp_model: Path, sig: signal.Signals
) -> None:
    # issue 15: SIGTERM stopped the HTTP loop but left the measuring worker running (re-parented to
    # PID 1) and the request folder with the client's model in /tmp
    with served_process() as (proc, url):
        client, outcome = run_until_worker(
            RemoteMeter(url, token=TOKEN, config=SLOW, retries=0).measure, proc, mlp_model
        )
        (worker,) = worker_pids(proc.pid)
        folder = Path((Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0"))[3].decode())
        assert (folder / "model.onnx").read_bytes() == mlp_model.read_bytes()  # the client's model, on the board
        root = folder.parent
        assert root.name.startswith(f"edgematrix-serve-{proc.pid}-")
        assert alive(worker)
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10  # well before the 30 s of rounds would have ended
        client.join(30)
    assert not alive(worker), f"worker {worker} outlived the server"
    assert not folder.exists() and not root.exists(), "the request folder (the client's model) was left behind"
    assert "error" in outcome  # the client was told, not left waiting

"""Killing `edgematrix serve` mid-measurement: the client fails clearly after its retries; the worker exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgematrix.errors import DeviceUnreachableError
from edgematrix.measure.harness import LatencyConfig
from edgematrix.server.client import RemoteMeter

from .serverkit import TOKEN

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _workers_of(server_pid: int) -> list[int]:
    """PIDs of measurement workers that server_pid started (their argv names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"edgematrix.server.worker" in argv and str(server_pid).encode() in argv:
            found.append(int(entry.name))
    return found


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgematrix.cli", "serve", "--port", "0", "--timeout-s", "60"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line, line
    return proc, line.split("listening on ", 1)[1].split()[0]


@pytest.mark.slow
def test_killing_the_server_mid_run_fails_clearly_after_retries(mlp_model: Path) -> None:
    env = {**os.environ, "EDGEMATRIX_TOKEN": TOKEN, "PYTHONPATH": SRC}
    proc, url = _start_server(env)
    try:
        slow = LatencyConfig(warmup=0, min_rounds=1, max_rounds=10**7, min_time_s=30.0, max_time_s=30.0)
        sleeps: list[float] = []
        meter = RemoteMeter(url, token=TOKEN, config=slow, retries=2, backoff_s=0.1, sleep=sleeps.append)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                meter.measure(mlp_model)
            except DeviceUnreachableError as exc:
                outcome["error"] = exc

        client = threading.Thread(target=run)
        client.start()
        deadline = time.monotonic() + 30
        while not RemoteMeter(url).health()["busy"] or not _workers_of(proc.pid):
            assert time.monotonic() < deadline, "the measurement never started"
            time.sleep(0.05)
        workers = _workers_of(proc.pid)
        assert workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        client.join(30)
        assert not client.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    error = outcome["error"]
    message = str(error)
    assert f"cannot reach the latency server at {url}: 3 attempt(s)" in message
    assert "last error: ConnectionRefusedError" in message
    assert "edgematrix serve" in message and f"curl {url}/v1/health" in message
    assert meter.transport.attempts_made == 3
    assert sleeps == [0.1, 0.2]  # exponential backoff between the attempts
    deadline = time.monotonic() + 5  # well before its 30 s of rounds end, the orphaned worker notices and exits
    while any(
        Path(f"/proc/{pid}").exists() and b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers
    ):
        assert time.monotonic() < deadline, f"worker(s) {workers} outlived the server"
        time.sleep(0.05)


def test_sigterm_stops_the_server_cleanly() -> None:
    env = {**os.environ, "EDGEMATRIX_TOKEN": TOKEN, "PYTHONPATH": SRC}
    proc, url = _start_server(env)
    try:
        assert RemoteMeter(url).health()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

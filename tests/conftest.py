"""A real Docker engine for the container tests.

Uses the engine that answers (DOCKER_HOST or /var/run/docker.sock). When none does and this is root
on a host with ``dockerd`` installed (docker/base/host-tools.sh), starts one for the session and
stops it again, by the pid it started. Without an engine the tests fail, naming how to get one:
they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    import docker

    started: subprocess.Popen[bytes] | None = None
    if not _answers():
        dockerd = shutil.which("dockerd")
        if dockerd is None or os.geteuid() != 0:
            pytest.fail(
                "the container tests need a Docker engine and none answers. As root on Debian, run "
                "docker/base/host-tools.sh (installs docker.io, debootstrap, qemu-user-static) and the tests "
                "start dockerd themselves; otherwise start one and point DOCKER_HOST at it."
            )
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        started = subprocess.Popen([dockerd], stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not _answers():
            if started.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not come up (exit {started.poll()}); its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield docker.from_env(timeout=600)
    finally:
        if started is not None:  # stop the engine this session started, by its pid
            os.kill(started.pid, signal.SIGTERM)
            try:
                started.wait(timeout=60)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()


#: test folders whose tests run whole cells in this process
CELL_TEST_FOLDERS = ("pipeline", "executors")


@pytest.fixture(autouse=True)
def _contention_not_judged(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cell tests judge gates, recipes and artifacts, not the machine: other tests, image builds and jobs load
    this 2-core host at will, so in tests/pipeline and tests/executors the contention record's verdict is
    switched off (its thresholds out of reach) and a busy run still gets its latency gates judged.
    tests/pipeline/test_cell_busy.py (marker ``real_contention``) runs a cell beside real CPU-bound processes
    with the shipped thresholds; tests/measure/test_contention.py tests the record itself; a cell inside a
    container judges with the shipped thresholds (its tests assert what a busy machine cannot change)."""
    if Path(request.node.path).parent.name not in CELL_TEST_FOLDERS:
        return
    if request.node.get_closest_marker("real_contention") is not None:
        return
    from edgematrix.measure import contention

    monkeypatch.setattr(contention, "THRESHOLDS", dict.fromkeys(contention.THRESHOLDS, float("inf")))

"""The Docker runner on a real engine: offline image build, a small x86 CPU cell in its container.

Builds the x86_cpu image on the debootstrap base with a host wheelhouse (as CI does), runs a tiny
x86 CPU cell locally and then inside the container on the same cache, and checks the container run
gives the same accuracy on the same artifacts. Also: a second run does not rebuild, exit codes
propagate, containers are removed on failure and on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from edgematrix.executors.docker import DockerRunOptions, run_cell_in_container, run_command
from edgematrix.executors.images import ensure_image, ensure_offline_base, image_spec
from edgematrix.matrix.loader import load_matrix
from tiny_cells import TINY, make_workspace, run_cell

REPO = Path(__file__).resolve().parents[2]
CELL = "x86_cpu_int8q"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory, "dock", TINY)


@pytest.fixture(scope="module")
def x86_image(docker_engine: Any, workspace: Path) -> str:
    """The x86_cpu image on the offline base (built once; the cache dir is the repo's, like `nox -s images`)."""
    base = ensure_offline_base(docker_engine, "x86_64")
    target = load_matrix(workspace / "matrix").targets["x86_cpu"].model_dump()
    spec = image_spec(REPO, "x86_cpu", target, offline_base=base)
    tag, _ = ensure_image(docker_engine, spec, REPO / ".cache" / "edgematrix")
    return tag


def _cli(ws: Path, *args: str, results: str) -> int:
    return run_cell(ws, CELL, *args, results=results)


def _by_role(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    bench = json.loads(path.read_text())
    return {(b["extra_info"]["backend"], b["extra_info"]["role"]): b for b in bench["benchmarks"]}


def _gate_results(junit: Path) -> dict[str, str]:
    """Gate name → "passed", or the text of its failure / skip."""
    out = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        result = next((r for r in case if r.tag in ("failure", "skipped", "error")), None)
        out[case.get("name", "")] = "passed" if result is None else f"{result.tag}: {result.get('message')}"
    return out


def test_container_run_matches_the_local_run(workspace: Path, x86_image: str, docker_engine: Any) -> None:
    # the local run records the baselines; the container run is gated against them (one baseline for
    # both: the image installs the lock's packages, so the environment keys are equal)
    assert _cli(workspace, "--update-baseline", results="results-local") == 0
    assert (workspace / "matrix" / "baselines" / f"{CELL}.json").is_file()
    t0 = time.perf_counter()
    assert _cli(workspace, "--runner", "docker", "--offline-base", results="results-docker") == 0
    assert time.perf_counter() - t0 < 120
    local = _by_role(workspace / "results-local" / CELL / "benchmark.json")
    inside = _by_role(workspace / "results-docker" / CELL / "benchmark.json")
    assert set(local) == set(inside) and len(local) == 4
    for key, b in local.items():
        mine, theirs = b["extra_info"], inside[key]["extra_info"]
        # same artifacts (from the shared cache), same accuracy to the last digit
        assert theirs["artifact_sha256"] == mine["artifact_sha256"], key
        assert theirs["accuracy"] == mine["accuracy"], key
        assert (theirs["fp"], theirs["fn"]) == (mine["fp"], mine["fn"]), key
    machine = json.loads((workspace / "results-docker" / CELL / "benchmark.json").read_text())["machine_info"]
    assert machine["container"] is True and machine["container_image"] == x86_image
    gates = _gate_results(workspace / "results-docker" / CELL / "junit.xml")
    for backend in ("", "[openvino]"):
        assert gates[f"accuracy_vs_baseline{backend}"] == "passed", gates
        assert "another toolchain" not in gates[f"latency_vs_baseline{backend}"], gates
        assert "no baseline" not in gates[f"latency_vs_baseline{backend}"], gates
    config = json.loads((workspace / "results-docker" / CELL / "config.json").read_text())
    assert config["cell"] == CELL
    # results written by the container belong to the invoking user
    assert (workspace / "results-docker" / CELL / "junit.xml").stat().st_uid == os.getuid()
    assert not docker_engine.containers.list(all=True, filters={"label": f"org.edgematrix.cell={CELL}"})


def test_the_container_has_the_environment_key_of_a_locked_local_install(x86_image: str, docker_engine: Any) -> None:
    """The image's wheelhouse is the lock's: inside, the key baselines are compared by is the one a local
    Nox session (here: the test session, installed with the same lock) has, whatever glibc the base has."""
    import io

    from edgematrix.core.toolchain import LOCK_PATH, current_environment, public_version, read_lock

    buf = io.StringIO()
    script = (
        "import json; from edgematrix.core.toolchain import current_environment, libc\n"
        "print(json.dumps(current_environment())); print(libc())\n"
    )
    mounts = {str(REPO): {"bind": "/workspace", "mode": "ro"}}
    assert run_command(docker_engine, x86_image, ["python3", "-c", script], mounts=mounts, environment={}, out=buf) == 0
    *_, key, libc = buf.getvalue().strip().splitlines()
    inside = json.loads(key)
    assert inside == current_environment()
    assert {k: public_version(v) for k, v in inside.items()} == read_lock(REPO / LOCK_PATH).environment()
    assert libc == "glibc 2.36"  # Debian 12's, recorded beside a baseline but not keyed


def test_second_run_reuses_the_image(workspace: Path, x86_image: str, docker_engine: Any) -> None:
    target = load_matrix(workspace / "matrix").targets["x86_cpu"].model_dump()
    base = ensure_offline_base(docker_engine, "x86_64")
    t0 = time.perf_counter()
    tag, built = ensure_image(
        docker_engine, image_spec(REPO, "x86_cpu", target, offline_base=base), REPO / ".cache/edgematrix"
    )
    assert (tag, built) == (x86_image, False)
    assert time.perf_counter() - t0 < 10


def test_exit_code_propagates_and_container_is_removed(workspace: Path, x86_image: str, docker_engine: Any) -> None:
    mounts = {str(REPO): {"bind": "/workspace", "mode": "ro"}}
    labels = {"org.edgematrix.test": "exit-code"}
    code = run_command(
        docker_engine,
        x86_image,
        ["python3", "-c", "import sys; print('hi'); sys.exit(7)"],
        mounts=mounts,
        environment={},
        labels=labels,
    )
    assert code == 7
    assert not docker_engine.containers.list(all=True, filters={"label": "org.edgematrix.test=exit-code"})


def test_source_is_read_only_and_env_is_allow_listed(
    workspace: Path, x86_image: str, docker_engine: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    mounts = {str(REPO): {"bind": "/workspace", "mode": "ro"}}
    script = (
        "import os, sys\n"
        "try:\n    open('/workspace/x', 'w')\nexcept OSError as e:\n    print('ro', e.errno)\n"
        "print('secret' in os.environ, os.environ.get('CI'))\n"
        "import socket\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('net')\nexcept OSError:\n    print('no-net')\n"
    )
    import io

    buf = io.StringIO()
    code = run_command(
        docker_engine, x86_image, ["python3", "-c", script], mounts=mounts, environment={"CI": "true"}, out=buf
    )
    assert code == 0
    assert buf.getvalue().split() == ["ro", "30", "False", "true", "no-net"]  # EROFS


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_removes_the_container(workspace: Path, x86_image: str, docker_engine: Any, sig: int) -> None:
    label = f"interrupt-{int(sig)}"
    code = (
        "import signal\n"
        # a terminal delivers Ctrl-C; a background job (`cmd &`, some CI shells) starts with SIGINT ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from edgematrix.executors.docker import run_command\n"
        "import docker\n"
        "c = docker.from_env()\n"
        f"run_command(c, {x86_image!r}, ['sleep', '300'], mounts={{}}, environment={{}}, "
        f"labels={{'org.edgematrix.test': {label!r}}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    filters = {"label": f"org.edgematrix.test={label}"}
    try:
        deadline = time.monotonic() + 60
        while not docker_engine.containers.list(filters=filters):
            assert time.monotonic() < deadline and proc.poll() is None, "the container never started"
            time.sleep(0.3)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert not docker_engine.containers.list(all=True, filters=filters)
    finally:
        proc.kill()
        for leftover in docker_engine.containers.list(all=True, filters=filters):
            leftover.remove(force=True)


def test_run_cell_in_container_rejects_a_missing_data_root(workspace: Path, x86_image: str) -> None:
    from edgematrix.errors import EdgeMatrixError

    target = load_matrix(workspace / "matrix").targets["x86_cpu"].model_dump()
    options = DockerRunOptions(
        repo_root=REPO,
        matrix_dir=workspace / "matrix",
        results_dir=workspace / "r",
        cache_dir=workspace / "cache",
        data_root=workspace / "no-such-data",
        offline_base=True,
    )
    with pytest.raises(EdgeMatrixError, match=r"--data-root .*no-such-data is not a folder"):
        run_cell_in_container(CELL, "x86_cpu", target, options)

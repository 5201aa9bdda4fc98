"""Runner selection: auto picks local when the host has what the target needs; otherwise a clear error."""

from __future__ import annotations

import pytest

from edgematrix.errors import RunnerUnavailableError
from edgematrix.executors.select import RunnerChoiceError, choose_runner, host_arch, missing_requirements
from edgematrix.matrix.loader import load_matrix
from edgematrix.pipeline.cell import pick_runner

HERE = host_arch()
OTHER = "aarch64" if HERE == "x86_64" else "x86_64"


def _target(**kw):
    base = {"arch": HERE, "backend": "onnxruntime", "description": "test target", "runners": ["local"]}
    return {**base, **kw}


def test_auto_picks_local_and_says_why() -> None:
    choice = choose_runner("t_int8", "t", _target(requires=["module:json", "command:sh"]))
    assert choice.runner == "local"
    assert "everything the target needs" in choice.reason


def test_missing_requirements_are_each_named(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("EDGEMATRIX_TEST_UNSET", raising=False)
    missing = missing_requirements(
        OTHER,
        [
            "module:no_such_module_xyz",
            "command:no-such-cmd-xyz",
            f"path:{tmp_path}/absent",
            "env:EDGEMATRIX_TEST_UNSET",
        ],
    )
    assert missing == [
        f"an {OTHER} host (this host is {HERE})",
        "the Python module 'no_such_module_xyz'",
        "the command 'no-such-cmd-xyz' on PATH",
        f"the path {tmp_path}/absent",
        "the environment variable EDGEMATRIX_TEST_UNSET",
    ]
    with pytest.raises(RunnerChoiceError, match="unknown kind 'pip'"):
        missing_requirements(HERE, ["pip:foo"])


def test_unreachable_target_explains_how_to_provide_it() -> None:
    t = _target(arch=OTHER, runner_labels=["self-hosted", "jetson-orin"], runners=["local", "remote"], image="jetson")
    with pytest.raises(RunnerChoiceError) as e:
        choose_runner("jetson_int8", "jetson", t)
    msg = str(e.value)
    assert f"needs an {OTHER} host" in msg
    assert "[self-hosted, jetson-orin]" in msg
    assert "--runner remote" in msg


def test_requesting_a_runner_the_target_does_not_offer() -> None:
    with pytest.raises(RunnerChoiceError, match="does not offer runner 'docker'; its runners: local"):
        choose_runner("t_int8", "t", _target(), "docker")
    with pytest.raises(RunnerChoiceError, match="unknown runner 'ssh'"):
        choose_runner("t_int8", "t", _target(), "ssh")


def test_requested_runners_are_taken_when_offered() -> None:
    t = _target(runners=["local", "remote", "emulated", "docker"])
    for runner in ("remote", "emulated", "docker"):
        choice = choose_runner("t_int8", "t", t, runner)
        assert choice.runner == runner and choice.reason.startswith("requested")


def test_docker_runner_refuses_an_image_of_another_architecture() -> None:
    t = _target(arch=OTHER, runners=["docker", "emulated"])
    with pytest.raises(
        RunnerChoiceError, match=rf"its image is {OTHER} and this host is {HERE}[\s\S]*--runner emulated"
    ):
        choose_runner("t_int8", "t", t, "docker")
    # an image of this host's architecture for a target of another (TI's PC tools) is fine
    assert choose_runner("t_int8", "t", {**t, "image_arch": HERE}, "docker").runner == "docker"


def test_shipped_device_cells_fail_fast_here_and_loudly_under_ci(monkeypatch) -> None:
    m = load_matrix("matrix")
    assert pick_runner(m.cell("x86_cpu_int8"), "auto").runner == "local"
    monkeypatch.setenv("CI", "true")
    for name in ("jetson_int8", "ti_fx8", "driveos_int8"):
        with pytest.raises(RunnerUnavailableError, match=r"cannot run on this host[\s\S]*CI=true"):
            pick_runner(m.cell(name), "auto")

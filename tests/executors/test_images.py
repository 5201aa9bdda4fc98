"""Image specs, tags, wheelhouse requirements, offline-base sources: no engine needed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.executors.images import (
    DockerUnavailableError,
    ImageError,
    ImageSpec,
    debian_mirror,
    docker_client,
    image_spec,
    offline_base_tag,
    requirements_for,
)
from edgematrix.matrix.loader import load_matrix

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "docker" / "demo").mkdir(parents=True)
    (root / "docker" / "demo" / "Dockerfile").write_text("ARG BASE_IMAGE=debian:12\nFROM ${BASE_IMAGE}\n")
    (root / "docker" / "demo" / "requirements.txt").write_text("numpy==2.4.6\n")
    return root


TARGET = {"arch": "x86_64", "image": "demo", "image_args": {"BASE_IMAGE": "debian:12", "PYTHON_VERSION": "3.11"}}


def test_tag_is_stable_and_keyed_by_every_input(recipe: Path) -> None:
    tag = image_spec(recipe, "t", TARGET).tag
    assert tag.startswith("edgematrix/demo:") and tag == image_spec(recipe, "t", TARGET).tag
    # a build arg, the architecture, the Dockerfile and any other recipe file each change the tag
    assert image_spec(recipe, "t", {**TARGET, "image_args": {"BASE_IMAGE": "debian:13"}}).tag != tag
    assert image_spec(recipe, "t", {**TARGET, "arch": "aarch64"}).tag != tag
    (recipe / "docker/demo/requirements.txt").write_text("numpy==2.4.5\n")
    assert image_spec(recipe, "t", TARGET).tag != tag
    # a downloaded wheelhouse inside the recipe folder is not an input
    tag2 = image_spec(recipe, "t", TARGET).tag
    (recipe / "docker/demo/wheelhouse").mkdir()
    (recipe / "docker/demo/wheelhouse/x.whl").write_bytes(b"zip")
    assert image_spec(recipe, "t", TARGET).tag == tag2


def test_offline_base_replaces_base_image_and_python(recipe: Path) -> None:
    spec = image_spec(recipe, "t", TARGET, offline_base="edgematrix/base:bookworm-amd64-x")
    assert spec.build_args["BASE_IMAGE"] == "edgematrix/base:bookworm-amd64-x"
    assert spec.python_version == "3.11"
    assert spec.tag != image_spec(recipe, "t", TARGET).tag


def test_image_arch_overrides_target_arch(recipe: Path) -> None:
    spec = image_spec(recipe, "ti", {**TARGET, "arch": "aarch64", "image_arch": "x86_64"})
    assert spec.arch == "x86_64"


def test_missing_recipe_lists_the_recipes(recipe: Path) -> None:
    with pytest.raises(ImageError, match=r"docker/nope/Dockerfile does not exist; image recipes: demo"):
        image_spec(recipe, "t", {**TARGET, "image": "nope"})


def test_requirements_markers_resolve_for_the_image_python(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "requirements.txt").write_text(
        "# comment\n"
        'onnxruntime==1.23.2; python_version < "3.11"\n'
        'onnxruntime==1.31.1; python_version >= "3.11"  # inline comment\n'
        'only-arm==1.0; platform_machine == "aarch64"\n'
        "rich==15.0.0\n"
    )
    old = ImageSpec("j", tmp_path, "aarch64", {"PYTHON_VERSION": "3.10"})
    new = ImageSpec("j", tmp_path, "x86_64", {"PYTHON_VERSION": "3.11"})
    assert requirements_for(old) == ["onnxruntime==1.23.2", "only-arm==1.0", "rich==15.0.0"]
    assert requirements_for(new) == ["onnxruntime==1.31.1", "rich==15.0.0"]
    (tmp_path / "requirements.txt").write_text("this is not a requirement!!\n")
    with pytest.raises(ImageError, match=r"requirements.txt:1"):
        requirements_for(new)


def test_debian_mirror_comes_from_the_host_sources(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert debian_mirror([deb822]) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb http://other.example/debian bookworm main\n")
    assert debian_mirror([tmp_path / "missing.sources", one_line]) == "http://other.example/debian"
    one_line.write_text("deb http://other.example/debian trixie main\n")
    with pytest.raises(ImageError, match="no Debian bookworm apt source"):
        debian_mirror([one_line])


def test_offline_base_tags_differ_per_arch() -> None:
    a, b = offline_base_tag("x86_64"), offline_base_tag("aarch64")
    assert a.startswith("edgematrix/base:bookworm-amd64-") and b.startswith("edgematrix/base:bookworm-arm64-")


def test_unreachable_engine_says_how_to_start_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    with pytest.raises(DockerUnavailableError, match=r"no Docker engine answers at unix://.*no\.sock") as e:
        docker_client()
    assert "dockerd" in str(e.value) and "host-tools.sh" in str(e.value)
    assert isinstance(e.value, EdgeMatrixError)


def test_every_target_image_of_the_matrix_resolves() -> None:
    m = load_matrix(REPO / "matrix")
    for name, target in m.targets.items():
        spec = image_spec(REPO, name, target.model_dump())
        assert spec.dockerfile.is_file(), name
        assert spec.tag.startswith(f"edgematrix/{target.image}:")


def test_recipe_files_exclude_a_wheelhouse(tmp_path: Path) -> None:
    shutil.copytree(REPO / "docker" / "x86_cpu", tmp_path / "x86_cpu")
    (tmp_path / "x86_cpu" / "wheelhouse").mkdir()
    (tmp_path / "x86_cpu" / "wheelhouse" / "a.whl").write_text("")
    spec = ImageSpec("x86_cpu", tmp_path / "x86_cpu", "x86_64")
    assert [p.name for p in spec.recipe_files()] == ["Dockerfile", "requirements.txt"]

"""Image specs, tags, wheelhouse requirements, offline-base sources: no engine needed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from edgematrix.errors import EdgeMatrixError
from edgematrix.executors.images import (
    DockerUnavailableError,
    ImageError,
    ImageSpec,
    base_images,
    debian_mirror,
    docker_client,
    image_spec,
    offline_base_tag,
    offline_variant,
    requirements_for,
    target_image_spec,
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


# -- offline variants: every target's image builds on the debootstrap base ------------------------------


def _matrix_targets() -> dict[str, dict]:
    return {name: t.model_dump() for name, t in load_matrix(REPO / "matrix").targets.items()}


def _declared_args(dockerfile: Path) -> set[str]:
    import re

    return set(re.findall(r"^ARG\s+([A-Z_][A-Z0-9_]*)", dockerfile.read_text(), flags=re.M))


def test_every_target_has_an_offline_variant_that_names_only_the_debootstrap_base() -> None:
    """`nox -s images` builds all five: no offline variant may start FROM a vendor image (nothing is pulled)."""
    targets = _matrix_targets()
    assert sorted(n for n, t in targets.items() if t["offline_image"]) == sorted(targets)
    images = {}
    for name, target in targets.items():
        spec = target_image_spec(REPO, name, target, offline=True)
        variant = offline_variant(spec.recipe_dir)
        assert base_images(spec) == [offline_base_tag(spec.arch, variant.packages)], name
        assert spec.python_version == "3.11" and spec.lock == REPO / "matrix" / "constraints.txt", name
        # every build arg the variant sets is one the recipe declares
        assert set(variant.args_for("edgematrix/base:x")) <= _declared_args(spec.dockerfile), name
        # and the vendor spec's FROM lines are the vendor images, untouched
        vendor = base_images(target_image_spec(REPO, name, target))
        assert vendor and not any(b.startswith("edgematrix/base:") for b in vendor), (name, vendor)
        images[name] = (spec.name, spec.arch)
    assert images == {
        "x86_cpu": ("x86_cpu", "x86_64"),
        "x86_gpu": ("x86_trainer", "x86_64"),
        "jetson": ("jetson", "aarch64"),
        "ti": ("ti", "x86_64"),
        "driveos": ("driveos", "x86_64"),
    }


def test_base_images_follow_the_from_lines_and_build_args() -> None:
    targets = _matrix_targets()
    driveos = target_image_spec(REPO, "driveos", targets["driveos"])
    # cross stage and final stage name the same PDK image; `scratch` and the stage names are no base
    assert base_images(driveos) == [
        "nvcr.io/drive/driveos-sdk/drive-agx-orin-linux-aarch64-sdk-build-x86:6.0.10.0-0009"
    ]
    assert base_images(target_image_spec(REPO, "x86_gpu", targets["x86_gpu"])) == ["nvcr.io/nvidia/pytorch:25.01-py3"]
    offline = target_image_spec(REPO, "driveos", targets["driveos"], offline=True)
    assert offline.build_args["TRT_RUNNER_ENGINE"] == "cpu-selftest"
    assert offline.build_args["DRIVEOS_IMAGE"] == "edgematrix/base"
    assert offline.build_args["DRIVEOS_VERSION"].startswith("bookworm-amd64-")


def test_the_plain_base_keeps_its_tag_and_packages_make_another() -> None:
    plain = offline_base_tag("x86_64")
    h = hashlib.sha256(b"bookworm x86_64 python3 python3-venv python3-pip ca-certificates passwd tzdata v1").hexdigest()
    assert plain == f"edgematrix/base:bookworm-amd64-{h[:12]}"  # x86_cpu / jetson images are not rebuilt by this
    assert offline_base_tag("x86_64", ["python3", "tzdata"]) == plain  # packages of the plain base add nothing
    tool = offline_base_tag("x86_64", ["make", "cmake"])
    assert tool != plain and tool == offline_base_tag("x86_64", ["cmake", "make", "cmake"])
    assert offline_base_tag("aarch64", ["make", "cmake"]) != tool


def test_driveos_offline_variant_adds_the_cross_toolchain_to_its_base() -> None:
    variant = offline_variant(REPO / "docker" / "driveos")
    assert variant.packages == ("cmake", "make", "g++-aarch64-linux-gnu", "qemu-user-static")
    assert variant.args_for("edgematrix/base:bookworm-amd64-abc") == {
        "DRIVEOS_IMAGE": "edgematrix/base",
        "DRIVEOS_VERSION": "bookworm-amd64-abc",
        "TRT_RUNNER_ENGINE": "cpu-selftest",
        "PYTHON_VERSION": "3.11",
    }
    assert offline_variant(REPO / "docker" / "ti").args_for("b:1") == {
        "BASE_IMAGE": "b:1",
        "TIDL_TOOLS_TAG": "",
        "PYTHON_VERSION": "3.11",
    }
    # a recipe without offline.toml: its BASE_IMAGE is the base
    default = offline_variant(REPO / "docker" / "x86_trainer")
    assert default.source is None and default.packages == ()
    assert default.args_for("b:1") == {"BASE_IMAGE": "b:1", "PYTHON_VERSION": "3.11"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("packages = []\n[build_args]\nBASE_IMAGE = '{base}'\nEXTRA = 1\n", r"\[build_args\] must map build arg names"),
        ("pkgs = ['x']\n[build_args]\nBASE_IMAGE = '{base}'\n", r"unknown key\(s\) pkgs"),
        ("packages = ['Bad Name']\n[build_args]\nBASE_IMAGE = '{base}'\n", r"packages must be a list of Debian"),
        (
            "[build_args]\nBASE_IMAGE = '{image}'\n",
            r"names \{image\}; known: \{base\}, \{base_repo\}, \{base_version\}",
        ),
        ("[build_args]\nBASE_IMAGE = 'debian:12'\n", r"no build arg names the debootstrap base"),
        ("[build_args]\nBASE_IMAGE = '{base'\n", r"BASE_IMAGE = '\{base'"),
        ("[build_args\n", r"not valid TOML"),
    ],
)
def test_an_offline_variant_file_is_checked(recipe: Path, text: str, message: str) -> None:
    (recipe / "docker" / "demo" / "offline.toml").write_text(text)
    with pytest.raises(ImageError, match=rf"docker/demo/offline\.toml: .*{message}"):
        image_spec(recipe, "t", TARGET, offline_base="edgematrix/base:x")


def test_a_target_without_an_offline_variant_is_refused(recipe: Path) -> None:
    with pytest.raises(ImageError, match=r"target 't' has no offline variant .*offline_image = false"):
        target_image_spec(recipe, "t", TARGET, offline=True)
    spec = target_image_spec(recipe, "t", {**TARGET, "offline_image": True}, offline=True)
    assert spec.build_args == {"BASE_IMAGE": offline_base_tag("x86_64"), "PYTHON_VERSION": "3.11"}


def _offline_requirements(image: str, arch: str = "x86_64") -> list[str]:
    return requirements_for(ImageSpec(image, REPO / "docker" / image, arch, {"PYTHON_VERSION": "3.11"}))


def _vendor_requirements(target: str) -> list[str]:
    return requirements_for(target_image_spec(REPO, target, _matrix_targets()[target]))


def test_each_variant_installs_its_own_packages() -> None:
    names = lambda lines: {line.split("==")[0] for line in lines}  # noqa: E731
    trainer = _offline_requirements("x86_trainer")
    assert "torch==2.13.0+cpu" in trainer and "onnxruntime==1.31.1" in trainer  # CPU builds, never CUDA's
    assert not names(trainer) & {"onnxruntime-gpu", "nvidia-ml-py"}
    ngc = _vendor_requirements("x86_gpu")
    assert "onnxruntime-gpu==1.23.2" in ngc and not names(ngc) & {"torch", "onnxruntime", "numpy"}  # NGC's own
    assert {"numpy", "onnx", "onnxruntime"} <= names(_offline_requirements("ti"))
    assert not names(_vendor_requirements("ti")) & {"numpy", "onnx", "onnxruntime"}  # TI's setup.sh installs them
    assert _offline_requirements("driveos") == ["numpy==2.4.6"]
    assert _vendor_requirements("driveos") == []  # the PDK image gets the binary only


@pytest.mark.parametrize("image", ["x86_trainer", "ti", "driveos"])
def test_offline_pins_equal_the_lock(image: str) -> None:
    """Their wheelhouses are downloaded with the lock (Python 3.11): each pin must be the lock's version."""
    from packaging.requirements import Requirement

    from edgematrix.core.toolchain import public_version, read_lock

    lock = read_lock(REPO / "matrix" / "constraints.txt")
    lines = _offline_requirements(image)
    assert lines
    for line in lines:
        req = Requirement(line)
        (pin,) = req.specifier
        assert lock.pins.get(req.name.lower()) == public_version(pin.version), f"docker/{image}: {line}"

"""Image wheelhouses: downloaded with the lock, keyed by it, verified by hash before reuse (real pip)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from edgematrix.core.cache import TREE_MANIFEST
from edgematrix.core.toolchain import render_lock
from edgematrix.executors import images
from edgematrix.executors.images import build_wheelhouse, image_spec, wheelhouse_dir

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
WHEEL = "iniconfig-2.0.0-py3-none-any.whl"


def _lock(pins: list[str], python: str = PY) -> str:
    return render_lock(pins, python=python, platform="linux x86_64", libc="glibc 2.36", made_by="a test")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one image recipe whose requirement is unpinned, and a lock that pins it to 2.0.0."""
    root = tmp_path / "repo"
    (root / "docker" / "demo").mkdir(parents=True)
    (root / "docker" / "demo" / "Dockerfile").write_text("ARG BASE_IMAGE=debian:12\nFROM ${BASE_IMAGE}\n")
    (root / "docker" / "demo" / "requirements.txt").write_text("iniconfig\n")
    (root / "matrix").mkdir()
    (root / "matrix" / "constraints.txt").write_text(_lock(["iniconfig==2.0.0"]))
    return root


def _target(python: str = PY) -> dict[str, object]:
    return {"arch": "x86_64", "image": "demo", "image_args": {"BASE_IMAGE": "debian:12", "PYTHON_VERSION": python}}


def test_the_lock_applies_to_images_of_its_python_and_keys_tag_and_wheelhouse(repo: Path, tmp_path: Path) -> None:
    spec = image_spec(repo, "t", _target())
    assert spec.lock == repo / "matrix" / "constraints.txt"
    assert image_spec(repo, "t", _target("3.10")).lock is None  # JetPack's Python: the recipe's own pins
    tag, wheels = spec.tag, wheelhouse_dir(tmp_path, spec)
    (repo / "matrix" / "constraints.txt").write_text(_lock(["iniconfig==2.1.0"]))
    again = image_spec(repo, "t", _target())
    assert again.tag != tag and wheelhouse_dir(tmp_path, again) != wheels
    (repo / "matrix" / "constraints.txt").unlink()
    assert image_spec(repo, "t", _target()).lock is None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_pip(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"pip ran although the wheelhouse was reusable: {args}")


def test_wheelhouse_is_downloaded_with_the_lock_and_verified_before_reuse(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = image_spec(repo, "t", _target())
    cache = tmp_path / "cache"
    out = build_wheelhouse(spec, cache, log=lambda s: None)
    # the unpinned requirement resolved to the lock's version, and each file's hash is recorded
    assert sorted(p.name for p in out.glob("*.whl")) == [WHEEL]
    manifest = json.loads((out / TREE_MANIFEST).read_text())
    assert manifest[WHEEL][0] == _sha(out / WHEEL)
    good = _sha(out / WHEEL)
    capsys.readouterr()

    # intact: reused without running pip
    with monkeypatch.context() as m:
        m.setattr(images.subprocess, "run", _no_pip)
        assert build_wheelhouse(spec, cache) == out

    # a corrupted wheel: deleted with one line, downloaded again
    data = bytearray((out / WHEEL).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / WHEEL).write_bytes(bytes(data))
    assert build_wheelhouse(spec, cache, log=lambda s: None) == out
    assert capsys.readouterr().err.strip().splitlines() == [
        f"edgematrix: cache: wheelhouse {out}: {WHEEL} differs from the manifest; deleted, rebuilding"
    ]
    assert _sha(out / WHEEL) == good

    # a wheel slipped in beside the recorded ones: not installed into an image, the wheelhouse is rebuilt
    (out / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    assert build_wheelhouse(spec, cache, log=lambda s: None) == out
    assert (
        "1 file(s) not in its manifest, e.g. evil-1.0-py3-none-any.whl; deleted, rebuilding" in capsys.readouterr().err
    )
    assert sorted(p.name for p in out.glob("*.whl")) == [WHEEL]


def test_a_wheelhouse_without_recorded_hashes_is_rebuilt(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wheelhouse of an older edgematrix (a `.complete` marker, no hashes) is not trusted by existence."""
    spec = image_spec(repo, "t", _target())
    out = wheelhouse_dir(tmp_path, spec)
    out.mkdir(parents=True)
    (out / WHEEL).write_bytes(b"not a wheel")
    (out / ".complete").write_text(json.dumps([WHEEL]))
    assert build_wheelhouse(spec, tmp_path, log=lambda s: None) == out
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"edgematrix: cache: wheelhouse {out}: no manifest")
    assert (out / WHEEL).read_bytes()[:2] == b"PK" and not (out / ".complete").exists()


def test_nothing_for_the_image_python_gives_an_empty_sealed_wheelhouse(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DriveOS PDK image: requirements.txt has lines for the offline variant's Python only."""
    (repo / "docker" / "demo" / "requirements.txt").write_text('iniconfig==2.0.0; python_version >= "3.11"\n')
    spec = image_spec(repo, "t", _target("3.8"))
    with monkeypatch.context() as m:
        m.setattr(images.subprocess, "run", _no_pip)
        out = build_wheelhouse(spec, tmp_path, log=lambda s: None)
        assert not list(out.glob("*.whl")) and (out / "requirements.resolved.txt").read_text() == ""
        assert build_wheelhouse(spec, tmp_path) == out  # sealed: reused
    assert sorted(json.loads((out / TREE_MANIFEST).read_text())) == ["requirements.resolved.txt"]

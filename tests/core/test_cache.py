"""Verified cache entries: a file is reused only when it matches the seal recorded when it was written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgematrix.core.cache import (
    load_json_entry,
    reuse,
    reuse_generated,
    reuse_tree,
    seal,
    seal_generated,
    seal_tree,
    sealed_sha256,
    write_json_entry,
)


def _entry(tmp_path: Path, data: bytes = b"0123456789" * 100) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    seal(path)
    return path


def test_a_sealed_entry_is_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _entry(tmp_path)
    assert reuse(path, "ONNX export") is True
    assert path.is_file() and capsys.readouterr().err == ""
    assert sealed_sha256(path) == json.loads((tmp_path / "model.onnx.sha256").read_text())["sha256"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "993 bytes, sealed with 1000"),
        (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "sha256 mismatch"),
        (lambda p: (p.parent / "model.onnx.sha256").unlink(), "no seal"),
        (lambda p: (p.parent / "model.onnx.sha256").write_text("{not json"), "unreadable seal"),
    ],
    ids=["truncated", "same-size-corruption", "unsealed", "bad-seal"],
)
def test_a_damaged_entry_is_deleted_and_reported_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, reason: str
) -> None:
    path = _entry(tmp_path)
    damage(path)
    assert reuse(path, "INT8 model") is False
    assert not path.exists() and not (tmp_path / "model.onnx.sha256").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and reason in err[0] and "INT8 model" in err[0] and "rebuilding" in err[0]


def test_a_missing_entry_is_not_reused_and_its_stale_seal_goes(tmp_path: Path) -> None:
    path = _entry(tmp_path)
    path.unlink()
    assert reuse(path, "checkpoint") is False
    assert not (tmp_path / "model.onnx.sha256").exists()


def test_a_parse_check_failure_deletes_the_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "facts.json"
    path.write_text("{truncated")
    seal(path)  # sealed garbage (a writer bug): the parse check still refuses it
    assert load_json_entry(path, "export check") is None
    assert not path.exists() and "does not load (JSONDecodeError" in capsys.readouterr().err


def test_json_entries_round_trip(tmp_path: Path) -> None:
    write_json_entry(tmp_path / "e.json", {"max_abs_diff": 1.5e-5})
    assert load_json_entry(tmp_path / "e.json", "export check") == {"max_abs_diff": 1.5e-5}


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "clips" / "a").mkdir(parents=True)
    (root / "clips" / "a" / "20.jpg").write_bytes(b"\xff\xd8" + b"1" * 500)
    (root / "test_label.json").write_text('{"raw_file": "clips/a/20.jpg"}\n')
    seal_generated(root, {"key": "k1", "images": 1})
    return root


def test_a_generated_dataset_is_reused_for_its_key_only(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert reuse_generated(root, "k1", "synthetic dataset") is True
    assert reuse_generated(root, "k2", "synthetic dataset") is False  # another config: regenerate
    assert root.is_dir()  # a key mismatch is not damage: the generator overwrites it


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda r: (r / "clips" / "a" / "20.jpg").write_bytes(b"\xff\xd8" + b"2" * 500), "differs from the manifest"),
        (lambda r: (r / "clips" / "a" / "20.jpg").unlink(), "1 file(s) missing"),
        (lambda r: (r / "clips" / "a" / "21.jpg").write_bytes(b"x"), "not in its manifest"),
        (lambda r: (r / ".edgematrix-manifest.json").unlink(), "no manifest"),
    ],
    ids=["changed-image", "missing-image", "extra-file", "no-manifest"],
)
def test_a_damaged_dataset_folder_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, reason
) -> None:
    root = _tree(tmp_path)
    damage(root)
    assert reuse_generated(root, "k1", "synthetic dataset") is False
    assert not root.exists()
    assert reason in capsys.readouterr().err


def test_trees_seal_nested_files(tmp_path: Path) -> None:
    root = tmp_path / "features"
    (root / "sub").mkdir(parents=True)
    (root / "0.npy").write_bytes(b"a" * 10)
    (root / "sub" / "meta.json").write_text("{}")
    seal_tree(root)
    assert reuse_tree(root, "features") is True
    (root / "sub" / "meta.json").write_text('{"x": 1}')
    assert reuse_tree(root, "features") is False and not root.exists()

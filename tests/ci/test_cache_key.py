"""`edgematrix cache-key CELL`: the key CI stores a cell's .cache/edgematrix under (docs/ci.md).

The key must change with every input of the cell's build and with nothing else, and its restore
prefixes must stay put while the training inputs do, so that a cache of another commit still brings
the checkpoint back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edgematrix.core.cache
from edgematrix.cli import main
from tiny_cells import REPO, TINY, make_workspace

CELL = "x86_cpu_int8q"


@pytest.fixture
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = make_workspace(tmp_path_factory, "cachekey", TINY)
    shutil.copy(REPO / "matrix" / "constraints.txt", ws / "matrix" / "constraints.txt")
    return ws


def keys(ws: Path, capsys: pytest.CaptureFixture[str], *args: str, cell: str = CELL) -> dict[str, str]:
    assert main(["--matrix", str(ws / "matrix"), "cache-key", cell, "--github-output", *args]) == 0
    out, err = capsys.readouterr()
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert set(lines) == {"key", "restore-cell", "restore-model"}
    assert f"cache-key {cell}: training inputs " in err
    return lines


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_the_key_and_its_restore_prefixes(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = keys(ws, capsys)
    assert k["key"].startswith(k["restore-cell"]) and k["restore-cell"].startswith(k["restore-model"])
    assert k["restore-model"].startswith("edgematrix-v1-linux-x86_64-ufld_tiny-")
    assert k["restore-cell"] == f"{k['restore-model']}{CELL}-"
    assert keys(ws, capsys) == k  # nothing built, nothing changed: the same key
    assert main(["--matrix", str(ws / "matrix"), "cache-key", CELL]) == 0
    assert capsys.readouterr().out == k["key"] + "\n"
    # the FP32 cell of the same model: another cell, the same trained model (its cache can warm this one's)
    fp32 = keys(ws, capsys, cell="x86_cpu_fp32q")
    assert fp32["restore-model"] == k["restore-model"] and fp32["key"] != k["key"]


def test_a_recipe_change_keeps_the_training_prefix(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = keys(ws, capsys)
    edit(ws / "matrix" / "tiny.toml", "calibration_images = 4", "calibration_images = 3")
    after = keys(ws, capsys)
    assert after["key"] != before["key"]
    assert after["restore-cell"] == before["restore-cell"]  # the checkpoint comes back with a restore key


@pytest.mark.parametrize(
    ("old", "new"),
    [("epochs = 1", "epochs = 2"), ("seed = 3", "seed = 4"), ("width = 8", "width = 16")],
    ids=["training config", "synthetic data", "model params"],
)
def test_a_training_input_changes_the_prefix(ws: Path, capsys: pytest.CaptureFixture[str], old: str, new: str) -> None:
    before = keys(ws, capsys)
    edit(ws / "matrix" / "tiny.toml", old, new)
    after = keys(ws, capsys)
    assert after["restore-model"] != before["restore-model"]
    assert not after["key"].startswith(before["restore-model"])


def test_the_lock_is_a_training_input(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = keys(ws, capsys)
    lock = ws / "matrix" / "constraints.txt"
    edit(lock, "\nnumpy==", "\n# re-locked\nnumpy==")
    assert keys(ws, capsys)["restore-model"] != before["restore-model"]


def test_a_real_dataset_is_keyed_by_its_files(
    ws: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "tusimple"
    (data / "clips").mkdir(parents=True)
    (data / "test_label.json").write_text("{}\n")
    synthetic = keys(ws, capsys)
    real = keys(ws, capsys, "--data-root", str(data))
    assert real["restore-model"] != synthetic["restore-model"]
    (data / "clips" / "0001.jpg").write_bytes(b"\xff\xd8")
    grown = keys(ws, capsys, "--data-root", str(data))
    assert grown["restore-model"] != real["restore-model"]
    monkeypatch.setenv("EDGEMATRIX_DATA_ROOT", str(data))  # as `edgematrix run`: the environment wins
    assert keys(ws, capsys) == grown


def test_package_code_keys_the_build_and_training_code_the_training(
    ws: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # code_hash reads the package's sources where PACKAGE_DIR says: a copy of them, edited as a commit would
    package = tmp_path / "edgematrix"
    shutil.copytree(edgematrix.core.cache.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(edgematrix.core.cache, "PACKAGE_DIR", package)
    before = keys(ws, capsys)
    (package / "report" / "markdown.py").write_text((package / "report" / "markdown.py").read_text() + "# edit\n")
    reporting = keys(ws, capsys)
    assert reporting["key"] != before["key"] and reporting["restore-cell"] == before["restore-cell"]
    (package / "optimize" / "quantize.py").write_text((package / "optimize" / "quantize.py").read_text() + "# q\n")
    quantizing = keys(ws, capsys)
    assert quantizing["key"] != reporting["key"] and quantizing["restore-cell"] == before["restore-cell"]
    (package / "train" / "lane.py").write_text((package / "train" / "lane.py").read_text() + "# train\n")
    assert keys(ws, capsys)["restore-model"] != before["restore-model"]


def test_a_file_the_model_names_is_hashed(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a model whose config names a file (here a string param that is a path): its bytes key the build
    (ws / "weights.bin").write_bytes(b"one")
    edit(ws / "matrix" / "tiny.toml", "mlp_mid_dim = 64", f'mlp_mid_dim = 64\nnote = "{ws / "weights.bin"}"')
    before = keys(ws, capsys)
    (ws / "weights.bin").write_bytes(b"two")
    assert keys(ws, capsys)["key"] != before["key"]


def test_a_missing_lock_or_cell_is_an_input_error(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--matrix", str(ws / "matrix"), "cache-key", "x86_cpu_nothing"]) == 2
    assert "unknown cell 'x86_cpu_nothing'" in capsys.readouterr().err
    (ws / "matrix" / "constraints.txt").unlink()
    assert main(["--matrix", str(ws / "matrix"), "cache-key", CELL]) == 2
    assert "constraints.txt (the lock) is missing" in capsys.readouterr().err

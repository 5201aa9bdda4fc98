"""Matrix files a pull request can write (issue 15): not UTF-8, or an image path out of docker/, is a clear exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgematrix.cli import main
from edgematrix.errors import MatrixError
from edgematrix.matrix.loader import load_matrix

SHIPPED = Path(__file__).resolve().parents[2] / "matrix"


@pytest.fixture
def matrix_dir(tmp_path: Path) -> Path:
    d = tmp_path / "matrix"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns("baselines"))
    return d


def test_a_matrix_file_that_is_not_utf8_is_exit_2_naming_the_file(
    matrix_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = matrix_dir / "targets.toml"
    text = path.read_text().replace('description = "', 'description = "caf\u00e9 ', 1)
    path.write_bytes(text.encode("latin-1"))  # "é" as one byte 0xE9: not UTF-8
    offset = text.encode("latin-1").index(b"\xe9")
    assert main(["--matrix", str(matrix_dir), "validate"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not UTF-8 text (byte {offset}, line " in err and "save it as UTF-8" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("image", ["../../../etc", "/etc", "jetson/../../x", "..", "x86_cpu/sub", "-flag"])
def test_an_image_outside_docker_is_exit_2_naming_file_and_key(
    matrix_dir: Path, capsys: pytest.CaptureFixture[str], image: str
) -> None:
    path = matrix_dir / "targets.toml"
    path.write_text(path.read_text().replace('image = "jetson"', f'image = "{image}"', 1))
    with pytest.raises(MatrixError) as info:
        load_matrix(matrix_dir)
    message = str(info.value)
    assert f"{path}: targets.jetson.image:" in message
    assert f"image {image!r} must name one folder under docker/" in message
    assert main(["--matrix", str(matrix_dir), "validate"]) == 2
    assert "targets.jetson.image" in capsys.readouterr().err


def test_the_shipped_images_are_folders_of_docker() -> None:
    matrix = load_matrix(SHIPPED)
    images = {t.image for t in matrix.targets.values() if t.image}
    docker = SHIPPED.parent / "docker"
    assert images and all((docker / image).is_dir() for image in images)

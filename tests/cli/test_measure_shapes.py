"""`edgematrix measure` of a model with dynamic input dimensions: refused (exit 2, naming the dims) without
``--shape``, measured at the given shape with it, locally and on a latency server; the recorded
``input_shape`` says which (a dynamic dim silently set to 1 measured a detector at 1×3×1×1)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from byom import build_detector
from edgematrix.cli import main
from edgematrix.server.app import DeviceServer, ServerConfig, serve_in_thread

QUICK = ["--warmup", "1", "--rounds", "5", "--min-time-s", "0"]
TOKEN = "measure-shapes-test-token-0123456789"


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_detector(tmp_path_factory.mktemp("det") / "det.onnx", widths=(8, 16), classes=3)


@pytest.fixture
def server() -> Iterator[DeviceServer]:
    with serve_in_thread(ServerConfig(token=TOKEN, max_body_bytes=1 << 20, queue_limit=4, timeout_s=60)) as srv:
        yield srv


def test_a_dynamic_model_is_refused_without_a_shape(detector: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(detector), *QUICK]) == 2
    err = capsys.readouterr().err
    assert (
        "edgematrix: error: the model has dynamic input dimensions and no shape to measure them at: input 'images' "
        "float32[batch, 3, height, width]: dynamic dim(s) 0 ('batch'), 2 ('height'), 3 ('width') (--shape "
        "images:Nx3xNxN). Give each such input its shape with --shape NAME:DIMS (repeatable)"
    ) in err


def test_with_a_shape_it_measures_there_and_records_it(detector: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(detector), "--shape", "images:1x3x64x96", "--json", *QUICK]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["facts"]["input_shape"] == "images:1x3x64x96"
    assert report["facts"]["input_shape_source"] == "--shape for dynamic input(s) images"
    assert report["rounds"] >= 5
    assert main(["measure", str(detector), "--shape", "images:2x3x32x32", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "input_shape images:2x3x32x32 (--shape for dynamic input(s) images)" in out


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("images", r"--shape 'images' must be NAME:DIMS with positive sizes joined by 'x'"),
        ("images:1x3x0x8", r"--shape 'images:1x3x0x8' must be NAME:DIMS"),
        ("image:1x3x8x8", r"--shape names input\(s\) image, which the model does not have; its inputs: images"),
        ("images:1x4x8x8", r"--shape images:1x4x8x8 does not fit input 'images' float32\[batch, 3, height, width\]"),
    ],
)
def test_bad_shapes_are_input_errors(
    detector: Path, shape: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    assert main(["measure", str(detector), "--shape", shape, *QUICK]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_on_a_latency_server_the_model_goes_with_its_dims_fixed(
    server: DeviceServer, detector: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEMATRIX_TOKEN", TOKEN)
    assert main(["measure", str(detector), "--remote", server.url, *QUICK]) == 2  # refused before any request
    assert "dynamic dim(s) 0 ('batch'), 2 ('height'), 3 ('width')" in capsys.readouterr().err
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("edgematrix-measure-*"))
    code = main(["measure", str(detector), "--remote", server.url, "--shape", "images:1x3x48x64", "--json", *QUICK])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["facts"]["remote"] == server.url and report["rounds"] >= 5
    assert report["facts"]["input_shape"] == "images:1x3x48x64"
    assert set(tmp.glob("edgematrix-measure-*")) == before  # the static copy is removed

"""``edgematrix demo`` on a fake results folder holding a tiny UFLD-v2 (exported, and INT8 by the project's PTQ):
GIF frame count, size, timing, overlays drawn on both panels; MP4 through imageio-ffmpeg; clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgematrix.cli import main
from edgematrix.errors import EdgeMatrixError
from edgematrix.pipeline.demo import MARGIN, MIN_PANEL_WIDTH, run_demo, upscale

INPUT_SHAPE = [1, 3, 64, 160]
MODEL = {
    "description": "UFLD-v2 tiny, for tests",
    "family": "ufld_v2",
    "task": "lane",
    "dataset": "tusimple",
    "input_shape": INPUT_SHAPE,
    "params": {"width": 8, "mlp_mid_dim": 64},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/tiny_int8/ as a cell run leaves it: config.json and artifacts.json naming an FP32 export of an
    (untrained) tiny UFLD-v2 and its INT8 QDQ model. Untrained row logits still decode to lane points, so
    the overlays are drawn; the demo needs no trained weights to be tested."""
    import torch

    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.models import create_model
    from edgematrix.models.ufld import OUTPUT_NAMES
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

    root = tmp_path_factory.mktemp("demo")
    models = root / "cache"
    models.mkdir()
    torch.manual_seed(0)
    model = create_model(MODEL["family"], INPUT_SHAPE, **MODEL["params"])
    export_onnx(model, tuple(INPUT_SHAPE), models / "fp32.onnx", output_names=OUTPUT_NAMES, input_name="input")
    calib = (np.random.default_rng(i).standard_normal(INPUT_SHAPE).astype(np.float32) for i in range(2))
    quantize_static_qdq(
        models / "fp32.onnx",
        models / "int8.onnx",
        calib,
        input_name="input",
        config=QuantizeConfig(method="minmax", calibration_images=2),
    )
    out = root / "results" / "tiny_int8"
    out.mkdir(parents=True)
    config = {
        "cell": "tiny_int8",
        "target": {"name": "x86_cpu", "backend": "onnxruntime", "threads": 0},
        "model": {"name": "ufld_tiny", **MODEL},
        "recipe": {"name": "int8q", "precision": "int8"},
    }
    (out / "config.json").write_text(json.dumps(config))
    artifacts = {"reference": str(models / "fp32.onnx"), "candidate": str(models / "int8.onnx")}
    (out / "artifacts.json").write_text(json.dumps(artifacts))
    return root / "results"


def _frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
        return out


def test_gif_has_the_frames_size_and_overlays(results: Path) -> None:
    from edgematrix.matrix.schema import Model
    from edgematrix.tasks.base import get_task

    result = run_demo(results, "tiny_int8", frames=6, fps=10, seed=2)
    assert result.path == results / "tiny_int8" / "demo.gif"
    scale = -(-MIN_PANEL_WIDTH // INPUT_SHAPE[3])  # 160 px frames are upscaled 3x to >= 480
    pw, ph = INPUT_SHAPE[3] * scale, INPUT_SHAPE[2] * scale
    assert result.panel_size == (pw, ph) == (480, 192)
    content = 2 * pw + 3 * MARGIN
    assert result.size[0] == content + (-content) % 16 and result.size[0] >= 960 and result.size[1] % 16 == 0
    assert result.labels == ("FP32", "INT8")
    assert len(result.reference_ms) == len(result.candidate_ms) == 6
    assert all(0 < ms < 5000 for ms in result.reference_ms + result.candidate_ms)

    with Image.open(result.path) as im:
        assert im.format == "GIF" and im.n_frames == 6 and im.size == result.size
        assert im.info["duration"] == 100 and im.info["loop"] == 0
    frames = _frames(result.path)
    raw = get_task("lane").drive(Model.model_validate(MODEL), 6, 2)
    for t in (0, 5):
        panels = []
        for x, y in result.panel_origins:
            panel = frames[t][y : y + ph, x : x + pw].astype(int)
            base = upscale(raw[t], scale).astype(int)
            diff = np.abs(panel - base).max(axis=-1)
            # the panel is the drive frame (GIF palette error aside) with the decoded lanes drawn on it
            assert np.median(diff) < 12
            assert (diff > 80).sum() > 100, "no overlay drawn"
            panels.append(panel)
        assert not np.array_equal(frames[t][:40], frames[(t + 1) % 6][:40])  # the frame counter in the caption moves
    assert not np.array_equal(frames[0], frames[5])  # the road moves


def test_mp4_through_imageio_ffmpeg(results: Path, tmp_path: Path) -> None:
    import imageio_ffmpeg

    out = tmp_path / "drive.mp4"
    result = run_demo(results, "tiny_int8", frames=5, fps=8, out=out)
    assert result.path == out and out.stat().st_size > 1000
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert tuple(meta["size"]) == result.size and meta["fps"] == pytest.approx(8)
    decoded = [np.frombuffer(f, np.uint8).reshape(result.size[1], result.size[0], 3) for f in reader]
    assert len(decoded) == 5
    assert decoded[0][:, : MARGIN // 2].mean() < 60  # the dark background around the panels survives encoding
    assert not list(tmp_path.glob(".drive.*"))  # no temporary file left


def test_mp4_without_imageio_ffmpeg_names_the_package(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as when it is not installed
    with pytest.raises(EdgeMatrixError, match=r"imageio-ffmpeg.*edgematrix\[demo\]"):
        run_demo(results, "tiny_int8", frames=2, out=tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_errors_are_clear(results: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"no results for cell 'ghost'.*nox -s ghost"):
        run_demo(results, "ghost")
    with pytest.raises(EdgeMatrixError, match=r"\.gif or \.mp4"):
        run_demo(results, "tiny_int8", out=tmp_path / "x.avi")
    with pytest.raises(EdgeMatrixError, match="--frames"):
        run_demo(results, "tiny_int8", frames=0)
    with pytest.raises(EdgeMatrixError, match="--fps"):
        run_demo(results, "tiny_int8", fps=0)
    broken = results / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model": {"name": "x", "family": "ufld_v2"}}))
    (broken / "artifacts.json").write_text((results / "tiny_int8" / "artifacts.json").read_text())
    with pytest.raises(
        EdgeMatrixError, match=r"config\.json is not a cell's config\.json \(cell: Field required.*nox -s broken"
    ):
        run_demo(results, "broken", frames=2)


def test_cli_demo(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.gif"
    code = main(["demo", "tiny_int8", "--results", str(results), "--frames", "3", "--fps", "5", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "3 frames" in captured.err
    with Image.open(out) as im:
        assert im.n_frames == 3 and im.info["duration"] == 200
    assert main(["demo", "nothing_here", "--results", str(results)]) == 2
    assert "nox -s nothing_here" in capsys.readouterr().err

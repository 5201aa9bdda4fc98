"""The edgematrix CLI: score tusimple prints the official JSON; errors exit 2 with a message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgematrix.cli import main

H = list(range(160, 720, 10))
MATRIX = str(Path(__file__).resolve().parents[2] / "matrix")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lane(x0: float) -> list[int]:
    return [int(x0 + 0.5 * (y - 160)) for y in H]


def test_score_tusimple_prints_official_keys(tmp_path: Path) -> None:
    gt = _write(
        tmp_path / "gt.json",
        [
            {"raw_file": "a.jpg", "h_samples": H, "lanes": [_lane(300), _lane(600)]},
            {"raw_file": "b.jpg", "h_samples": H, "lanes": [_lane(400)]},
        ],
    )
    # a.jpg: both lanes exact; b.jpg: one lane 100 px off -> FN, plus it is an FP
    pred = _write(
        tmp_path / "pred.json",
        [
            {"raw_file": "a.jpg", "lanes": [_lane(300), _lane(600)], "run_time": 10},
            {"raw_file": "b.jpg", "lanes": [_lane(500)], "run_time": 10},
        ],
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edgematrix.cli", "score", "tusimple", str(pred), str(gt)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout)
    assert list(result) == ["Accuracy", "FP", "FN"]
    assert result == {"Accuracy": pytest.approx(0.5), "FP": pytest.approx(0.5), "FN": pytest.approx(0.5)}


def test_score_missing_prediction_counts_as_fn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _write(
        tmp_path / "gt.json",
        [
            {"raw_file": "a.jpg", "h_samples": H, "lanes": [_lane(300)]},
            {"raw_file": "b.jpg", "h_samples": H, "lanes": [_lane(400)]},
        ],
    )
    pred = _write(tmp_path / "pred.json", [{"raw_file": "a.jpg", "lanes": [_lane(300)], "run_time": 1}])
    assert main(["score", "tusimple", str(pred), str(gt)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"Accuracy": 0.5, "FP": 0.0, "FN": 0.5}
    assert "1 ground-truth image(s) had no prediction" in out.err


def test_score_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "tusimple", str(tmp_path / "nope.json"), str(tmp_path / "gt.json")]) == 2
    assert "prediction file" in capsys.readouterr().err
    gt = _write(tmp_path / "gt.json", [{"raw_file": "a.jpg", "h_samples": H, "lanes": []}])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json\n")
    assert main(["score", "tusimple", str(bad), str(gt)]) == 2
    assert "bad.json:1: not valid JSON" in capsys.readouterr().err


def test_list_and_validate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--matrix", MATRIX, "validate"]) == 0
    assert "cells — valid" in capsys.readouterr().out
    assert main(["--matrix", MATRIX, "list"]) == 0
    out = capsys.readouterr().out
    assert "x86_cpu_int8" in out and "jetson_int8" in out and "ti_fx8" in out

"""`edgematrix serve` / `edgematrix measure`: local and --remote, JSON and text, clear errors (exit 2)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from edgematrix.cli import main
from edgematrix.server.app import DeviceServer

from .serverkit import TOKEN

QUICK_ARGS = ["--warmup", "1", "--rounds", "5", "--min-time-s", "0"]


def test_measure_remote_json(
    server: DeviceServer, relu_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEMATRIX_TOKEN", TOKEN)
    code = main(
        ["measure", str(relu_model), "--remote", server.url, "--json", "--option", "intra_op_threads=1", *QUICK_ARGS]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] >= 5 and len(report["samples_ms"]) == report["rounds"]
    assert report["facts"]["remote"] == server.url and report["facts"]["intra_op_threads"] == 1


def test_measure_remote_with_token_file_prints_a_summary(
    server: DeviceServer, relu_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    assert main(["measure", str(relu_model), "--remote", server.url, "--token-file", str(token_file), *QUICK_ARGS]) == 0
    out = capsys.readouterr().out
    assert f"on {server.url} (native), backend onnxruntime: p50 " in out and "device: device_model " in out


def test_measure_local(relu_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(relu_model), "--json", *QUICK_ARGS]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnxruntime" and report["rounds"] >= 5 and "remote" not in report["facts"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_measure_unreachable_exits_2_with_the_reason(
    relu_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEMATRIX_TOKEN", TOKEN)
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["measure", str(relu_model), "--remote", url, "--retries", "2"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the latency server at {url}: 3 attempt(s)" in err


def test_measure_without_token_says_how_to_set_one(
    server: DeviceServer, relu_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDGEMATRIX_TOKEN", raising=False)
    assert main(["measure", str(relu_model), "--remote", server.url]) == 2
    assert "no token: set EDGEMATRIX_TOKEN or pass --token-file" in capsys.readouterr().err


def test_enot_protocol_needs_remote(relu_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(relu_model), "--protocol", "enot"]) == 2
    assert "--protocol enot needs --remote URL" in capsys.readouterr().err


def test_serve_refuses_to_start_without_a_safe_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDGEMATRIX_TOKEN", raising=False)
    assert main(["serve", "--port", "0"]) == 2
    assert "no token" in capsys.readouterr().err
    loose = tmp_path / "token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    assert main(["serve", "--port", "0", "--token-file", str(loose)]) == 2
    assert f"run `chmod 600 {loose}`" in capsys.readouterr().err
    monkeypatch.setenv("EDGEMATRIX_TOKEN", "short")
    assert main(["serve", "--port", "0"]) == 2
    assert "use at least 16" in capsys.readouterr().err

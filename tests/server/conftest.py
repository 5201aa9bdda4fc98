"""Fixtures of the latency-server tests: tiny real ONNX models and a server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgematrix.server.app import DeviceServer, ServerConfig, serve_in_thread

from .serverkit import TOKEN, make_mlp, make_relu


@pytest.fixture
def relu_model(tmp_path: Path) -> Path:
    return make_relu(tmp_path / "relu.onnx")


@pytest.fixture
def mlp_model(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def server() -> Iterator[DeviceServer]:
    with serve_in_thread(ServerConfig(token=TOKEN, max_body_bytes=256 * 1024, queue_limit=32, timeout_s=60)) as srv:
        yield srv

"""Helpers of the latency-server tests: tiny real ONNX models, the test token, quick harness settings."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgematrix.measure.harness import LatencyConfig
from edgematrix.server.wire import CONTENT_TYPE

TOKEN = "test-token-0123456789abcdef"
SRC = str(Path(__file__).resolve().parents[2] / "src")
#: a few quick rounds: the tests check the protocol, not the machine
QUICK = LatencyConfig(warmup=1, min_rounds=5, max_rounds=5, min_time_s=0.0)


def make_relu(path: Path, pad: int = 0) -> Path:
    """y = relu(x), x: float32[1, 8]; ``pad`` characters of doc string make files of distinct sizes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string="p" * pad)
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_mlp(path: Path, seed: int = 0, *, qdq: bool = False) -> Path:
    """logits = softmax(relu(x @ W1 + b1) @ W2), x: float32[1, 16] → float32[1, 4].

    ``qdq``: the input goes through a QuantizeLinear / DequantizeLinear pair first (int8, scale 1/32),
    as in an explicitly quantized model (its graph precision is int8).
    """
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
    inits = [w1, b1, w2]
    quant = []
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(1 / 32, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        ]
        quant = [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        ]
    nodes = [
        *quant,
        helper.make_node("MatMul", ["xd" if qdq else "x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "mlp", [x], [probs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_heads(path: Path, seed: int = 2) -> Path:
    """Two outputs from x: float32[1, 16]: ``logits`` = x @ W (float32[1, 4]), ``features`` = relu(x @ V) (float32[1, 8])."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w")
    v = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "v")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
        helper.make_node("MatMul", ["x", "v"], ["xv"]),
        helper.make_node("Relu", ["xv"], ["features"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 8])
    return _save(nodes, [x], [logits, features], path, [w, v])


def raw(url: str, path: str, body: bytes | None = None, token: str | None = TOKEN) -> tuple[int, dict, Any]:
    """One real HTTP request; (status, headers, JSON answer) whatever the status."""
    headers = {"Content-Type": CONTENT_TYPE}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def _save(nodes: list[Any], inputs: list[Any], outputs: list[Any], path: Path, inits: list[Any] = ()) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_pool(path: Path) -> Path:
    """y = GlobalAveragePool(x), x: float32[1, 256, 32, 32] (1 MiB per sample) → float32[1, 256, 1, 1]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 1, 1])
    return _save([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [x], [y], path)


def make_huge_input(path: Path) -> Path:
    """y = relu(x), x: float32[1, 3, 100000, 100000] (120 GB of input declared by a 100-byte file)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100000, 100000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 100000, 100000])
    return _save([helper.make_node("Relu", ["x"], ["y"])], [x], [y], path)


def make_expander(path: Path, elements: int) -> Path:
    """y = expand(x, [elements]): a float32[1] input becomes ``elements`` floats of output."""
    shape = numpy_helper.from_array(np.array([elements], np.int64), "shape")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])
    return _save([helper.make_node("Expand", ["x", "shape"], ["y"])], [x], [y], path, [shape])


def make_qdq(path: Path) -> Path:
    """A QuantizeLinear / DequantizeLinear pair, x: float32[1, 3, 4, 4] (an explicitly quantized model)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    return _save(nodes, [x], [y], path, inits)


def make_external_data(path: Path, location: str) -> Path:
    """y = x + w with w stored "externally" at ``location`` (a path the runtime would open)."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])
    return _save([helper.make_node("Add", ["x", "w"], ["y"])], [x], [y], path, [w])


def worker_pids(server_pid: int) -> list[int]:
    """PIDs of measurement workers that ``server_pid`` started (their argv names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"edgematrix.server.worker" in argv and str(server_pid).encode() in argv:
            found.append(int(entry.name))
    return found


def process_environ(pid: int) -> dict[str, str]:
    """The environment a process started with (``/proc/PID/environ``)."""
    data = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in data.split(b"\0") if b"=" in item)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and os.path.exists(f"/proc/{pid}")


@contextlib.contextmanager
def served_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`edgematrix serve` in a child process (its own environment, token included); yields it and its URL; always stopped."""
    env = {**os.environ, "EDGEMATRIX_TOKEN": TOKEN, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgematrix.cli", "serve", "--port", "0", "--timeout-s", "60"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on" in line, line
        yield proc, line.split("listening on ", 1)[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def run_until_worker(
    call: Callable[..., Any], server: subprocess.Popen[str], *args: Any
) -> tuple[threading.Thread, dict]:
    """Start ``call(*args)`` (a long measurement) on a client thread; return once the server's worker runs.
    ``outcome["error"]`` of the returned dict says how the call ended, once the thread is done."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            call(*args)
        except Exception as exc:  # the answer or the dropped connection of a stopping server
            outcome["error"] = exc

    client = threading.Thread(target=run)
    client.start()
    deadline = time.monotonic() + 30
    while not worker_pids(server.pid):
        assert time.monotonic() < deadline, "the measurement never started"
        time.sleep(0.05)
    return client, outcome

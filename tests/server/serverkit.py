"""Helpers of the latency-server tests: tiny real ONNX models, the test token, quick harness settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgematrix.measure.harness import LatencyConfig

TOKEN = "test-token-0123456789abcdef"
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


def make_mlp(path: Path, seed: int = 0) -> Path:
    """logits = softmax(relu(x @ W1 + b1) @ W2), x: float32[1, 16] → float32[1, 4]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "mlp", [x], [probs], initializer=[w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path

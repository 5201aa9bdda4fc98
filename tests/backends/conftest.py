"""Tiny ONNX model fixtures shared by the backend tests (built with onnx.helper, no files in the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import CONV_B, CONV_W, MATMUL_W, save_model


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x[1,3,8,8] → Conv(4 filters, 3×3, pad 1) → Relu → y[1,4,8,8]."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(CONV_W, "w"), numpy_helper.from_array(CONV_B, "b")],
    )
    return save_model(graph, tmp_path_factory.mktemp("models") / "conv_relu.onnx")


@pytest.fixture(scope="module")
def matmul_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x[N,4] @ w[4,2] → y[N,2], with a dynamic batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(MATMUL_W, "w")],
    )
    return save_model(graph, tmp_path_factory.mktemp("models") / "matmul.onnx")

"""Tiny ONNX models' weights and a saver, shared by the backend tests (import: ``from tiny_models import ...``).

A plain module rather than conftest.py: other test folders have conftest.py files of their own, so
``from conftest import`` would resolve to whichever was imported first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

OPSET = 17
RNG = np.random.default_rng(0)
CONV_W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
CONV_B = RNG.standard_normal(4).astype(np.float32)
MATMUL_W = RNG.standard_normal((4, 2)).astype(np.float32)


def save_model(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path

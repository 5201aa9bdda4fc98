"""Graph rewrites applied before quantization.

``pad_input_channels``: zero-pad the input channels of the convolutions that read the model input
(RGB: 3) to a multiple (4). The int8 dot-product kernels (x86 VNNI, ONNX Runtime's U8S8 conv,
TensorRT's CHW4 layouts) consume input channels in groups of four; with three channels the stem
convolution of ResNet-18 runs no faster in INT8 than in FP32 and caps the whole model's INT8
speedup. The padded channel is zero in the data and in the weights, so the outputs are unchanged
(the rewrite is checked numerically by its test).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgematrix.errors import ModelError


def pad_input_channels(src: str | os.PathLike, dst: str | os.PathLike, input_name: str, multiple: int = 4) -> int:
    """Write ``src`` with its input-reading Conv weights padded to ``multiple`` channels; returns how many."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    model = onnx.load(str(src))
    graph = model.graph
    if input_name not in {i.name for i in graph.input}:
        raise ModelError(f"{src} has no input {input_name!r}")
    inits = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.input[0] == input_name]
    channels = {numpy_helper.to_array(inits[n.input[1]]).shape[1] for n in convs if n.input[1] in inits}
    if not convs or len(channels) != 1 or next(iter(channels)) % multiple == 0:
        onnx.save(model, str(dst))
        return 0
    cin = next(iter(channels))
    extra = -cin % multiple
    padded_input = f"{input_name}_pad{cin + extra}"
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{padded_input}_pads")
    graph.initializer.append(pads)
    for conv in convs:
        w = numpy_helper.to_array(inits[conv.input[1]])
        zeros = np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(np.concatenate([w, zeros], 1), conv.input[1]))
        conv.input[0] = padded_input
    graph.node.insert(
        0, helper.make_node("Pad", [input_name, pads.name], [padded_input], mode="constant", name=padded_input)
    )
    onnx.checker.check_model(model)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return len(convs)

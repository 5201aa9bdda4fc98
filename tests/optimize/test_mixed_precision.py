"""Mixed precision by sensitivity on a constructed model whose one layer is hurt by quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgematrix.errors import EdgeMatrixError
from edgematrix.export.onnx_export import export_onnx
from edgematrix.optimize.mixed_precision import candidate_nodes, mixed_precision_search
from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

RNG = np.random.default_rng(0)
INPUTS = [RNG.standard_normal((1, 4, 16, 16)).astype(np.float32) for _ in range(8)]


class Outlier(nn.Module):
    """The last conv ("head") has one huge weight per output channel, on an input channel that is
    always zero after the ReLU: per-channel int8 weight scales sized for it round every other weight
    of that layer to zero. Only keeping it in float repairs the model; the two others are benign."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.conv2.bias[0] = -1000.0  # after the ReLU, channel 0 is exactly 0
            self.head.weight[:, 0, 1, 1] = 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mp") / "fp32.onnx"
    export_onnx(Outlier().eval(), (1, 4, 16, 16), path, output_names=("out",), input_name="input")
    return path


def _score(fp32: Path):
    ref_sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    refs = [ref_sess.run(None, {"input": x})[0] for x in INPUTS]

    def evaluate(path: Path) -> float:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        errs = [
            np.abs(sess.run(None, {"input": x})[0] - r).mean() / np.abs(r).mean()
            for x, r in zip(INPUTS, refs, strict=True)
        ]
        return 100.0 * (1.0 - float(np.mean(errs)))  # "accuracy": 100 = identical to FP32

    return evaluate


def _quantize(fp32: Path):
    def quantize(exclude: tuple[str, ...], out: Path) -> Path:
        cfg = QuantizeConfig(method="minmax", calibration_images=8, exclude_nodes=exclude)
        return quantize_static_qdq(fp32, out, INPUTS, input_name="input", config=cfg).path

    return quantize


def test_the_sensitive_layer_ranks_first_and_alone_meets_the_budget(fp32: Path, tmp_path: Path) -> None:
    nodes = candidate_nodes(fp32)
    assert [op for _, op in nodes] == ["Conv", "Conv", "Conv"]
    head = nodes[2][0]
    evaluate = _score(fp32)
    res = mixed_precision_search(
        fp32, tmp_path, budget=2.0, quantize=_quantize(fp32), evaluate=evaluate, max_float_layers=3
    )
    assert res.fp32_score == pytest.approx(100.0)
    assert res.fp32_score - res.int8_score > 2.0  # full INT8 misses the budget
    assert res.sensitivities[0].node == head
    assert res.sensitivities[0].gain > 10 * max(abs(s.gain) for s in res.sensitivities[1:])
    assert res.float_nodes == [head] and res.met
    assert res.evaluations == 2 + 3 + 1
    # the head is float in the result: its weight is a float initializer, not a DequantizeLinear output
    model = onnx.load(str(res.path))
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    node = next(n for n in model.graph.node if n.name == head)
    assert node.input[1] in floats
    others = [n for n in model.graph.node if n.op_type == "Conv" and n.name != head]
    assert all(n.input[1] not in floats for n in others)
    assert evaluate(res.path) == pytest.approx(res.final_score)


def test_no_float_layer_when_full_int8_meets_the_budget(fp32: Path, tmp_path: Path) -> None:
    res = mixed_precision_search(fp32, tmp_path, budget=100.0, quantize=_quantize(fp32), evaluate=_score(fp32))
    assert res.float_nodes == [] and res.met and res.evaluations == 2 and res.sensitivities == []
    with pytest.raises(EdgeMatrixError, match="accuracy_budget"):
        mixed_precision_search(fp32, tmp_path, budget=-1, quantize=_quantize(fp32), evaluate=_score(fp32))

"""The strategy steps' building blocks on a real PilotNet: fixed-ratio pruning (local vs global ranking) and
dynamic-range INT8 through ONNX Runtime's quantize_dynamic."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgematrix.errors import ModelError
from edgematrix.export.onnx_export import export_onnx
from edgematrix.models import create_model
from edgematrix.optimize.prune import channel_counts, parameter_count, prune_model
from edgematrix.pipeline.steps.dynamic import quantize_dynamic_int8

SHAPE = (1, 3, 66, 200)


@pytest.fixture(scope="module")
def pilotnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("pilotnet", list(SHAPE)).eval()
    with torch.no_grad():  # uneven layer scales, so a global ranking has something to choose between
        for i, m in enumerate(m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)):
            m.weight.mul_(0.3 + 0.4 * (i % 3))
    return model


def _outs(counts: dict[str, list[int]]) -> list[int]:
    return [out for _, out in counts.values()]


def test_local_pruning_removes_the_ratio_from_every_layer(pilotnet: torch.nn.Module) -> None:
    before = _outs(channel_counts(pilotnet))
    assert before == [24, 36, 48, 64, 64, 100, 50, 10, 1]
    pruned = prune_model(copy.deepcopy(pilotnet), torch.zeros(SHAPE), 0.4, round_to=4, ignored_layers=["head.7"])
    after = _outs(channel_counts(pruned))
    # 60% of each layer kept, rounded down to multiples of round_to (4); the steering output keeps its neuron
    assert after == [12, 20, 28, 36, 36, 60, 28, 4, 1]
    assert pruned(torch.zeros(SHAPE)).shape == (1, 1)


def test_global_pruning_ranks_across_layers_within_the_layer_bound(pilotnet: torch.nn.Module) -> None:
    local = prune_model(copy.deepcopy(pilotnet), torch.zeros(SHAPE), 0.4, round_to=4, ignored_layers=["head.7"])
    glob = prune_model(
        copy.deepcopy(pilotnet), torch.zeros(SHAPE), 0.4, round_to=4, ignored_layers=["head.7"],
        global_pruning=True, max_layer_ratio=0.8,
    )  # fmt: skip
    before, after = _outs(channel_counts(pilotnet)), _outs(channel_counts(glob))
    assert after != _outs(channel_counts(local))  # one ranking across layers: uneven per-layer ratios
    kept = [a / b for a, b in zip(after[:-1], before[:-1], strict=True)]
    assert min(kept) >= 0.2 - 1e-9 and max(kept) - min(kept) > 0.15  # no layer below 20% kept, and not uniform
    removed = 1 - sum(after[:-1]) / sum(before[:-1])
    assert 0.3 < removed < 0.5, removed  # about the ratio of all channels
    assert parameter_count(glob) < parameter_count(pilotnet)
    assert glob(torch.zeros(SHAPE)).shape == (1, 1)


def test_dynamic_int8_quantizes_weights_and_runs_on_onnxruntime(pilotnet: torch.nn.Module, tmp_path: Path) -> None:
    import onnxruntime as ort

    fp32 = tmp_path / "fp32.onnx"
    export_onnx(pilotnet, SHAPE, fp32, output_names=("steering",), input_name="input")
    out = tmp_path / "dyn.onnx"
    ops = quantize_dynamic_int8(fp32, out, per_channel=False)
    assert ops == {"DynamicQuantizeLinear": 9, "ConvInteger": 5, "MatMulInteger": 4}
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("Conv") == 0
    assert out.stat().st_size < 0.3 * fp32.stat().st_size  # int8 weights
    x = np.random.default_rng(0).uniform(0, 255, (8, *SHAPE[1:])).astype(np.float32)
    want = np.concatenate([ort.InferenceSession(str(fp32)).run(None, {"input": x[i : i + 1]})[0] for i in range(8)])
    got = np.concatenate([ort.InferenceSession(str(out)).run(None, {"input": x[i : i + 1]})[0] for i in range(8)])
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() + 1e-3  # int8 rounding, not another model
    assert not np.array_equal(got, want)  # and it does run in int8


def test_dynamic_int8_of_a_model_without_conv_or_matmul_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["y"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    with pytest.raises(ModelError, match="quantized nothing"):
        quantize_dynamic_int8(src, tmp_path / "out.onnx", per_channel=False)
    assert not (tmp_path / "out.onnx").exists()

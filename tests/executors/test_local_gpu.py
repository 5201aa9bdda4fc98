"""The local executor's GPU decision: which runs compute on the GPU, one clock for all models measured together,
and the error a GPU plan gives on a host without CUDA (the CPU path itself is exercised by every CPU cell)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgematrix.backends.onnxruntime.loader import _tiny_relu_model
from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.errors import BackendError
from edgematrix.executors.base import EvaluationPlan, ModelRun
from edgematrix.executors.local import LocalExecutor, runs_on_gpu
from edgematrix.matrix.loader import load_matrix
from edgematrix.measure.harness import LatencyConfig
from edgematrix.pipeline.context import Artifact

QUICK = LatencyConfig(warmup=1, min_rounds=3, max_rounds=3, min_time_s=0.0, max_time_s=30.0)


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x[1,8] → Relu → y: the one-node model the TensorRT probe creates its session with."""
    path = tmp_path_factory.mktemp("models") / "relu.onnx"
    path.write_bytes(_tiny_relu_model())
    return path


def _gpu_options(role: str = "reference", precision: str = "fp32") -> dict:
    return OnnxrtRunner.options_for(load_matrix().targets["x86_gpu"].model_dump(), role=role, precision=precision)


def _plan(runs: list[ModelRun]) -> EvaluationPlan:
    feed = {"x": np.array([[-1.0, 0.5, 2.0, -3.0, 0.0, 1.0, -0.5, 4.0]], np.float32)}
    return EvaluationPlan("cell", runs, [feed], feed, QUICK, say=lambda _: None)


def test_which_runs_compute_on_the_gpu(relu_model: Path) -> None:
    onnx = Artifact(relu_model, "fp32")
    module = Artifact(relu_model, "fp32", "module", torch.nn.ReLU())
    assert runs_on_gpu(ModelRun("onnxruntime", "reference", onnx, _gpu_options()))
    assert runs_on_gpu(ModelRun("onnxruntime", "candidate", onnx, _gpu_options("candidate", "int8")))
    assert not runs_on_gpu(ModelRun("onnxruntime", "reference", onnx, {"providers": ("CPUExecutionProvider",)}))
    assert not runs_on_gpu(ModelRun("onnxruntime", "reference", onnx, {}))
    assert runs_on_gpu(ModelRun("torch", "reference", module, {"device": "cuda"}))
    assert runs_on_gpu(ModelRun("torch", "reference", module, {"device": "cuda:1"}))
    assert not runs_on_gpu(ModelRun("torch", "reference", module, {"device": "cpu"}))
    assert not runs_on_gpu(ModelRun("tidl", "candidate", Artifact(relu_model, "int8", "split"), {}))


def test_models_measured_together_share_one_clock(relu_model: Path) -> None:
    onnx = Artifact(relu_model, "fp32")
    runs = [
        ModelRun("onnxruntime", "reference", onnx, _gpu_options()),
        ModelRun("openvino", "reference", onnx, {}),
    ]
    with pytest.raises(BackendError, match=r"openvino:reference would run on the host while the others run on the GPU"):
        LocalExecutor().evaluate(_plan(runs))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a host without CUDA")
def test_a_gpu_plan_on_a_host_without_cuda_says_so(relu_model: Path) -> None:
    runs = [ModelRun("onnxruntime", "reference", Artifact(relu_model, "fp32"), _gpu_options())]
    with pytest.raises(BackendError, match=r"cell \(models on the GPU\) needs a CUDA device"):
        LocalExecutor().evaluate(_plan(runs))


def test_a_cpu_plan_runs_on_the_host_harness(relu_model: Path) -> None:
    runs = [
        ModelRun("onnxruntime", "reference", Artifact(relu_model, "fp32"), {"providers": ("CPUExecutionProvider",)})
    ]
    evaluation = LocalExecutor().evaluate(_plan(runs))
    result = evaluation.results["onnxruntime", "reference"]
    np.testing.assert_array_equal(result.outputs[0]["y"], [[0.0, 0.5, 2.0, 0.0, 0.0, 1.0, 0.0, 4.0]])
    assert result.samples.rounds == 3
    assert "host_p50_ms" not in result.facts  # the host harness: its samples are host times already
    assert result.facts["io_binding"] == "cpu"

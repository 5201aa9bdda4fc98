"""A GPU target's INT8 cell (torch + ONNX Runtime, as x86_gpu) through the CLI on a host without TensorRT: it
fails with exit 2 naming what is missing, after building the INT8 model and before measuring anything. Where the
TensorRT execution provider can create a session, torch (no INT8 kernels) leaves the cell and ONNX Runtime runs
every role: its FP32 reference on the CUDA EP, the INT8 candidate on the TensorRT EP first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from tiny_cells import TINY_GATES, TINY_MODELS_AND_RECIPES, make_workspace, run_cell

# x86_gpu as the tiny cells need it: its backends and provider, without the host requirements (no nvidia-smi here)
GPU_TARGET = """
[targets.gpu_like]
description = "x86_gpu's backends without its host requirements (tests)"
arch = "x86_64"
backend = "torch"
backends = ["torch", "onnxruntime"]
providers = ["CUDAExecutionProvider"]
precisions = ["fp32", "fp16", "int8"]

[[cells]]
target = "gpu_like"
model = "ufld_tiny"
recipes = ["int8q"]
"""
CELL = "gpu_like_int8q"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory, "gpu_int8", TINY_MODELS_AND_RECIPES + GPU_TARGET + TINY_GATES)


@pytest.mark.slow
@pytest.mark.skipif("TensorrtExecutionProvider" in ort.get_available_providers(), reason="a CPU-only onnxruntime")
def test_without_tensorrt_the_int8_cell_exits_2_naming_what_is_missing(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cell(workspace, CELL) == 2
    err = capsys.readouterr().err
    assert (
        f"{CELL}: no GPU INT8 runtime on this host: onnxruntime {ort.__version__} has no TensorrtExecutionProvider"
        in err
    )
    assert "dequantized float kernels, which is not an INT8 measurement" in err
    assert not (workspace / "results" / CELL / "benchmark.json").exists()  # no figure of any kind


@pytest.mark.slow
def test_with_the_tensorrt_ep_onnxruntime_runs_every_role(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgematrix.pipeline.evaluate as evaluate

    seen: dict[str, Any] = {}

    def record(ctx: Any, plan: Any) -> None:  # the plan as the executor would get it; then stop the run
        seen["backends"] = list(ctx.backends)
        seen["runs"] = {(r.backend, r.role): (r.artifact.precision, r.artifact.kind, r.options) for r in plan.runs}
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "gpu_int8_runtime_missing", lambda: "")  # as where a TensorRT EP session works
    monkeypatch.setattr(evaluate, "run_plan", record)
    assert run_cell(workspace, CELL) == 130
    assert seen["backends"] == ["onnxruntime"]
    runs = seen["runs"]
    assert set(runs) == {("onnxruntime", "reference"), ("onnxruntime", "candidate")}
    ref_precision, ref_kind, ref_options = runs["onnxruntime", "reference"]
    assert (ref_precision, ref_kind) == ("fp32", "onnx")
    assert [p[0] for p in ref_options["providers"]] == ["CUDAExecutionProvider"]
    assert ref_options["providers"][0][1]["use_tf32"] is False
    cand_precision, cand_kind, cand_options = runs["onnxruntime", "candidate"]
    assert (cand_precision, cand_kind) == ("int8", "onnx")
    assert [p[0] for p in cand_options["providers"]] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert cand_options["providers"][0][1] == {"device_id": 0, "trt_int8_enable": True, "trt_fp16_enable": True}

"""ONNX Runtime on the GPU target, as far as a CPU-only host allows: the provider options the x86_gpu target
gives each role, the I/O-binding device path (``infer_device``) on the CPU provider (the same code binds GPU
memory on CUDA), the TensorRT probe and the errors that name what a GPU run is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_models import MATMUL_W, RNG

from edgematrix.backends.onnxruntime.loader import (
    GPU_PROVIDERS,
    cuda_provider_options,
    normalize_providers,
    tensorrt_ep_unavailable,
)
from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.errors import BackendError
from edgematrix.matrix.loader import load_matrix
from edgematrix.measure.gpu import HostEventTimer, measure_cuda_interleaved
from edgematrix.measure.harness import LatencyConfig

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
CUDA_OPTIONS = {
    "device_id": 0,
    "use_tf32": False,
    "cudnn_conv_algo_search": "EXHAUSTIVE",
    "cudnn_conv_use_max_workspace": True,
    "arena_extend_strategy": "kSameAsRequested",
}


def _x86_gpu() -> dict[str, Any]:
    return load_matrix().targets["x86_gpu"].model_dump()


# -- options_for: role and precision ----------------------------------------------------------------


def test_x86_gpu_runs_both_backends_on_the_cuda_provider() -> None:
    target = load_matrix().targets["x86_gpu"]
    assert target.all_backends == ["torch", "onnxruntime"] and target.providers == ["CUDAExecutionProvider"]
    assert "gpu" in target.extras  # onnxruntime-gpu, never the CPU build


@pytest.mark.parametrize(("role", "precision"), [("reference", "fp32"), ("candidate", "fp32"), ("candidate", "fp16")])
def test_float_roles_get_the_cuda_provider_with_tf32_off(role: str, precision: str) -> None:
    options = OnnxrtRunner.options_for(_x86_gpu(), role=role, precision=precision)
    assert options == {"providers": (("CUDAExecutionProvider", CUDA_OPTIONS),), "intra_op_threads": 0}
    # what ONNX Runtime is handed: its own spelling, validated
    assert normalize_providers(options["providers"]) == (
        (
            "CUDAExecutionProvider",
            {
                "device_id": "0",
                "use_tf32": "False",
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "cudnn_conv_use_max_workspace": "True",
                "arena_extend_strategy": "kSameAsRequested",
            },
        ),
    )


def test_an_int8_role_runs_on_tensorrt_first_and_the_reference_stays_on_cuda() -> None:
    target = _x86_gpu()
    int8 = OnnxrtRunner.options_for(target, role="candidate", precision="int8")
    assert int8["providers"] == (
        ("TensorrtExecutionProvider", {"device_id": 0, "trt_int8_enable": True, "trt_fp16_enable": True}),
        ("CUDAExecutionProvider", CUDA_OPTIONS),
    )
    reference = OnnxrtRunner.options_for(target, role="reference", precision="int8")
    assert reference["providers"] == (("CUDAExecutionProvider", CUDA_OPTIONS),)
    # a target that names TensorRT itself gets INT8 enabled only where the role deploys INT8
    named = {"providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"], "threads": 2}
    trt = OnnxrtRunner.options_for(named, role="candidate", precision="int8")["providers"]
    assert trt[0] == ("TensorrtExecutionProvider", {"device_id": 0, "trt_int8_enable": True, "trt_fp16_enable": True})
    fp32 = OnnxrtRunner.options_for(named, role="reference", precision="fp32")["providers"]
    assert fp32[0] == (
        "TensorrtExecutionProvider",
        {"device_id": 0, "trt_int8_enable": False, "trt_fp16_enable": False},
    )
    assert len(trt) == len(fp32) == 2


def test_cpu_targets_keep_their_provider_names() -> None:
    target = load_matrix().targets["x86_cpu"].model_dump()
    assert OnnxrtRunner.options_for(target, role="candidate", precision="int8") == {
        "providers": ("CPUExecutionProvider",),
        "intra_op_threads": 0,
    }
    assert OnnxrtRunner.options_for({}, role="reference", precision="fp32")["providers"] == ("CPUExecutionProvider",)


def test_cuda_provider_options_are_overridable_and_validated() -> None:
    assert cuda_provider_options(use_tf32=True, device_id=1)["use_tf32"] is True
    assert cuda_provider_options(gpu_mem_limit=1 << 30)["gpu_mem_limit"] == 1 << 30
    with pytest.raises(BackendError, match=r"cudnn_conv_algo_search.*EXHAUSTIVE, HEURISTIC, DEFAULT"):
        normalize_providers([("CUDAExecutionProvider", cuda_provider_options(cudnn_conv_algo_search="FAST"))])
    assert {"CUDAExecutionProvider", "TensorrtExecutionProvider"} == GPU_PROVIDERS


# -- the device path (I/O binding) on the CPU provider ----------------------------------------------


def test_infer_device_binds_tensors_and_equals_infer(conv_model: Path) -> None:
    x = torch.from_numpy(RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    with OnnxrtRunner(conv_model) as runner:
        assert runner.on_gpu is False
        (y,) = runner.infer_device(x)
        want = runner.infer({"x": x.numpy()})["y"]
        assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and tuple(y.shape) == (1, 4, 8, 8)
        np.testing.assert_array_equal(y.numpy(), want)
        ptr = y.data_ptr()
        # a new input tensor (another address) is re-bound; the output buffer is the runner's, reused
        x2 = torch.from_numpy(RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
        (y2,) = runner.infer_device({"x": x2})
        assert y2.data_ptr() == ptr
        np.testing.assert_array_equal(y2.numpy(), runner.infer({"x": x2.numpy()})["y"])
        # the same tensor changed in place: the binding reads it again
        x2.mul_(-1.0)
        (y3,) = runner.infer_device(x2)
        np.testing.assert_array_equal(y3.numpy(), runner.infer({"x": x2.numpy()})["y"])
        facts = runner.facts()
    assert facts["io_binding"] == "cpu" and facts["provider"] == "CPUExecutionProvider"
    assert "provider_options" not in facts  # no GPU provider: nothing to report


@pytest.mark.parametrize("batch", [1, 3])
def test_infer_device_finds_dynamic_output_shapes(matmul_model: Path, batch: int) -> None:
    x = torch.from_numpy(RNG.standard_normal((batch, 4)).astype(np.float32))
    with OnnxrtRunner(matmul_model) as runner:
        (y,) = runner.infer_device(x)
        assert tuple(y.shape) == (batch, 2)
        np.testing.assert_allclose(y.numpy(), x.numpy() @ MATMUL_W, rtol=1e-5, atol=1e-6)
        (again,) = runner.infer_device(x)  # the binding of this shape is reused
        assert again.data_ptr() == y.data_ptr()


def test_infer_device_checks_its_input_without_running(conv_model: Path) -> None:
    with OnnxrtRunner(conv_model, name="ort") as runner:
        with pytest.raises(BackendError, match=r"'x' got a float64 tensor of shape \[1, 3, 8, 8\] on cpu; expected"):
            runner.infer_device(torch.zeros((1, 3, 8, 8), dtype=torch.float64))
        with pytest.raises(BackendError, match=r"shape \[2, 3, 8, 8\]"):
            runner.infer_device(torch.zeros((2, 3, 8, 8)))
        with pytest.raises(BackendError, match="not contiguous"):
            runner.infer_device(torch.zeros((1, 3, 8, 16))[..., ::2])
        with pytest.raises(BackendError, match=r"got inputs \['y'\]; expected \['x'\]"):
            runner.infer_device({"y": torch.zeros((1, 3, 8, 8))})
        with pytest.raises(BackendError, match="got ndarray"):
            runner.infer_device(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(BackendError, match="not active"):
        runner.infer_device(torch.zeros((1, 3, 8, 8)))


def test_infer_device_is_timed_by_the_gpu_harness_loop(conv_model: Path) -> None:
    """The local executor's GPU loop over ONNX Runtime runners: here with the host clock standing in for events."""
    x = torch.from_numpy(RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    config = LatencyConfig(warmup=2, min_rounds=6, max_rounds=6, min_time_s=0.0, max_time_s=30.0)
    with OnnxrtRunner(conv_model, name="a") as a, OnnxrtRunner(conv_model, name="b") as b:
        result = measure_cuda_interleaved(
            {"a": lambda: a.infer_device(x), "b": lambda: b.infer_device(x)}, config, timer=HostEventTimer()
        )
        assert np.array_equal(a.infer_device(x)[0].numpy(), b.infer_device(x)[0].numpy())
    assert result.rounds == 6 and result.timer == "host"
    assert result.host_facts("a")["timed_rounds"] == 6 and result["b"].p50_ms > 0


# -- what a GPU run is missing, named -----------------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA_EP, reason="checks the error of a CPU-only onnxruntime")
def test_a_gpu_provider_on_a_cpu_build_names_the_package(conv_model: Path) -> None:
    options = OnnxrtRunner.options_for(_x86_gpu(), role="reference", precision="fp32")
    runner = OnnxrtRunner(conv_model, **options)
    with pytest.raises(BackendError, match=r"\['CUDAExecutionProvider'\].*comes with onnxruntime-gpu"):
        runner.activate()
    assert runner.is_active is False and runner.session is None


@pytest.mark.skipif(HAS_CUDA_EP, reason="checks the answer of a CPU-only onnxruntime")
def test_tensorrt_probe_on_a_cpu_build() -> None:
    why = tensorrt_ep_unavailable()
    assert why.startswith(f"onnxruntime {ort.__version__} has no TensorrtExecutionProvider")
    assert "onnxruntime-gpu plus TensorRT libraries" in why


@pytest.mark.skipif(HAS_CUDA_EP, reason="uses a CPU-only onnxruntime's real fallback")
def test_tensorrt_probe_names_what_is_missing_when_the_provider_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu lists the TensorRT EP without TensorRT; only a session tells (here: the CPU build's
    real session falls back to the CPU provider, and the provider's library is absent)."""
    listed = ["TensorrtExecutionProvider", *ort.get_available_providers()]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    why = tensorrt_ep_unavailable()
    assert "lists TensorrtExecutionProvider, but a session asked for it ran on CPUExecutionProvider" in why
    assert "libonnxruntime_providers_tensorrt.so is not part of this onnxruntime build" in why


@pytest.mark.skipif(HAS_CUDA_EP, reason="checks the message of a host without the TensorRT EP")
def test_the_gpu_int8_cell_says_what_is_missing_and_reports_no_int8_from_float_kernels() -> None:
    from edgematrix.pipeline.evaluate import gpu_int8_runtime_missing

    why = gpu_int8_runtime_missing()
    assert why.startswith("no GPU INT8 runtime on this host: onnxruntime")
    assert "has no TensorrtExecutionProvider" in why
    assert "dequantized float kernels, which is not an INT8 measurement" in why


def test_the_package_imports_and_answers_without_onnxruntime() -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"  # makes `import onnxruntime` fail
        "import edgematrix.executors.local, edgematrix.pipeline.evaluate\n"
        "from edgematrix.backends.onnxruntime.loader import tensorrt_ep_unavailable\n"
        "from edgematrix.backends.onnxruntime.runner import OnnxrtRunner\n"
        "o = OnnxrtRunner.options_for({'providers': ['CUDAExecutionProvider']}, role='reference', precision='fp32')\n"
        "print(o['providers'][0][0]); print(tensorrt_ep_unavailable())\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}, timeout=120
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first == "CUDAExecutionProvider"
    assert second.startswith("onnxruntime is not importable")

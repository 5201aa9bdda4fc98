"""ONNX Runtime's TensorRT / CUDA execution providers: option validation and mapping, clear errors.

This host has the CPU build of onnxruntime (providers: Azure, CPU), so no session with the TensorRT
or CUDA provider is created here: what runs is the validation, the option mapping and the error a
user gets for a provider this build lacks. The GPU path is not run (docs/tensorrt.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgematrix.backends.onnxruntime.loader import (
    PROVIDER_OPTIONS,
    SessionFromOnnx,
    check_providers,
    normalize_providers,
    tensorrt_providers,
)
from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.errors import BackendError


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("m") / "mm.onnx"
    onnx.save(m, str(path))
    return path


def test_tensorrt_providers_map_to_onnxruntime_option_strings(tmp_path: Path) -> None:
    specs = tensorrt_providers(
        fp16=True,
        int8=True,
        device_id=1,
        engine_cache_dir=tmp_path / "engines",
        timing_cache_dir=tmp_path / "timing",
        dla_core=0,
        trt_max_workspace_size=2 << 30,
        trt_builder_optimization_level=5,
    )
    assert specs == [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": "1",
                "trt_fp16_enable": "True",
                "trt_int8_enable": "True",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(tmp_path / "engines"),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(tmp_path / "timing"),
                "trt_dla_enable": "True",
                "trt_dla_core": "0",
                "trt_max_workspace_size": str(2 << 30),
                "trt_builder_optimization_level": "5",
            },
        ),
        ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(True, "True"), (False, "False"), (1, "True"), ("0", "False"), ("true", "True")]
)
def test_boolean_spellings(value: object, expected: str) -> None:
    ((_, options),) = normalize_providers([("TensorrtExecutionProvider", {"trt_fp16_enable": value})])
    assert options == {"trt_fp16_enable": expected}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (("TensorrtExecutionProvider", {"trt_fp16": True}), r"unknown TensorrtExecutionProvider option\(s\) 'trt_fp16' \(did you mean 'trt_fp16_enable'\?\)"),
        (("TensorrtExecutionProvider", {"trt_fp16_enable": "maybe"}), "must be a boolean"),
        (("TensorrtExecutionProvider", {"device_id": -1}), "must be >= 0"),
        (("TensorrtExecutionProvider", {"device_id": True}), "must be an integer"),
        (("TensorrtExecutionProvider", {"trt_engine_cache_path": 3}), "must be a string or path"),
        (("TensorrtExecutionProvider", {"trt_dla_enable": True}), "trt_dla_enable needs trt_fp16_enable or trt_int8_enable"),
        (("CUDAExecutionProvider", {"cudnn_conv_algo_search": "FAST"}), "must be one of EXHAUSTIVE, HEURISTIC, DEFAULT"),
        (("CUDAExecutionProvider", {"gpu_mem_limt": 1}), r"did you mean 'gpu_mem_limit'\?"),
        (["CUDAExecutionProvider", {}], "must be a name or a \\(name, options dict\\) pair"),
    ],
)  # fmt: skip
def test_bad_options_are_named(spec: object, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        normalize_providers([spec])  # type: ignore[list-item]


def test_other_providers_pass_through_unchanged() -> None:
    specs = [("OpenVINOExecutionProvider", {"device_type": "CPU"}), "CPUExecutionProvider"]
    assert normalize_providers(specs) == tuple(specs)


def test_validation_happens_at_construction_not_at_session_creation(model: Path) -> None:
    with pytest.raises(BackendError, match="unknown CUDAExecutionProvider option"):
        OnnxrtRunner(model, providers=[("CUDAExecutionProvider", {"devce_id": 0})])


def test_unavailable_provider_lists_what_this_build_has(model: Path) -> None:
    assert "TensorrtExecutionProvider" not in ort.get_available_providers()  # CPU build here
    loader = SessionFromOnnx(model, providers=tensorrt_providers())
    with pytest.raises(BackendError) as err:
        loader()
    message = str(err.value)
    assert "['TensorrtExecutionProvider', 'CUDAExecutionProvider'] are not available" in message
    assert f"available here: {', '.join(ort.get_available_providers())}" in message
    assert "onnxruntime-gpu plus TensorRT libraries" in message
    with pytest.raises(BackendError, match="not an ONNX Runtime execution provider"):
        check_providers(["TensorRTProvider"])


def test_known_option_tables_cover_the_documented_essentials() -> None:
    trt = PROVIDER_OPTIONS["TensorrtExecutionProvider"]
    for key in ("trt_fp16_enable", "trt_int8_enable", "trt_engine_cache_enable", "trt_engine_cache_path",
                "trt_timing_cache_enable", "trt_timing_cache_path", "device_id", "trt_dla_core"):  # fmt: skip
        assert key in trt
    assert PROVIDER_OPTIONS["CUDAExecutionProvider"]["device_id"] is int


def test_cpu_session_still_runs_with_normalized_providers(model: Path) -> None:
    with OnnxrtRunner(model, providers=[("CPUExecutionProvider", {})]) as runner:
        out = runner.infer({"x": np.array([[1.0, 2.0]], np.float32)})
    np.testing.assert_array_equal(out["y"], [[1.0, 2.0]])

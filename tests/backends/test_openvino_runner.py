"""OpenvinoRunner against real OpenVINO on tiny models, with ONNX Runtime as the reference.

Tolerances asserted:

- ``exact_fp32=True`` vs ONNX Runtime FP32: max |a - b| <= 1e-3 * max|b| + 1e-5 (both compute in
  f32; only summation order differs. Measured ~2e-7 relative on the tiny UFLD).
- OpenVINO's default precision vs ONNX Runtime FP32: where OpenVINO chose bf16 (CPUs with native
  bf16), 3e-2 relative: bf16 keeps 8 significand bits (relative step 2^-8 = 3.9e-3) and the Conv
  accumulates in f32. Measured 6e-3 on the tiny UFLD.
- INT8 QDQ on OpenVINO vs the same file on ONNX Runtime: correlation > 0.999 and max |a - b| <= 5e-2
  * max|b|. Both runtimes execute the same integer convolutions with the same scales and zero
  points; they may differ only where a requantization rounds a value on the other side of a
  half step (one quantization step, ~1/255 of a tensor's range), which then propagates a little.
  Measured ~1e-7 relative on the tiny UFLD (identical integer results).

No timing here: benchmarks/openvino_vs_ort.py measures speed.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from tiny_models import MATMUL_W, RNG  # shared tiny models: tests/backends/tiny_models.py

from edgematrix.backends.base import backends, create_runner
from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.backends.openvino.runner import CompiledModelFromOnnx, OpenvinoRunner
from edgematrix.errors import BackendError, ModelError
from edgematrix.measure.environment import usable_physical_cores

UFLD_SHAPE = (1, 3, 64, 160)
FLOAT_PRECISIONS = {"f32", "bf16", "f16"}


@pytest.fixture(scope="module")
def ufld_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny UFLDv2 exported to FP32 ONNX and its U8S8 QDQ INT8 model (minmax, 4 images)."""
    import torch

    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

    work = tmp_path_factory.mktemp("ufld")
    torch.manual_seed(0)
    model = UFLDv2(input_size=UFLD_SHAPE[2:], width=8, mlp_mid_dim=32).eval()
    fp32 = work / "fp32.onnx"
    export_onnx(model, UFLD_SHAPE, fp32, output_names=OUTPUT_NAMES, input_name="input")
    calib = [np.random.default_rng(i).standard_normal(UFLD_SHAPE).astype(np.float32) for i in range(4)]
    config = QuantizeConfig(method="minmax", calibration_images=4)
    int8 = quantize_static_qdq(fp32, work / "int8.onnx", calib, input_name="input", config=config).path
    return {"fp32": fp32, "int8": int8}


def _ufld_inputs() -> list[np.ndarray]:
    return [np.random.default_rng(100 + i).standard_normal(UFLD_SHAPE).astype(np.float32) for i in range(2)]


def _ort_outputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with OnnxrtRunner(path, intra_op_threads=1) as runner:
        return runner.infer(feed)


def _assert_rel_close(got: np.ndarray, ref: np.ndarray, rel: float) -> None:
    err = float(np.abs(got - ref).max())
    assert err <= rel * float(np.abs(ref).max()) + 1e-5, f"max|diff| {err:.3g} vs max|ref| {np.abs(ref).max():.3g}"


def _compiled_precision(runner: OpenvinoRunner) -> str:
    return runner.compiled_model.get_property("INFERENCE_PRECISION_HINT").get_type_name()


# -- numerics: Conv + Relu ------------------------------------------------------------------------


def test_conv_relu_exact_fp32_matches_onnxruntime(conv_model: Path) -> None:
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with OpenvinoRunner(conv_model, exact_fp32=True) as runner:
        out = runner.infer({"x": x})
        facts = runner.facts()
    assert list(out) == ["y"]
    assert out["y"].shape == (1, 4, 8, 8) and out["y"].dtype == np.float32
    _assert_rel_close(out["y"], _ort_outputs(conv_model, {"x": x})["y"], 1e-3)
    assert (out["y"] == 0).any() and (out["y"] > 0).any()  # the Relu did something
    assert facts["inference_precision"] == "f32"
    assert facts["exact_fp32"] == 1
    assert facts["runtime_precisions"] == "f32:1"  # the one Convolution runs in f32


def test_conv_relu_default_precision_is_what_openvino_compiled(conv_model: Path) -> None:
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with OpenvinoRunner(conv_model) as runner:
        out = runner.infer({"x": x})
        facts = runner.facts()
        compiled = _compiled_precision(runner)
    assert facts["inference_precision"] in FLOAT_PRECISIONS
    assert facts["inference_precision"] == compiled
    assert facts["exact_fp32"] == 0
    _assert_rel_close(out["y"], _ort_outputs(conv_model, {"x": x})["y"], 1e-3 if compiled == "f32" else 3e-2)


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_dimension_accepts_any_size(matmul_model: Path, batch: int) -> None:
    x = RNG.standard_normal((batch, 4)).astype(np.float32)
    with OpenvinoRunner(matmul_model, exact_fp32=True) as runner:
        meta = runner.input_metadata()
        assert meta["x"].shape == (None, 4)
        assert meta["x"].dtype == np.float32
        np.testing.assert_allclose(runner.infer({"x": x})["y"], x @ MATMUL_W, rtol=1e-5, atol=1e-5)


# -- numerics: tiny UFLD, FP32 and INT8 QDQ ---------------------------------------------------------


def test_ufld_exact_fp32_matches_onnxruntime(ufld_models: dict[str, Path]) -> None:
    from edgematrix.models.ufld import OUTPUT_NAMES

    with OpenvinoRunner(ufld_models["fp32"], exact_fp32=True) as runner:
        assert list(runner.input_metadata()) == ["input"]
        outs = [runner.infer({"input": x}) for x in _ufld_inputs()]
        facts = runner.facts()
    assert facts["inference_precision"] == "f32"
    assert facts["precision"] == "fp32"
    for x, out in zip(_ufld_inputs(), outs, strict=True):
        ref = _ort_outputs(ufld_models["fp32"], {"input": x})
        assert tuple(out) == OUTPUT_NAMES
        for name in OUTPUT_NAMES:
            assert out[name].dtype == np.float32 and out[name].shape == ref[name].shape
            _assert_rel_close(out[name], ref[name], 1e-3)


def test_ufld_default_precision_is_reported_as_compiled(ufld_models: dict[str, Path]) -> None:
    x = _ufld_inputs()[0]
    with OpenvinoRunner(ufld_models["fp32"]) as runner:
        out = runner.infer({"input": x})
        facts = runner.facts()
        compiled = _compiled_precision(runner)
    assert facts["inference_precision"] == compiled
    assert compiled in FLOAT_PRECISIONS
    assert facts["runtime_precisions"].split(":")[0] == compiled  # the compute layers run in it
    ref = _ort_outputs(ufld_models["fp32"], {"input": x})
    for name, got in out.items():
        _assert_rel_close(got, ref[name], 1e-3 if compiled == "f32" else 3e-2)


@pytest.mark.parametrize("exact_fp32", [False, True], ids=["default", "exact_fp32"])
def test_ufld_int8_qdq_agrees_with_onnxruntime_int8(ufld_models: dict[str, Path], exact_fp32: bool) -> None:
    with OpenvinoRunner(ufld_models["int8"], exact_fp32=exact_fp32) as runner:
        outs = [runner.infer({"input": x}) for x in _ufld_inputs()]
        facts = runner.facts()
    assert facts["precision"] == "int8"
    # OpenVINO runs the quantized layers in integer arithmetic, not dequantized float
    assert any(p.split(":")[0] in ("u8", "i8") for p in str(facts["runtime_precisions"]).split(","))
    for x, out in zip(_ufld_inputs(), outs, strict=True):
        ref = _ort_outputs(ufld_models["int8"], {"input": x})
        for name, got in out.items():
            corr = float(np.corrcoef(got.ravel(), ref[name].ravel())[0, 1])
            assert corr > 0.999, f"{name}: correlation {corr:.5f}"
            _assert_rel_close(got, ref[name], 5e-2)


# -- infer request, threads, facts ------------------------------------------------------------------


def test_one_infer_request_is_reused_and_results_are_copies(conv_model: Path) -> None:
    x1, x2 = (RNG.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2))
    with OpenvinoRunner(conv_model, exact_fp32=True) as runner:
        request = runner.request
        first = runner.infer({"x": x1})["y"]
        kept = first.copy()
        second = runner.infer({"x": x2})["y"]
        assert runner.request is request
    np.testing.assert_array_equal(first, kept)  # the second infer did not overwrite the first result
    assert not np.array_equal(first, second)


def test_threads_default_to_physical_cores(conv_model: Path) -> None:
    with OpenvinoRunner(conv_model) as runner:
        assert runner.compiled_model.get_property("INFERENCE_NUM_THREADS") == usable_physical_cores()
        facts = runner.facts()
    assert facts["intra_op_threads"] == usable_physical_cores()
    assert runner.loader.threads_used == usable_physical_cores()


def test_threads_and_hint_can_be_set(conv_model: Path) -> None:
    with OpenvinoRunner(conv_model, intra_op_threads=1, performance_hint="THROUGHPUT") as runner:
        assert runner.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1
        facts = runner.facts()
    assert facts["intra_op_threads"] == 1
    assert facts["performance_hint"] == "THROUGHPUT"


def test_facts_are_plain_and_describe_the_compiled_model(conv_model: Path) -> None:
    import importlib.metadata

    with OpenvinoRunner(conv_model, name="cand", exact_fp32=True) as runner:
        facts = runner.facts()
    assert all(type(v) in (str, int, float) for v in facts.values()), facts
    assert facts["backend"] == "openvino"
    assert facts["runner"] == "cand"
    assert facts["version"] == importlib.metadata.version("openvino")
    assert facts["build"] == ov.get_version()
    assert facts["device"] == "CPU"
    assert facts["performance_hint"] == "LATENCY"
    assert facts["precision"] == "fp32"
    assert facts["model"] == str(conv_model)
    assert facts["model_bytes"] == conv_model.stat().st_size
    assert runner.facts()["inference_precision"] == "f32"  # still known after release


def test_runner_accepts_a_ready_loader(conv_model: Path) -> None:
    loader = CompiledModelFromOnnx(conv_model, intra_op_threads=1, exact_fp32=True)
    with OpenvinoRunner(loader) as runner:
        assert runner.loader is loader
        assert runner.facts()["intra_op_threads"] == 1
    assert loader.threads_used == 1


# -- validation and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feed", "expected"),
    [
        ({"input": np.zeros((1, 3, 8, 8), np.float32)}, r"'input'.*expected \{x: float32\[1, 3, 8, 8\]\}"),
        ({}, r"missing \['x'\]"),
        ({"x": np.zeros((1, 3, 8, 8), np.float64)}, r"dtype float64; expected float32"),
        ({"x": np.zeros((1, 3, 9, 8), np.float32)}, r"shape \[1, 3, 9, 8\]; expected float32\[1, 3, 8, 8\]"),
        ({"x": [[0.0]]}, r"must be a numpy.ndarray, got list"),
    ],
    ids=["wrong-name", "missing", "dtype", "shape", "not-array"],
)
def test_bad_feed_names_expected_and_got(conv_model: Path, feed: dict, expected: str) -> None:
    with OpenvinoRunner(conv_model) as runner, pytest.raises(BackendError, match=expected):
        runner.infer(feed)


def test_infer_requires_an_active_runner(conv_model: Path) -> None:
    runner = OpenvinoRunner(conv_model, name="idle")
    with pytest.raises(BackendError, match=r"'idle' is not active.*with runner"):
        runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_missing_model_raises_model_error_with_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.onnx.*does not exist.*export"):
        OpenvinoRunner(tmp_path / "nope.onnx").activate()


@pytest.mark.parametrize("content", [b"this is not a protobuf \x00\x01\x02", b""], ids=["garbage", "empty"])
def test_corrupt_model_raises_model_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(content)
    runner = OpenvinoRunner(path)
    with pytest.raises(ModelError, match=r"cannot read .*corrupt\.onnx.*re-export"), runner:
        pass
    assert not runner.is_active and runner.compiled_model is None and runner.request is None


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"performance_hint": "FAST"}, r"'FAST'; choose one of LATENCY, THROUGHPUT, CUMULATIVE_THROUGHPUT"),
        ({"intra_op_threads": -1}, r"intra_op_threads must be >= 0"),
    ],
)
def test_bad_options_are_refused_at_construction(conv_model: Path, kwargs: dict, expected: str) -> None:
    with pytest.raises(BackendError, match=expected):
        OpenvinoRunner(conv_model, **kwargs)


@pytest.mark.skipif("GPU" in ov.Core().available_devices, reason="an OpenVINO GPU is present")
def test_unavailable_device_lists_available(conv_model: Path) -> None:
    with pytest.raises(BackendError, match=r"device 'GPU' is not available here; available: .*CPU.*OpenCL"):
        OpenvinoRunner(conv_model, device="GPU").activate()


# -- lifecycle ------------------------------------------------------------------------------


def test_context_manager_releases_request_and_compiled_model(conv_model: Path) -> None:
    runner = OpenvinoRunner(conv_model)
    with runner as active:
        assert active is runner and runner.is_active
        request_ref = weakref.ref(runner.request)
        compiled_ref = weakref.ref(runner.compiled_model)
    assert not runner.is_active
    assert runner.request is None and runner.compiled_model is None
    gc.collect()
    assert request_ref() is None, "the InferRequest is still referenced after __exit__"
    assert compiled_ref() is None, "the CompiledModel is still referenced after __exit__"


def test_context_manager_releases_on_error_and_can_reenter(conv_model: Path) -> None:
    runner = OpenvinoRunner(conv_model)
    with pytest.raises(RuntimeError, match="boom"), runner:
        raise RuntimeError("boom")
    assert not runner.is_active and runner.request is None
    with runner:
        assert runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})["y"].shape == (1, 4, 8, 8)


# -- registry and lazy import -----------------------------------------------------------------


def test_create_runner_builds_the_registered_runner(conv_model: Path) -> None:
    runner = create_runner("openvino", path=conv_model, name="cand", intra_op_threads=1, exact_fp32=True)
    assert isinstance(runner, OpenvinoRunner)
    assert backends.get("openvino") is OpenvinoRunner
    with runner:
        assert runner.facts()["intra_op_threads"] == 1


def test_backends_import_without_openvino_and_creation_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['openvino'] = None\n"  # makes `import openvino` fail
        "from edgematrix.backends.base import backends, create_runner, load_builtin_backends\n"
        "load_builtin_backends(); assert 'openvino' in backends.names()\n"
        "from edgematrix.errors import BackendError\n"
        "try:\n"
        "    create_runner('openvino', path='m.onnx')\n"
        "except BackendError as e:\n"
        "    print(e)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'edgematrix[openvino]'" in done.stdout


def test_registering_the_backend_does_not_import_openvino() -> None:
    code = (
        "import sys\n"
        "from edgematrix.backends.base import load_builtin_backends\n"
        "load_builtin_backends()\n"
        "print('openvino' in sys.modules)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

"""OnnxrtRunner and SessionFromOnnx against real ONNX Runtime on tiny models built with onnx.helper."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import CONV_B, CONV_W, MATMUL_W, RNG, save_model  # shared tiny models: tests/backends/tiny_models.py

from edgematrix.backends.base import Runner, backends, create_runner, load_builtin_backends
from edgematrix.backends.onnxruntime.loader import SessionFromOnnx
from edgematrix.backends.onnxruntime.runner import OnnxrtRunner, graph_precision
from edgematrix.errors import BackendError, ModelError, UnknownNameError
from edgematrix.measure.environment import usable_physical_cores


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x → QuantizeLinear → DequantizeLinear → y (the explicit-quantization form)."""
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ],
    )
    return save_model(graph, tmp_path_factory.mktemp("models") / "qdq.onnx")


def conv_relu_reference(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n c h w i j
    out = np.einsum("nchwij,ocij->nohw", windows, CONV_W) + CONV_B[None, :, None, None]
    return np.maximum(out, 0)


# -- numerics -----------------------------------------------------------------------------------


def test_conv_relu_outputs_equal_numpy_reference(conv_model: Path) -> None:
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with OnnxrtRunner(conv_model) as runner:
        out = runner.infer({"x": x})
    assert list(out) == ["y"]
    assert out["y"].shape == (1, 4, 8, 8)
    assert out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], conv_relu_reference(x), rtol=1e-5, atol=1e-5)
    assert (out["y"] == 0).any() and (out["y"] > 0).any()  # the Relu did something


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_dimension_accepts_any_size(matmul_model: Path, batch: int) -> None:
    x = RNG.standard_normal((batch, 4)).astype(np.float32)
    with OnnxrtRunner(matmul_model) as runner:
        meta = runner.input_metadata()
        assert meta["x"].shape == ("N", 4)
        assert meta["x"].dtype == np.float32
        np.testing.assert_allclose(runner.infer({"x": x})["y"], x @ MATMUL_W, rtol=1e-5, atol=1e-6)


# -- session options ------------------------------------------------------------------------


def test_spinning_disabled_and_threads_default_to_physical_cores(conv_model: Path) -> None:
    with OnnxrtRunner(conv_model) as runner:
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == usable_physical_cores()
        facts = runner.facts()
    assert facts["intra_op_allow_spinning"] == 0
    assert facts["inter_op_allow_spinning"] == 0
    assert facts["intra_op_threads"] == usable_physical_cores()


def test_spinning_and_threads_can_be_set(conv_model: Path) -> None:
    with OnnxrtRunner(conv_model, allow_spinning=True, intra_op_threads=1, optimization="basic") as runner:
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert options.intra_op_num_threads == 1
        facts = runner.facts()
    assert facts["intra_op_allow_spinning"] == 1
    assert facts["graph_optimization"] == "ORT_ENABLE_BASIC"


def test_facts_are_plain_and_describe_the_session(conv_model: Path, qdq_model: Path) -> None:
    with OnnxrtRunner(conv_model, name="ref") as runner:
        facts = runner.facts()
    assert all(type(v) in (str, int, float) for v in facts.values()), facts
    assert facts["backend"] == "onnxruntime"
    assert facts["runner"] == "ref"
    assert facts["version"] == ort.__version__
    assert facts["provider"] == "CPUExecutionProvider"
    assert facts["precision"] == "fp32"
    assert facts["model_bytes"] == conv_model.stat().st_size
    assert graph_precision(qdq_model) == "int8"
    assert OnnxrtRunner(qdq_model, precision="int8-qdq").facts()["precision"] == "int8-qdq"


def test_runner_accepts_a_ready_loader(conv_model: Path) -> None:
    loader = SessionFromOnnx(conv_model, intra_op_threads=1, optimization="disable")
    with OnnxrtRunner(loader) as runner:
        assert runner.loader is loader
        assert runner.facts()["intra_op_threads"] == 1
        assert runner.facts()["graph_optimization"] == "ORT_DISABLE_ALL"
    assert loader.intra_op_threads_used == 1


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feed", "expected"),
    [
        ({"input": np.zeros((1, 3, 8, 8), np.float32)}, r"'input'.*expected \{x: float32\[1, 3, 8, 8\]\}"),
        ({}, r"missing \['x'\]"),
        ({"x": np.zeros((1, 3, 8, 8), np.float32), "z": np.zeros(1, np.float32)}, r"unexpected \['z'\]"),
        ({"x": np.zeros((1, 3, 8, 8), np.float64)}, r"dtype float64; expected float32"),
        ({"x": np.zeros((1, 3, 9, 8), np.float32)}, r"shape \[1, 3, 9, 8\]; expected float32\[1, 3, 8, 8\]"),
        ({"x": np.zeros((3, 8, 8), np.float32)}, r"shape \[3, 8, 8\]; expected float32\[1, 3, 8, 8\]"),
        ({"x": [[0.0]]}, r"must be a numpy.ndarray, got list"),
    ],
    ids=["wrong-name", "missing", "extra", "dtype", "shape", "rank", "not-array"],
)
def test_bad_feed_names_expected_and_got(conv_model: Path, feed: dict, expected: str) -> None:
    with OnnxrtRunner(conv_model) as runner, pytest.raises(BackendError, match=expected):
        runner.infer(feed)


def test_infer_requires_an_active_runner(conv_model: Path) -> None:
    runner = OnnxrtRunner(conv_model, name="idle")
    with pytest.raises(BackendError, match=r"'idle' is not active.*with runner"):
        runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})


# -- load errors ----------------------------------------------------------------------------


def test_missing_model_raises_model_error_with_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match=r"nope\.onnx.*does not exist.*export"):
        OnnxrtRunner(path).activate()


@pytest.mark.parametrize("content", [b"this is not a protobuf \x00\x01\x02", b""], ids=["garbage", "empty"])
def test_corrupt_model_raises_model_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(content)
    runner = OnnxrtRunner(path)
    with pytest.raises(ModelError, match=r"corrupt\.onnx.*re-export"), runner:
        pass
    assert not runner.is_active and runner.session is None


def test_unknown_provider_lists_available(conv_model: Path) -> None:
    with pytest.raises(BackendError, match=r"BogusExecutionProvider.*available here: .*CPUExecutionProvider"):
        SessionFromOnnx(conv_model, providers=("BogusExecutionProvider",))()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA EP is installed")
def test_missing_cuda_provider_names_the_package(conv_model: Path) -> None:
    with pytest.raises(BackendError, match=r"CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxrtRunner(conv_model, providers=("CUDAExecutionProvider", "CPUExecutionProvider")).activate()


def test_unknown_optimization_level_lists_choices(conv_model: Path) -> None:
    with pytest.raises(BackendError, match=r"'max'.*disable, basic, extended, all"):
        SessionFromOnnx(conv_model, optimization="max")


# -- lifecycle ------------------------------------------------------------------------------


def test_context_manager_releases_the_session(conv_model: Path) -> None:
    runner = OnnxrtRunner(conv_model)
    with runner as active:
        assert active is runner and runner.is_active
        session_ref = weakref.ref(runner.session)
    assert not runner.is_active
    assert runner.session is None
    gc.collect()
    assert session_ref() is None, "the InferenceSession is still referenced after __exit__"


def test_context_manager_releases_on_error(conv_model: Path) -> None:
    runner = OnnxrtRunner(conv_model)
    with pytest.raises(RuntimeError, match="boom"), runner:
        raise RuntimeError("boom")
    assert not runner.is_active and runner.session is None
    with runner:  # can be entered again
        assert runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})["y"].shape == (1, 4, 8, 8)


def test_double_activation_is_an_error(conv_model: Path) -> None:
    with OnnxrtRunner(conv_model) as runner, pytest.raises(BackendError, match="already active"):
        runner.activate()


# -- registry -------------------------------------------------------------------------------


def test_unknown_backend_lists_known() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown backend 'tflite'; known: .*onnxruntime"):
        create_runner("tflite", path="x.onnx")


def test_create_runner_builds_the_registered_runner(conv_model: Path) -> None:
    runner = create_runner("onnxruntime", path=conv_model, name="cand", intra_op_threads=1)
    assert isinstance(runner, OnnxrtRunner)
    with runner:
        assert runner.facts()["intra_op_threads"] == 1


load_builtin_backends()


@pytest.mark.parametrize("name", backends.names())
def test_registered_backends_are_runners_named_as_registered(name: str) -> None:
    cls = backends.get(name)
    assert issubclass(cls, Runner)
    assert cls.backend_name == name


def test_backends_import_without_onnxruntime() -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"  # makes `import onnxruntime` fail
        "from edgematrix.backends.base import create_runner\n"
        "r = create_runner('onnxruntime', path='m.onnx')\n"
        "print(type(r).__name__)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OnnxrtRunner"

"""The tensorrt backend runs numpy feeds on the engine it built: in-process through Polygraphy, or
through trtexec --loadInputs/--exportOutput.

TensorRT cannot be installed here. What runs:

- Polygraphy's REAL ``EngineFromBytes`` + ``TrtRunner`` (the installed polygraphy package, unmodified)
  against a STAND-IN ``tensorrt`` module (``standin/tensorrt``: the TensorRT 10 Python API calls
  Polygraphy makes, computing the engine's ONNX with ONNX Runtime) and a STAND-IN CUDA runtime
  (``standin/cudart_host.c``, compiled here: device memory is host memory). The engine bytes are
  the ones the fake trtexec wrote for ``--saveEngine``; the same file is what ``measure`` times.
- trtexec's ``--exportOutput`` JSON: the reader on a RECORDED file of a real run
  (``data/trt_exportoutput_probs.json``, PROVENANCE.md), the whole flow against the fake trtexec.

This proves the plumbing (feeds -> Polygraphy -> engine -> outputs back, buffers freed, shapes set,
the engine that is timed is the engine that is scored), not TensorRT's numerics.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import save_model

from edgematrix.backends.base import create_runner
from edgematrix.backends.tensorrt.inprocess import PolygraphyEngine, require_inprocess
from edgematrix.backends.tensorrt.loader import TrtexecBuildOptions, build_command
from edgematrix.backends.tensorrt.outputs import parse_dimensions, parse_export_output, write_input_file
from edgematrix.backends.tensorrt.runner import TensorrtRunner
from edgematrix.errors import BackendError, RunnerUnavailableError, ToolNotFoundError

HERE = Path(__file__).parent
DATA = HERE / "data"
STANDIN = HERE / "standin"
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """conv: x[1,3,8,8] -> Conv+Relu -> y[1,4,8,8]; its QDQ form; matmul with a dynamic batch."""
    folder = tmp_path_factory.mktemp("trt_models")
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    conv = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    qdq = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
            helper.make_node("Conv", ["dq", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), scale, zero],
    )
    matmul = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(RNG.standard_normal((4, 2)).astype(np.float32), "w")],
    )
    return {
        "fp32": save_model(conv, folder / "conv_fp32.onnx"),
        "qdq": save_model(qdq, folder / "conv_int8_qdq.onnx"),
        "matmul": save_model(matmul, folder / "matmul.onnx"),
    }


def _ort(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def standin_cudart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host-memory stand-in of libcudart, compiled here (named as Polygraphy looks for it)."""
    compiler = shutil.which("cc") or shutil.which("c++")
    assert compiler is not None, "a C compiler (cc) is needed to build the stand-in CUDA runtime"
    folder = tmp_path_factory.mktemp("standin_cudart")
    lib = folder / "libcudart.so.12"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(lib), str(STANDIN / "cudart_host.c")], check=True)
    return lib


@pytest.fixture
def standin_trt(standin_cudart: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ctypes.CDLL]:
    """The stand-in tensorrt module importable and the stand-in CUDA runtime where Polygraphy looks."""
    import polygraphy.cuda.cuda as pg_cuda

    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(standin_cudart.parent))
    monkeypatch.setattr(pg_cuda, "G_CUDA", None)  # Polygraphy's CUDA wrapper loads the library on first use
    sys.modules.pop("tensorrt", None)
    yield ctypes.CDLL(str(standin_cudart))
    sys.modules.pop("tensorrt", None)


@pytest.mark.parametrize(
    ("model", "precision", "round_fp16"), [("fp32", "fp32", False), ("fp32", "fp16", True), ("qdq", "int8", False)]
)
def test_infer_runs_the_built_engine_through_polygraphy(
    models: dict[str, Path],
    fake_trtexec: Path,
    standin_trt: ctypes.CDLL,
    tmp_path: Path,
    model: str,
    precision: str,
    round_fp16: bool,
) -> None:
    feeds = [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    runner = create_runner("tensorrt", path=models[model], precision=precision, workdir=tmp_path / "w", name="cand")
    with runner:
        assert isinstance(runner, TensorrtRunner)
        meta = runner.input_metadata()
        assert meta["x"].shape == (1, 3, 8, 8) and meta["x"].dtype == np.float32  # read from the engine
        outputs = [runner.infer(f) for f in feeds]
        engine = runner.engine_path
        report = runner.measure(iterations=20)
        facts = runner.facts()
    build, timing = _calls(fake_trtexec)
    assert build[0] == f"--onnx={models[model]}" and f"--saveEngine={engine}" in build
    assert ("--fp16" in build) == (precision != "fp32") and ("--int8" in build) == (precision == "int8")
    assert timing[0] == f"--loadEngine={engine}"  # the engine that was scored is the one timed
    assert facts["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert facts["inference"] == "polygraphy" and facts["precision"] == precision and report.rounds == 20
    for feed, got in zip(feeds, outputs, strict=True):
        want = _ort(models[model], feed)["y"]
        if round_fp16:  # the stand-in FP16 engine rounds its outputs to float16
            want = want.astype(np.float16).astype(np.float32)
        assert set(got) == {"y"} and got["y"].dtype == np.float32 and got["y"].shape == (1, 4, 8, 8)
        np.testing.assert_array_equal(got["y"], want)
    assert not np.array_equal(outputs[0]["y"], outputs[1]["y"])  # each result is its own copy
    assert standin_trt.standin_live() == 0  # Polygraphy freed every buffer and its stream on exit


def test_dynamic_batch_sets_shapes_per_feed(
    models: dict[str, Path], fake_trtexec: Path, standin_trt: ctypes.CDLL, tmp_path: Path
) -> None:
    with create_runner("tensorrt", path=models["matmul"], precision="fp16", workdir=tmp_path) as runner:
        assert runner.input_metadata()["x"].shape == (None, 4)  # TensorRT's -1
        for batch in (1, 3, 2):
            x = RNG.standard_normal((batch, 4)).astype(np.float32)
            y = runner.infer({"x": x})["y"]
            assert y.shape == (batch, 2)
            want = _ort(models["matmul"], {"x": x})["y"].astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(y, want)
        context = runner._engine.runner.context  # type: ignore[attr-defined]
        assert context.executions == 3 and context.all_tensors_debug_state  # Polygraphy's TensorRT 10 path


def test_prebuilt_engine_is_loaded_as_is(
    models: dict[str, Path], fake_trtexec: Path, standin_trt: ctypes.CDLL, tmp_path: Path
) -> None:
    with create_runner("tensorrt", path=models["fp32"], precision="fp16", workdir=tmp_path / "a") as built:
        engine = tmp_path / "conv.fp16.engine"
        shutil.copyfile(built.engine_path, engine)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with create_runner("tensorrt", path=engine, precision="fp16", workdir=tmp_path / "b") as runner:
        assert runner.input_metadata()["x"].shape == (1, 3, 8, 8)
        got = runner.infer({"x": x})["y"]
    np.testing.assert_array_equal(got, _ort(models["fp32"], {"x": x})["y"].astype(np.float16).astype(np.float32))


def test_engine_bytes_that_do_not_deserialize_fail_clearly(standin_trt: ctypes.CDLL) -> None:
    with pytest.raises(BackendError, match=r"loading the engine failed in Polygraphy/TensorRT"):
        PolygraphyEngine(b"not an engine").activate()


def test_without_tensorrt_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # This host really has no tensorrt module (a folder named tensorrt is not one).
    with pytest.raises(
        ToolNotFoundError, match=r"tensorrt Python module is not installed.*JetPack.*inference='trtexec'"
    ):
        require_inprocess()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "polygraphy" else real(name, *a))
    with pytest.raises(RunnerUnavailableError, match=r"uses Polygraphy.*edgematrix\[tensorrt\]"):
        require_inprocess()


def test_inference_mode_is_checked(models: dict[str, Path]) -> None:
    with pytest.raises(BackendError, match=r"inference='cuda' is not one of polygraphy, trtexec, none"):
        TensorrtRunner(models["fp32"], inference="cuda")


# -- through trtexec --loadInputs / --exportOutput -----------------------------------------------


def test_recorded_export_output_is_read() -> None:
    outputs = parse_export_output(DATA / "trt_exportoutput_probs.json")
    assert list(outputs) == ["probs_phone", "probs_headset", "probs_gaze"]
    assert {k: v.shape for k, v in outputs.items()} == {
        "probs_phone": (1, 5),
        "probs_headset": (1, 3),
        "probs_gaze": (1, 5),
    }
    np.testing.assert_array_equal(outputs["probs_headset"], np.array([[0.79014, 0.206794, 0.00306536]], np.float32))
    for probs in outputs.values():  # softmax outputs, printed with six significant digits
        assert probs.dtype == np.float32 and abs(float(probs.sum(dtype=np.float64)) - 1.0) < 1e-6
        assert int(probs.argmax()) == {5: 4, 3: 0}[probs.size]


def test_export_output_edge_cases() -> None:
    text = '[\n  { "name" : "a"\n  , "dimensions" : ""\n  , "values" : [ -nan ]\n  }\n, { "name" : "b"\n  , "dimensions" : "2"\n  , "values" : [ inf, -inf ]\n  }\n]\n'
    out = parse_export_output(text, {"b": np.float16})
    assert out["a"].shape == () and np.isnan(out["a"])
    assert out["b"].dtype == np.float16 and out["b"].tolist() == [np.inf, -np.inf]
    assert parse_dimensions("1x3x8x8") == (1, 3, 8, 8)
    with pytest.raises(BackendError, match=r"'a' has 2 values for dimensions \[3\]"):
        parse_export_output('[{"name": "a", "dimensions": "3", "values": [1, 2]}]')
    with pytest.raises(BackendError, match="not known sizes"):
        parse_dimensions("1x-1")


def test_load_inputs_and_export_output_flags(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    options = TrtexecBuildOptions(
        engine=engine,
        load_inputs={"x": tmp_path / "x.bin", "Input:0": tmp_path / "i.bin"},
        export_output=tmp_path / "out.json",
        iterations=1,
        warmup_ms=0,
        duration_s=0,
        use_spin_wait=False,
    )
    assert build_command(options) == [
        "trtexec",
        f"--loadEngine={engine}",
        "--iterations=1",
        "--warmUp=0",
        "--duration=0",
        f"--loadInputs=x:{tmp_path / 'x.bin'},'Input:0':{tmp_path / 'i.bin'}",
        f"--exportOutput={tmp_path / 'out.json'}",
    ]
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert write_input_file(array.T, tmp_path / "t.bin").read_bytes() == np.ascontiguousarray(array.T).tobytes()


def test_infer_through_trtexec_runs_the_same_engine(
    models: dict[str, Path], fake_trtexec: Path, tmp_path: Path
) -> None:
    feed = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    with create_runner(
        "tensorrt", path=models["qdq"], precision="int8", workdir=tmp_path, inference="trtexec"
    ) as runner:
        got = runner.infer(feed)
        engine = runner.engine_path
        assert runner.facts()["inference"] == "trtexec"
    build, run = _calls(fake_trtexec)
    assert "--skipInference" in build
    assert run[0] == f"--loadEngine={engine}" and "--iterations=1" in run and "--duration=0" in run
    assert any(a.startswith("--loadInputs=x:") for a in run) and any(a.startswith("--exportOutput=") for a in run)
    want = _ort(models["qdq"], feed)["y"]
    assert got["y"].shape == want.shape and got["y"].dtype == np.float32
    np.testing.assert_allclose(got["y"], want, rtol=5e-6, atol=1e-6)  # six printed digits

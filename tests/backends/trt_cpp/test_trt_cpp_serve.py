"""The trt_cpp backend: numpy feeds through ``trt_runner --serve`` and its outputs back.

Runs for real here: the C++ serve loop and protocol (src/io.cpp), cross-compiled for aarch64 and run
under qemu-user, and natively; the Python side (``edgematrix.backends.trt_cpp.io`` /
``TrtCppRunner``). The served model is trt_runner's CPU self-check (3x3 conv + bias + ReLU, weights
from its LCG); the same function as an ONNX model on ONNX Runtime is the reference. This proves the
bundle-in -> process -> outputs-out plumbing and the C++ side of the protocol, on the architecture
of the board; it does not run a TensorRT engine (trt_engine.cpp's serve path is compiled only
against the DriveOS PDK).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import save_model

from edgematrix.backends.base import backends, create_runner, load_builtin_backends
from edgematrix.backends.trt_cpp import BuiltRunner
from edgematrix.backends.trt_cpp import io as trtio
from edgematrix.backends.trt_cpp.run import launch_prefix
from edgematrix.backends.trt_cpp.runner import TrtCppRunner, find_binary, selftest_weights
from edgematrix.errors import BackendError, RunnerUnavailableError
from edgematrix.measure.harness import LatencyConfig

C, H, W, K, SEED = 3, 6, 5, 4, 7
RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    """The self-check's function as ONNX: Conv(3x3, pad 1, LCG weights and bias) + Relu."""
    weights, bias = selftest_weights(SEED, C, H, W, K)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Relu", ["c"], ["output"]),
        ],
        "selftest",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, K, H, W])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    path = save_model(graph, tmp_path_factory.mktemp("selftest") / "selftest.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _served(runner: BuiltRunner) -> TrtCppRunner:
    return TrtCppRunner(selftest=True, runner=runner, selftest_size=(C, H, W), selftest_out_channels=K, seed=SEED)


@pytest.mark.parametrize("runner_name", ["aarch64_runner", "native_runner"])
def test_a_bundle_of_feeds_matches_onnxruntime(
    runner_name: str, request: pytest.FixtureRequest, reference: ort.InferenceSession
) -> None:
    built: BuiltRunner = request.getfixturevalue(runner_name)
    feeds = [{"input": RNG.standard_normal((1, C, H, W)).astype(np.float32)} for _ in range(5)]
    with _served(built) as runner:
        meta = runner.input_metadata()
        assert list(meta) == ["input"] and meta["input"].shape == (1, C, H, W) and meta["input"].dtype == np.float32
        outputs = [runner.infer(f) for f in feeds]
        facts = runner.facts()
    assert facts["backend"] == "trt_cpp" and facts["mode"] == "cpu_selftest"
    assert facts["emulated"] == int(built.machine != "x86_64") and facts["runner_machine"] == built.machine
    for feed, got in zip(feeds, outputs, strict=True):
        (want,) = reference.run(["output"], feed)
        assert list(got) == ["output"] and got["output"].dtype == np.float32 and got["output"].shape == (1, K, H, W)
        np.testing.assert_allclose(got["output"], want, rtol=1e-5, atol=1e-5)
        assert (want == 0).any() and (want > 0).any()  # ReLU clipped some values and kept others
    assert not np.array_equal(outputs[0]["output"], outputs[1]["output"])


def test_measure_times_what_is_served(aarch64_runner: BuiltRunner) -> None:
    config = LatencyConfig(warmup=1, min_rounds=5, max_rounds=5, min_time_s=0.0, max_time_s=30.0)
    with _served(aarch64_runner) as runner:
        report = runner.measure(config)
    assert report.backend == "cpu_selftest" and report.rounds == 5
    assert report.facts["selftest_input"] == f"{C}x{H}x{W}" and report.facts["selftest_seed"] == SEED


def test_measure_takes_the_latency_servers_self_timing_call(native_runner: BuiltRunner) -> None:
    """The server's worker times a self-timing runner as measure(iterations=..., duration_s=...)."""
    with _served(native_runner) as runner:
        report = runner.measure(iterations=7, duration_s=0.0)
        with pytest.raises(BackendError, match="not both"):
            runner.measure(LatencyConfig(), iterations=3)
    assert report.rounds >= 7 and len(report.samples_ms) == report.rounds


def _open(built: BuiltRunner, *args: str) -> subprocess.Popen[bytes]:
    prefix, env = launch_prefix(built.path)
    cmd = [*prefix, str(built.path), *args]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_the_cpp_side_refuses_bad_requests_and_keeps_serving(aarch64_runner: BuiltRunner) -> None:
    proc = _open(aarch64_runner, "--cpu-selftest", "--selftest-size", f"{C}x{H}x{W}", "--serve")
    assert proc.stdin is not None and proc.stdout is not None
    kind, payload = trtio.read_frame(proc.stdout)  # type: ignore[misc]
    spec = trtio.spec_from_payload(payload)
    assert kind == trtio.FrameKind.SPEC
    assert [(s.name, s.is_input, s.shape) for s in spec] == [
        ("input", True, (1, C, H, W)),
        ("output", False, (1, 16, H, W)),
    ]
    bad = [
        (
            {"input": np.zeros((1, C, H, W + 1), np.float32)},
            r"input 'input' is float32\[1, 3, 6, 6\]; the engine takes float32\[1, 3, 6, 5\]",
        ),
        ({"input": np.zeros((1, C, H, W), np.int32)}, r"input 'input' is int32"),
        (
            {"other": np.zeros(2, np.float32)},
            r"input 'input' \(float32\[1, 3, 6, 5\]\) is missing; 'other' is not an input",
        ),
    ]
    import re

    for feed, message in bad:
        trtio.write_frame(proc.stdin, trtio.FrameKind.INPUTS, trtio.encode_tensors(feed))
        kind, payload = trtio.read_frame(proc.stdout)  # type: ignore[misc]
        assert kind == trtio.FrameKind.ERROR and re.search(message, payload.decode()), payload
    trtio.write_frame(proc.stdin, trtio.FrameKind.INPUTS, b"\x01\x00\x00\x00\x05")  # cut inside a tensor
    kind, payload = trtio.read_frame(proc.stdout)  # type: ignore[misc]
    assert kind == trtio.FrameKind.ERROR and "malformed tensor list" in payload.decode()
    x = np.ones((1, C, H, W), np.float32)
    trtio.write_frame(proc.stdin, trtio.FrameKind.INPUTS, trtio.encode_tensors({"input": x}))
    kind, payload = trtio.read_frame(proc.stdout)  # type: ignore[misc]
    assert kind == trtio.FrameKind.OUTPUTS
    assert trtio.outputs_from_payload(payload, spec)["output"].shape == (1, 16, H, W)
    trtio.write_frame(proc.stdin, trtio.FrameKind.END)
    assert proc.wait(timeout=60) == 0
    assert trtio.read_frame(proc.stdout) is None


def test_an_engine_needs_a_tensorrt_build(aarch64_runner: BuiltRunner, tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    runner = create_runner("trt_cpp", path=engine, runner=aarch64_runner)
    with pytest.raises(RunnerUnavailableError, match=r"built without TensorRT.*DriveOS image"):
        runner.activate()
    assert not runner.is_active


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu-selftest", "--serve", "--out", "r.json"], "--out applies to timed runs"),
        (["--cpu-selftest", "--serve", "--min-rounds", "3"], "--min-rounds applies to timed runs"),
        (["--stop-rule-stdin", "--serve"], "--serve applies to --engine or --cpu-selftest"),
    ],
)
def test_serve_usage_errors(native_runner: BuiltRunner, args: list[str], message: str) -> None:
    proc = subprocess.run([str(native_runner.path), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_registered_and_arguments_checked(native_runner: BuiltRunner, tmp_path: Path) -> None:
    load_builtin_backends()
    assert backends.get("trt_cpp") is TrtCppRunner
    with pytest.raises(BackendError, match="exactly one of path="):
        TrtCppRunner()
    with pytest.raises(BackendError, match=r"selftest_size must be \(C, H, W\)"):
        TrtCppRunner(selftest=True, selftest_size=(3, 4))
    assert find_binary(native_runner) == native_runner.path
    with pytest.raises(RunnerUnavailableError, match="EDGEMATRIX_TRT_RUNNER"):
        find_binary(tmp_path / "missing")
    text = tmp_path / "model.txt"
    text.write_text("x")
    with pytest.raises(Exception, match="neither an ONNX model nor a serialized engine"):
        TrtCppRunner(text, runner=native_runner).activate()


def test_protocol_round_trip_and_malformed_frames() -> None:
    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([[1, -2]], np.int64),
        "c": np.array([True, False]),
        "h": np.array([0.5, -1.25], np.float16),
        "s": np.array(3, np.int8),
    }
    decoded = trtio.decode_tensors(trtio.encode_tensors(tensors, is_input=False))
    assert [spec.name for spec, _ in decoded] == list(tensors)
    for (spec, array), original in zip(decoded, tensors.values(), strict=True):
        assert not spec.is_input and spec.shape == original.shape and array is not None
        assert array.dtype == original.dtype and np.array_equal(array, original)
    with pytest.raises(BackendError, match="cannot be sent"):
        trtio.encode_tensors({"x": np.zeros(2, np.complex64)})
    with pytest.raises(BackendError, match="bytes after the last tensor"):
        trtio.decode_tensors(trtio.encode_tensors({"a": tensors["a"]}) + b"\x00")
    bf16 = bytearray(trtio.encode_tensors({"a": np.zeros(1, np.float16)}))
    bf16[4 + 2 + 1] = 8  # dtype code of bfloat16
    with pytest.raises(BackendError, match="bfloat16, which has no numpy dtype"):
        trtio.decode_tensors(bytes(bf16))

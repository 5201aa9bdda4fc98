"""The TIDL backend owns its flow: compile on calibration feeds into a content-keyed folder, then infer
with those artifacts.

TI's onnxruntime build is not installable here. The STAND-IN below replaces
``onnxruntime.InferenceSession`` with TI's documented calling convention (providers
``TIDLCompilationProvider`` / ``TIDLExecutionProvider`` with ``provider_options=[options, {}]``):
compiling, it calibrates an 8-bit output scale on the frames it runs and writes a "network" file
(``subgraph_0_tidl_net.bin``: the model with that quantization on its output, as ONNX) and an IO
file; executing, it runs the network FROM THE ARTIFACTS FOLDER, never the ONNX path. So the tests
show that calibration frames reach compilation and that outputs come from the compiled artifacts;
they say nothing about TIDL's own compiler or its arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import save_model

from edgematrix.backends.base import create_runner
from edgematrix.backends.tidl.runner import TidlRunner, artifacts_key, has_artifacts
from edgematrix.errors import BackendError

_REAL_SESSION = ort.InferenceSession
RNG = np.random.default_rng(5)


def _network(model: bytes, scale: float) -> bytes:
    """The stand-in's compiled network: the model with its output quantized to int8 at ``scale``."""
    m = onnx.load_from_string(model)
    out = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [f"{o}_float" if o == out else o for o in node.output]
    m.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), "tidl_s"),
            numpy_helper.from_array(np.array(0, np.int8), "tidl_z"),
        ]
    )
    m.graph.node.extend(
        [
            helper.make_node("QuantizeLinear", [f"{out}_float", "tidl_s", "tidl_z"], ["tidl_q"]),
            helper.make_node("DequantizeLinear", ["tidl_q", "tidl_s", "tidl_z"], [out]),
        ]
    )
    return m.SerializeToString()


class _TidlStandIn:
    """TI's onnxruntime session as edgematrix calls it; compiles and executes as described above."""

    sessions: ClassVar[list[dict[str, Any]]] = []
    fail_compile: ClassVar[bool] = False

    def __init__(self, path: str, providers: list[str], provider_options: list[dict], sess_options: Any) -> None:
        self.providers, self.options = providers, provider_options[0]
        self.folder = Path(self.options["artifacts_folder"])
        self.record = {"providers": providers, "options": provider_options[0], "runs": 0}
        _TidlStandIn.sessions.append(self.record)
        if providers[0] == "TIDLCompilationProvider":
            if _TidlStandIn.fail_compile:
                (self.folder / "partial_tidl_net.bin").write_bytes(b"half")
                raise RuntimeError("TIDL import failed: layer not supported (stand-in)")
            self.model = Path(path).read_bytes()
            self._cpu = _REAL_SESSION(self.model, providers=["CPUExecutionProvider"])
            self.peak = 0.0
        else:  # execution: the network comes from the artifacts
            net = self.folder / "subgraph_0_tidl_net.bin"
            self._cpu = _REAL_SESSION(net.read_bytes(), providers=["CPUExecutionProvider"])

    def run(self, names: Any, feed: dict) -> list:
        self.record["runs"] += 1
        outputs = self._cpu.run(names, feed)
        if self.providers[0] == "TIDLCompilationProvider":
            self.peak = max(self.peak, float(np.abs(outputs[0]).max()))
            (self.folder / "subgraph_0_tidl_net.bin").write_bytes(_network(self.model, self.peak / 127))
            (self.folder / "subgraph_0_tidl_io_1.bin").write_bytes(np.float32(self.peak / 127).tobytes())
        return outputs

    def get_providers(self) -> list[str]:
        return self.providers

    def __getattr__(self, name: str) -> Any:  # get_inputs / get_outputs: the network's
        return getattr(self._cpu, name)


@pytest.fixture
def tidl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[_TidlStandIn]:
    _TidlStandIn.sessions = []
    _TidlStandIn.fail_compile = False
    tools = tmp_path / "tidl_tools"
    tools.mkdir()
    monkeypatch.setenv("TIDL_TOOLS_PATH", str(tools))
    providers = ["TIDLExecutionProvider", "TIDLCompilationProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    monkeypatch.setattr(ort, "InferenceSession", _TidlStandIn)
    return _TidlStandIn


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
        [numpy_helper.from_array(RNG.standard_normal((2, 3, 3, 3)).astype(np.float32), "w")],
    )
    return save_model(graph, tmp_path_factory.mktemp("tidl") / "conv.onnx")


def _frames(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(n)]


def _float(model: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return _REAL_SESSION(str(model), providers=["CPUExecutionProvider"]).run(["y"], feed)[0]


def test_compiles_into_a_keyed_folder_and_scores_the_artifacts(
    conv: Path, tidl: type[_TidlStandIn], tmp_path: Path
) -> None:
    calibration = _frames(6, seed=1)
    options = TidlRunner.options_for({}, role="candidate", precision="fx8")
    runner = create_runner(
        "tidl", path=conv, artifacts_root=tmp_path / "art", calibration=calibration, calibration_frames=4, **options
    )
    feeds = _frames(3, seed=2)
    with runner:
        outputs = [runner.infer(f)["y"] for f in feeds]
        facts = runner.facts()
    compiled, running = tidl.sessions
    assert compiled["runs"] == 4  # calibration_frames of the 6 feeds
    assert compiled["options"]["advanced_options:prequantized_model"] == 1
    assert (
        compiled["options"]["advanced_options:quantization_scale_type"] == 1 and compiled["options"]["tensor_bits"] == 8
    )
    folder = tmp_path / "art" / str(facts["artifacts_key"])
    assert running["options"]["artifacts_folder"] == str(folder) and has_artifacts(folder)
    assert [p.name for p in (tmp_path / "art").iterdir()] == [folder.name]  # the temporary folder was renamed
    assert facts["compiled_now"] == 1 and facts["precision"] == "fx8"
    scale = max(float(np.abs(_float(conv, f)).max()) for f in calibration[:4]) / 127
    for feed, got in zip(feeds, outputs, strict=True):
        want = np.clip(np.round(_float(conv, feed) / np.float32(scale)), -128, 127).astype(np.float32) * np.float32(
            scale
        )
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # the compiled (8-bit) network's outputs
        assert not np.allclose(got, _float(conv, feed), rtol=0, atol=1e-4)  # not the float ONNX model's


def test_same_inputs_reuse_the_folder_other_calibration_compiles_anew(
    conv: Path, tidl: type[_TidlStandIn], tmp_path: Path
) -> None:
    root = tmp_path / "art"
    first = TidlRunner(conv, artifacts_root=root, calibration=_frames(3, seed=1))
    with first:
        pass
    again = TidlRunner(conv, artifacts_root=root, calibration=_frames(3, seed=1))
    with again:
        assert again.facts()["compiled_now"] == 0
    other = TidlRunner(conv, artifacts_root=root, calibration=_frames(3, seed=9))
    with other:
        assert other.facts()["compiled_now"] == 1
    assert [s["providers"][0] for s in tidl.sessions] == [
        "TIDLCompilationProvider",
        "TIDLExecutionProvider",
        "TIDLExecutionProvider",
        "TIDLCompilationProvider",
        "TIDLExecutionProvider",
    ]
    assert first.artifacts_key == again.artifacts_key != other.artifacts_key
    assert sorted(p.name for p in root.iterdir()) == sorted([str(first.artifacts_key), str(other.artifacts_key)])


def test_key_follows_model_options_frames_and_runtime(conv: Path, tmp_path: Path) -> None:
    from edgematrix.backends.tidl.options import TidlCompileOptions

    options = TidlCompileOptions(artifacts_folder=tmp_path / "a", tidl_tools_path=tmp_path)
    frames = _frames(2, seed=1)
    key = artifacts_key(conv, options, frames, "1.14.0+10010400")
    moved = TidlCompileOptions(artifacts_folder=tmp_path / "b", tidl_tools_path=tmp_path / "elsewhere")
    assert artifacts_key(conv, moved, frames, "1.14.0+10010400") == key  # folders are not content
    assert artifacts_key(conv, options, frames, "1.15.0") != key
    assert (
        artifacts_key(conv, TidlCompileOptions(artifacts_folder=tmp_path, tensor_bits=16), frames, "1.14.0+10010400")
        != key
    )
    assert artifacts_key(conv, options, frames[:1], "1.14.0+10010400") != key


def test_a_failed_compilation_leaves_no_folder(conv: Path, tidl: type[_TidlStandIn], tmp_path: Path) -> None:
    tidl.fail_compile = True
    runner = TidlRunner(conv, artifacts_root=tmp_path / "art", calibration=_frames(2, seed=1))
    with pytest.raises(RuntimeError, match="TIDL import failed"):
        runner.activate()
    assert list((tmp_path / "art").iterdir()) == []


def test_options_for_reference_and_bad_precision(conv: Path) -> None:
    assert TidlRunner.options_for({}, role="reference", precision="int8") == {"precision": "fp32", "tensor_bits": 32}
    assert TidlRunner.options_for({}, role="candidate", precision="int8")["tensor_bits"] == 8
    with pytest.raises(BackendError, match="int8 or fx8, not 'fp16'"):
        TidlRunner.options_for({}, role="candidate", precision="fp16")
    with pytest.raises(BackendError, match="compile=False needs artifacts_folder"):
        TidlRunner(conv, compile=False)

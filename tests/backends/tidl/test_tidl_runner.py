"""TIDL compile options (TI's key names) and the onnxruntime-tidl runner's flow and errors.

TI's onnxruntime build and tidl_tools are not installable here. What runs: the option mapping
against TI's documented keys, the error on this host's stock onnxruntime, and the compile → run
flow against a STAND-IN for TI's session (monkeypatched ``onnxruntime.InferenceSession`` that
records the providers/options it was given and writes placeholder artifact files the way TIDL
names them). It proves what edgematrix asks TI's runtime for, not that TIDL compiles a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgematrix.backends.base import backends, create_runner, load_builtin_backends
from edgematrix.backends.tidl.options import TidlCompileOptions
from edgematrix.backends.tidl.runner import TidlRunner, compile_model, has_artifacts
from edgematrix.errors import BackendError, ModelError, ToolNotFoundError


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "unused")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("m") / "relu.onnx"
    onnx.save(m, str(path))
    return path


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tidl_tools"
    folder.mkdir()
    monkeypatch.setenv("TIDL_TOOLS_PATH", str(folder))
    return folder


def test_compile_options_use_tis_keys(tmp_path: Path, tools: Path) -> None:
    options = TidlCompileOptions(
        artifacts_folder=tmp_path / "art",
        tensor_bits=8,
        accuracy_level=1,
        calibration_frames=25,
        calibration_iterations=10,
        quantization_scale_type=1,
        prequantized_model=True,
        deny_list_layer_type=("MaxPool", "Resize"),
        output_feature_16bit_names_list=("conv1",),
        extra={"advanced_options:high_resolution_optimization": 0},
    )
    assert options.provider_options() == {
        "tidl_tools_path": str(tools),
        "artifacts_folder": str(tmp_path / "art"),
        "tensor_bits": 8,
        "debug_level": 0,
        "max_num_subgraphs": 16,
        "accuracy_level": 1,
        "deny_list:layer_type": "MaxPool, Resize",
        "deny_list:layer_name": "",
        "advanced_options:calibration_frames": 25,
        "advanced_options:calibration_iterations": 10,
        "advanced_options:quantization_scale_type": 1,
        "advanced_options:output_feature_16bit_names_list": "conv1",
        "advanced_options:params_16bit_names_list": "",
        "advanced_options:prequantized_model": 1,
        "advanced_options:high_resolution_optimization": 0,
    }
    assert options.inference_options(tools_path=tools) == {
        "artifacts_folder": str(tmp_path / "art"),
        "debug_level": 0,
        "tidl_tools_path": str(tools),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tensor_bits": 4}, r"tensor_bits must be one of \(8, 16, 32\)"),
        ({"accuracy_level": 2}, r"accuracy_level must be one of \(0, 1, 9\)"),
        ({"quantization_scale_type": 2}, r"0 \(non-power-of-2\), 1 \(power-of-2\)"),
        ({"debug_level": 7}, "debug_level must be 0..6"),
        ({"calibration_frames": 0}, "calibration_frames must be >= 1"),
        ({"extra": {"advanced_options:calibration_frame": 3}}, r"unknown TIDL option\(s\)"),
    ],
)
def test_bad_compile_options(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=message):
        TidlCompileOptions(artifacts_folder=tmp_path, **kwargs)


def test_missing_tidl_tools_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDL_TOOLS_PATH", raising=False)
    with pytest.raises(BackendError, match=r"TIDL tools not found \(\$TIDL_TOOLS_PATH is not set\).*setup\.sh"):
        TidlCompileOptions(artifacts_folder=tmp_path).provider_options()
    with pytest.raises(BackendError, match="is not a folder"):
        TidlCompileOptions(artifacts_folder=tmp_path, tidl_tools_path=tmp_path / "nope").tools_path()


def test_registered_and_clear_error_on_stock_onnxruntime(model: Path, tmp_path: Path) -> None:
    load_builtin_backends()
    assert backends.get("tidl") is TidlRunner
    assert "TIDLExecutionProvider" not in ort.get_available_providers()
    runner = create_runner("tidl", path=model, artifacts_folder=tmp_path / "art")
    with pytest.raises(ToolNotFoundError) as err:
        runner.activate()
    message = str(err.value)
    assert "TIDLExecutionProvider is not in this onnxruntime" in message
    assert ", ".join(ort.get_available_providers()) in message
    assert "onnxruntime_tidl" in message and "fx8_from_qdq" in message
    assert not runner.is_active


_REAL_SESSION = ort.InferenceSession


class _TidlStandIn:
    """Stands in for TI's onnxruntime session: records what it got, writes TIDL-named artifacts."""

    created: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, path: str, providers: list[str], provider_options: list[dict], sess_options: Any) -> None:
        self.providers, self.options = providers, provider_options[0]
        _TidlStandIn.created.append({"providers": providers, "options": provider_options[0], "runs": 0})
        self._cpu = _REAL_SESSION(path, providers=["CPUExecutionProvider"])
        if providers[0] == "TIDLCompilationProvider":
            folder = Path(self.options["artifacts_folder"])
            (folder / "subgraph_0_tidl_net.bin").write_bytes(b"placeholder")
            (folder / "subgraph_0_tidl_io_1.bin").write_bytes(b"placeholder")

    def run(self, names: Any, feed: dict) -> list:
        _TidlStandIn.created[-1]["runs"] += 1
        return self._cpu.run(names, feed)

    def get_inputs(self) -> Any:
        return self._cpu.get_inputs()

    def get_outputs(self) -> Any:
        return self._cpu.get_outputs()

    def get_providers(self) -> list[str]:
        return self.providers


@pytest.fixture
def tidl_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> type[_TidlStandIn]:
    _TidlStandIn.created = []
    providers = ["TIDLExecutionProvider", "TIDLCompilationProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    monkeypatch.setattr(ort, "InferenceSession", _TidlStandIn)
    return _TidlStandIn


def test_compile_then_run_flow(model: Path, tmp_path: Path, tools: Path, tidl_onnxruntime: type[_TidlStandIn]) -> None:
    feeds = [{"x": np.full((1, 3, 4, 4), i, np.float32)} for i in range(5)]
    art = tmp_path / "art"
    runner = TidlRunner(model, artifacts_folder=art, compile=True, calibration=feeds, calibration_frames=3)
    with runner:
        out = runner.infer({"x": -np.ones((1, 3, 4, 4), np.float32)})
        facts = runner.facts()
    compiled, running = tidl_onnxruntime.created
    assert compiled["providers"] == ["TIDLCompilationProvider", "CPUExecutionProvider"]
    assert compiled["runs"] == 3  # calibration_frames of the 5 feeds
    assert compiled["options"]["artifacts_folder"] == str(art)
    assert compiled["options"]["tidl_tools_path"] == str(tools)
    assert compiled["options"]["advanced_options:calibration_frames"] == 3
    assert running["providers"] == ["TIDLExecutionProvider", "CPUExecutionProvider"]
    assert running["options"] == {"artifacts_folder": str(art), "debug_level": 0, "tidl_tools_path": str(tools)}
    assert has_artifacts(art)
    np.testing.assert_array_equal(out["y"], np.zeros((1, 3, 4, 4), np.float32))
    assert facts["backend"] == "tidl" and facts["tensor_bits"] == 8
    assert facts["providers"] == "TIDLExecutionProvider,CPUExecutionProvider"


def test_run_without_artifacts_and_without_compile_is_refused(
    model: Path, tmp_path: Path, tidl_onnxruntime: type
) -> None:
    with pytest.raises(BackendError, match=r"no TIDL artifacts in .*compile=True"):
        TidlRunner(model, artifacts_folder=tmp_path / "empty").activate()


def test_compile_needs_calibration_frames_and_a_model(
    model: Path, tmp_path: Path, tools: Path, tidl_onnxruntime: type
) -> None:
    options = TidlCompileOptions(artifacts_folder=tmp_path / "art")
    with pytest.raises(BackendError, match="got no calibration frames"):
        compile_model(model, options, [])
    with pytest.raises(ModelError, match="does not exist"):
        compile_model(tmp_path / "missing.onnx", options, [{"x": np.zeros((1, 3, 4, 4), np.float32)}])

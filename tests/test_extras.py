"""A missing optional runtime is one line naming the pyproject extra to install, exit 2 (never a traceback)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from edgematrix import cli
from edgematrix.backends.base import create_runner
from edgematrix.errors import EdgeMatrixError
from edgematrix.extras import OPTIONAL_RUNTIMES, MissingExtraError, missing_extra, require_runtime

REPO = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("module", sorted(OPTIONAL_RUNTIMES))
def test_every_named_extra_installs_the_runtime(module: str) -> None:
    rt = OPTIONAL_RUNTIMES[module]
    for extra in rt.extras:
        assert extra in EXTRAS, f"{module}: pyproject.toml has no extra {extra!r}"
        names = {Requirement(d).name.lower().replace("_", "-") for d in EXTRAS[extra]}
        dist = rt.distribution.lower().replace("_", "-")
        assert dist in names or (dist == "onnxruntime" and "onnxruntime-gpu" in names), (extra, dist)


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "relu.onnx"
    onnx.save(model, str(path))
    return path


def _cli_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgematrix ARGS`` in a fresh interpreter where ``module`` cannot be imported (as if not installed)."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\nfrom edgematrix.cli import main\nsys.exit(main({list(args)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    ("module", "backend", "extra"),
    [("onnxruntime", "onnxruntime", "cpu"), ("openvino", "openvino", "openvino")],
)
def test_measure_without_the_runtime_names_the_extra_and_exits_2(
    tiny_onnx: Path, module: str, backend: str, extra: str
) -> None:
    proc = _cli_without(module, "measure", str(tiny_onnx), "--backend", backend, "--rounds", "3")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"edgematrix: error: the {backend} backend needs ")
    assert f"(module {module}), which is not installed here: pip install 'edgematrix[{extra}]'" in lines[0]


def test_measure_with_the_runtime_installed_runs(tiny_onnx: Path) -> None:
    """The same command with ONNX Runtime importable measures (the check does not refuse a real install)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "edgematrix.cli", "measure", str(tiny_onnx), "--rounds", "3", "--min-time-s", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend onnxruntime: p50 " in proc.stdout


def test_activating_a_runner_raises_the_typed_error(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    runner = create_runner("onnxruntime", path=tiny_onnx)  # constructing imports no runtime
    with pytest.raises(MissingExtraError) as err, runner:
        pass
    assert not runner.is_active
    assert isinstance(err.value, EdgeMatrixError)
    assert (err.value.module, err.value.extra) == ("onnxruntime", "cpu")
    assert "(or edgematrix[gpu])" in str(err.value)


def test_cli_maps_a_lazy_import_outside_the_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any command whose lazy import of an optional runtime fails ends in the same one line, exit 2."""
    monkeypatch.setitem(sys.modules, "torch_pruning", None)

    def prune(args: object) -> int:
        importlib.import_module("torch_pruning")
        return 0

    monkeypatch.setattr(cli, "_cmd_list", prune)  # build_parser() binds `edgematrix list` to it
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "edgematrix: error: `edgematrix list` needs torch-pruning (module torch_pruning), which is not installed "
        "here: pip install 'edgematrix[optimize]', or run it through its Nox session, which installs the "
        "target's extras"
    ]


def test_other_import_errors_are_not_taken_for_a_missing_extra() -> None:
    # an unknown module: a bug or a broken install, not an extra
    assert missing_extra(ModuleNotFoundError("No module named 'nothing_here'", name="nothing_here")) is None
    # a runtime that is installed but lacks a submodule: not a missing extra either
    broken = ModuleNotFoundError("No module named 'onnxruntime.nope'", name="onnxruntime.nope")
    assert missing_extra(broken) is None
    with pytest.raises(KeyError, match="not an optional runtime"):
        require_runtime("numpy", needed_for="x")

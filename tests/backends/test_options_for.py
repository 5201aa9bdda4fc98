"""``Runner.options_for``: each backend derives its runner's keyword arguments from (target, role, precision).

The onnxruntime / openvino / torch values are those ``pipeline/cell.py::_runner_kwargs`` produced
before the backends owned them (checked equal for all 19 cells of matrix/ x 3 roles when this test
was written); they are written out here so the test does not depend on that function.
"""

from __future__ import annotations

from typing import Any

import pytest

from edgematrix.backends.base import Runner, backends, load_builtin_backends
from edgematrix.errors import BackendError
from edgematrix.matrix.loader import load_matrix

load_builtin_backends()
TARGETS = load_matrix().targets
MODEL = {"input_shape": [1, 3, 64, 160], "output_names": ("loc_row", "loc_col", "exist_row", "exist_col")}


def _target(name: str) -> dict[str, Any]:
    return TARGETS[name].model_dump()


@pytest.mark.parametrize("name", sorted(backends.names()))
def test_every_backend_answers_with_plain_keyword_arguments(name: str) -> None:
    cls = backends.get(name)
    assert issubclass(cls, Runner) and "options_for" in vars(cls), f"{name} inherits the empty default"
    target = _target(
        {"tensorrt": "jetson", "trt_cpp": "driveos", "tidl": "ti", "torch": "x86_gpu"}.get(name, "x86_cpu")
    )
    precision = {"tidl": "int8"}.get(name, "int8")
    for role in ("reference", "candidate"):
        options = cls.options_for(target, role=role, precision=precision, model=MODEL)
        assert isinstance(options, dict) and all(isinstance(k, str) for k in options)


def test_onnxruntime_and_openvino_take_the_targets_providers_and_threads() -> None:
    target = _target("x86_cpu")
    for role in ("reference", "candidate", "base"):
        assert backends.get("onnxruntime").options_for(target, role=role, precision="int8") == {
            "providers": ("CPUExecutionProvider",),
            "intra_op_threads": 0,
        }
        assert backends.get("openvino").options_for(target, role=role, precision="int8") == {
            "intra_op_threads": 0,
            "exact_fp32": True,
        }
    custom = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "threads": 3}
    cuda = {
        "device_id": 0,
        "use_tf32": False,
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": True,
        "arena_extend_strategy": "kSameAsRequested",
    }
    assert backends.get("onnxruntime").options_for(custom, role="candidate", precision="fp16") == {
        "providers": (("CUDAExecutionProvider", cuda), "CPUExecutionProvider"),
        "intra_op_threads": 3,
    }


def test_torch_runs_fp32_eager_except_an_fp16_role() -> None:
    torch_runner = backends.get("torch")
    target = _target("x86_gpu")
    eager = {
        "input_shape": (1, 3, 64, 160),
        "device": "cuda",
        "mode": "fp32",
        "channels_last": False,
        "cuda_graph": False,
        "output_names": MODEL["output_names"],
    }
    assert torch_runner.options_for(target, role="reference", precision="fp16", model=MODEL) == eager
    assert torch_runner.options_for(target, role="candidate", precision="int8", model=MODEL) == eager
    fast = dict(eager, mode="fp16", channels_last=True, cuda_graph=True)
    assert torch_runner.options_for(target, role="candidate", precision="fp16", model=MODEL) == fast

    class Spec:  # attributes work as well as a mapping
        input_shape = (1, 3, 8, 8)
        output_names = None

    assert torch_runner.options_for(target, role="reference", precision="fp32", model=Spec())["output_names"] is None
    with pytest.raises(BackendError, match="pass model= with input_shape"):
        torch_runner.options_for(target, role="reference", precision="fp32")


@pytest.mark.parametrize("name", ["tensorrt", "trt_cpp"])
def test_tensorrt_engines_are_fp32_for_the_reference_and_the_recipes_precision_otherwise(name: str) -> None:
    cls = backends.get(name)
    target = _target("jetson")
    assert cls.options_for(target, role="reference", precision="int8") == {"precision": "fp32"}
    assert cls.options_for(target, role="candidate", precision="fp16") == {"precision": "fp16"}
    assert cls.options_for(target, role="base", precision="int8") == {"precision": "int8"}
    with pytest.raises(BackendError, match="fx8 is TI's fixed point"):
        cls.options_for(target, role="candidate", precision="fx8")


def test_split_gives_the_threads_to_every_subgraph() -> None:
    assert backends.get("split").options_for({"threads": 2}, role="candidate", precision="int8") == {
        "intra_op_threads": 2,
        "threads": 2,
    }

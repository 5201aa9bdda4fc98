"""Request option validation: every unknown name or bad value is refused with what is valid."""

from __future__ import annotations

from typing import Any

import pytest

from edgematrix.server.options import DEFAULT_CONFIG, OptionError, runner_option_names, validate_request


def check(meta: dict[str, Any], timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    return validate_request(meta, default_backend="onnxruntime", timeout_s=timeout_s)


def test_defaults_are_those_of_local_meter() -> None:
    order = check({"op": "measure"})
    assert order.backend == "onnxruntime" and order.model_suffix == ".onnx"
    assert {k: order.config[k] for k in DEFAULT_CONFIG} == DEFAULT_CONFIG
    assert order.config["max_rounds"] == 1000 and order.return_samples is True
    assert check({"op": "run"}).config == {}


def test_runner_options_come_from_the_remote_allow_list() -> None:
    names = runner_option_names("onnxruntime")
    assert names == ["allow_spinning", "intra_op_threads", "optimization", "precision", "providers"]
    assert "executable" not in runner_option_names("tensorrt") and "workdir" not in runner_option_names("tensorrt")
    assert check({"op": "measure", "runner_options": {"intra_op_threads": 2}}).runner_options == {"intra_op_threads": 2}


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"op": "train"}, "valid operations: measure, run"),
        (
            {"op": "run", "config": {}},
            "unknown option config; valid options: backend, model_suffix, op, runner_options",
        ),
        ({"op": "measure", "config": {"warmup": "5"}}, "config option 'warmup' must be int"),
        ({"op": "measure", "config": {"min_time_s": True}}, "config option 'min_time_s' must be float"),
        ({"op": "measure", "config": {"min_rounds": 10, "max_rounds": 5}}, "need 1 <= min_rounds <= max_rounds"),
        (
            {"op": "measure", "config": {"min_time_s": 90.0, "max_time_s": 100.0}},
            "'min_time_s' is 90.0; this server allows 0 to 60",
        ),
        ({"op": "measure", "model_suffix": ".pt"}, "valid: .onnx, .engine, .plan, .trt"),
        ({"op": "measure", "runner_options": [1]}, "'runner_options' must be an object"),
        ({"op": "measure", "seed": -1}, "'seed' must be an integer >= 0"),
        ({"op": "measure", "return_samples": "yes"}, "'return_samples' must be true or false"),
    ],
)
def test_bad_options_are_refused(meta: dict[str, Any], needle: str) -> None:
    with pytest.raises(OptionError) as info:
        check(meta)
    assert needle in str(info.value)

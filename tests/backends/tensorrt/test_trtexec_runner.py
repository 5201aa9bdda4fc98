"""trtexec command construction, and the whole build → time → parse → check flow.

TensorRT cannot be installed on this host. The flow tests put a FAKE ``trtexec`` on PATH
(``fake_trtexec.py``) that records its argv and REPLAYS recorded output of real trtexec runs
(``data/``, sources in ``data/PROVENANCE.md``). They prove what edgematrix asks trtexec to do and
what it makes of trtexec's answers, not that TensorRT builds these engines: no engine was built here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgematrix.backends.base import backends, create_runner, load_builtin_backends
from edgematrix.backends.tensorrt.loader import (
    TrtexecBuildOptions,
    build_command,
    onnx_has_qdq,
    parse_trtexec_version,
    with_outputs,
)
from edgematrix.backends.tensorrt.runner import (
    TensorrtRunner,
    TrtexecMeter,
    find_trtexec,
    options_from_mapping,
    run_trtexec,
)
from edgematrix.errors import BackendError, ModelError, PrecisionMismatchError, ToolNotFoundError
from edgematrix.measure.meter import LatencyMeter

HERE = Path(__file__).parent
DATA = HERE / "data"


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [w],
    )
    return _save(graph, tmp_path_factory.mktemp("onnx") / "conv_fp32.onnx")


@pytest.fixture(scope="module")
def qdq_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")],
    )
    return _save(graph, tmp_path_factory.mktemp("onnx") / "conv_qdq.onnx")


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# -- versions and command lines -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("banner", "version"),
    [
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100600] [b26] # trtexec --help", (10, 6, 0)),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100200] # trtexec.exe --loadEngine=x", (10, 2, 0)),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", (8, 6, 1)),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8401] # trtexec", (8, 4, 1)),
        ("no banner", None),
    ],
)
def test_version_banner(banner: str, version: tuple[int, int, int] | None) -> None:
    assert parse_trtexec_version(banner) == version


def test_qdq_detection(fp32_onnx: Path, qdq_onnx: Path) -> None:
    assert not onnx_has_qdq(fp32_onnx)
    assert onnx_has_qdq(qdq_onnx)


def test_int8_from_qdq_with_dla_timing_cache_and_exports(qdq_onnx: Path, tmp_path: Path) -> None:
    options = TrtexecBuildOptions(
        onnx=qdq_onnx,
        precision="int8",
        dla_core=1,
        timing_cache=tmp_path / "timing.cache",
        workspace_mib=2048,
        save_engine=tmp_path / "m.engine",
        layer_info=tmp_path / "layers.json",
        times=tmp_path / "times.json",
        profile=tmp_path / "profile.json",
        iterations=200,
        warmup_ms=500,
    )
    argv = build_command(options, version=(10, 6, 0))
    assert argv == [
        "trtexec",
        f"--onnx={qdq_onnx}",
        "--int8",
        "--fp16",
        "--memPoolSize=workspace:2048",
        f"--timingCacheFile={tmp_path / 'timing.cache'}",
        f"--saveEngine={tmp_path / 'm.engine'}",
        "--profilingVerbosity=detailed",
        "--useDLACore=1",
        "--allowGPUFallback",
        f"--exportLayerInfo={tmp_path / 'layers.json'}",
        f"--exportTimes={tmp_path / 'times.json'}",
        f"--exportProfile={tmp_path / 'profile.json'}",
        "--separateProfileRun",
        "--iterations=200",
        "--warmUp=500",
        "--useSpinWait",
    ]


def test_int8_implicit_quantization_needs_a_calibration_cache(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no QuantizeLinear/DequantizeLinear nodes and no calibration_cache"):
        build_command(TrtexecBuildOptions(onnx=fp32_onnx, precision="int8"))
    cache = tmp_path / "calib.cache"
    argv = build_command(
        TrtexecBuildOptions(onnx=fp32_onnx, precision="int8", calibration_cache=cache, fp16_fallback=False)
    )
    assert argv[1:4] == [f"--onnx={fp32_onnx}", "--int8", f"--calib={cache}"]
    assert "--fp16" not in argv


def test_qdq_with_calibration_cache_is_refused(qdq_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="ignores a calibration cache"):
        build_command(TrtexecBuildOptions(onnx=qdq_onnx, precision="int8", calibration_cache=tmp_path / "c"))


def test_version_differences(fp32_onnx: Path, tmp_path: Path) -> None:
    options = TrtexecBuildOptions(onnx=fp32_onnx, workspace_mib=1024, build_only=True, layer_info=tmp_path / "l.json")
    new = build_command(options, version=(8, 6, 1))
    assert "--memPoolSize=workspace:1024" in new and "--skipInference" in new
    old = build_command(replace_layer_info(options, None), version=(8, 2, 5))
    assert "--workspace=1024" in old and "--buildOnly" in old and "--skipInference" not in old
    with pytest.raises(BackendError, match=r"--exportLayerInfo needs TensorRT 8\.4"):
        build_command(options, version=(8, 2, 5))
    assert not any(arg.startswith("--explicitBatch") for arg in new)


def replace_layer_info(options: TrtexecBuildOptions, value: Path | None) -> TrtexecBuildOptions:
    from dataclasses import replace

    return replace(options, layer_info=value)


def test_loaded_engine_command_times_without_build_flags(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    argv = build_command(
        TrtexecBuildOptions(engine=engine, precision="int8", dla_core=0, times=tmp_path / "t.json", duration_s=5.0)
    )
    assert argv == ["trtexec", f"--loadEngine={engine}", "--useDLACore=0", f"--exportTimes={tmp_path / 't.json'}",
                    "--duration=5", "--useSpinWait"]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of onnx="),
        ({"onnx": Path("a.onnx"), "engine": Path("a.engine")}, "exactly one of onnx="),
        ({"onnx": Path("a.onnx"), "precision": "int4"}, "not one of fp32, fp16, int8"),
        ({"onnx": Path("a.onnx"), "precision": "fp32", "dla_core": 0}, "DLA runs FP16 or INT8 only"),
        ({"onnx": Path("a.onnx"), "dla_core": -1}, "dla_core must be >= 0"),
        ({"onnx": Path("a.onnx"), "build_only": True, "times": Path("t.json")}, "build_only builds without"),
        ({"onnx": Path("a.onnx"), "shapes": {"x": (1, 0, 4)}}, "positive sizes"),
        ({"onnx": Path("a.onnx"), "iterations": -5}, "iterations must be >= 0"),
    ],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        TrtexecBuildOptions(**kwargs)


def test_options_from_json_mapping(fp32_onnx: Path) -> None:
    options = options_from_mapping(
        fp32_onnx, {"precision": "fp16", "shapes": {"x": [1, 3, 4, 4]}, "extra_args": ["--verbose"]}
    )
    assert options.onnx == fp32_onnx and options.shapes == {"x": (1, 3, 4, 4)}
    assert build_command(options)[-2:] == ["--useSpinWait", "--verbose"]
    assert "--shapes=x:1x3x4x4" in build_command(options)
    with pytest.raises(BackendError, match=r"unknown trtexec option\(s\) \['fp16'\]; known: allow_gpu_fallback"):
        options_from_mapping(fp32_onnx, {"fp16": True})


# -- trtexec missing ---------------------------------------------------------------------------


def test_missing_trtexec_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    monkeypatch.delenv("EDGEMATRIX_TRTEXEC", raising=False)
    with pytest.raises(ToolNotFoundError) as err:
        find_trtexec()
    message = str(err.value)
    assert "trtexec not found" in message and "/usr/src/tensorrt/bin/trtexec" in message
    assert "install TensorRT" in message and "--runner docker" in message and "--runner remote" in message
    monkeypatch.setenv("EDGEMATRIX_TRTEXEC", str(tmp_path / "nope" / "trtexec"))
    with pytest.raises(ToolNotFoundError, match="nope/trtexec"):
        find_trtexec()


def test_runner_activation_without_trtexec_fails_clearly(
    fp32_onnx: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("EDGEMATRIX_TRTEXEC", raising=False)
    runner = create_runner("tensorrt", path=fp32_onnx, precision="fp16")
    with pytest.raises(ToolNotFoundError, match="trtexec not found"):
        runner.activate()
    assert not runner.is_active


# -- the flow, against the replaying fake ----------------------------------------------------------


def test_registered_by_name_and_lazy() -> None:
    load_builtin_backends()
    assert "tensorrt" in backends.names()
    assert backends.get("tensorrt") is TensorrtRunner
    assert "tensorrt" not in sys.modules  # no TensorRT import anywhere


def test_run_trtexec_parses_every_export(fake_trtexec: Path, qdq_onnx: Path, tmp_path: Path) -> None:
    options = with_outputs(TrtexecBuildOptions(onnx=qdq_onnx, precision="int8"), tmp_path, "m")
    result = run_trtexec(options)
    assert result.version == (10, 6, 0)
    (argv,) = _calls(fake_trtexec)
    assert argv[:3] == [f"--onnx={qdq_onnx}", "--int8", "--fp16"]
    assert f"--exportLayerInfo={tmp_path / 'm.layers.json'}" in argv
    assert result.engine == tmp_path / "m.engine" and result.engine.is_file()
    assert result.times is not None and len(result.times.records) == 20
    assert result.profile is not None and result.profile.iterations == 4216
    assert result.layers is not None and result.layers.precision_counts() == {"int8": 8}
    assert result.summary is not None and result.summary.throughput_qps == pytest.approx(130.298)
    report = result.latency_report()
    assert report.rounds == 20 and report.facts["tensorrt_version"] == "10.6.0"
    assert report.facts["gpu_compute_mean_ms"] == pytest.approx(7.58404)


def test_trtexec_failure_shows_its_output(fake_trtexec: Path, fp32_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TRTEXEC_EXIT", "1")
    monkeypatch.setenv("FAKE_TRTEXEC_ERROR", "[E] Error[4]: [network.cpp::validate::2789] Error Code 4: Internal Error")
    with pytest.raises(BackendError, match=r"(?s)trtexec failed \(exit 1\).*Error Code 4"):
        run_trtexec(TrtexecBuildOptions(onnx=fp32_onnx, precision="fp16"))


def test_missing_model_is_a_model_error(fake_trtexec: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        run_trtexec(TrtexecBuildOptions(onnx=tmp_path / "missing.onnx"))


def test_meter_is_a_latency_meter_and_reports_trace_percentiles(fake_trtexec: Path, qdq_onnx: Path) -> None:
    meter = TrtexecMeter(options={"precision": "int8", "dla_core": 0})
    assert isinstance(meter, LatencyMeter)
    report = meter.measure(qdq_onnx, options={"iterations": 20})
    assert report.backend == "tensorrt" and report.rounds == 20
    assert report.p50_ms == pytest.approx((0.444416 + 0.444512) / 2)  # median of the 20 recorded latencyMs values
    assert report.facts["realized_precision_fraction"] == 1.0
    assert report.facts["dla_core"] == 0 and report.facts["precision"] == "int8"
    (argv,) = _calls(fake_trtexec)
    assert "--useDLACore=0" in argv and "--allowGPUFallback" in argv and "--iterations=20" in argv
    compute = TrtexecMeter(options={"precision": "int8"}, metric="compute").measure(qdq_onnx)
    assert compute.facts["latency_metric"] == "trtexec computeMs"


def test_meter_fails_a_silent_fp32_fallback(
    fake_trtexec: Path, qdq_onnx: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    raw = json.loads((DATA / "trt8_mobilenet_qat.layers.json").read_text())
    for layer in raw["Layers"]:
        if layer["Name"].startswith("features.0.0.weight"):
            layer["Inputs"][0]["Format/Datatype"] = "Row major linear FP32"
    altered = tmp_path / "altered.layers.json"
    altered.write_text(json.dumps(raw))
    monkeypatch.setenv("FAKE_TRTEXEC_DATA", str(tmp_path))
    for name in ("trt8_mobilenet_qat.times.json", "trt8_mobilenet_qat.profile.json", "issue4177_2024.stdout.txt"):
        (tmp_path / name).write_text((DATA / name).read_text())
    monkeypatch.setenv("FAKE_TRTEXEC_LAYERS", "altered.layers.json")
    with pytest.raises(PrecisionMismatchError, match=r"features\.0\.0\.weight \+ QuantizeLinear_8 \+ Conv_12"):
        TrtexecMeter(options={"precision": "int8"}).measure(qdq_onnx)


def test_runner_builds_checks_and_measures(fake_trtexec: Path, qdq_onnx: Path, tmp_path: Path) -> None:
    runner = create_runner(
        "tensorrt", path=qdq_onnx, precision="int8", workdir=tmp_path / "work", name="cand", inference="none"
    )
    assert isinstance(runner, TensorrtRunner)
    with runner:
        build_argv = _calls(fake_trtexec)[0]
        assert "--skipInference" in build_argv and not any(a.startswith("--exportTimes") for a in build_argv)
        assert runner.engine_path == tmp_path / "work" / "conv_qdq.int8.engine"
        meta = runner.input_metadata()
        assert list(meta) == ["x"] and meta["x"].shape == (1, 3, 4, 4) and meta["x"].dtype.name == "float32"
        report = runner.measure(iterations=20)
        time_argv = _calls(fake_trtexec)[1]
        assert time_argv[0] == f"--loadEngine={runner.engine_path}" and "--iterations=20" in time_argv
        assert report.rounds == 20 and report.facts["runner"] == "cand"
        facts = runner.facts()
        assert facts["backend"] == "tensorrt" and facts["compute_layers_int8"] == 8
        assert facts["engine_bytes"] > 0
        import numpy as np

        with pytest.raises(BackendError, match=r"inference='none' \(build and time only\).*'polygraphy'"):
            runner.infer({"x": np.zeros((1, 3, 4, 4), np.float32)})
    with pytest.raises(BackendError, match="not active"):
        runner.measure()


def test_runner_rejects_unknown_options_at_construction(qdq_onnx: Path) -> None:
    with pytest.raises(BackendError, match=r"unknown trtexec option\(s\) \['int8_mode'\]"):
        TensorrtRunner(qdq_onnx, int8_mode=True)

"""trtexec output parsers on RECORDED output of real trtexec runs (sources: data/PROVENANCE.md).

Expected values below are read off the recorded files by hand (first/last records, counts), so a
parser that shifts a field or drops a record fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgematrix.backends.tensorrt.parsers import (
    EngineInfo,
    check_precision,
    latency_report_from_times,
    parse_layer,
    parse_layer_info,
    parse_performance_summary,
    parse_profile,
    parse_times,
    precision_of_format,
)
from edgematrix.errors import BackendError, PrecisionMismatchError
from edgematrix.measure.meter import LatencyReport

DATA = Path(__file__).parent / "data"


# -- exportTimes ------------------------------------------------------------------------------


def test_times_records_and_fields_match_the_recorded_file() -> None:
    trace = parse_times(DATA / "trt8_mobilenet_qat.times.json")
    assert len(trace.records) == 20
    first, fifth, last = trace.records[0], trace.records[4], trace.records[-1]
    assert first.latency_ms == pytest.approx(0.459041)
    assert first.compute_ms == pytest.approx(0.459041)
    assert first.enqueue_ms == pytest.approx(12.7482 - 12.6384)
    assert first.h2d_ms == 0 and first.d2h_ms == 0
    assert fifth.latency_ms == pytest.approx(0.900864)  # the one slow inference of the trace
    assert last.start_compute_ms == pytest.approx(21.4865)
    assert trace.span_ms == pytest.approx(21.4865 + 0.445728 - 12.5399)


def test_times_become_harness_samples_with_numpy_percentiles() -> None:
    trace = parse_times(DATA / "trt8_mobilenet_qat.times.json")
    raw = json.loads((DATA / "trt8_mobilenet_qat.times.json").read_text())
    latencies = np.array([r["latencyMs"] for r in raw])
    samples = trace.samples("mobilenet")
    assert samples.rounds == 20
    assert samples.samples_s[0] == pytest.approx(0.459041e-3)
    assert samples.p50_ms == pytest.approx(float(np.percentile(latencies, 50)))
    assert samples.p99_ms == pytest.approx(float(np.percentile(latencies, 99)))
    assert 0.44 < samples.p50_ms < 0.45  # the typical inference, not the 0.90 ms outlier
    report = latency_report_from_times(trace, facts={"precision": "int8"})
    assert isinstance(report, LatencyReport)
    assert report.backend == "tensorrt" and report.rounds == 20
    assert report.mean_ms == pytest.approx(float(latencies.mean()))
    assert report.samples_ms[4] == pytest.approx(0.900864)
    assert report.facts == {"latency_metric": "trtexec latencyMs", "precision": "int8"}
    enqueue = trace.values_ms("enqueue")
    assert enqueue[1] == pytest.approx(12.7998 - 12.7579)


def test_times_tensorrt7_spelling_without_enqueue() -> None:
    """TensorRT 7 traces name transfers inMs/outMs (NVIDIA's tracer.py reads these keys)."""
    old = [{"startInMs": 1.0, "endInMs": 1.1, "startComputeMs": 1.1, "endComputeMs": 2.0, "startOutMs": 2.0,
            "endOutMs": 2.1, "inMs": 0.1, "computeMs": 0.9, "outMs": 0.1, "latencyMs": 1.1, "endToEndMs": 1.1}]  # fmt: skip
    trace = parse_times(old)
    assert trace.records[0].h2d_ms == pytest.approx(0.1) and trace.records[0].enqueue_ms is None
    with pytest.raises(BackendError, match="no enqueue times"):
        trace.values_ms("enqueue")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("[]", "non-empty JSON list"),
        ('{"a": 1}', "non-empty JSON list"),
        ('[{"latencyMs": 1.0}]', r"lacks \['computeMs', 'startComputeMs'\]"),
        ('[{"latencyMs": "x", "computeMs": 1, "startComputeMs": 0}]', "not a finite number"),
        ('[{"latencyMs": 1.0, ', "not valid JSON"),
    ],
)
def test_times_malformed_input_is_named(source: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        parse_times(source)


def test_times_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist; did trtexec run to the end"):
        parse_times(tmp_path / "times.json")


# -- exportProfile ----------------------------------------------------------------------------


def test_profile_tensorrt8_form_without_median() -> None:
    profile = parse_profile(DATA / "trt8_mobilenet_qat.profile.json")
    assert profile.iterations == 4216
    assert len(profile.layers) == 12
    assert profile.layers[0].name == "QuantizeLinear_2"
    assert profile.layers[0].time_ms == pytest.approx(51.4526)
    assert profile.layers[0].median_ms is None
    slowest = profile.slowest(1)[0]
    assert slowest.name == "features.3.conv.2.weight + QuantizeLinear_138 + Conv_142 + Add_144"
    assert slowest.average_ms == pytest.approx(0.013199)


def test_profile_later_form_with_median() -> None:
    profile = parse_profile(DATA / "trt_detr_int8.profile.json")
    assert profile.iterations == 641
    assert len(profile.layers) == 14
    assert profile.layers[0].average_ms == 0  # constant layers folded away: zero time, still listed
    conv = profile.layers[11]
    assert conv.name.startswith("/model/model/backbone/conv_encoder/model/conv1/Conv")
    assert conv.median_ms == pytest.approx(0.044224)
    assert profile.total_average_ms == pytest.approx(0.0200902 + 0.0237058 + 0.0451986 + 0.0138181 + 0.0250544)


def test_profile_without_count_header_is_refused() -> None:
    with pytest.raises(BackendError, match=re.escape('first element is {"count": N}')):
        parse_profile('[{"name": "a", "timeMs": 1, "averageMs": 1, "percentage": 100}]')


# -- stdout summary -----------------------------------------------------------------------------


def test_summary_with_90_95_99_percentiles() -> None:
    summary = parse_performance_summary((DATA / "issue4177_2024.stdout.txt").read_text())
    assert summary.throughput_qps == pytest.approx(130.298)
    assert set(summary.metrics) == {"Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency"}
    gpu = summary.metric("GPU Compute Time")
    assert (gpu.min_ms, gpu.max_ms, gpu.mean_ms, gpu.median_ms) == (5.34595, 13.3388, 7.58404, 7.14139)
    assert gpu.percentiles_ms == {90.0: 10.2881, 95.0: 10.8175, 99.0: 12.9485}
    assert summary.total_host_walltime_s == pytest.approx(3.00082)
    assert summary.total_gpu_compute_s == pytest.approx(2.96536)


def test_summary_older_form_with_p99_only_and_warnings_after_it() -> None:
    summary = parse_performance_summary((DATA / "yolov7_pr329_2022.stdout.txt").read_text())
    assert summary.throughput_qps == pytest.approx(716.632)
    latency = summary.metric("Latency")
    assert latency.median_ms == pytest.approx(1.38037)
    assert latency.percentiles_ms == {99.0: 1.55853}
    assert summary.metric("H2D Latency").max_ms == 0
    with pytest.raises(BackendError, match="no 'Throughput per watt' line"):
        summary.metric("Throughput per watt")


def test_summary_missing_block_explains_why() -> None:
    with pytest.raises(BackendError, match="did not reach inference"):
        parse_performance_summary("[I] Engine built in 12.3 sec.\n[I] Skipped inference phase since --skipInference")


# -- exportLayerInfo ----------------------------------------------------------------------------


def test_layer_info_tensorrt8_detailed_qat_mobilenet() -> None:
    info = parse_layer_info(DATA / "trt8_mobilenet_qat.layers.json")
    assert info.detailed
    assert len(info.layers) == 14
    assert info.bindings == ("input1", "1179")
    first_conv = info.layers[1]
    assert first_conv.layer_type == "CaskConvolution" and first_conv.is_compute
    assert first_conv.weights_type == "Int8"
    assert first_conv.tactic_name == "volta_int8x4_icudnn_int8x4_128x32_relu_xregs_medium_c32_nn_v1"
    assert first_conv.precision == "int8"
    depthwise = info.layers[2]
    assert depthwise.layer_type == "CudaDepthwiseConvolution" and depthwise.tactic_name is None
    assert depthwise.is_compute and depthwise.precision == "int8"
    # an INT8 convolution writing FP16 is still INT8 compute (its input is INT8)
    assert info.layers[6].output_formats == ("Thirty-two wide channel vectorized row major FP16 format",)
    assert info.layers[6].precision == "int8"
    pooling = info.layers[10]
    assert pooling.layer_type == "TiledPooling" and not pooling.is_compute and pooling.precision == "fp16"
    assert [layer.name for layer in info.compute_layers][-1].startswith("classifier.1.weight + QuantizeLinear_860")
    assert info.precision_counts() == {"int8": 8}


def test_layer_info_names_only_form() -> None:
    info = parse_layer_info(DATA / "trt84_names_only.layers.json")
    assert not info.detailed and info.layers == ()
    assert info.layer_names[0] == "Conv__25 + Relu" and len(info.layer_names) == 12
    assert info.bindings == ("x:0", "z:0")
    with pytest.raises(PrecisionMismatchError, match="--profilingVerbosity=detailed"):
        check_precision(info, "int8")


def test_layer_record_tensorrt10_shape() -> None:
    """TensorRT 10 adds StreamId and Metadata; the record parses the same way."""
    layer = parse_layer(json.loads((DATA / "trt10_resnet18_reformat.layer.json").read_text()))
    assert layer.layer_type == "Reformat" and not layer.is_compute
    assert layer.input_formats == ("Row major linear FP32",)
    assert layer.output_formats == ("Row major Int8 format",)
    assert layer.onnx_nodes == ()  # Metadata is "" for an inserted reformat
    fused = parse_layer({"Name": "c", "LayerType": "CaskConvolution", "Metadata": "[ONNX Layer: a]\x1e[ONNX Layer: b]"})
    assert fused.onnx_nodes == ("a", "b")


@pytest.mark.parametrize(
    ("text", "precision"),
    [
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("Row major linear FP32", "fp32"),
        ("Two wide channel vectorized row major FP16 format", "fp16"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Half", "fp16"),
        ("Float", "fp32"),
        ("N/A due to dynamic shapes", "unknown"),
    ],
)
def test_format_strings(text: str, precision: str) -> None:
    assert precision_of_format(text) == precision


def test_dynamic_shape_layer_falls_back_to_weights_then_tactic() -> None:
    na = [{"Format/Datatype": "N/A due to dynamic shapes"}]
    by_weights = parse_layer({"Name": "a", "LayerType": "CaskConvolution", "Inputs": na, "Weights": {"Type": "Half"}})
    assert by_weights.precision == "fp16"
    by_tactic = parse_layer(
        {"Name": "b", "LayerType": "CaskConvolution", "Inputs": na, "TacticName": "sm80_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nchw"}
    )  # fmt: skip
    assert by_tactic.precision == "fp32"


# -- realized precision -------------------------------------------------------------------------


def test_recorded_int8_engine_passes_int8_and_fp16_requests() -> None:
    info = parse_layer_info(DATA / "trt8_mobilenet_qat.layers.json")
    report = check_precision(info, "int8", min_fraction=1.0)
    assert (report.compute_layers, report.in_requested, report.fraction) == (8, 8, 1.0)
    assert report.facts() == {"realized_precision_fraction": 1.0, "compute_layers": 8, "compute_layers_int8": 8}
    assert check_precision(info, "fp16").fraction == 1.0  # INT8 meets an FP16 request


def _with_fp32_fallback(info: EngineInfo) -> EngineInfo:
    """The recorded engine with its classifier layer as if it had lost its Q/DQ (FP32 input, FP32 weights)."""
    raw = json.loads((DATA / "trt8_mobilenet_qat.layers.json").read_text())
    classifier = next(layer for layer in raw["Layers"] if layer["Name"].startswith("classifier.1.weight"))
    classifier["Inputs"][0]["Format/Datatype"] = "Row major linear FP32"
    classifier["Weights"]["Type"] = "Float"
    classifier["TacticName"] = (
        "sm80_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize64x128x16_stage4_warpsize2x2x1_tensor16x8x8"
    )
    return parse_layer_info(raw)


def test_silent_fp32_fallback_fails_naming_the_layer() -> None:
    info = _with_fp32_fallback(parse_layer_info(DATA / "trt8_mobilenet_qat.layers.json"))
    with pytest.raises(PrecisionMismatchError) as err:
        check_precision(info, "int8")
    message = str(err.value)
    assert "engine built for int8 did not realize it" in message
    assert "1 compute layer(s) run in FP32" in message
    assert "classifier.1.weight + QuantizeLinear_860 + Gemm_864" in message
    assert "QuantizeLinear/DequantizeLinear" in message  # says what to do
    # excused explicitly: passes, and the report still names it
    report = check_precision(info, "int8", allow_layers=["classifier."])
    assert report.fraction == pytest.approx(7 / 8)
    assert report.allowed[0].startswith("classifier.1.weight")


def test_mostly_fp16_engine_fails_an_int8_request_by_fraction() -> None:
    raw = json.loads((DATA / "trt8_mobilenet_qat.layers.json").read_text())
    for layer in raw["Layers"][1:5]:
        layer["Inputs"][0]["Format/Datatype"] = "Two wide channel vectorized row major FP16 format"
    info = parse_layer_info(raw)
    with pytest.raises(
        PrecisionMismatchError, match=r"only 4/8 compute layers \(50%\) run in int8 or below, the minimum is 80%"
    ):
        check_precision(info, "int8")
    assert check_precision(info, "int8", min_fraction=0.5).fraction == 0.5
    assert check_precision(info, "fp16").fraction == 1.0


def test_no_compute_layer_cannot_be_judged() -> None:
    layer = json.loads((DATA / "trt10_resnet18_reformat.layer.json").read_text())
    with pytest.raises(PrecisionMismatchError, match=r"no convolution / GEMM / MatMul layer.*Reformat"):
        check_precision(parse_layer_info({"Layers": [layer], "Bindings": []}), "fp16")


def test_bad_request_values() -> None:
    info = parse_layer_info(DATA / "trt8_mobilenet_qat.layers.json")
    with pytest.raises(BackendError, match="not one of fp32, fp16, int8"):
        check_precision(info, "int4")  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="min_fraction"):
        check_precision(info, "int8", min_fraction=1.5)

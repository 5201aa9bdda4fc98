"""Batch-size sweeps: re-batching batch-1 ONNX graphs (float and QDQ INT8), refusals naming the node, and
run_sweep on a fake results folder (JSON, PNG, report section, samples/s arithmetic, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgematrix.cli import main
from edgematrix.errors import EdgeMatrixError
from edgematrix.export.rebatch import RebatchError, rebatch_model, rebatch_onnx
from edgematrix.measure.harness import LatencyConfig
from edgematrix.pipeline.sweep import REPORT_HEADING, SweepPoint, parse_batches, replace_section, run_sweep

OPSET = 17
RNG = np.random.default_rng(0)
FAST = LatencyConfig(warmup=1, min_rounds=3, max_rounds=20, min_time_s=0.0, max_time_s=2.0)


def _save(nodes: list, inits: list, outputs: list, path: Path, input_shape: tuple[int, ...] = (1, 3, 8, 8)) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def tiny_cnn(path: Path) -> Path:
    """Conv → Relu → Reshape[1, -1] → Gemm → Reshape[1, 2, 5] ("logits"), and Flatten → ReduceMean over
    features ("pooled"); a bias reshaped with a constant [1, 10] that is not on the batch path."""
    inits = [
        _const("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _const("b", RNG.standard_normal(4).astype(np.float32)),
        _const("flat", np.array([1, -1], np.int64)),
        _const("fc", (RNG.standard_normal((256, 10)) * 0.1).astype(np.float32)),
        _const("bias_flat", RNG.standard_normal(10).astype(np.float32)),
        _const("shape_1x10", np.array([1, 10], np.int64)),
        _const("shape_out", np.array([1, 2, 5], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "flat"], ["f"], name="view_flat"),
        helper.make_node("Reshape", ["bias_flat", "shape_1x10"], ["bias"], name="bias_view"),
        helper.make_node("Gemm", ["f", "fc"], ["g"], name="fc_gemm"),
        helper.make_node("Add", ["g", "bias"], ["ga"], name="add_bias"),
        helper.make_node("Reshape", ["ga", "shape_out"], ["logits"], name="view_out"),
        helper.make_node("Flatten", ["r"], ["fl"], name="flatten", axis=1),
        helper.make_node("ReduceMean", ["fl"], ["pooled"], name="pool", axes=[1], keepdims=1),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 5]),
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 1]),
    ]
    return _save(nodes, inits, outputs, path)


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"input": x}), strict=True))


def _assert_per_sample_equal(source: Path, rebatched: Path, batch: int, atol: float) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    many = _run(rebatched, x)
    for i in range(batch):
        one = _run(source, x[i : i + 1])
        for name, want in one.items():
            assert many[name].shape[0] == batch and many[name].shape[1:] == want.shape[1:]
            np.testing.assert_allclose(many[name][i : i + 1], want, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

    d = tmp_path_factory.mktemp("models")
    fp32 = tiny_cnn(d / "fp32.onnx")
    calib = (np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32) for i in range(4))
    int8 = d / "int8.onnx"
    quantize_static_qdq(
        fp32, int8, calib, input_name="input", config=QuantizeConfig(method="minmax", calibration_images=4)
    )
    return {"fp32": fp32, "int8": int8}


@pytest.mark.parametrize("batch", [2, 5, 8])
def test_float_graph_rebatches_per_sample_equal(models: dict[str, Path], batch: int) -> None:
    r = rebatch_onnx(models["fp32"], batch)
    assert r.path != models["fp32"] and r.path.parent == models["fp32"].parent and r.batch == batch
    assert not r.quantized and r.max_rel_diff <= 1e-5
    # the batch-path reshapes are rewritten; the bias reshape [1, 10] (no batch) is left alone
    assert set(r.patched) == {"view_flat", "view_out"}
    m = onnx.load(str(r.path))
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [batch, 3, 8, 8]
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [batch, 2, 5]
    assert [d.dim_value for d in m.graph.output[1].type.tensor_type.shape.dim] == [batch, 1]
    assert len(m.graph.value_info) == 0
    shapes = {
        t.name: numpy_helper.to_array(t).tolist() for t in m.graph.initializer if t.data_type == TensorProto.INT64
    }
    assert shapes["shape_1x10"] == [1, 10] and [batch, -1] in shapes.values() and [batch, 2, 5] in shapes.values()
    assert "flat" not in shapes and "shape_out" not in shapes  # replaced constants nothing reads are dropped
    _assert_per_sample_equal(models["fp32"], r.path, batch, atol=1e-5)


def test_qdq_int8_graph_rebatches(models: dict[str, Path]) -> None:
    src = onnx.load(str(models["int8"]))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in src.graph.node}
    r = rebatch_onnx(models["int8"], 4)
    assert r.quantized and r.max_rel_diff <= r.tolerance
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(r.path)).graph.node) == sum(
        n.op_type == "QuantizeLinear" for n in src.graph.node
    )
    _assert_per_sample_equal(models["int8"], r.path, 4, atol=1e-2)


def test_cache_is_keyed_by_content(models: dict[str, Path], tmp_path: Path) -> None:
    first = rebatch_onnx(models["fp32"], 3, out_dir=tmp_path)
    again = rebatch_onnx(models["fp32"], 3, out_dir=tmp_path)
    assert not first.cached and again.cached and again.path == first.path
    assert json.loads(first.path.with_suffix(".json").read_text())["patched"] == list(first.patched)
    changed = tiny_cnn(tmp_path / "other.onnx")  # new random weights: another file, another key
    assert rebatch_onnx(changed, 3, out_dir=tmp_path).path.name.split("-")[-1] != first.path.name.split("-")[-1]
    one = rebatch_onnx(models["fp32"], 1)
    assert one.path == models["fp32"] and one.patched == ()


def _graph(path: Path, nodes: list, inits: list, out_shape: list[int]) -> Path:
    return _save(nodes, inits, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], path, (1, 4))


@pytest.mark.parametrize(
    ("nodes", "inits", "out_shape", "match"),
    [
        ([helper.make_node("Reshape", ["input", "s"], ["y"], name="merge")], [_const("s", np.array([2, 2], np.int64))],
         [2, 2], "node 'merge' .*merged"),
        ([helper.make_node("Flatten", ["input"], ["y"], name="flat0", axis=0)], [], [1, 4], "node 'flat0'"),
        ([helper.make_node("ReduceMean", ["input"], ["y"], name="mean_all", keepdims=1)], [], [1, 1],
         "node 'mean_all'.*every dimension"),
        ([helper.make_node("Concat", ["input", "input"], ["y"], name="cat0", axis=0)], [], [2, 4],
         "node 'cat0'.*batch dimension"),
        ([helper.make_node("Gather", ["input", "i"], ["y"], name="pick", axis=0)], [_const("i", np.array([0], np.int64))],
         [1, 4], "node 'pick'"),
        ([helper.make_node("Squeeze", ["input", "a"], ["y"], name="drop")], [_const("a", np.array([0], np.int64))],
         [4], "node 'drop'.*removes the batch"),
    ],
)  # fmt: skip
def test_graphs_that_mix_samples_are_refused_naming_the_node(
    tmp_path: Path, nodes: list, inits: list, out_shape: list[int], match: str
) -> None:
    path = _graph(tmp_path / "m.onnx", nodes, inits, out_shape)
    with pytest.raises(RebatchError, match=match):
        rebatch_onnx(path, 2)
    assert not list(tmp_path.glob("m.b2-*"))  # nothing half-written


def test_verification_catches_what_the_analysis_cannot_follow(tmp_path: Path) -> None:
    # [1, 4] -> Transpose -> [4, 1] -> Reshape [-1, 4]: the identity at batch 1, an interleaving of samples at batch N
    nodes = [
        helper.make_node("Transpose", ["input"], ["t"], name="swap", perm=[1, 0]),
        helper.make_node("Reshape", ["t", "s"], ["y"], name="back"),
    ]
    path = _graph(tmp_path / "m.onnx", nodes, [_const("s", np.array([-1, 4], np.int64))], [1, 4])
    with pytest.raises(RebatchError, match="different outputs per sample"):
        rebatch_onnx(path, 3)
    assert not list(tmp_path.glob("m.b3-*"))


def test_rebatch_rejects_bad_input(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match="positive integer"):
        rebatch_onnx(models["fp32"], 0)
    with pytest.raises(EdgeMatrixError, match="does not exist"):
        rebatch_onnx(tmp_path / "missing.onnx", 2)
    m = onnx.load(str(models["fp32"]))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(RebatchError, match="has batch 4, not 1"):
        rebatch_model(m, 2)


# ----------------------------------------------------------------------------------------------
# run_sweep


def fake_results(root: Path, cell: str, reference: Path, candidate: Path | str, *, report: str | None = None) -> Path:
    out = root / cell
    out.mkdir(parents=True)
    config = {
        "cell": cell,
        "target": {"name": "x86_cpu", "backend": "onnxruntime", "providers": ["CPUExecutionProvider"], "threads": 1},
        "model": {"name": "tiny_cnn", "family": "none", "task": "lane", "input_shape": [1, 3, 8, 8]},
        "recipe": {
            "name": "int8q",
            "precision": "int8",
            "latency": {"warmup": 1, "min_rounds": 3, "max_rounds": 20, "min_time_s": 0.0, "max_time_s": 2.0},
        },
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "artifacts.json").write_text(json.dumps({"reference": str(reference), "candidate": str(candidate)}))
    (out / "report.md").write_text(report if report is not None else f"# {cell}: passed\n\n## Gates\n\nall passed\n")
    return out


def test_run_sweep_writes_json_png_and_report(models: dict[str, Path], tmp_path: Path) -> None:
    out = fake_results(tmp_path, "tiny_int8", models["fp32"], models["int8"])
    result = run_sweep(tmp_path, "tiny_int8", [4, 1, 2])
    assert [p.batch for p in result.points] == [1, 2, 4]
    assert result.candidate_precision == "int8" and result.facts["intra_op_allow_spinning"] == 0
    assert result.facts["intra_op_threads"] == 1  # the target's threads

    doc = json.loads((out / "batch_sweep.json").read_text())
    assert doc["cell"] == "tiny_int8" and len(doc["points"]) == 3
    assert doc["models"]["candidate"]["1"] == str(models["int8"]) and doc["models"]["candidate"]["4"].endswith(".onnx")
    for p in doc["points"]:
        n = p["batch"]
        for key in ("reference_p50_ms", "candidate_p50_ms", "fp32_b1_p50_ms"):
            assert np.isfinite(p[key]) and p[key] > 0
        assert p["rounds"] >= 3
        # samples/s = N / p50 (seconds); ratios are p50 ratios of the same rounds
        assert p["reference_samples_per_s"] == pytest.approx(n / (p["reference_p50_ms"] / 1e3), rel=1e-12)
        assert p["candidate_samples_per_s"] == pytest.approx(n / (p["candidate_p50_ms"] / 1e3), rel=1e-12)
        assert p["candidate_vs_reference"] == pytest.approx(p["reference_p50_ms"] / p["candidate_p50_ms"], rel=1e-12)
        assert p["candidate_vs_fp32_b1"] == pytest.approx(
            p["candidate_samples_per_s"] * p["fp32_b1_p50_ms"] / 1e3, rel=1e-12
        )
        assert p["reference_vs_fp32_b1"] == pytest.approx(n * p["fp32_b1_p50_ms"] / p["reference_p50_ms"], rel=1e-12)
        assert p["candidate_max_rel_diff"] <= 2e-2 and p["reference_max_rel_diff"] <= 1e-4
    assert doc["points"][0]["reference_vs_fp32_b1"] == 1.0  # batch 1: the anchor is the reference itself

    with Image.open(out / "batch_sweep.png") as im:
        assert im.format == "PNG" and im.size[0] > 800 and im.size[1] > 300
        im.verify()

    report = (out / "report.md").read_text()
    assert report.startswith("# tiny_int8: passed") and "## Gates" in report
    section = report[report.index(REPORT_HEADING) :]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [1, 2, 4]
    first = result.points[0]
    assert f"| 1 | {first.reference_p50_ms:.2f} | {first.candidate_p50_ms:.2f} |" in rows[0]
    assert "![batch-size sweep](batch_sweep.png)" in section

    # a second sweep replaces the section instead of appending another
    run_sweep(tmp_path, "tiny_int8", [1, 8], latency=FAST)
    again = (out / "report.md").read_text()
    assert again.count(REPORT_HEADING) == 1 and "| 8 |" in again and "| 4 |" not in again
    assert [p["batch"] for p in json.loads((out / "batch_sweep.json").read_text())["points"]] == [1, 8]


def test_the_sweep_runs_on_the_backend_the_cell_selected(models: dict[str, Path], tmp_path: Path) -> None:
    """A cell whose run selected OpenVINO is swept on OpenVINO; a busy run (no selection) on its backend of record."""
    from edgematrix.core.results import BenchmarkEntry, write_benchmark_json

    out = fake_results(tmp_path, "tiny_int8", models["fp32"], models["int8"])

    def results(selected: str) -> None:
        entries = [
            BenchmarkEntry(f"tiny_int8[{role}{'' if b == 'onnxruntime' else '@' + b}]", "tiny_int8", [0.001] * 5,
                           {"role": role, "backend": b, "primary_backend": "onnxruntime", "selected_backend": selected})
            for b in ("onnxruntime", "openvino") for role in ("reference", "candidate")
        ]  # fmt: skip
        write_benchmark_json(out / "benchmark.json", entries)

    results("openvino")
    result = run_sweep(tmp_path, "tiny_int8", [1, 2])
    assert result.facts["backend"] == "openvino" and result.facts["sweep_backend"] == "openvino"
    assert "the backend the cell's run selected" in (out / "report.md").read_text()
    results("")
    result = run_sweep(tmp_path, "tiny_int8", [1, 2])
    assert result.facts["backend"] == "onnxruntime" and result.facts["sweep_backend_reason"] == "the backend of record"


def test_sweep_point_arithmetic() -> None:
    p = SweepPoint(
        batch=4,
        rounds=10,
        fp32_b1_p50_ms=10.0,
        reference_p50_ms=20.0,
        reference_p90_ms=21.0,
        candidate_p50_ms=5.0,
        candidate_p90_ms=6.0,
    )
    assert p.reference_samples_per_s == pytest.approx(200.0)  # 4 / 0.020 s
    assert p.candidate_samples_per_s == pytest.approx(800.0)
    assert p.candidate_vs_reference == pytest.approx(4.0)
    assert p.candidate_vs_fp32_b1 == pytest.approx(8.0)  # 800 vs 100 samples/s
    assert p.reference_vs_fp32_b1 == pytest.approx(2.0)


def test_reference_only(models: dict[str, Path], tmp_path: Path) -> None:
    out = fake_results(tmp_path, "ref_cell", models["fp32"], models["int8"])
    result = run_sweep(tmp_path, "ref_cell", [1, 2], roles=("reference",), latency=FAST)
    assert result.candidate_precision == "" and all(p.candidate_p50_ms is None for p in result.points)
    doc = json.loads((out / "batch_sweep.json").read_text())
    assert doc["points"][1]["candidate_samples_per_s"] is None and "candidate" not in doc["models"]
    assert "| batch | FP32 p50 (ms) | FP32 samples/s | FP32 vs FP32 batch 1 |" in (out / "report.md").read_text()
    assert (out / "batch_sweep.png").stat().st_size > 10_000


def test_a_split_candidate_is_swept_subgraph_by_subgraph(tmp_path: Path) -> None:
    from edgematrix.backends.base import create_runner
    from edgematrix.backends.split.manifest import load_manifest
    from edgematrix.export.split import split_model
    from edgematrix.pipeline.sweep import rebatch_split
    from split_models import exported, whole_outputs

    whole = exported("two_features").path
    split = split_model(whole, tmp_path / "split", heads=["seg", "depth"])
    out = fake_results(tmp_path, "split_cell", whole, split.manifest)
    result = run_sweep(tmp_path, "split_cell", [1, 2], latency=FAST)
    assert [p.batch for p in result.points] == [1, 2] and all(p.candidate_p50_ms for p in result.points)
    batched = Path(result.models["candidate"][2])
    m = load_manifest(batched)  # verifies every subgraph file's hash
    assert all(f.shape[0] == 2 for f in m.features) and all(".b2-" in e.file for e in m.subgraphs)
    # the batch-2 split model gives each sample what the whole batch-1 model gives it
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with create_runner("split", path=batched) as run:
        got = run.infer({"input": x})
    for i in range(2):
        want = whole_outputs(whole, {"input": x[i : i + 1]})
        for name in ("seg", "depth"):
            np.testing.assert_allclose(got[name][i : i + 1], want[name], atol=1e-4)
    assert rebatch_split(split.manifest, 1) == (str(split.manifest), 0.0)
    assert "| 2 |" in (out / "report.md").read_text()


def test_an_fp32_cell_sweeps_its_reference_once(models: dict[str, Path], tmp_path: Path) -> None:
    fake_results(tmp_path, "fp32_cell", models["fp32"], models["fp32"])
    result = run_sweep(tmp_path, "fp32_cell", [1, 2], latency=FAST)
    assert set(result.models) == {"reference"} and result.points[1].candidate_p50_ms is None


def test_missing_or_broken_results_are_clear_errors(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"no results for cell 'nope'.*nox -s nope"):
        run_sweep(tmp_path, "nope", [1, 2])
    out = fake_results(tmp_path, "gone", tmp_path / "deleted.onnx", models["int8"])
    with pytest.raises(EdgeMatrixError, match=r"reference model .*deleted.onnx.*is gone.*nox -s gone"):
        run_sweep(tmp_path, "gone", [1, 2])
    (out / "artifacts.json").unlink()
    with pytest.raises(EdgeMatrixError, match=r"artifacts.json is missing.*nox -s gone"):
        run_sweep(tmp_path, "gone", [1, 2])
    with pytest.raises(EdgeMatrixError, match="repeat"):
        run_sweep(tmp_path, "gone", [2, 2])
    with pytest.raises(EdgeMatrixError, match="roles"):
        run_sweep(tmp_path, "gone", [1], roles=("candidate",))


def test_parse_batches() -> None:
    assert parse_batches("8, 1,2") == [1, 2, 8]
    for bad in ("", "1,x", "0,2", "1,1"):
        with pytest.raises(EdgeMatrixError):
            parse_batches(bad)


def test_replace_section() -> None:
    base = "# c\n\n## Gates\n\nok\n"
    one = replace_section(base, f"{REPORT_HEADING}\n\nA\n")
    assert one == f"# c\n\n## Gates\n\nok\n\n{REPORT_HEADING}\n\nA\n"
    assert replace_section(one, f"{REPORT_HEADING}\n\nB\n").count(REPORT_HEADING) == 1
    middle = replace_section(f"# c\n\n{REPORT_HEADING}\n\nold\n\n## Run\n\nfacts\n", f"{REPORT_HEADING}\n\nnew\n")
    assert middle == f"# c\n\n{REPORT_HEADING}\n\nnew\n\n## Run\n\nfacts\n"


def test_cli_sweep(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = fake_results(tmp_path, "cli_cell", models["fp32"], models["int8"])
    assert main(["sweep", "cli_cell", "--batches", "1,2", "--results", str(tmp_path), "--min-rounds", "4"]) == 0
    printed = capsys.readouterr()
    assert f"json: {out / 'batch_sweep.json'}" in printed.out and "batch 2: FP32 p50" in printed.err
    assert all(p["rounds"] >= 4 for p in json.loads((out / "batch_sweep.json").read_text())["points"])
    assert main(["sweep", "cli_cell", "--batches", "1,zero", "--results", str(tmp_path)]) == 2
    assert main(["sweep", "missing_cell", "--results", str(tmp_path)]) == 2
    assert "nox -s missing_cell" in capsys.readouterr().err


# every model family of the registry, exported as a cell exports it (dynamo + onnxslim) and INT8 by the
# project's PTQ, re-batches with per-sample outputs equal to batch 1; small input sizes keep it quick
FAMILY_SHAPES = {"ufld_v2": [1, 3, 64, 160], "pilotnet": [1, 3, 66, 200]}
FAMILY_PARAMS: dict[str, dict[str, object]] = {"ufld_v2": {"width": 8, "mlp_mid_dim": 64}}


def _families() -> list[str]:
    from edgematrix.models import families

    return families.names()


@pytest.mark.slow
@pytest.mark.parametrize("family", _families())
def test_every_model_family_rebatches(family: str, tmp_path: Path) -> None:
    import torch

    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.models import create_model
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

    shape = FAMILY_SHAPES.get(family, [1, 3, 64, 128])
    torch.manual_seed(0)
    model = create_model(family, shape, **FAMILY_PARAMS.get(family, {})).eval()
    with torch.no_grad():
        out = model(torch.zeros(shape))
    count = len(out) if isinstance(out, tuple | list) else 1
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, tuple(shape), fp32, output_names=[f"out{i}" for i in range(count)], input_name="input")
    calib = (np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i in range(2))
    int8 = tmp_path / "int8.onnx"
    quantize_static_qdq(
        fp32, int8, calib, input_name="input", config=QuantizeConfig(method="minmax", calibration_images=2)
    )
    for path in (fp32, int8):
        r = rebatch_onnx(path, 3)
        assert r.max_rel_diff <= r.tolerance
        x = np.random.default_rng(7).standard_normal([3, *shape[1:]]).astype(np.float32)
        sess_n = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
        sess_1 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        many = sess_n.run(None, {"input": x})
        for i in range(3):
            for got, want in zip(many, sess_1.run(None, {"input": x[i : i + 1]}), strict=True):
                np.testing.assert_allclose(got[i : i + 1], want, atol=1e-5 + 1e-2 * float(np.abs(want).max()), rtol=0)


def test_paths_of_a_docker_run_map_to_the_host_cache(models: dict[str, Path], tmp_path: Path) -> None:
    from edgematrix.executors.docker import CACHE
    from edgematrix.pipeline.sweep import CONTAINER_CACHE, resolve_model_path

    assert CONTAINER_CACHE == CACHE  # where the docker runner mounts the cache
    cache = tmp_path / "cache"
    (cache / "artifacts" / "m").mkdir(parents=True)
    for name in ("fp32.onnx", "int8.onnx"):
        (cache / "artifacts" / "m" / name).write_bytes(models[name.split(".")[0]].read_bytes())
    inside = {role: f"{CACHE}/artifacts/m/{role}.onnx" for role in ("fp32", "int8")}
    assert resolve_model_path(inside["fp32"], cache) == cache / "artifacts" / "m" / "fp32.onnx"
    assert resolve_model_path(inside["fp32"], None) == Path(inside["fp32"])
    assert resolve_model_path(str(models["fp32"]), cache) == models["fp32"]  # host paths stay
    fake_results(tmp_path, "docker_cell", Path(inside["fp32"]), inside["int8"])
    with pytest.raises(EdgeMatrixError, match="is gone"):
        run_sweep(tmp_path, "docker_cell", [1], latency=FAST)
    result = run_sweep(tmp_path, "docker_cell", [1, 2], latency=FAST, cache_dir=cache)
    assert result.models["candidate"][2].startswith(str(cache / "artifacts" / "m" / "int8.b2-"))

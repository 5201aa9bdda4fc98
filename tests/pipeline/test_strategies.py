"""PilotNet's strategies as cells of the steering task, end to end: the recipes of matrix/pilotnet.toml (only
epochs, calibration sizes and latency rounds shrunk) on a full-width PilotNet trained one epoch on a few
synthetic frames, real ONNX Runtime and OpenVINO; then `edgematrix strategies` builds the table from the
cells' results, and `edgematrix demo` draws the steering arrows."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgematrix.cli import main
from edgematrix.core.results import read_results
from edgematrix.metrics.regression import score
from edgematrix.report.strategies import INT8_SIZE_LIMIT
from edgematrix.tasks.steering import read_predictions
from tiny_cells import REPO, make_workspace, run_cell

RECIPES = ("fp32", "global_prune", "local_prune", "dynamic_int8", "static_int8", "qat_int8", "prune_int8")
INT8 = ("dynamic_int8", "static_int8", "qat_int8", "prune_int8")
QUICK_LATENCY = {"warmup": 2, "min_rounds": 10, "max_rounds": 30, "min_time_s": 0.1, "max_time_s": 10}


def _toml(prefix: str, table: dict[str, Any]) -> list[str]:
    """``table`` as TOML under ``[prefix]`` (scalars, lists of scalars, nested tables)."""
    lines = [f"[{prefix}]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += ["", *_toml(f"{prefix}.{k}", v)]
    return lines


def _matrix_text() -> str:
    """The shipped PilotNet model and strategy recipes, shrunk: 48 training frames, 1 epoch, few rounds."""
    shipped = tomllib.loads((REPO / "matrix" / "pilotnet.toml").read_text())["recipes"]
    model = tomllib.loads((REPO / "matrix" / "models.toml").read_text())["models"]["pilotnet"]
    model["synthetic"] = {"train": 48, "test": 12, "seed": 2}
    model["train"] = {**model["train"], "epochs": 1, "batch_size": 16}
    recipes = {"fp32": {"description": "FP32", "precision": "fp32"}}
    for name in RECIPES[1:]:
        r = shipped[name]
        for section in ("finetune", "qat"):
            if section in r:
                r[section].update(epochs=1, batch_size=16)
        if "qat" in r:
            r["qat"]["calibration_images"] = 8
        if "calibration_images" in r.get("quantize", {}):
            r["quantize"]["calibration_images"] = 8
        recipes[name] = r
    lines = _toml("models.pilotnet", model)
    for name, r in recipes.items():
        lines += ["", *_toml(f"recipes.{name}", {**r, "latency": QUICK_LATENCY})]
    lines += ["", "[[cells]]", 'target = "x86_cpu"', 'model = "pilotnet"', f"recipes = {json.dumps(list(RECIPES))}"]
    lines += ['name = "{target}_{model}_{recipe}"', "", "[cells.gates]"]
    # one epoch on 48 frames: the MSE is not the point here; the direction and the sizes are
    lines += ["accuracy_drop_vs_reference = 1.0", "min_accuracy = 0.0", "latency_regression = 10.0"]
    lines += ["latency_min_effect = 0.99"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = make_workspace(tmp_path_factory, "strategies", _matrix_text())
    for recipe in RECIPES:
        assert run_cell(ws, f"x86_cpu_pilotnet_{recipe}") == 0, recipe
    return ws


def _candidate(ws: Path, recipe: str) -> Any:
    info = read_results(ws / "results" / f"x86_cpu_pilotnet_{recipe}").of("candidate")
    assert info is not None
    return info.info


@pytest.mark.slow
def test_every_strategy_is_a_cell_of_the_steering_task(workspace: Path) -> None:
    for recipe in RECIPES:
        out = workspace / "results" / f"x86_cpu_pilotnet_{recipe}"
        res = read_results(out)
        cand = res.of("candidate")
        assert cand is not None and res.of("candidate", "openvino") is not None
        info = cand.info
        assert (info.metric, info.metric_direction, info.recipe, info.model) == ("MSE", "lower", recipe, "pilotnet")
        assert info.dataset == "synthetic-driving" and info.input_shape == "1x3x66x200"
        # the MSE of record is the predictions file's: frame, predicted, label
        frames, predicted, labels = read_predictions(out / "predictions-candidate.csv")
        assert len(frames) == 12 and frames[0] == "IMG/center_test_00000.jpg"
        assert info.accuracy == pytest.approx(score(predicted, labels).mse, rel=1e-4, abs=1e-9)
        assert info.extras()["mae"] == pytest.approx(score(predicted, labels).mae, rel=1e-4, abs=1e-9)
        assert (info.precision == "int8") == (recipe in INT8)


@pytest.mark.slow
def test_pruning_by_a_fixed_ratio_local_and_global(workspace: Path) -> None:
    glob, local, both = (_candidate(workspace, r).extras() for r in ("global_prune", "local_prune", "prune_int8"))
    assert glob["prune_scope"] == "global" and local["prune_scope"] == "local" and glob["prune_ratio"] == 0.4
    assert local["prune_widths"] == "12/20/28/36/36/60/28/4/1"  # 60% of every layer, multiples of 4
    assert glob["prune_widths"] != local["prune_widths"]
    for facts in (glob, local):
        assert 0 < int(facts["params"]) < 0.5 * int(facts["unpruned_params"])
    # prune_int8 is global_prune's model (the same cache entry), quantized; measured beside the unpruned INT8
    assert both["prune_widths"] == glob["prune_widths"] and float(both["speedup_vs_unpruned"]) > 0
    res = read_results(workspace / "results" / "x86_cpu_pilotnet_prune_int8")
    assert res.of("unpruned") is not None and res.of("unpruned").info.precision == "int8"


@pytest.mark.slow
def test_quantized_strategies(workspace: Path) -> None:
    ref = read_results(workspace / "results" / "x86_cpu_pilotnet_static_int8").of("reference").info
    sizes = {r: _candidate(workspace, r).model_bytes for r in INT8}
    assert all(n <= INT8_SIZE_LIMIT * ref.model_bytes for n in sizes.values()), sizes
    assert sizes["prune_int8"] == min(sizes.values())
    dyn = _candidate(workspace, "dynamic_int8").extras()
    assert dyn["quantize_mode"] == "dynamic" and "5 ConvInteger" in str(dyn["dynamic_int8_ops"])
    static = _candidate(workspace, "static_int8")
    assert abs(static.accuracy - ref.accuracy) < 0.5 * ref.accuracy + 1e-3  # int8 arithmetic, same predictions
    qat = read_results(workspace / "results" / "x86_cpu_pilotnet_qat_int8")
    assert qat.of("ptq") is not None and qat.of("qat_modelopt_qdq") is not None
    assert "## QAT vs PTQ" in (workspace / "results" / "x86_cpu_pilotnet_qat_int8" / "report.md").read_text()


@pytest.mark.slow
def test_the_strategies_table_and_the_demo(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix, results = str(workspace / "matrix"), str(workspace / "results")
    assert main(["--matrix", matrix, "strategies", "pilotnet", "--results", results]) == 0
    out = workspace / "results" / "pilotnet_strategies"
    report = (out / "report.md").read_text()
    rows = [line for line in report.split("## Gates")[0].splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0][2:] for r in rows] == list(RECIPES)  # the matrix's order
    assert rows[0].startswith("| fp32 | fp32 | ") and " | 1.000× | " in rows[0]
    data = json.loads((out / "strategies.json").read_text())
    by = {r["recipe"]: r for r in data["rows"]}
    for recipe in RECIPES:
        cand = _candidate(workspace, recipe)
        assert by[recipe]["metric"] == cand.accuracy and by[recipe]["model_bytes"] == cand.model_bytes
        assert by[recipe]["speedup"] == pytest.approx(by[recipe]["reference_p50_ms"] / by[recipe]["p50_ms"])
        assert set(by[recipe]["other_speedups"]) == {"openvino"}
    assert by["fp32"]["speedup"] == pytest.approx(1.0) and by["fp32"]["size_ratio"] == 1.0
    assert {g["gate"]: g["status"] for g in data["gates"]} == {
        **{f"int8_size[{r}]": "passed" for r in INT8}, "every_cell_measured": "passed",
    }  # fmt: skip
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # a cell the matrix names but that has not run fails the table
    (workspace / "results" / "x86_cpu_pilotnet_local_prune").rename(workspace / "local_prune_away")
    try:
        assert main(["--matrix", matrix, "strategies", "pilotnet", "--results", results]) == 1
    finally:
        (workspace / "local_prune_away").rename(workspace / "results" / "x86_cpu_pilotnet_local_prune")
    assert main(["--matrix", matrix, "strategies", "pilotnet", "--results", results, "--target", "jetson"]) == 2
    assert "no cell of model 'pilotnet' on target 'jetson'" in capsys.readouterr().err
    # the demo: FP32 and INT8 steering arrows over a synthetic drive
    gif = workspace / "demo.gif"
    argv = ["demo", "x86_cpu_pilotnet_static_int8", "--results", results, "--cache", str(workspace / "cache")]
    assert main([*argv, "--frames", "3", "--out", str(gif)]) == 0
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.width >= 960
        frame = np.asarray(im.convert("RGB"))
    assert ((frame[..., 1] > 200) & (frame[..., 0] < 150)).sum() > 100  # green arrows drawn

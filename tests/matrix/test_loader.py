"""The matrix loader: the shipped matrix is valid; every kind of bad file fails with file, key and choices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgematrix.errors import MatrixError, UnknownNameError
from edgematrix.matrix.listing import list_sessions
from edgematrix.matrix.loader import load_matrix

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "matrix"


@pytest.fixture
def matrix_dir(tmp_path: Path) -> Path:
    d = tmp_path / "matrix"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns("baselines"))
    return d


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_shipped_matrix_has_the_required_cells() -> None:
    m = load_matrix(SHIPPED)
    for name in ("x86_cpu_fp32", "x86_cpu_int8", "jetson_fp16", "jetson_int8", "ti_fx8"):
        assert name in m.cells
    cell = m.cell("x86_cpu_int8")
    assert cell.target.backend == "onnxruntime"
    assert cell.recipe.precision == "int8"
    assert cell.recipe.quantize is not None and cell.recipe.quantize.method == "percentile"
    assert cell.model.input_shape == [1, 3, 288, 800]
    assert cell.tags == ["x86_cpu", "int8", "ufld_r18"]
    assert cell.gates.accuracy_drop_vs_reference == 0.5


def test_listing_agrees_with_the_validated_loader() -> None:
    names = [s.name for s in list_sessions(SHIPPED)]
    assert names == list(load_matrix(SHIPPED).cells)
    assert all(s.description for s in list_sessions(SHIPPED))


def test_resolved_config_is_complete_json() -> None:
    resolved = json.loads(load_matrix(SHIPPED).cell("x86_cpu_int8").resolved_json())
    assert resolved["cell"] == "x86_cpu_int8"
    assert resolved["target"]["providers"] == ["CPUExecutionProvider"]
    assert resolved["model"]["train"]["epochs"] >= 1
    assert resolved["recipe"]["quantize"]["calibration_images"] == 64
    assert resolved["gates"]["latency_regression"] == pytest.approx(0.10)


def test_unknown_key_names_file_key_and_valid_keys(matrix_dir: Path) -> None:
    _edit(matrix_dir / "targets.toml", 'arch = "x86_64"', 'arch = "x86_64"\ncolour = "blue"')
    with pytest.raises(MatrixError) as e:
        load_matrix(matrix_dir)
    msg = str(e.value)
    assert "targets.toml" in msg and "targets.x86_cpu.colour: unknown key" in msg
    assert "backend" in msg and "precisions" in msg  # the valid keys are listed


def test_unknown_nested_key_lists_the_nested_valid_keys(matrix_dir: Path) -> None:
    _edit(matrix_dir / "models.toml", "[models.ufld_r18.train]", "[models.ufld_r18.train]\nepoch = 3")
    with pytest.raises(MatrixError, match=r"models\.ufld_r18\.train\.epoch: unknown key .*batch_size"):
        load_matrix(matrix_dir)


def test_wrong_type_names_the_key_and_value(matrix_dir: Path) -> None:
    _edit(matrix_dir / "models.toml", "[models.ufld_r18.train]", '[models.ufld_r18.train]\nweight_decay = "six"')
    with pytest.raises(MatrixError, match=r"models\.toml: models\.ufld_r18\.train\.weight_decay: .*'six'"):
        load_matrix(matrix_dir)


def test_invalid_literal_lists_choices(matrix_dir: Path) -> None:
    _edit(matrix_dir / "recipes.toml", 'method = "percentile"', 'method = "kl"')
    with pytest.raises(MatrixError) as e:
        load_matrix(matrix_dir)
    assert "recipes.int8.quantize.method" in str(e.value)
    assert "'minmax'" in str(e.value) and "'percentile'" in str(e.value)


def test_cell_with_unknown_model_lists_known_models(matrix_dir: Path) -> None:
    _edit(matrix_dir / "cells.toml", 'model = "ufld_r18"', 'model = "ufld_r50"')
    with pytest.raises(
        MatrixError,
        match=r"cells\.toml: cells\[0\]\.model: unknown model 'ufld_r50'; known models: multitask, pilotnet, ssdlite, ufld_r18",
    ):
        load_matrix(matrix_dir)


def test_cell_with_unknown_recipe_and_target(matrix_dir: Path) -> None:
    _edit(matrix_dir / "cells.toml", 'recipes = ["fp32", "int8"]', 'recipes = ["fp32", "int4"]')
    with pytest.raises(
        MatrixError,
        match=r"unknown recipe 'int4'; known recipes: det_int8_qat, dynamic_int8, fp16, fp32, fx8, global_prune, int8",
    ):
        load_matrix(matrix_dir)


def test_recipe_precision_must_be_offered_by_target(matrix_dir: Path) -> None:
    _edit(matrix_dir / "cells.toml", 'recipes = ["fx8"]', 'recipes = ["fp32"]')
    with pytest.raises(
        MatrixError, match=r"needs precision 'fp32', which target 'ti' does not offer \(its precisions: fx8, int8\)"
    ):
        load_matrix(matrix_dir)


def test_duplicate_cell_and_duplicate_definition(matrix_dir: Path, tmp_path: Path) -> None:
    (matrix_dir / "extra.toml").write_text('[[cells]]\ntarget = "x86_cpu"\nmodel = "ufld_r18"\nrecipes = ["int8"]\n')
    with pytest.raises(MatrixError, match="cell 'x86_cpu_int8' is declared twice"):
        load_matrix(matrix_dir)
    (matrix_dir / "extra.toml").write_text('[recipes.fp32]\ndescription = "again"\nprecision = "fp32"\n')
    with pytest.raises(MatrixError, match=r"recipes\.toml: recipes\.fp32 is already defined in .*extra\.toml"):
        load_matrix(matrix_dir)


def test_unknown_family_lists_registered_families(matrix_dir: Path) -> None:
    _edit(matrix_dir / "models.toml", 'family = "ufld_v2"', 'family = "yolo_v9"')
    with pytest.raises(
        MatrixError, match=r"unknown model family 'yolo_v9'; known: multitask_seg_depth, pilotnet, ssdlite, ufld_v2"
    ):
        load_matrix(matrix_dir)


def test_quantized_precision_needs_quantize_section(matrix_dir: Path) -> None:
    text = (matrix_dir / "recipes.toml").read_text()
    start = text.index("[recipes.int8.quantize]")
    end = text.index("[recipes.fx8]")
    (matrix_dir / "recipes.toml").write_text(text[:start] + text[end:])
    with pytest.raises(MatrixError, match=r"recipes\.int8: .*needs a \[quantize\] section"):
        load_matrix(matrix_dir)


def test_invalid_toml_reports_position(matrix_dir: Path) -> None:
    (matrix_dir / "broken.toml").write_text("[targets.x\narch = 1\n")
    with pytest.raises(MatrixError, match=r"broken\.toml: invalid TOML: .*line 1"):
        load_matrix(matrix_dir)


def test_missing_folder_and_unknown_cell(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match=r"matrix folder .* not found"):
        load_matrix(tmp_path / "nope")
    m = load_matrix(SHIPPED)
    with pytest.raises(UnknownNameError, match=r"unknown cell 'x86_cpu_int4'; cells of .*x86_cpu_int8"):
        m.cell("x86_cpu_int4")


def test_bad_input_shape(matrix_dir: Path) -> None:
    _edit(matrix_dir / "models.toml", "input_shape = [1, 3, 288, 800]", "input_shape = [4, 3, 288, 800]")
    with pytest.raises(MatrixError, match=r"input_shape must be \[1, 3, H, W\]"):
        load_matrix(matrix_dir)


def test_backends_dimension(matrix_dir: Path) -> None:
    m = load_matrix(matrix_dir)
    assert m.targets["x86_cpu"].all_backends == ["onnxruntime", "openvino"]
    assert m.targets["jetson"].all_backends == ["tensorrt"]  # default: the primary backend alone
    _edit(matrix_dir / "targets.toml", 'backends = ["onnxruntime", "openvino"]', 'backends = ["openvino"]')
    with pytest.raises(MatrixError, match=r"must include the primary backend 'onnxruntime'"):
        load_matrix(matrix_dir)
    _edit(matrix_dir / "targets.toml", 'backends = ["openvino"]', 'backends = ["onnxruntime", "openvino", "openvino"]')
    with pytest.raises(MatrixError, match="lists a backend twice"):
        load_matrix(matrix_dir)
    _edit(
        matrix_dir / "targets.toml",
        'backends = ["onnxruntime", "openvino", "openvino"]',
        'backends = ["onnxruntime", "tvm"]',
    )
    # backend names come from the backend registry (plugins included): the error lists the known ones
    with pytest.raises(
        MatrixError,
        match=r"targets\.toml: targets\.x86_cpu: unknown backend 'tvm'; known: onnxruntime, openvino, .*"
        r"\(plugins: entry-point group 'edgematrix\.backends'\)",
    ):
        load_matrix(matrix_dir)


def test_cells_of_a_second_model_name_the_model(matrix_dir: Path) -> None:
    extra = matrix_dir / "zz_second.toml"
    extra.write_text(
        '[[cells]]\ntarget = "x86_cpu"\nmodel = "ufld_r18"\nrecipes = ["int8"]\nname = "{target}_{model}_{recipe}"\n'
    )
    m = load_matrix(matrix_dir)
    assert "x86_cpu_ufld_r18_int8" in m.cells and "x86_cpu_int8" in m.cells
    assert [s.name for s in list_sessions(matrix_dir)] == list(m.cells)
    # the default pattern collides with the first cell: the message says how to name the second model's cells
    extra.write_text('[[cells]]\ntarget = "x86_cpu"\nmodel = "ufld_r18"\nrecipes = ["int8"]\n')
    with pytest.raises(MatrixError, match=r"'x86_cpu_int8' is declared twice.*\{target\}_\{model\}_\{recipe\}"):
        load_matrix(matrix_dir)
    extra.write_text('[[cells]]\ntarget = "x86_cpu"\nmodel = "ufld_r18"\nrecipes = ["int8"]\nname = "fixed"\n')
    with pytest.raises(MatrixError, match=r"cells\[0\]\.name"):
        load_matrix(matrix_dir)


def test_a_model_task_must_be_registered(matrix_dir: Path) -> None:
    models = matrix_dir / "models.toml"
    models.write_text(models.read_text().replace('task = "steering"', 'task = "steer"'))
    with pytest.raises(
        MatrixError,
        match=r"models\.toml: models\.pilotnet\.task: unknown task 'steer'; known: detection, lane, multitask, "
        r"outputs, steering.*entry-point group 'edgematrix\.tasks'; or an import path, task = 'package\.module:TaskClass'",
    ):
        load_matrix(matrix_dir)


def test_split_and_mixed_precision_recipes_check_the_model_task(matrix_dir: Path) -> None:
    (matrix_dir / "zz_split.toml").write_text(
        '[recipes.split_heads]\ndescription = "split"\nprecision = "int8"\n[recipes.split_heads.quantize]\n'
        '[recipes.split_heads.split.default_head]\nprecision = "int8"\n'
        '[[cells]]\ntarget = "x86_cpu"\nmodel = "ufld_r18"\nrecipes = ["split_heads"]\n'
    )
    with pytest.raises(
        MatrixError, match=r"recipe 'split_heads' splits a multi-head model; model 'ufld_r18' is a 'lane'"
    ):
        load_matrix(matrix_dir)
    # the recipe's precision must be its lowest subgraph precision
    (matrix_dir / "zz_split.toml").write_text(
        '[recipes.split_heads]\ndescription = "split"\nprecision = "fp32"\n'
        '[recipes.split_heads.split.default_head]\nprecision = "fp16"\n'
    )
    with pytest.raises(MatrixError, match=r"lowest subgraph precision is 'fp16'"):
        load_matrix(matrix_dir)


def test_a_task_owns_its_training_parameters(matrix_dir: Path) -> None:
    """[models.X.train] holds the shared loop settings plus the keys its task declares (train_params):
    the lane task's are validated and completed with their defaults; a steering model refuses them."""
    m = load_matrix(matrix_dir)
    lane = m.models["ufld_r18"].train
    assert (lane.label_sigma, lane.expectation_weight) == (1.0, 0.1)  # as matrix/models.toml sets them
    assert "label_sigma" not in m.models["pilotnet"].train.model_dump()

    models = matrix_dir / "models.toml"
    _edit(models, "expectation_weight = 0.1\n", "")
    assert load_matrix(matrix_dir).models["ufld_r18"].train.expectation_weight == 0.05  # the lane task's default

    _edit(models, "label_sigma = 1.0\n", "label_sigma = 1.0\nlabel_smoothing = 0.1\n")
    with pytest.raises(MatrixError) as e:
        load_matrix(matrix_dir)
    msg = str(e.value)
    assert "models.ufld_r18.train.label_smoothing: unknown key" in msg
    assert "task 'lane''s own: label_sigma, expectation_weight" in msg and "valid keys: epochs, batch_size" in msg
    _edit(models, "label_smoothing = 0.1\n", "")

    _edit(models, "label_sigma = 1.0\n", "label_sigma = -1.0\n")
    with pytest.raises(
        MatrixError, match=r"models\.ufld_r18\.train\.label_sigma: Input should be greater than or equal to 0"
    ):
        load_matrix(matrix_dir)
    _edit(models, "label_sigma = -1.0\n", "label_sigma = 1.0\n")

    _edit(models, "weight_decay = 1e-5", "weight_decay = 1e-5\nlabel_sigma = 1.0")
    with pytest.raises(
        MatrixError, match=r"models\.pilotnet\.train\.label_sigma: unknown key .*task 'steering''s own: none"
    ):
        load_matrix(matrix_dir)


def test_the_fine_tune_takes_the_task_s_own_training_parameters(matrix_dir: Path) -> None:
    from edgematrix.core.registries import tasks
    from edgematrix.matrix.schema import FinetuneSection

    m = load_matrix(matrix_dir)
    lane = tasks.get("lane")().distill_config(FinetuneSection(), m.models["ufld_r18"].train)
    assert (lane.label_sigma, lane.expectation_weight, lane.flip) == (1.0, 0.1, True)
    steering = tasks.get("steering")().distill_config(FinetuneSection(), m.models["pilotnet"].train)
    assert steering.epochs == FinetuneSection().epochs

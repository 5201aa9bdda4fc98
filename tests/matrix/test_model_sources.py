"""Model sources in the matrix: family, factory + checkpoint, ONNX file; declared input shapes; recipes and
targets an ONNX model cannot take, refused when the matrix loads (naming the recipe, the input, the dim)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from byom import build_detector
from edgematrix.errors import MatrixError
from edgematrix.matrix.loader import load_matrix

REPO = Path(__file__).resolve().parents[2]

RECIPES = """
[recipes.int8]
description = "INT8 PTQ"
precision = "int8"
[recipes.int8.quantize]
method = "minmax"

[recipes.prune_int8]
description = "prune + INT8"
precision = "int8"
[recipes.prune_int8.prune]
ratio = 0.5
[recipes.prune_int8.finetune]
epochs = 1
[recipes.prune_int8.quantize]
method = "minmax"

[recipes.qat]
description = "QAT"
precision = "int8"
[recipes.qat.qat]
epochs = 1
[recipes.qat.quantize]
method = "minmax"
"""


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "matrix").mkdir()
    shutil.copy(REPO / "matrix" / "targets.toml", tmp_path / "matrix" / "targets.toml")
    (tmp_path / "matrix" / "recipes.toml").write_text(RECIPES)
    build_detector(tmp_path / "models" / "det.onnx", widths=(8,), classes=2)
    return tmp_path


def _model(ws: Path, body: str, cells: str = "") -> None:
    (ws / "matrix" / "mine.toml").write_text(f'[models.det]\ndescription = "a detector"\n{body}\n{cells}')


def _cell(recipe: str, target: str = "x86_cpu") -> str:
    return f'[[cells]]\ntarget = "{target}"\nmodel = "det"\nrecipes = ["{recipe}"]\nname = "{{target}}_{{model}}_{{recipe}}"\n'


def test_an_onnx_model_takes_declared_shapes_and_relative_paths(ws: Path) -> None:
    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shapes = { images = [1, 3, 64, 96] }', _cell("int8"))
    m = load_matrix(ws / "matrix")
    model = m.models["det"]
    assert model.onnx == str(ws / "models" / "det.onnx")  # relative to the folder holding matrix/
    assert model.source == "onnx" and model.dataset == "images"  # the outputs task's dataset
    assert model.input_shapes == {"images": [1, 3, 64, 96]} and model.input_shape == [1, 3, 64, 96]
    assert model.shape_text() == "1x3x64x96"
    assert m.cells["x86_cpu_det_int8"].resolved()["model"]["onnx"] == model.onnx
    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shape = [1, 3, 32, 32]')  # one input: by position
    assert load_matrix(ws / "matrix").models["det"].input_shapes == {"images": [1, 3, 32, 32]}


def test_a_dynamic_dimension_without_a_shape_names_the_input_and_the_dims(ws: Path) -> None:
    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"')
    with pytest.raises(
        MatrixError,
        match=r"mine\.toml: models\.det: det\.onnx: input 'images' \(float32\[batch, 3, height, width\]\) has dynamic "
        r"dimension\(s\) 0 \('batch'\), 2 \('height'\), 3 \('width'\) and no declared shape; declare it: input_shapes "
        r"= \{ images = \[N, 3, N, N\] \}",
    ):
        load_matrix(ws / "matrix")
    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shapes = { images = [1, 1, 64, 96] }')
    with pytest.raises(MatrixError, match=r"input 'images' dim 1 is fixed to 3 in the file .*input_shapes declares 1"):
        load_matrix(ws / "matrix")
    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shapes = { images = [1, 3, 0, 96] }')
    with pytest.raises(MatrixError, match=r"every size is >= 1"):
        load_matrix(ws / "matrix")


@pytest.mark.parametrize(
    ("recipe", "step", "sections"),
    [("prune_int8", "prune_ratio", r"\[prune\], \[finetune\]"), ("qat", "qat", r"\[qat\]")],
)
def test_recipes_that_need_torch_are_refused_for_an_onnx_model(ws: Path, recipe: str, step: str, sections: str) -> None:
    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shapes = { images = [1, 3, 64, 96] }', _cell(recipe))
    with pytest.raises(
        MatrixError,
        match=rf"cells\[0\]: recipe '{recipe}' needs the torch model: its step '{step}' \({sections}\) changes the "
        r"module's weights or channels and re-exports it, and model 'det' is an ONNX file \(det\.onnx\) .*Give the "
        r"model as factory = 'package\.module:function' \+ checkpoint",
    ):
        load_matrix(ws / "matrix")


def test_an_onnx_model_is_refused_on_the_torch_backend_and_by_tasks_that_decode_with_the_module(ws: Path) -> None:
    shapes = "input_shapes = { images = [1, 3, 64, 96] }"
    _model(ws, f'onnx = "models/det.onnx"\ntask = "outputs"\n{shapes}', _cell("int8", "x86_gpu"))
    with pytest.raises(MatrixError, match=r"target runs the torch backend, which runs the trained torch module"):
        load_matrix(ws / "matrix")
    _model(ws, f'onnx = "models/det.onnx"\ntask = "lane"\n{shapes}')
    with pytest.raises(
        MatrixError, match=r"models\.det: task 'lane' decodes its outputs with the torch model's geometry"
    ):
        load_matrix(ws / "matrix")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('task = "outputs"\ninput_shape = [1, 3, 8, 8]', r"give exactly one model source: .*; got none"),
        (
            'family = "pilotnet"\nonnx = "models/det.onnx"\ntask = "outputs"\ninput_shape = [1, 3, 8, 8]',
            r"give exactly one model source: .*; got family, onnx",
        ),
        (
            'onnx = "models/det.onnx"\ncheckpoint = "w.pt"\ntask = "outputs"',
            r"checkpoint: an ONNX model is not built, trained or loaded from a checkpoint",
        ),
        ('onnx = "models/missing.onnx"\ntask = "outputs"', r"models\.det\.onnx: file .*missing\.onnx not found"),
        (
            'factory = "no_such_pkg_xyz.nets:build"\ntask = "outputs"\ninput_shape = [1, 3, 8, 8]',
            r"models\.det\.factory: cannot import module 'no_such_pkg_xyz\.nets'",
        ),
        (
            'factory = "edgematrix.tasks.outputs:METRIC"\ntask = "outputs"\ninput_shape = [1, 3, 8, 8]',
            r"models\.det\.factory: 'edgematrix\.tasks\.outputs:METRIC' is a str, not a function",
        ),
        (
            'factory = "edgematrix.models:build_pilotnet"\ntask = "outputs"\ninput_shapes = { input = [1, 3, 8, 8] }',
            r"input_shapes: a torch model .* has one input, exported as 'input'; declare input_shape",
        ),
        (
            'factory = "edgematrix.models:build_pilotnet"\ncheckpoint = "weights/none.pt"\ntask = "outputs"\n'
            "input_shape = [1, 3, 8, 8]",
            r"models\.det\.checkpoint: file .*weights/none\.pt not found",
        ),
        (
            'onnx = "models/det.onnx"\ntask = "no_such_pkg_xyz.tasks:Mine"\ninput_shape = [1, 3, 8, 8]',
            r"models\.det\.task: task 'no_such_pkg_xyz\.tasks:Mine': cannot import module 'no_such_pkg_xyz\.tasks'",
        ),
    ],
)
def test_model_sources_are_validated(ws: Path, body: str, message: str) -> None:
    _model(ws, body)
    with pytest.raises(MatrixError, match=message):
        load_matrix(ws / "matrix")


def test_a_task_by_import_path_and_a_factory_with_its_checkpoint(ws: Path) -> None:
    (ws / "weights").mkdir()
    (ws / "weights" / "w.pt").write_bytes(b"checked when the cell runs")
    _model(
        ws,
        'factory = "edgematrix.models:build_pilotnet"\ncheckpoint = "weights/w.pt"\n'
        'task = "edgematrix.tasks.outputs:OutputsTask"\ninput_shape = [1, 3, 66, 200]\ndata_root = "imgs"',
        _cell("prune_int8"),
    )
    model = load_matrix(ws / "matrix").models["det"]
    assert model.source == "factory" and model.checkpoint == str(ws / "weights" / "w.pt")
    assert model.data_root == str(ws / "imgs") and model.dataset == ""  # a task given by path names no dataset


def test_a_resolved_onnx_model_reads_back_from_its_config_json(ws: Path) -> None:
    """config.json holds the resolved model (both input_shape and input_shapes, default train/params): the demo
    and the sweeps validate it again."""
    from edgematrix.matrix.schema import Model

    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shapes = { images = [1, 3, 64, 96] }')
    resolved = load_matrix(ws / "matrix").models["det"]
    again = Model.model_validate(resolved.model_dump(mode="json"))
    assert again == resolved


def test_plugin_step_settings_name_a_registered_step_and_packages_reach_the_sessions(ws: Path) -> None:
    from edgematrix.matrix.listing import list_sessions

    (ws / "matrix" / "recipes.toml").write_text(RECIPES + "\n[recipes.int8.steps.no_such_step]\nlevel = 2\n")
    _model(ws, 'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shapes = { images = [1, 3, 64, 96] }')
    with pytest.raises(
        MatrixError,
        match=r"recipes\.int8\.steps: unknown recipe step\(s\) no_such_step; known: dynamic_int8, fp16, .*\(plugins: "
        r"entry-point group 'edgematrix\.recipe_steps'\)",
    ):
        load_matrix(ws / "matrix")
    (ws / "matrix" / "recipes.toml").write_text(RECIPES)
    _model(
        ws,
        'onnx = "models/det.onnx"\ntask = "outputs"\ninput_shapes = { images = [1, 3, 64, 96] }\n'
        'packages = ["./mypkg", "extra-lib==1.0"]',
        _cell("int8"),
    )
    assert load_matrix(ws / "matrix").models["det"].packages == ["./mypkg", "extra-lib==1.0"]
    (info,) = list_sessions(ws / "matrix")
    assert info.name == "x86_cpu_det_int8" and info.packages == ("./mypkg", "extra-lib==1.0")

"""The optimization recipes of the matrix: prune / finetune / qat / mixed-precision sections validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgematrix.errors import MatrixError
from edgematrix.matrix.loader import load_matrix

REPO = Path(__file__).resolve().parents[2]

BASE = """
[models.m]
description = "m"
family = "ufld_v2"
task = "lane"
dataset = "tusimple"
input_shape = [1, 3, 64, 160]

[[cells]]
target = "x86_cpu"
model = "m"
recipes = ["r"]
"""


def _load(tmp_path: Path, recipe: str):
    (tmp_path / "targets.toml").write_text((REPO / "matrix" / "targets.toml").read_text())
    (tmp_path / "m.toml").write_text(BASE + recipe)
    return load_matrix(tmp_path)


def test_matrix_has_the_optimization_cells() -> None:
    m = load_matrix(REPO / "matrix")
    for name in ("prune_x2", "prune_x3", "prune_x2_int8", "prune_x3_int8", "int8_qat", "int8_mixed"):
        assert f"x86_cpu_{name}" in m.cells, name
    x2 = m.cell("x86_cpu_prune_x2_int8")
    assert x2.recipe.prune is not None and x2.recipe.prune.speedup == 2.0 and x2.recipe.prune.round_to == 8
    assert x2.recipe.finetune is not None and x2.recipe.quantize is not None
    assert x2.gates.accuracy_drop_vs_reference == 1.0  # pruned models: at most 1.0 point below FP32
    assert m.cell("x86_cpu_prune_x3").recipe.precision == "fp32"
    assert m.cell("x86_cpu_int8_mixed").recipe.quantize.accuracy_budget == 0.3
    qat = m.cell("x86_cpu_int8_qat").recipe
    assert qat.qat is not None and qat.quantize is not None and qat.quantize.activations == "symmetric"


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ('[recipes.r]\ndescription = "r"\nprecision = "fp32"\n[recipes.r.prune]\nspeedup = 2\nround = 8\n',
         r"recipes\.r\.prune\.round: unknown key \(valid keys here: .*round_to"),
        ('[recipes.r]\ndescription = "r"\nprecision = "fp32"\n[recipes.r.prune]\nspeedup = 1\n',
         r"recipes\.r\.prune\.speedup: .*greater than 1"),
        ('[recipes.r]\ndescription = "r"\nprecision = "fp32"\n[recipes.r.finetune]\nepochs = 1\n',
         r"finetune: distillation fine-tunes a pruned model"),
        ('[recipes.r]\ndescription = "r"\nprecision = "fp32"\n[recipes.r.qat]\nepochs = 1\n',
         r"qat: QAT produces an INT8 model"),
        ('[recipes.r]\ndescription = "r"\nprecision = "int8"\n[recipes.r.quantize]\naccuracy_budget = -1\n',
         r"recipes\.r\.quantize\.accuracy_budget"),
        ('[recipes.r]\ndescription = "r"\nprecision = "int8"\n[recipes.r.quantize]\n[recipes.r.prune]\nspeedup = 2\n'
         '[recipes.r.finetune]\nalpha = 2\n', r"recipes\.r\.finetune\.alpha"),
    ],
)  # fmt: skip
def test_bad_sections_name_the_key(tmp_path: Path, recipe: str, message: str) -> None:
    with pytest.raises(MatrixError, match=message):
        _load(tmp_path, recipe)


def test_defaults_of_a_minimal_prune_recipe(tmp_path: Path) -> None:
    m = _load(tmp_path, '[recipes.r]\ndescription = "r"\nprecision = "fp32"\n[recipes.r.prune]\nspeedup = 2.5\n')
    p = m.cell("x86_cpu_r").recipe.prune
    assert p is not None
    assert (p.round_to, p.ignored_layers, p.tolerance, p.importance) == (8, ["pool", "cls"], 0.10, "magnitude")

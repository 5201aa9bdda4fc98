"""The tiny UFLD-v2 cells the end-to-end tests run (real training, export, quantization, ONNX Runtime),
and a workspace / run helper. Importable from every test folder (tests/ is on sys.path via conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgematrix.cli import main

REPO = Path(__file__).resolve().parents[1]


def quick_latency(recipe: str) -> str:
    """A [latency] section of a few rounds for ``recipe``: tiny models, sub-millisecond runs."""
    return f"""
[recipes.{recipe}.latency]
warmup = 2
min_rounds = 6
max_rounds = 20
min_time_s = 0.1
max_time_s = 10
"""


#: [cells.gates] of tiny cells: accuracy of a one-epoch model is not the point, and sub-millisecond
#: models over a handful of rounds make the latency ratio noise, so the latency gate is exercised
#: (evaluated and reported) with a limit it cannot reach
TINY_GATES = """
[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0
latency_regression = 10.0
latency_min_effect = 0.99
"""

#: a 64x160 UFLD-v2 (width 8) on 12 synthetic training images, INT8 and FP32 cells on x86_cpu
TINY = (
    """
[models.ufld_tiny]
description = "UFLD-v2 tiny, for tests"
family = "ufld_v2"
task = "lane"
dataset = "tusimple"
input_shape = [1, 3, 64, 160]

[models.ufld_tiny.params]
width = 8
mlp_mid_dim = 64

[models.ufld_tiny.synthetic]
train = 12
test = 5
seed = 3

[models.ufld_tiny.train]
epochs = 1
batch_size = 6

[recipes.int8q]
description = "INT8 PTQ quick"
precision = "int8"

[recipes.int8q.quantize]
method = "minmax"
calibration_images = 4

"""
    + quick_latency("int8q")
    + """
[recipes.fp32q]
description = "FP32 quick"
precision = "fp32"

[recipes.fp32q.latency]
warmup = 1
min_rounds = 5
min_time_s = 0.1

[[cells]]
target = "x86_cpu"
model = "ufld_tiny"
recipes = ["int8q", "fp32q"]

"""
    + TINY_GATES
)
#: TINY's models and recipes without its cells, for matrices that add cells of their own
TINY_MODELS_AND_RECIPES = TINY.split("[[cells]]")[0]


#: a 64x96 SSD-lite detector (width 0.25) on 16 synthetic COCO-format scenes
DET_TINY_MODEL = """
[models.det_tiny]
description = "SSD-lite tiny, for tests"
family = "ssdlite"
task = "detection"
dataset = "coco"
input_shape = [1, 3, 64, 96]

[models.det_tiny.params]
num_classes = 4
width = 0.25
neck_channels = 16
head_depth = 1

[models.det_tiny.synthetic]
train = 16
test = 6
seed = 2

[models.det_tiny.train]
epochs = 1
batch_size = 8
"""

#: a 64x128 multi-task network (segmentation + depth) on 16 synthetic scenes
MT_TINY_MODEL = """
[models.mt_tiny]
description = "multi-task tiny, for tests"
family = "multitask_seg_depth"
task = "multitask"
dataset = "scenes"
input_shape = [1, 3, 64, 128]

[models.mt_tiny.params]
num_classes = 7
width = 0.5
features = 16
head_channels = 8

[models.mt_tiny.synthetic]
train = 16
test = 6
seed = 1

[models.mt_tiny.train]
epochs = 1
batch_size = 8
"""


def make_workspace(tmp_path_factory: pytest.TempPathFactory, name: str, matrix_text: str) -> Path:
    """A folder with matrix/targets.toml (the repository's) and matrix/tiny.toml (``matrix_text``)."""
    ws = tmp_path_factory.mktemp(name)
    (ws / "matrix").mkdir()
    shutil.copy(REPO / "matrix" / "targets.toml", ws / "matrix" / "targets.toml")
    (ws / "matrix" / "tiny.toml").write_text(matrix_text)
    return ws


def run_cell(ws: Path, cell: str, *args: str, results: str = "results") -> int:
    """``edgematrix run CELL`` in ``ws`` (its matrix, results and cache); returns the exit code."""
    return main(
        ["--matrix", str(ws / "matrix"), "run", cell, "--results", str(ws / results), "--cache", str(ws / "cache"),
         "--no-progress", *args]
    )  # fmt: skip

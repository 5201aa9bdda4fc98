"""Issue 17, done-when 2: a PyTorch module from a package outside src/edgematrix (installed here with pip), with
its checkpoint and a metric registered by entry point, runs ``prune_x2_int8`` end to end: latency-aware
pruning of the user's module, distillation toward its unpruned outputs, INT8 PTQ of both, the user's metric,
the same-run speedup vs the unpruned INT8 model. No edgematrix source is edited."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from byom import pip, write_colour_images, write_user_package
from tiny_cells import run_cell

REPO = Path(__file__).resolve().parents[2]
PACKAGE, DIST = "edgemx_colourpkg", "edgemx-colourpkg"

#: the matrix the user writes; prune_x2_int8 sized for a test (few probes, short blocks, one epoch) with a wide
#: landing range: a sub-millisecond model on a shared 2-core machine measures noisy ratios
USER_TOML = f"""
[models.colournet]
description = "colour classifier from the user's package, 32x32"
factory = "{PACKAGE}.model:build"
checkpoint = "weights/colournet.pt"
task = "colour"
data_root = "data/colours"
input_shape = [1, 3, 32, 32]

[models.colournet.params]
classes = 3
width = 16

[recipes.prune_x2_int8]
description = "Pruned to 2x INT8 latency, distilled, INT8 PTQ (quick)"
precision = "int8"

[recipes.prune_x2_int8.prune]
speedup = 2.0
round_to = 8
ignored_layers = ["pool", "cls"]  # the classifier keeps its classes
tolerance = 0.9
bound = "nearest"
max_probes = 2
pairs = 3
remeasure = 0
probe_rounds = 5
probe_min_time_s = 0.05

[recipes.prune_x2_int8.finetune]
epochs = 1
batch_size = 8
lr = 1e-3

[recipes.prune_x2_int8.quantize]
method = "minmax"
calibration_images = 8

[recipes.prune_x2_int8.latency]
warmup = 1
min_rounds = 8
max_rounds = 30
min_time_s = 0.1
max_time_s = 10

[[cells]]
target = "x86_cpu"
model = "colournet"
recipes = ["prune_x2_int8"]
name = "{{target}}_{{model}}_{{recipe}}"

[cells.gates]
accuracy_drop_vs_reference = 10.0
min_accuracy = 60.0
"""


@pytest.fixture(scope="module")
def user_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's package, pip-installed (editable, no deps) into this venv for the module; removed after."""
    from edgematrix.core.registries import tasks
    from edgematrix.tasks import base

    root = write_user_package(tmp_path_factory.mktemp("userpkg"), PACKAGE, DIST)
    pip("install", "--no-deps", "--no-build-isolation", "--quiet", "-e", str(root))
    sys.path.insert(0, str(root))  # what the editable install's .pth does for a new interpreter
    tasks.refresh()  # the entry points of the distribution just installed
    try:
        yield root
    finally:
        pip("uninstall", "--yes", "--quiet", DIST)
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        tasks.refresh()
        tasks._items.pop("colour", None)
        base._instances.pop("colour", None)


def _train_checkpoint(data: Path, rows: list[tuple[str, int]], path: Path) -> float:
    """What the user did before edgematrix: train ColourNet (their code), save its state dict. Returns the
    training accuracy."""
    import torch
    from edgemx_colourpkg.model import build  # type: ignore[import-not-found]
    from PIL import Image

    torch.manual_seed(0)
    model = build(classes=3, width=16)
    x = torch.from_numpy(np.stack([np.asarray(Image.open(data / f)) for f, _ in rows]).transpose(0, 3, 1, 2) / 255.0)
    x, y = x.float(), torch.tensor([label for _, label in rows])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(40):
        idx = torch.randint(0, len(x), (16,), generator=torch.Generator().manual_seed(_))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, user_package: Path) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    (ws / "matrix").mkdir()
    shutil.copy(REPO / "matrix" / "targets.toml", ws / "matrix" / "targets.toml")
    (ws / "matrix" / "colour.toml").write_text(USER_TOML)
    data = ws / "data" / "colours"
    data.mkdir(parents=True)
    rows = write_colour_images(data, 36, seed=1, size=32)
    assert _train_checkpoint(data, rows, ws / "weights" / "colournet.pt") >= 0.9
    return ws


def test_the_entry_point_plugin_is_listed_with_its_distribution(user_package: Path) -> None:
    """A fresh interpreter (as a user's shell): the editable install and its entry point are found."""
    done = subprocess.run(
        [sys.executable, "-c", "from edgematrix.cli import main; raise SystemExit(main(['list', '--plugins']))"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("task") and " colour " in line)
    assert row.split() == ["task", "colour", "plugin", DIST, f"{PACKAGE}.task:ColourTask"]


@pytest.mark.slow
def test_a_user_module_with_its_checkpoint_and_metric_runs_prune_x2_int8(workspace: Path, user_package: Path) -> None:
    assert run_cell(workspace, "x86_cpu_colournet_prune_x2_int8") == 0
    out = workspace / "results" / "x86_cpu_colournet_prune_x2_int8"
    runs = {
        (b["extra_info"]["backend"], b["extra_info"]["role"]): b["extra_info"]
        for b in json.loads((out / "benchmark.json").read_text())["benchmarks"]
    }
    assert ("onnxruntime", "unpruned") in runs  # the speedup's base, in the same rounds
    cand, ref, unpruned = (
        runs["onnxruntime", "candidate"],
        runs["onnxruntime", "reference"],
        runs["onnxruntime", "unpruned"],
    )
    assert cand["metric"] == ref["metric"] == "top-1 colour accuracy"  # the plugin's metric
    assert (cand["precision"], unpruned["precision"], cand["input_shape"]) == ("int8", "int8", "1x3x32x32")
    assert 0 < cand["prune_ratio"] < 1 and cand["params"] < cand["unpruned_params"]
    assert cand["finetune_epochs"] == 1 and cand["model_bytes"] < unpruned["model_bytes"]
    assert cand["speedup_vs_unpruned"] == pytest.approx(unpruned["p50_ms"] / cand["p50_ms"], rel=1e-3)
    # the plugin's metric: its own predictions file, re-scored here against labels.csv
    labels = dict(
        line.split(",") for line in (workspace / "data" / "colours" / "labels.csv").read_text().splitlines()[1:]
    )
    for role, info in (("reference", ref), ("candidate", cand)):
        rows = [line.split(",") for line in (out / f"predictions-{role}.csv").read_text().splitlines()[1:]]
        assert len(rows) == 9  # the last quarter of 36 images
        assert info["accuracy"] == pytest.approx(100 * np.mean([labels[f] == p for f, p in rows]))
    assert ref["accuracy"] >= 85.0
    gates = {c.get("name"): c for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    assert {"prune_search_landed", "prune_speedup_vs_unpruned", "accuracy_vs_reference"} <= set(gates)
    report = (out / "report.md").read_text().replace("\\", "")
    assert f"checkpoint {workspace / 'weights' / 'colournet.pt'}" in report
    assert f"factory {PACKAGE}.model:build" in report and "## Pruning search" in report


def test_user_code_keys_the_caches_by_its_own_sources(workspace: Path, user_package: Path) -> None:
    from edgematrix.matrix.loader import load_matrix
    from edgematrix.pipeline.source import training_key, user_code
    from edgematrix.tasks.base import get_task

    cell = load_matrix(workspace / "matrix").cells["x86_cpu_colournet_prune_x2_int8"]
    task = get_task(cell.model.task)
    before, key = user_code(cell.model, task), training_key(cell, task, "data", "2.13.0+cpu")
    assert len(before) == 2  # the factory's package and the plugin task's (the same package here)
    model_py = user_package / PACKAGE / "model.py"
    original = model_py.read_text()
    try:
        model_py.write_text(original + "\n# the architecture changed\n")
        assert user_code(cell.model, task) != before and training_key(cell, task, "data", "2.13.0+cpu") != key
    finally:
        model_py.write_text(original)
    assert user_code(cell.model, task) == before

"""docs/your-model.md can't rot: its files (every fenced block whose first line is ``# <path>``: the matrix
TOML, the user package's pyproject, model.py and task.py) are written into a workspace beside the
repository's own matrix, the package is pip-installed from the doc's pyproject (into a folder on sys.path,
not into this venv), and the real matrix loader resolves every model and cell. The outputs the doc quotes
from commands that run in a second (validation errors, ``list --plugins``, the ``measure`` refusal) are
checked against what the code prints now."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from byom import export_torch_detector, pip, write_colour_images, write_images

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "your-model.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
#: the noxfile's own sessions (besides the generated cell sessions) the doc may name
TOOL_SESSIONS = {"tests", "lint", "images", "update_baselines", "report", "validate", "lock", "pilotnet_strategies"}


def _doc() -> str:
    return DOC.read_text()


def doc_files() -> dict[str, str]:
    """``{path: text}`` of every fenced block that starts with ``# <path>`` (a file the user writes)."""
    files = {}
    for _lang, body in FENCE.findall(_doc()):
        first = body.splitlines()[0] if body else ""
        m = re.fullmatch(r"# ((?:[\w.-]+/)+[\w.-]+\.(?:toml|py))", first)
        if m:
            assert m.group(1) not in files, f"{m.group(1)} is written twice in the doc"
            files[m.group(1)] = body
    return files


def _unwrap(text: str) -> str:
    """Quoted terminal output joined back into one line per message (rich wraps long lines)."""
    return re.sub(r"\s*\n\s*", " ", text)


def test_the_doc_writes_the_files_of_its_walkthroughs() -> None:
    files = doc_files()
    assert {
        "matrix/det.toml", "matrix/det_strict.toml", "matrix/colour.toml", "matrix/colour_nightly.toml",
        "colourpkg/pyproject.toml", "colourpkg/colourpkg/model.py", "colourpkg/colourpkg/task.py",
    } == set(files)  # fmt: skip
    det = [line for line in files["matrix/det.toml"].splitlines() if line.strip() and not line.startswith("#")]
    assert len(det) == 12  # "about ten lines of TOML"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The repository's matrix plus the doc's files, the assets they name (an ONNX detector exported by
    torch.onnx with dynamic H/W and two outputs, image folders, a checkpoint of the doc's module) and the
    doc's package installed from its pyproject into ``site/`` (on sys.path; its entry points are read)."""
    from edgematrix.core.registries import tasks
    from edgematrix.tasks import base

    ws = tmp_path_factory.mktemp("your_model")
    shutil.copytree(REPO / "matrix", ws / "matrix", ignore=shutil.ignore_patterns("baselines"))
    for path, text in doc_files().items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text)
    (ws / "colourpkg" / "colourpkg" / "__init__.py").write_text("")
    export_torch_detector(ws / "models" / "det.onnx")
    write_images(ws / "data" / "street", 8, sizes=((180, 320), (240, 320)))
    (ws / "data" / "colours").mkdir(parents=True)
    write_colour_images(ws / "data" / "colours", 6, size=32)
    site = ws / "site"
    pip("install", "--no-deps", "--no-build-isolation", "--quiet", "--target", str(site), str(ws / "colourpkg"))
    sys.path.insert(0, str(site))
    tasks.refresh()
    try:
        import torch
        from colourpkg.model import build  # type: ignore[import-not-found]

        (ws / "weights").mkdir()
        torch.save(build(classes=3, width=48).state_dict(), ws / "weights" / "colournet.pt")
        yield ws
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m == "colourpkg" or m.startswith("colourpkg.")]:
            del sys.modules[name]
        tasks.refresh()
        tasks._items.pop("colour", None)
        base._instances.pop("colour", None)


def test_the_doc_matrix_loads_with_the_real_loader(workspace: Path) -> None:
    from edgematrix.matrix.listing import list_sessions
    from edgematrix.matrix.loader import load_matrix
    from edgematrix.tasks.base import get_task
    from edgematrix.tasks.outputs import OutputsTask

    m = load_matrix(workspace / "matrix")
    det = m.models["det"]
    assert (det.source, det.task, det.dataset) == ("onnx", "outputs", "images")
    assert det.onnx == str(workspace / "models" / "det.onnx") and det.data_root == str(workspace / "data" / "street")
    assert det.input_shapes == {"images": [1, 3, 320, 320]} and det.input_shape == [1, 3, 320, 320]
    assert (det.images.resize, det.images.std, det.images.layout) == ("stretch", [255.0, 255.0, 255.0], "nchw")
    strict = m.cells["x86_cpu_det_strict_int8"].gates
    assert (strict.accuracy_drop_vs_reference, strict.min_accuracy) == (0.1, 99.0)

    colour = m.models["colournet"]
    assert (colour.source, colour.factory, colour.task) == ("factory", "colourpkg.model:build", "colour")
    assert colour.checkpoint == str(workspace / "weights" / "colournet.pt") and colour.packages == ["./colourpkg"]
    assert colour.params == {"classes": 3, "width": 48} and colour.input_shape == [1, 3, 128, 128]
    task = get_task("colour")
    assert isinstance(task, OutputsTask) and type(task).__module__ == "colourpkg.task"
    assert task.metric == "top-1 colour accuracy"

    sessions = {s.name: s for s in list_sessions(workspace / "matrix")}
    assert {"x86_cpu_det_int8", "x86_cpu_det_strict_int8", "x86_cpu_colournet_prune_x2_int8"} <= set(m.cells)
    assert sessions["x86_cpu_colournet_prune_x2_int8"].packages == ("./colourpkg",)  # the session installs it
    assert sessions["x86_cpu_colournet_nightly_prune_x2_int8"].schedule == "nightly"
    # every `nox -s NAME` the doc names is a session of this matrix or one of the noxfile's own (CELL: a placeholder)
    named = set(re.findall(r"nox -s ([a-z][\w.-]*)", _doc()))
    assert named and named <= set(sessions) | TOOL_SESSIONS, named - set(sessions) - TOOL_SESSIONS


def test_the_quoted_plugin_listing_and_errors_are_what_edgematrix_prints(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgematrix.cli import main
    from edgematrix.matrix.loader import load_matrix

    doc = _unwrap(_doc())
    assert main(["--matrix", str(workspace / "matrix"), "list", "--plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("task ") and " colour " in line)
    assert row.split() == ["task", "colour", "plugin", "colourpkg", "colourpkg.task:ColourTask"]
    # the columns' widths follow the other rows (plugins installed beside it): compare the cells
    assert any(line.split() == row.split() for line in _doc().splitlines()), row

    # the ONNX model without input_shapes, and with a torch recipe: the doc's two validation errors
    text = (workspace / "matrix" / "det.toml").read_text()
    (workspace / "matrix" / "colour.toml").rename(workspace / "colour.toml.off")  # one error at a time
    (workspace / "matrix" / "colour_nightly.toml").rename(workspace / "colour_nightly.toml.off")
    try:
        for changed in (
            re.sub(r"(?m)^input_shapes = .*\n", "", text),
            text.replace('recipes = ["int8"]', 'recipes = ["int8", "prune_x2_int8"]'),
        ):
            (workspace / "matrix" / "det.toml").write_text(changed)
            monkeypatch.chdir(workspace)
            assert main(["--matrix", "matrix", "validate"]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("edgematrix: error: matrix/det.toml") and err in doc, err
    finally:
        (workspace / "matrix" / "det.toml").write_text(text)
        (workspace / "colour.toml.off").rename(workspace / "matrix" / "colour.toml")
        (workspace / "colour_nightly.toml.off").rename(workspace / "matrix" / "colour_nightly.toml")
    assert "x86_cpu_det_int8" in load_matrix(workspace / "matrix").cells

    # `edgematrix measure` on the dynamic model without --shape refuses, as quoted (nothing is measured)
    monkeypatch.chdir(workspace)
    assert main(["measure", "models/det.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgematrix: error: the model has dynamic input dimensions") and err in doc, err


def test_without_the_package_the_plugin_task_is_unknown_as_quoted(workspace: Path) -> None:
    """The doc's error for a matrix validated where colourpkg is not installed: a fresh interpreter."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", "from edgematrix.cli import main; raise SystemExit(main(['validate']))"],
        capture_output=True, text=True, timeout=120, cwd=workspace,
    )  # fmt: skip
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.startswith("edgematrix: error: matrix/colour.toml: models.colournet.task: unknown task 'colour'")
    assert err in _unwrap(_doc()), err

"""Sessions that only drive Docker (`nox -s images`, a cell's `--runner docker`) install a light venv:
edgematrix without its dependencies, plus noxfile.LIGHT_REQUIREMENTS and the `docker` extra. Loading
and validating the matrix there must not import anything else (torch, ONNX, the runtimes): a task
adapter that imported torch once broke both sessions on a fresh clone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: distribution name → import name, where they differ
IMPORT_NAMES = {"pillow": "PIL", "py-cpuinfo": "cpuinfo", "pytest-benchmark": "pytest_benchmark"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower()


def _light_session_names() -> set[str]:
    """What the light sessions install, from the noxfile itself (imported in a subprocess: importing it
    here would register its sessions a second time beside tests/test_noxfile.py's import)."""
    script = "import json, noxfile; print(json.dumps([*noxfile.LIGHT_REQUIREMENTS, *noxfile._extra('docker')]))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return {_name(s) for s in json.loads(proc.stdout.strip().splitlines()[-1])}


def test_the_matrix_loads_and_the_docker_path_imports_without_the_heavy_dependencies() -> None:
    light = {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in _light_session_names()}
    assert {"pydantic", "numpy", "docker"} <= light
    blocked = sorted(
        {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in map(_name, PYPROJECT["project"]["dependencies"])} - light
        | {"onnxruntime", "openvino", "torch_pruning", "modelopt", "tensorrt", "polygraphy"}
    )
    assert {"torch", "onnx", "scipy", "matplotlib", "pycocotools"} <= set(blocked)
    script = f"""
import importlib.abc, json, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed in a light session)")
        return None
sys.meta_path.insert(0, Block())
from pathlib import Path
from edgematrix.matrix.loader import load_matrix
m = load_matrix(Path({str(REPO / "matrix")!r}))
import edgematrix.cli, edgematrix.executors.docker, edgematrix.executors.select
print(json.dumps({{"cells": len(m.cells), "tasks": sorted({{c.model.task for c in m.cells.values()}}),
                  "heavy": sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["heavy"] == []
    assert doc["cells"] > 20 and {"lane", "detection", "multitask", "steering"} <= set(doc["tasks"])

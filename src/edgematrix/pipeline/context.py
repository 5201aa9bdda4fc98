"""What the stages of one cell run share: options, the progress lines, the artifacts built, the results.

The pipeline (:mod:`edgematrix.pipeline.cell`) runs ``source → build (recipe steps) → evaluate →
measure → gate → publish``; each stage reads and extends a :class:`CellContext`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from edgematrix.core.cache import file_sha256
from edgematrix.matrix.loader import Cell

console = Console(stderr=True, highlight=False, width=shutil.get_terminal_size((130, 24)).columns)

Fact = float | int | str


@dataclass
class CellOptions:
    runner: str = "auto"
    results_dir: Path = Path("results")
    cache_dir: Path = Path(".cache/edgematrix")
    baselines_dir: Path = Path("matrix/baselines")
    data_root: str | None = None
    update_baseline: bool = False
    progress: bool = True
    ab_base: Path | None = None  # A/B mode: the base branch's candidate (.onnx, or its results/<cell>/ folder)
    remote: str | None = None  # --runner remote: URL of the device's `edgematrix serve`


@dataclass
class CellResult:
    cell: str
    out_dir: Path
    verdicts: list[Any]
    rows: list[dict[str, Any]]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    selection: str = ""

    @property
    def failed(self) -> list[Any]:
        return [v for v in self.verdicts if v.failed]


class Stages:
    """The numbered progress lines of a cell run (``[3/7] export: ...``) and each stage's seconds."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.seconds: dict[str, float] = {}

    def start(self, name: str, detail: str) -> None:
        self.n += 1
        self.total = max(self.total, self.n)
        self._name, self._t0 = name, time.perf_counter()
        console.print(f"[bold cyan][{self.n}/{self.total}] {name}[/]: {detail}")

    def done(self, detail: str = "") -> None:
        dt = time.perf_counter() - self._t0
        self.seconds[self._name] = round(dt, 2)
        console.print(f"      done in {dt:.1f} s{': ' + detail if detail else ''}")

    def say(self, line: str) -> None:
        console.print(f"      {line}", markup=False)


@dataclass(frozen=True)
class Artifact:
    """A model the cell deploys or measures, and its explicit kind.

    ``onnx``: an ONNX file; ``split``: a split model's manifest (encoder + heads, ``backends/split``);
    ``module``: a torch module run by the ``torch`` backend (``module`` holds it; ``path`` is the ONNX
    export of the same weights, for size and hash).
    """

    path: Path
    precision: str
    kind: str = "onnx"
    module: Any = None

    def model_bytes(self) -> int:
        if self.kind == "split":
            from edgematrix.backends.split.manifest import load_manifest

            return load_manifest(self.path, verify=False).model_bytes()
        return self.path.stat().st_size

    def sha256(self) -> str:
        return file_sha256(self.path)


@dataclass
class Source:
    """The source stage's output: the data, the torch model (None for an ONNX file) and the FP32 ONNX model."""

    data: Any  # edgematrix.tasks.base.TaskData
    model: Any  # the trained torch module (decodes outputs: geometry ...); None when the model is an ONNX file
    checkpoint: Path  # its weights (an ONNX model: the file itself)
    data_key: str
    cache_hit: bool
    train_seconds: float
    art_dir: Path  # the cache folder of this checkpoint's artifacts
    fp32: Artifact
    export_note: str
    input_name: str = "input"  # the input a one-input task feeds (an ONNX file's may be named otherwise)
    origin: str = ""  # where the weights come from, for the report: trained, a checkpoint, an ONNX file


@dataclass
class Build:
    """What the recipe steps made: the candidate, models measured beside it, and recipe facts."""

    candidate: Artifact
    extra: dict[str, Artifact] = field(default_factory=dict)  # role -> model, primary backend only
    facts: dict[str, Fact] = field(default_factory=dict)  # recipe facts for the candidate's extra_info
    candidate_module: Any = None  # the candidate's torch module when it is not the source's (a pruned model)
    info: dict[str, Any] = field(default_factory=dict)  # per-step records (step name -> facts for its report)


@dataclass
class Measured:
    """One (backend, role) after evaluation and measurement: its score, latency samples and facts."""

    backend: str
    role: str
    artifact: Artifact
    score: Any  # edgematrix.tasks.base.TaskScore
    samples: Any  # edgematrix.measure.harness.LatencySamples
    facts: dict[str, Any]
    rel_diff: float | None = None  # agreement of its outputs with the reference of record (max relative)
    latency_kind: str = "local"  # where the timing came from: local | device | emulated-...
    accuracy_source: str = "local"  # where the scored outputs came from

    @property
    def precision(self) -> str:
        return self.artifact.precision

    @property
    def path(self) -> Path:
        return self.artifact.path


@dataclass
class CellContext:
    """Everything the stages of one run share."""

    cell: Cell
    options: CellOptions
    stages: Stages
    out: Path  # the results folder being written (staged; moved into place at the end)
    task: Any  # edgematrix.tasks.base.TaskAdapter
    runner: Any  # edgematrix.executors.select.Choice
    source: Source | None = None
    build: Build | None = None
    executor: Any = None  # edgematrix.executors.base.Executor
    backends: list[str] = field(default_factory=list)  # what the executor runs the roles on, primary first
    measured: dict[tuple[str, str], Measured] = field(default_factory=dict)
    evaluation: Any = None  # edgematrix.executors.base.Evaluation
    latency: Any = None  # the latency stage's LatencyConfig

    @property
    def primary(self) -> str:
        """The backend of record of this run: the target's, or the stand-in an emulation runs."""
        return self.backends[0] if self.backends else str(self.cell.target.backend)

    @property
    def shipped_backend(self) -> str:
        """The backend the built artifacts are for: always the target's. An emulation runs the artifact that
        ships (a Jetson's TensorRT-form INT8 model) on its stand-in runtime; it never gets one of its own."""
        return str(self.cell.target.backend)

"""Run one cell of the matrix: the one pipeline every task, recipe, runner and backend goes through::

    source ─► build (recipe steps) ─► evaluate ─► measure ─► gate ─► publish
    data, train, export   prune, QAT, PTQ,      the executor runs every (backend, role)
    (cached, sealed)      mixed, FX8, FP16,     model: outputs, then one interleaved
                          split                 latency measurement

``--runner`` picks the executor of the evaluate and measure stages: ``local`` (this host), ``remote``
(a board's ``edgematrix serve``), ``emulated`` (an arm64 container under qemu, or TI's fixed point on
this host); ``docker`` runs this whole pipeline inside the target's container. Scoring, gates and
publishing happen here, once, the same way for all. Written to ``results/<cell>/`` (staged: the
previous results stay until this run's are complete)::

    config.json            the resolved cell + where it ran
    benchmark.json         pytest-benchmark JSON (per-round data, typed extra_info)
    junit.xml              one testcase per gate
    predictions-<role>.*, labels.json   the task's submission format (TuSimple, COCO results, ...)
    report.md              the human summary, with a section per recipe step
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError, GateFailure, RunnerUnavailableError
from edgematrix.executors.select import Choice, RunnerChoiceError, choose_runner
from edgematrix.matrix.loader import Cell
from edgematrix.pipeline.context import Build, CellContext, CellOptions, CellResult, Stages, console

__all__ = ["CellOptions", "CellResult", "pick_runner", "run_cell"]


def pick_runner(cell: Cell, requested: str) -> Choice:
    try:
        return choose_runner(cell.name, cell.target_name, cell.target.model_dump(), requested)
    except RunnerChoiceError as e:
        ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        suffix = "\n(CI=true: an unreachable cell fails the job; it never passes silently.)" if ci else ""
        raise RunnerUnavailableError(str(e) + suffix) from None


def make_executor(cell: Cell, options: CellOptions, choice: Choice) -> Any:
    """The executor of the evaluate and measure stages for the runner chosen."""
    if choice.runner == "remote":
        from edgematrix.executors.remote import RemoteExecutor

        if not options.remote:
            raise RunnerUnavailableError(
                f"cell {cell.name}: --runner remote needs --remote URL (an `edgematrix serve` on the device) and "
                "the shared token in EDGEMATRIX_TOKEN"
            )
        return RemoteExecutor(options.remote, cell.target)
    if choice.runner == "emulated":
        from edgematrix.executors.emulated import EmulatedExecutor

        return EmulatedExecutor(
            cell.target_name, cell.target, cache_dir=options.cache_dir,
            log=lambda s: console.print(f"      {s}", markup=False, highlight=False),
        )  # fmt: skip
    from edgematrix.executors.local import LocalExecutor

    return LocalExecutor()


def resolve_ab_base(path: Path | None) -> Path | None:
    """The base branch's candidate model: an .onnx file, or a results folder's artifacts.json."""
    if path is None:
        return None
    if path.is_dir():
        manifest = path / "artifacts.json"
        if not manifest.is_file():
            raise EdgeMatrixError(f"--ab-base {path}: no artifacts.json; pass the base run's results/<cell>/ or .onnx")
        path = Path(json.loads(manifest.read_text())["candidate"])
    if not path.is_file():
        raise EdgeMatrixError(f"--ab-base: model {path} not found; run the cell on the base branch first")
    return path


def run_cell(cell: Cell, options: CellOptions) -> CellResult:
    """Run ``cell`` and write its artifacts; raises GateFailure (after writing them) when a gate fails."""
    from edgematrix.core.results import CellConfig, RunnerRecord, write_config
    from edgematrix.fileio import staged_folder
    from edgematrix.pipeline.evaluate import plan, run_plan
    from edgematrix.pipeline.publish import gate_and_publish
    from edgematrix.pipeline.source import build_source
    from edgematrix.pipeline.steps.base import compose
    from edgematrix.tasks.base import get_task

    choice = pick_runner(cell, options.runner)
    console.print(f"[bold]{cell.name}[/]: {cell.description}")
    console.print(f"runner: {choice.runner} ({choice.reason})")
    executor = make_executor(cell, options, choice)
    ab_base = resolve_ab_base(options.ab_base)  # inputs are checked before anything is built or replaced
    final = options.results_dir / cell.name
    # the previous results stay in place until this run's are complete (or a gate failed: published too)
    with staged_folder(final, publish_on=(GateFailure,)) as out:
        ctx = CellContext(cell, options, Stages(0), out, get_task(cell.model.task), choice, executor=executor)
        ctx.backends = executor.backends(cell.target)
        steps = compose(ctx)
        ctx.stages.total = 3 + sum(s.stage_count() for s in steps) + 1
        config = CellConfig(
            **cell.resolved(),
            runner=RunnerRecord(name=choice.runner, reason=choice.reason, host=platform.node(), remote=options.remote),
            executor=executor.name,
            backends=ctx.backends,
            steps=[s.name for s in steps],
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_config(out / "config.json", config)
        ctx.source = build_source(ctx)
        ctx.build = Build(candidate=ctx.source.fp32)
        for step in steps:
            step.build()
        evaluation_plan = plan(ctx, ab_base)
        ctx.latency = evaluation_plan.latency
        run_plan(ctx, evaluation_plan)
        for step in steps:
            step.after_measure()
        return gate_and_publish(ctx, steps, final)

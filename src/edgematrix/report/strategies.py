"""The strategies table of one model on one target: a row per cell (recipe), built from the cells' own results.

PilotNet's optimization strategies (``matrix/pilotnet.toml``: fp32, global_prune, local_prune, dynamic_int8,
static_int8, qat_int8, prune_int8) are recipes of the steering task, each a cell that writes
``results/<cell>/``. This module reads those folders (``benchmark.json`` through
:func:`edgematrix.core.results.read_results`, ``junit.xml``) and writes ``<out>/``:

- ``report.md``: one row per cell on the primary backend — the task metric (MSE) and its extras (MAE), the
  file size and its ratio to the cell's FP32 reference, the p50 of the candidate and of the FP32 reference
  in the same run and their ratio (the speedup: each cell measures its candidate against its own FP32
  reference, interleaved), the same ratio on every further backend, the cell's gates; then the gates
  below, and the accuracy-vs-latency Pareto front of the cells' models (``pareto.png``);
- ``junit.xml``: ``int8_size[<recipe>]`` (an INT8 candidate is at most :data:`INT8_SIZE_LIMIT` × its FP32
  reference's bytes) and ``every_cell_measured`` (each cell has results);
- ``strategies.json``: the rows as data.

Nothing is measured here: the cells' results are the data, so the table is as trustworthy as they are
(and is rebuilt from them at any time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import Verdict, metric_text
from edgematrix.report.markdown import MARK, md_text

#: an INT8 strategy's model must be at most this fraction of its FP32 reference's bytes
INT8_SIZE_LIMIT = 0.3
#: recipe facts (candidate extra_info) shown in the details column, with their labels
_DETAILS = (
    ("prune_widths", "widths"),
    ("speedup_vs_unpruned", "× vs unpruned"),
    ("dynamic_int8_ops", "ops"),
    ("ptq_accuracy", "PTQ"),
)


@dataclass(frozen=True)
class StrategyRow:
    """One cell: its candidate on the primary backend, against its own FP32 reference of the same run."""

    cell: str
    recipe: str
    precision: str
    metric: float  # the task metric of record (MSE for steering)
    extras: dict[str, float]  # the task's extra figures (MAE ...)
    model_bytes: int
    reference_bytes: int
    p50_ms: float
    reference_p50_ms: float
    backend: str
    other_speedups: dict[str, float]  # further backend -> candidate vs that backend's FP32 reference, same run
    details: str
    gates_failed: tuple[str, ...]
    gates_passed: int
    device: str = ""

    @property
    def speedup(self) -> float:
        return self.reference_p50_ms / self.p50_ms

    @property
    def size_ratio(self) -> float:
        return self.model_bytes / self.reference_bytes


@dataclass
class StrategiesTable:
    model: str
    target: str
    metric: str
    direction: str
    rows: list[StrategyRow]
    missing: list[str]  # cells without results
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Failed gates: this table's, and each cell's own (``<cell>: <gate>``)."""
        own = [v.gate for v in self.verdicts if v.failed]
        return own + [f"{r.cell}: {g}" for r in self.rows for g in r.gates_failed]


def _details(extras: dict[str, float | int | str], direction: str) -> str:
    parts = []
    for key, label in _DETAILS:
        if key not in extras:
            continue
        value = extras[key]
        if key == "speedup_vs_unpruned":
            parts.append(f"{float(value):.2f}{label}")
        elif key == "ptq_accuracy":
            parts.append(f"{label} {metric_text(float(value), direction)}")
        else:
            parts.append(f"{label} {value}")
    return "; ".join(parts)


def _read_row(cell_dir: Path) -> tuple[StrategyRow, Any]:
    """The row of one cell's results folder, and its candidate's typed record."""
    from edgematrix.core.results import read_results
    from edgematrix.report.merge import read_gates

    res = read_results(cell_dir)
    cand, ref = res.of("candidate"), res.of("reference")
    if cand is None or ref is None:
        raise EdgeMatrixError(f"{cell_dir}/benchmark.json has no candidate and reference of its primary backend")
    info = cand.info
    if info.p50_ms is None or ref.info.p50_ms is None or info.accuracy is None:
        raise EdgeMatrixError(f"{cell_dir}/benchmark.json: the candidate has no p50_ms or task metric")
    others: dict[str, float] = {}
    for b in res.benchmarks:
        other_ref = res.of("reference", b.info.backend)
        if b.info.role != "candidate" or b.info.is_primary or other_ref is None:
            continue
        if other_ref.info.p50_ms and b.info.p50_ms:
            others[b.info.backend] = other_ref.info.p50_ms / b.info.p50_ms
    gates = read_gates(cell_dir) if (cell_dir / "junit.xml").is_file() else []
    primary_gates = [g for g in gates if not g.backend_suffix]
    extras = info.extras()
    numeric = {k: float(v) for k, v in extras.items() if k == "mae" and isinstance(v, int | float)}
    row = StrategyRow(
        cell=cell_dir.name, recipe=info.recipe, precision=info.precision, metric=float(info.accuracy),
        extras=numeric, model_bytes=info.model_bytes, reference_bytes=ref.info.model_bytes,
        p50_ms=float(info.p50_ms), reference_p50_ms=float(ref.info.p50_ms), backend=info.backend,
        other_speedups=others, details=_details(extras, info.metric_direction),
        gates_failed=tuple(g.gate for g in gates if g.failed),
        gates_passed=sum(g.status == "passed" for g in primary_gates), device=info.device,
    )  # fmt: skip
    return row, info


def build_table(
    results_dir: str | os.PathLike[str], cells: Sequence[str], *, model: str, target: str
) -> StrategiesTable:
    """The table of ``cells`` (their ``results_dir/<cell>/`` folders), in the order given, with its gates."""
    if not cells:
        raise EdgeMatrixError(f"no cells of model {model!r} on target {target!r} to tabulate")
    root = Path(results_dir)
    rows: list[StrategyRow] = []
    missing: list[str] = []
    metric, direction = "accuracy", "higher"
    for cell in cells:
        folder = root / cell
        if not (folder / "benchmark.json").is_file():
            missing.append(cell)
            continue
        row, first = _read_row(folder)
        if (first.model, first.target) != (model, target):
            raise EdgeMatrixError(
                f"{folder}: results of model {first.model!r} on {first.target!r}, not {model!r} on {target!r}"
            )
        if rows and (first.metric, first.metric_direction) != (metric, direction):
            raise EdgeMatrixError(f"{folder}: task metric {first.metric!r} differs from the other cells' {metric!r}")
        metric, direction = first.metric, first.metric_direction
        rows.append(row)
    table = StrategiesTable(model, target, metric, direction, rows, missing)
    table.verdicts = _verdicts(table, cells)
    return table


def _verdicts(table: StrategiesTable, cells: Sequence[str]) -> list[Verdict]:
    out = []
    for r in table.rows:
        if r.precision != "int8":
            continue
        ok = r.size_ratio <= INT8_SIZE_LIMIT
        out.append(
            Verdict(
                f"int8_size[{r.recipe}]",
                "passed" if ok else "failed",
                f"{r.model_bytes} bytes = {r.size_ratio:.3f}× its FP32 reference ({r.reference_bytes} bytes); "
                f"limit {INT8_SIZE_LIMIT}×",
            )
        )
    measured = len(cells) - len(table.missing)
    out.append(
        Verdict(
            "every_cell_measured",
            "failed" if table.missing else "passed",
            f"{measured} of {len(cells)} cells have results"
            + (f"; missing: {', '.join(table.missing)} (run them: `nox -s <cell>`)" if table.missing else ""),
        )
    )
    return out


def _size(n: int) -> str:
    return f"{n / 1e3:.0f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def render_table(table: StrategiesTable, pareto_md: str = "", *, plot: str = "") -> str:
    """The markdown of ``report.md`` (every value from the results folders escaped as untrusted text)."""
    direction, metric = table.direction, md_text(table.metric)
    extras = sorted({k for r in table.rows for k in r.extras})
    others = sorted({b for r in table.rows for b in r.other_speedups})
    status = "FAILED" if table.failed else "passed"
    better = f"{direction} is better"
    lines = [
        f"# {md_text(table.model)} on {md_text(table.target)}: strategies — {status}",
        "",
        f"One row per cell (recipe) on its primary backend. {metric} ({better})"
        + (f" and {', '.join(md_text(e).upper() for e in extras)}" if extras else "")
        + " on the test split; every speedup is a same-run ratio: the cell's candidate and its FP32 reference "
        "measured interleaved in one run.",
        "",
        f"| strategy | precision | {metric} |"
        + "".join(f" {md_text(e).upper()} |" for e in extras)
        + " size | size vs FP32 | p50 (ms) | FP32 p50, same run (ms) | speedup vs FP32 |"
        + "".join(f" speedup on {md_text(b)} (vs FP32 on {md_text(b)}) |" for b in others)
        + " cell gates | details |",
        "|---|---|---:|" + "---:|" * len(extras) + "---:|---:|---:|---:|---:|" + "---:|" * len(others) + "---|---|",
    ]
    for r in table.rows:
        gates = f"❌ {len(r.gates_failed)} failed" if r.gates_failed else f"✅ {r.gates_passed} passed"
        lines.append(
            f"| {md_text(r.recipe)} | {md_text(r.precision)} | {metric_text(r.metric, direction)} |"
            + "".join(f" {r.extras[e]:.4g} |" if e in r.extras else " — |" for e in extras)
            + f" {_size(r.model_bytes)} | {r.size_ratio:.3f}× | {r.p50_ms:.3f} | {r.reference_p50_ms:.3f} "
            f"| {r.speedup:.2f}× |"
            + "".join(f" {r.other_speedups[b]:.2f}× |" if b in r.other_speedups else " — |" for b in others)
            + f" {gates} | {md_text(r.details)} |"
        )
    lines += ["", "## Gates", "", "| gate | verdict | detail |", "|---|---|---|"]
    lines += [f"| {md_text(v.gate)} | {MARK[v.status]} | {md_text(v.message, 2000)} |" for v in table.verdicts]
    failed_cells = [r for r in table.rows if r.gates_failed]
    if failed_cells:
        lines += ["", "Cells whose own gates failed (their `report.md` says why):", ""]
        lines += [f"- {md_text(r.cell)}: {md_text(', '.join(r.gates_failed))}" for r in failed_cells]
    if pareto_md:
        lines += ["", "## Accuracy vs latency", ""]
        if plot:
            lines += [f"![Pareto plot]({plot})", ""]
        lines.append(pareto_md)
    devices = sorted({r.device for r in table.rows if r.device})
    lines += [
        "",
        "## Run",
        "",
        f"- **cells**: {', '.join(md_text(r.cell) for r in table.rows)}",
        f"- **device**: {md_text('; '.join(devices) or 'not recorded')}",
        "- Absolute CPU times move with machine load and differ between cells run at different times; compare "
        "the speedup columns (same-run ratios).",
    ]
    return "\n".join(lines) + "\n"


def _pareto_group(results_dir: Path, table: StrategiesTable) -> Any:
    """The Pareto group of the cells' models on their primary backends (None with fewer than two points)."""
    from edgematrix.core.results import read_benchmark_json
    from edgematrix.report.pareto import points_from_benchmarks

    docs = []
    for r in table.rows:
        doc = read_benchmark_json(results_dir / r.cell / "benchmark.json", require_data=False)
        benches = [b for b in doc["benchmarks"] if b.get("extra_info", {}).get("backend") == r.backend]
        docs.append({**doc, "benchmarks": benches})
    group = points_from_benchmarks(docs, source=str(results_dir)).get((table.model, table.target))
    return group if group is not None and len(group.points) >= 2 else None


def write_table(
    results_dir: str | os.PathLike[str], table: StrategiesTable, out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write ``report.md``, ``junit.xml``, ``strategies.json`` (and ``pareto.png``) into ``out_dir``."""
    from edgematrix.fileio import atomic_write_text
    from edgematrix.report.junit import write_junit
    from edgematrix.report.pareto import pareto_markdown, plot_pareto

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    group = _pareto_group(Path(results_dir), table) if table.rows else None
    pareto_md = ""
    if group is not None:
        paths["pareto"] = plot_pareto(group, out / "pareto.png")
        pareto_md = pareto_markdown(group)
    paths["report"] = out / "report.md"
    atomic_write_text(paths["report"], render_table(table, pareto_md, plot="pareto.png" if group else ""))
    name = f"{table.model}_strategies"
    props = {"model": table.model, "target": table.target, "cells": ",".join(r.cell for r in table.rows)}
    paths["junit"] = write_junit(out / "junit.xml", name, table.verdicts, props)
    data = {
        "model": table.model, "target": table.target, "metric": table.metric, "metric_direction": table.direction,
        "int8_size_limit": INT8_SIZE_LIMIT, "missing": table.missing,
        "rows": [{**asdict(r), "speedup": r.speedup, "size_ratio": r.size_ratio} for r in table.rows],
        "gates": [{"gate": v.gate, "status": v.status, "message": v.message} for v in table.verdicts],
    }  # fmt: skip
    paths["json"] = out / "strategies.json"
    atomic_write_text(paths["json"], json.dumps(data, indent=2) + "\n")
    return paths

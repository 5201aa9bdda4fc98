"""The markdown summary of a whole results folder, and the pull-request comment made from it.

One row per cell and backend (the candidate of that backend): accuracy, p50/p90/p99 and their
deltas against a base run (``--base DIR``, e.g. the target branch's results) or, without one,
against the reviewed baselines when ``baselines_dir`` is given; the gate verdicts from the cell's
``junit.xml``; and a "Regression alerts" section listing every failed gate (and every latency
regression the base comparison finds).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import metric_text
from edgematrix.report.markdown import md_text
from edgematrix.report.merge import GateResult, find_cells, read_gates

COMMENT_MARKER = "<!-- edgematrix-report -->"
#: GitHub rejects comments over 65,536 characters; stay under this many.
MAX_COMMENT_CHARS = 65_000
#: LatencyVerdict statuses that are an alert.
REGRESSION_STATUSES = frozenset({"failed", "regression", "slower"})

MARK_PASSED, MARK_FAILED, MARK_NA = "✅", "❌", "➖"


@dataclass
class _Bench:
    """The figures of one candidate benchmark (one backend of one cell)."""

    backend: str
    precision: str
    accuracy: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    speedup: float | None
    samples_s: list[float] | None
    backend_version: str = ""
    metric: str = "accuracy"
    direction: str = "higher"  # of the metric: "lower" for an error such as a steering MSE


@dataclass
class _CellRun:
    name: str
    primary: str  # the backend whose gates carry no [backend] suffix
    selected: str
    machine: str
    benches: dict[str, _Bench]  # backend -> candidate


@dataclass
class SummaryRow:
    cell: str
    backend: str
    selected: bool
    precision: str
    accuracy: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    speedup: float | None
    gates: list[GateResult]
    compared_with: str = ""  # "base" | "baseline" | ""
    d_accuracy: float | None = None  # points
    d_p50: float | None = None  # relative (0.031 = +3.1%)
    d_p90: float | None = None
    d_p99: float | None = None
    p50_ci: tuple[float, float] | None = None  # relative, like d_p50
    confidence: float | None = None
    latency_status: str = ""
    latency_message: str = ""
    base_speedup: float | None = None
    metric: str = "accuracy"  # the task metric's name (extra_info ``metric``)
    direction: str = "higher"  # which is better (extra_info ``metric_direction``)

    @property
    def mark(self) -> str:
        return _mark(self.gates)


@dataclass
class Summary:
    rows: list[SummaryRow]
    gates: list[GateResult]
    alerts: list[str]
    notes: list[str] = field(default_factory=list)
    base_label: str = ""

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if g.failed]


# ----------------------------------------------------------------------------------------------
# reading


def _percentile_ms(data: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(data, dtype=float), q)) * 1e3


def _read_cell_run(cell_dir: Path) -> _CellRun | None:
    """The candidates in ``<cell_dir>/benchmark.json`` (typed: ``core.results.read_results``); ``None``
    when the file is absent."""
    from edgematrix.core.results import read_results

    path = cell_dir / "benchmark.json"
    if not path.is_file():
        return None
    results = read_results(path)
    benches: dict[str, _Bench] = {}
    selected = ""
    for bench in results.benchmarks:
        info = bench.info
        if info.role != "candidate":
            continue
        backend = info.backend or "?"
        data = list(bench.samples_s)
        p = {50: info.p50_ms, 90: info.p90_ms, 99: info.p99_ms}
        for q in p:  # older files without the percentiles in extra_info: compute them from the rounds
            if p[q] is None and data:
                p[q] = _percentile_ms(data, q)
        benches[backend] = _Bench(
            backend=backend,
            precision=info.precision,
            accuracy=info.accuracy,
            p50=p[50],
            p90=p[90],
            p99=p[99],
            speedup=info.speedup_vs_reference,
            samples_s=data or None,
            backend_version=info.backend_version,
            metric=info.metric,
            direction=info.metric_direction,
        )
        selected = selected or info.selected_backend
    machine_info = results.machine_info
    machine = str(machine_info.get("cpu_model") or (machine_info.get("cpu") or {}).get("brand_raw", "") or "")
    primary = results.primary_backend or next(iter(benches), "")
    return _CellRun(cell_dir.name, primary, selected, machine, benches)


def _gates_of(gates: list[GateResult], backend: str, primary: str) -> list[GateResult]:
    suffix = "" if backend == primary else backend
    return [g for g in gates if g.backend_suffix == suffix]


def _mark(gates: Sequence[GateResult]) -> str:
    if any(g.failed for g in gates):
        return MARK_FAILED
    if any(g.status == "passed" for g in gates):
        return MARK_PASSED
    return MARK_NA


# ----------------------------------------------------------------------------------------------
# comparing


def _rel(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old <= 0:
        return None
    return new / old - 1.0


def _compare_latency(base_s: list[float], cand_s: list[float]) -> Any:
    """``edgematrix.gates.latency.compare_latency``, imported here so this module imports without it."""
    from edgematrix.gates.latency import compare_latency

    return compare_latency(base_s, cand_s)


def _compare_with_base(row: SummaryRow, cand: _Bench, base: _Bench, notes: list[str]) -> None:
    row.compared_with = "base"
    if cand.accuracy is not None and base.accuracy is not None:
        row.d_accuracy = cand.accuracy - base.accuracy
    row.d_p50, row.d_p90, row.d_p99 = _rel(cand.p50, base.p50), _rel(cand.p90, base.p90), _rel(cand.p99, base.p99)
    row.base_speedup = base.speedup
    if not (cand.samples_s and base.samples_s):
        return
    try:
        verdict = _compare_latency(base.samples_s, cand.samples_s)
    except ModuleNotFoundError as exc:
        if exc.name != "edgematrix.gates.latency":
            raise
        note = "latency confidence intervals need `edgematrix.gates.latency`, which this install lacks"
        if note not in notes:
            notes.append(note)
        return
    except (EdgeMatrixError, ValueError) as exc:
        notes.append(f"{row.cell} / {row.backend}: no latency confidence interval ({exc})")
        return
    row.d_p50 = float(verdict.ratio) - 1.0
    row.p50_ci = (float(verdict.ci_low) - 1.0, float(verdict.ci_high) - 1.0)
    row.confidence = float(verdict.confidence)
    row.latency_status = str(verdict.status)
    row.latency_message = str(verdict.message or "")


def _compare_with_baseline(row: SummaryRow, cand: _Bench, run: _CellRun, baselines_dir: Path) -> None:
    from edgematrix.gates.baseline import baseline_key, load_baselines

    records = load_baselines(baselines_dir, baseline_key(run.name, row.backend, run.primary))
    if not records:
        return
    # this machine's record when there is one (absolute times only compare on the same device)
    baseline = next((b for b in records if run.machine and b.cpu == run.machine), records[0])
    row.compared_with = "baseline"
    if cand.accuracy is not None:
        row.d_accuracy = cand.accuracy - baseline.accuracy
    # absolute times of another run are only comparable on the same toolchain
    if baseline.backend_version == cand.backend_version and (not run.machine or baseline.cpu == run.machine):
        row.d_p50 = _rel(cand.p50, baseline.candidate_p50_ms)
    if baseline.p50_ratio > 0:
        row.base_speedup = 1.0 / baseline.p50_ratio


def build_summary(
    results_dir: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    baselines_dir: str | os.PathLike[str] | None = None,
) -> Summary:
    """Read ``results_dir`` (and ``base_dir``) into rows, gate verdicts and alerts."""
    rows: list[SummaryRow] = []
    all_gates: list[GateResult] = []
    alerts: list[str] = []
    notes: list[str] = []
    base_root = Path(base_dir) if base_dir is not None else None
    if base_root is not None and not base_root.is_dir():
        raise EdgeMatrixError(f"base results folder {str(base_root)!r} does not exist; pass the base run's results/")
    for cell_dir in find_cells(results_dir):
        gates = read_gates(cell_dir)
        all_gates += gates
        alerts += [
            f"{MARK_FAILED} **{md_text(g.cell)}** {md_text(g.gate)}: {md_text(g.message)}" for g in gates if g.failed
        ]
        run = _read_cell_run(cell_dir)
        if run is None or not run.benches:
            notes.append(f"{cell_dir.name}: no candidate in benchmark.json; only its gates are shown")
            rows.append(SummaryRow(cell_dir.name, "—", False, "", None, None, None, None, None, gates))
            continue
        base_run = None
        if base_root is not None:
            base_run = _read_cell_run(base_root / cell_dir.name)
            if base_run is None:
                notes.append(f"{cell_dir.name}: not in the base run (new cell)")
            elif run.machine and base_run.machine and run.machine != base_run.machine:
                notes.append(
                    f"{cell_dir.name}: base measured on {base_run.machine!r}, this run on {run.machine!r}; "
                    "latency deltas compare different machines"
                )
        for backend in sorted(run.benches, key=lambda b: (b != run.primary, b)):
            cand = run.benches[backend]
            row = SummaryRow(
                cell=run.name,
                backend=backend,
                selected=backend == run.selected,
                precision=cand.precision,
                accuracy=cand.accuracy,
                p50=cand.p50,
                p90=cand.p90,
                p99=cand.p99,
                speedup=cand.speedup,
                gates=_gates_of(gates, backend, run.primary),
                metric=cand.metric,
                direction=cand.direction,
            )
            if base_run is not None and backend in base_run.benches:
                _compare_with_base(row, cand, base_run.benches[backend], notes)
            elif base_root is None and baselines_dir is not None:
                _compare_with_baseline(row, cand, run, Path(baselines_dir))
            if row.latency_status in REGRESSION_STATUSES:
                detail = row.latency_message or f"p50 {_pct(row.d_p50)} {_ci(row)}".strip()
                alerts.append(
                    f"{MARK_FAILED} **{md_text(row.cell)}** ({md_text(row.backend)}) latency vs base: {md_text(detail)}"
                )
            rows.append(row)
    label = (
        f"base run {md_text(base_root)}" if base_root is not None else ("reviewed baselines" if baselines_dir else "")
    )
    return Summary(rows, all_gates, alerts, notes, label)


# ----------------------------------------------------------------------------------------------
# rendering


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "—" if value is None else format(value, fmt)


def _signed(value: float, digits: int) -> str:
    """``+1.23`` / ``-1.23``, and ``+0.00`` rather than ``-0.00`` for a value that rounds to zero."""
    rounded = round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{rounded:+.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{_signed(value * 100, 1)}%"


def _ci(row: SummaryRow) -> str:
    if row.p50_ci is None:
        return ""
    lo, hi = row.p50_ci
    conf = f"{row.confidence:.0%} " if row.confidence else ""
    return f"({conf}CI {_signed(lo * 100, 1)}…{_signed(hi * 100, 1)}%)"


def _mark_text(row: SummaryRow) -> str:
    n_failed = sum(g.failed for g in row.gates)
    return f"{MARK_FAILED} {n_failed} failed" if n_failed else row.mark


def _metric_cells(row: SummaryRow) -> tuple[str, str]:
    """The metric and its delta: points for a higher-is-better metric; an error (lower is better) with four
    significant digits and its name and direction, so an MSE of 0.000338 is neither "0.00" nor read as points."""
    if row.direction == "higher":
        return _f(row.accuracy), "—" if row.d_accuracy is None else _signed(row.d_accuracy, 2)
    value = (
        "—"
        if row.accuracy is None
        else f"{metric_text(row.accuracy, 'lower')} ({md_text(row.metric)}, lower is better)"
    )
    return value, "—" if row.d_accuracy is None else f"{row.d_accuracy + 0.0:+.3g}"


def _row_line(row: SummaryRow) -> str:
    backend = f"**{md_text(row.backend)}** (selected)" if row.selected else md_text(row.backend)
    metric, d_acc = _metric_cells(row)
    d_p50 = " ".join(x for x in (_pct(row.d_p50), _ci(row)) if x)
    if row.latency_status in REGRESSION_STATUSES:
        d_p50 += " ⚠️"
    speedup = "—" if row.speedup is None else f"{row.speedup:.2f}×"
    if row.base_speedup is not None:
        speedup += f" ({row.compared_with} {row.base_speedup:.2f}×)"
    cells = [
        md_text(row.cell),
        backend,
        md_text(row.precision) or "—",
        metric,
        d_acc,
        _f(row.p50),
        d_p50,
        _f(row.p90),
        _pct(row.d_p90),
        _f(row.p99),
        _pct(row.d_p99),
        speedup,
        row.compared_with or "—",
        _mark_text(row),
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = [
    "| cell | backend | precision | task metric | Δ metric | p50 (ms) | Δ p50 | p90 (ms) | Δ p90 | p99 (ms) | Δ p99 "
    "| speedup vs FP32 | compared with | gates |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
]


def _headline(summary: Summary) -> list[str]:
    gates = summary.gates
    cells = sorted({r.cell for r in summary.rows})
    n_failed = len(summary.failed)
    n_passed = sum(g.status == "passed" for g in gates)
    n_busy = sum(g.status == "inconclusive" for g in gates)
    n_na = len(gates) - n_failed - n_passed - n_busy
    failed_cells = sorted({g.cell for g in summary.failed})
    if n_failed:
        title = f"## edgematrix: {MARK_FAILED} {n_failed} gate{'s' * (n_failed != 1)} failed in {len(failed_cells)} of {len(cells)} cell{'s' * (len(cells) != 1)}"
    elif summary.alerts:
        title = f"## edgematrix: {MARK_FAILED} latency regression vs base"
    elif n_busy:
        title = f"## edgematrix: no gate failed, {n_busy} latency gate{'s' * (n_busy != 1)} inconclusive (machine busy: re-measure)"
    else:
        title = f"## edgematrix: {MARK_PASSED} all gates passed"
    facts = (
        f"{len(cells)} cell{'s' * (len(cells) != 1)} · {len(gates)} gates: {n_passed} passed, {n_failed} failed, "
        f"{n_busy} inconclusive, {n_na} not applicable"
    )
    if summary.base_label:
        facts += f" · deltas vs {summary.base_label}"
    return [title, "", facts]


def _alerts_section(summary: Summary) -> list[str]:
    lines = ["### Regression alerts", ""]
    if summary.alerts:
        lines += [f"- {a}" for a in summary.alerts]
    else:
        lines.append("None: no gate failed.")
    return lines


def render_summary(summary: Summary) -> str:
    """The markdown of ``summary.md``: headline, regression alerts, the results table, notes."""
    lines = [*_headline(summary), "", *_alerts_section(summary)]
    lines += ["", "### Results", "", *TABLE_HEADER, *(_row_line(r) for r in summary.rows)]
    if summary.notes:
        lines += ["", "### Notes", "", *(f"- {md_text(n, 2000)}" for n in summary.notes)]
    lines += [
        "",
        "<sub>Task metric: points of a higher-is-better metric (TuSimple accuracy, mAP, mIoU) unless the row names "
        "a lower-is-better one (an MSE), whose Δ is in its own units. "
        "Δ p50/p90/p99: relative to the comparison run (⚠️ = regression beyond its confidence interval); "
        "speedups are same-run ratios against the FP32 reference, the robust comparison on shared machines.</sub>",
    ]
    return "\n".join(lines) + "\n"


def render_comment(summary_md: str, *, limit: int = MAX_COMMENT_CHARS) -> str:
    """The PR comment: the hidden marker, then ``summary_md``, cut at a line boundary to stay under ``limit``."""
    head = COMMENT_MARKER + "\n"
    text = head + summary_md
    if len(text) < limit:
        return text
    lines = summary_md.splitlines()
    kept: list[str] = []

    def note(dropped: int) -> str:
        return (
            f"\n\n_… {dropped} more line{'s' * (dropped != 1)} cut to fit GitHub's comment size limit; the full "
            "summary is in the workflow's job summary and its `summary.md` artifact._\n"
        )

    size = len(head)
    worst_note = len(note(len(lines)))
    for line in lines:
        if size + len(line) + 1 + worst_note >= limit:
            break
        kept.append(line)
        size += len(line) + 1
    if not kept:  # a single enormous line: cut it
        kept = [lines[0][: max(0, limit - len(head) - worst_note - 2)]]
    out = head + "\n".join(kept) + note(len(lines) - len(kept))
    assert len(out) < limit, len(out)
    return out


def write_summary(
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    baselines_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Write ``summary.md`` and ``pr-comment.md`` into ``out_dir``; append to ``$GITHUB_STEP_SUMMARY`` if set.

    Returns the paths written, keyed ``summary``, ``pr_comment`` (and ``step_summary``).
    """
    summary = build_summary(results_dir, base_dir=base_dir, baselines_dir=baselines_dir)
    text = render_summary(summary)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.md", "pr_comment": out / "pr-comment.md"}
    paths["summary"].write_text(text, encoding="utf-8")
    paths["pr_comment"].write_text(render_comment(text), encoding="utf-8")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY", "")
    if step_summary:
        try:
            with open(step_summary, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            raise EdgeMatrixError(f"cannot append to $GITHUB_STEP_SUMMARY ({step_summary!r}): {exc}") from None
        paths["step_summary"] = Path(step_summary)
    return paths

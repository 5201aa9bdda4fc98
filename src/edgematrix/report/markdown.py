"""The human summary of one cell run (``report.md``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgematrix.gates.verdicts import Verdict

MARK = {"passed": "✅ passed", "failed": "❌ FAILED", "not applicable": "➖ n/a"}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render_report(
    cell: str,
    description: str,
    rows: Sequence[Mapping[str, object]],
    verdicts: Sequence[Verdict],
    context: Mapping[str, object],
    notes: Sequence[str] = (),
    selection: str = "",
) -> str:
    failed = [v for v in verdicts if v.failed]
    lines = [
        f"# {cell}: {'FAILED' if failed else 'passed'}",
        "",
        description,
        "",
        "| backend | role | precision | inference | accuracy (%) | FP | FN | p50 (ms) | p90 (ms) | p99 (ms) | speedup vs reference | size |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['role']} | {r['precision']} | {r.get('inference_precision', '')} | {r['accuracy']:.2f} | {r['fp']:.4f} | {r['fn']:.4f} "
            f"| {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['speedup']:.2f}× | {_mb(int(str(r['model_bytes'])))} |"
        )
    if selection:
        lines += ["", f"**Selected backend**: {selection}"]
    lines += ["", "## Gates", "", "| gate | verdict | detail |", "|---|---|---|"]
    lines += [f"| {v.gate} | {MARK[v.status]} | {v.message} |" for v in verdicts]
    lines += ["", "## Run", ""]
    lines += [f"- **{k}**: {v}" for k, v in context.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"

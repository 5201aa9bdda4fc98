"""The human summary of one cell run (``report.md``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgematrix.gates.verdicts import Verdict

MARK = {"passed": "✅ passed", "failed": "❌ FAILED", "not applicable": "➖ n/a"}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def extras_keys(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """The task's extra figures (FP/FN, mAP@.5, AbsRel...) over ``rows``, in first-seen order."""
    keys: list[str] = []
    for r in rows:
        extras = r.get("extras") or {}
        assert isinstance(extras, Mapping)
        keys += [k for k in extras if k not in keys]
    return keys


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
    metric = str(rows[0].get("metric", "accuracy")) if rows else "accuracy"
    keys = extras_keys(rows)
    lines = [
        f"# {cell}: {'FAILED' if failed else 'passed'}",
        "",
        description,
        "",
        f"| backend | role | precision | inference | {metric} |"
        + "".join(f" {k} |" for k in keys)
        + " p50 (ms) | p90 (ms) | p99 (ms) | speedup vs reference | size |",
        "|---|---|---|---|---:|" + "---:|" * len(keys) + "---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        extras = r.get("extras") or {}
        assert isinstance(extras, Mapping)
        lines.append(
            f"| {r['backend']} | {r['role']} | {r['precision']} | {r.get('inference_precision', '')} | {r['accuracy']:.2f} |"
            + "".join(f" {float(extras.get(k, float('nan'))):.4f} |" for k in keys)
            + f" {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['speedup']:.2f}× | {_mb(int(str(r['model_bytes'])))} |"
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

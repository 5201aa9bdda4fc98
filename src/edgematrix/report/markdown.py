"""The human summary of one cell run (``report.md``), and :func:`md_text`, the one escaping function
of every value from a results folder that a report renders as markdown.

Everything in a results folder is untrusted text: a pull request's run writes it (gate names and
messages in ``junit.xml``, backends, precisions and machine names in ``benchmark.json``, folder
names), and the PR comment is posted by the bot. :func:`md_text` makes such a value one line of
literal text wherever it lands (a table cell, a list item, a heading, bold): no links, images,
HTML, headings, code spans or fences, emphasis, math, table pipes, line breaks, and no @mentions,
issue references or autolinks that GitHub would create from plain text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from edgematrix.gates.verdicts import Verdict, metric_text

#: control, format and bidirectional characters: they hide or reorder text (the "Trojan source" ones)
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)
#: ASCII punctuation with a meaning in GitHub markdown; a backslash makes each literal (CommonMark 2.4).
#: An underscore between two letters or digits never delimits emphasis (x86_cpu_int8 stays as it is).
_MARKUP = re.compile(r"([\\`*{}\[\]()#!|~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_ZWSP = "\u200b"  # between characters GitHub would otherwise turn into a mention, reference or link
#: what GitHub links in plain text: @user / @org/team (and e-mails), #123 and GH-123, scheme:// and www.
_AUTOLINKS = (
    (re.compile(r"@"), "@" + _ZWSP),
    (re.compile(r"(\\#)(?=\d)"), r"\1" + _ZWSP),
    (re.compile(r"(?i)\b(gh)-(?=\d)"), r"\1" + _ZWSP + "-"),
    (re.compile(r":(?=//)"), ":" + _ZWSP),
    (re.compile(r"(?i)\b(www)\."), r"\1" + _ZWSP + "."),
)
MAX_TEXT_CHARS = 400


def md_text(value: object, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``value`` as one line of literal markdown text (see the module docstring), at most ``max_chars`` long."""
    text = " ".join(_INVISIBLE.sub("", str(value)).split())  # every line break and run of spaces: one space
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKUP.sub(lambda m: "\\" + m.group(0), text)
    for pattern, replacement in _AUTOLINKS:
        text = pattern.sub(replacement, text)
    return text


MARK = {"passed": "✅ passed", "failed": "❌ FAILED", "not applicable": "➖ n/a", "inconclusive": "⏸ inconclusive"}


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
    metric = md_text(rows[0].get("metric", "accuracy")) if rows else "accuracy"
    if rows and rows[0].get("metric_direction") == "lower":
        metric += " (lower is better)"
    keys = extras_keys(rows)
    lines = [
        f"# {md_text(cell)}: {'FAILED' if failed else 'passed'}",
        "",
        md_text(description, 2000),
        "",
        f"| backend | role | precision | inference | {metric} |"
        + "".join(f" {md_text(k)} |" for k in keys)
        + " p50 (ms) | p90 (ms) | p99 (ms) | speedup vs reference | size |",
        "|---|---|---|---|---:|" + "---:|" * len(keys) + "---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        extras = r.get("extras") or {}
        assert isinstance(extras, Mapping)
        names = " | ".join(md_text(r.get(k, "")) for k in ("backend", "role", "precision", "inference_precision"))
        lines.append(
            f"| {names} | {metric_text(float(str(r['accuracy'])), str(r.get('metric_direction', 'higher')))} |"
            + "".join(f" {float(extras.get(k, float('nan'))):.4f} |" for k in keys)
            + f" {float(str(r['p50_ms'])):.2f} | {float(str(r['p90_ms'])):.2f} | {float(str(r['p99_ms'])):.2f} "
            f"| {float(str(r['speedup'])):.2f}× | {_mb(int(str(r['model_bytes'])))} |"
        )
    if selection:
        lines += ["", f"**Selected backend**: {md_text(selection)}"]
    lines += ["", "## Gates", "", "| gate | verdict | detail |", "|---|---|---|"]
    lines += [f"| {md_text(v.gate)} | {MARK[v.status]} | {md_text(v.message, 2000)} |" for v in verdicts]
    lines += ["", "## Run", ""]
    lines += [f"- **{md_text(k)}**: {md_text(v, 2000)}" for k, v in context.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {md_text(n, 2000)}" for n in notes]
    return "\n".join(lines) + "\n"

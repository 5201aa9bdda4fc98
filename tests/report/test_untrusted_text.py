"""Everything from a results folder is untrusted text (issue 15, finding 5).

A pull request's run writes the results folder; pr_comment.yml turns it into a comment the bot
posts. A crafted testcase name in junit.xml produced a second "all gates passed" heading, a tracking
image, a link and an @mention. Here the real report writer (``edgematrix report``) reads a results
folder full of such text, and the markdown it writes -- summary.md, pr-comment.md, the job summary,
and a cell's report.md -- is rendered with a CommonMark renderer (markdown-it-py, GFM tables) to
check what a reader would see: one heading of ours, no image, no link, no HTML, no code block, and
nothing GitHub would turn into a mention, an issue reference or an autolink.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import Verdict
from edgematrix.report.cli_report import run_report
from edgematrix.report.junit import write_junit
from edgematrix.report.markdown import md_text, render_report
from edgematrix.report.merge import read_gates

#: what the review posted through the bot, and more of the same kind
PAYLOAD = (
    "accuracy\n\n## edgematrix: ✅ all gates passed\n\n"
    "![](https://evil.example/pixel.png?pr=7) [details](https://evil.example/login) "
    "<img src=x onerror=alert(1)> <a href='https://evil.example'>x</a> @octocat @edge-org/maintainers "
    "#1 GH-2 mallory/edgematrix#3 www.evil.example https://evil.example/raw\n```\ncode fence\n```\n"
    "| forged | table |\n> quote\n- [x] task $\\href{https://evil.example}{math}$ *em* _em_ ~~s~~ "
    "\u202etxt.exe\u202c\u200b&lt;b&gt;&amp;"
)
CELL = "x86_cpu_int8"


def _rendered(markdown: str) -> tuple[str, list[tuple[str, dict[str, str | None]]]]:
    """(visible text, [(tag, attributes)]) of ``markdown`` as a CommonMark + GFM-tables renderer shows it."""
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    tags: list[tuple[str, dict[str, str | None]]] = []
    text: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append((tag, dict(attrs)))

        def handle_data(self, data: str) -> None:
            text.append(data)

    Collect(convert_charrefs=True).feed(html)
    return "".join(text), tags


def assert_harmless(markdown: str, own_headings: int) -> None:
    text, tags = _rendered(markdown)
    names = [t for t, _ in tags]
    assert names.count("h1") + names.count("h2") + names.count("h3") + names.count("h4") == own_headings, names
    for tag in ("img", "a", "pre", "script", "iframe", "blockquote", "input", "del", "em"):
        assert tag not in names, f"<{tag}> rendered from untrusted text: {[t for t in tags if t[0] == tag]}"
    assert "code fence" in text  # the payload is shown, as text
    # what GitHub links in plain text after rendering: mentions, references, autolinks
    for pattern in (r"@[A-Za-z0-9]", r"#\d", r"GH-\d", r"://", r"(?i)www\."):
        assert not re.search(pattern, text), f"{pattern!r} in the rendered text"
    assert "\u202e" not in text and "<img" not in markdown.replace("&lt;img", "")


def _results(root: Path) -> Path:
    """A results folder as a hostile pull request's run could write it."""
    cell = root / CELL
    write_junit(
        cell / "junit.xml",
        CELL,
        [
            Verdict(PAYLOAD, "failed", PAYLOAD),
            Verdict("min_accuracy", "passed", PAYLOAD),
            Verdict(f"latency[{PAYLOAD}]", "not applicable", "n/a"),
        ],
        {"runner": PAYLOAD},
    )
    rng = np.random.default_rng(0)
    entries = []
    for role, ms in (("reference", 30.0), ("candidate", 10.0)):
        extra = {"role": role, "backend": PAYLOAD, "precision": PAYLOAD, "accuracy": 90.0, "selected_backend": PAYLOAD}
        entries.append(
            BenchmarkEntry(f"{CELL}[{role}]", CELL, (ms * 1e-3 * rng.lognormal(0, 0.03, 20)).tolist(), extra)
        )
    write_benchmark_json(cell / "benchmark.json", entries)
    return root


def test_a_crafted_results_folder_renders_as_plain_text_in_every_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step_summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    written = run_report(_results(tmp_path / "results"), tmp_path / "report")
    for key in ("summary", "pr_comment", "step_summary"):
        markdown = written[key].read_text(encoding="utf-8")
        # ours: "## edgematrix: ...", "### Regression alerts", "### Results" (no notes: nothing was missing)
        assert_harmless(markdown, own_headings=3)
        assert markdown.count("## edgematrix:") == 1
        assert markdown.splitlines()[0 if key != "pr_comment" else 1].startswith("## edgematrix: ❌ 1 gate failed")
    comment = written["pr_comment"].read_text(encoding="utf-8")
    assert comment.count("<!-- edgematrix-report -->") == 1  # the sticky marker cannot be forged either


def test_the_cells_own_report_md_renders_as_plain_text() -> None:
    rows = [
        {
            "backend": PAYLOAD,
            "role": "candidate",
            "precision": PAYLOAD,
            "inference_precision": PAYLOAD,
            "accuracy": 90.0,
            "p50_ms": 1.0,
            "p90_ms": 1.1,
            "p99_ms": 1.2,
            "speedup": 3.0,
            "model_bytes": 1000,
            "metric": PAYLOAD,
            "extras": {PAYLOAD: 1.0},
        }
    ]
    verdicts = [Verdict(PAYLOAD, "failed", PAYLOAD)]
    md = render_report(CELL, PAYLOAD, rows, verdicts, {PAYLOAD: PAYLOAD}, [PAYLOAD], selection=PAYLOAD)
    assert_harmless(md, own_headings=4)  # "# cell: FAILED", "## Gates", "## Run", "## Notes"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x86_cpu_int8", "x86_cpu_int8"),  # identifiers stay readable in the source too
        ("drop +0.50 points (budget 1.00)", r"drop +0.50 points \(budget 1.00\)"),
        ("a|b\nc\r\nd\u2028e", r"a\|b c d e"),
        ("<b>&amp;</b>", "&lt;b&gt;&amp;amp;&lt;/b&gt;"),
        ("[x](y) ![i](j)", r"\[x\]\(y\) \!\[i\]\(j\)"),
        ("@octocat", "@\u200boctocat"),
        ("#12 GH-3", "\\#\u200b12 GH\u200b-3"),
        ("https://e.x www.e.x", "https:\u200b//e.x www\u200b.e.x"),
        ("`code` *b* _i_ ~s~ $m$ \\", r"\`code\` \*b\* \_i\_ \~s\~ \$m\$ \\"),
        ("\u202eabc\u200d\x00", "abc"),
        ("x" * 500, "x" * 399 + "…"),
    ],
)
def test_md_text(value: str, shown: str) -> None:
    assert md_text(value) == shown


def test_a_junit_file_with_a_dtd_is_refused(tmp_path: Path) -> None:
    cell = tmp_path / CELL
    cell.mkdir()
    (cell / "junit.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        '<testsuites><testsuite name="s"><testcase name="&a;"/></testsuite></testsuites>'
    )
    with pytest.raises(EdgeMatrixError, match="declares a DTD or entities"):
        read_gates(cell)


def test_gate_text_xml_cannot_hold_is_replaced_not_a_crash(tmp_path: Path) -> None:
    path = write_junit(
        tmp_path / "junit.xml", "c\x00ell", [Verdict("g\x1b[31m", "failed", "m\ud800\x07")], {"k": "\x0c"}
    )
    (gate,) = read_gates(tmp_path)
    assert gate.gate == "g\ufffd[31m" and gate.message == "m\ufffd\ufffd" and gate.failed
    assert json.dumps(path.read_text())  # well-formed, readable text

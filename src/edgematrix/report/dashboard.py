"""The history dashboard: a static site written from the history store (``report/history.py``).

``edgematrix report --history FILE --html DIR`` writes ``DIR/index.html`` (every cell and backend
of the history: runs, the latest values, regressions) and one page per cell and backend with its
candidate's accuracy and p50/p90 latency over the runs, oldest first. Each point of a chart and each
commit in the table of runs links to its commit (``<repo>/commit/<sha>``) when the repository's URL
is known (``repo_url``: ``--repo-url``, else ``$GITHUB_SERVER_URL/$GITHUB_REPOSITORY``); otherwise
the sha is shown as text. The charts are matplotlib SVG inlined into the pages: no script, no
stylesheet or font from elsewhere, relative links only, so the site opens from the file system as
well as from GitHub Pages.

The gate thresholds drawn in, from the record's ``gates`` (the cell's resolved gates) and
``baseline`` (see ``report/history.py``), for each run:

* accuracy vs reference: the same run's FP32 reference accuracy less ``accuracy_drop_vs_reference``
  (plus it, for a lower-is-better metric such as MSE);
* accuracy vs baseline: the reviewed baseline's accuracy less (plus) ``accuracy_drop_vs_baseline``;
* accuracy floor: ``min_accuracy``, for a higher-is-better metric, when it is above 0;
* latency gate: the same run's reference p50 x the baseline's candidate/reference p50 ratio x
  (1 + ``latency_regression``) -- the limit of the gate on same-run ratios, in milliseconds. Only a
  baseline of the run's device has a ratio (latency is compared on the device it was recorded on).

A threshold whose gate the run's verdicts call "not applicable" is not drawn for that run. A run is
a **regression** when one of its verdicts failed or its value crossed a threshold drawn for it; a
regression is ringed in red in the chart of what regressed (the latency chart for
``latency_vs_baseline``, the accuracy chart for every other gate) and its row in the table of runs
says why. Records older
than these keys have no thresholds and no verdicts: their points are drawn, unmarked.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError

#: a commit id that may become part of a URL
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
#: tick labels shown at most (every k-th run beyond it)
_MAX_TICKS = 30

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em 2em; color: #1f2328; }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin: 1.2em 0 0.4em; }
table { border-collapse: collapse; } td, th { padding: 3px 9px; border-bottom: 1px solid #d0d7de; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.regression td { background: #ffebe9; } .bad { color: #cf222e; font-weight: 600; } .ok { color: #1a7f37; }
code, .sha { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.92em; }
.chart svg { width: 100%; max-width: 1150px; height: auto; } .muted { color: #59636e; }
ul.gates { margin: 0.2em 0; padding-left: 1.2em; }
"""


@dataclass
class Run:
    """One run of a cell's backend: its candidate record, the same run's reference, what it crossed."""

    candidate: dict[str, Any]
    reference: dict[str, Any] | None
    acc_limits: dict[str, float] = field(default_factory=dict)  # threshold name -> value, this run
    p50_limit: float | None = None
    failed: list[str] = field(default_factory=list)  # gate verdicts that failed
    crossed: list[str] = field(default_factory=list)  # thresholds the value crossed

    @property
    def commit(self) -> str:
        return str(self.candidate.get("commit") or "")

    @property
    def regression(self) -> bool:
        return bool(self.failed or self.crossed)

    def value(self, key: str) -> float | None:
        return _num(self.candidate.get(key))

    def reasons(self) -> list[str]:
        return [f"{g} failed" for g in self.failed] + [f"crossed {c}" for c in self.crossed if c not in self.failed]


@dataclass
class Series:
    """Every run of one (cell, backend), oldest first."""

    cell: str
    backend: str
    runs: list[Run]
    page: str = ""

    @property
    def metric(self) -> str:
        return str(self.runs[-1].candidate.get("metric") or "accuracy")

    @property
    def direction(self) -> str:
        return "lower" if self.runs[-1].candidate.get("metric_direction") == "lower" else "higher"


def repo_url_from_env(environ: Any = None) -> str | None:
    """``$GITHUB_SERVER_URL/$GITHUB_REPOSITORY`` when both are set (in a GitHub Actions job)."""
    env = os.environ if environ is None else environ
    server, repo = env.get("GITHUB_SERVER_URL", ""), env.get("GITHUB_REPOSITORY", "")
    return f"{server.rstrip('/')}/{repo}" if server and repo else None


def commit_url(repo_url: str | None, commit: str) -> str | None:
    """The commit's page, or ``None`` (no repository URL, or not a commit id)."""
    if not repo_url or not _SHA.match(commit):
        return None
    return f"{repo_url.rstrip('/')}/commit/{commit}"


def _num(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) and math.isfinite(value) else None


def _applies(run: dict[str, Any], gate: str) -> bool:
    """A threshold is drawn unless the run's verdict says its gate did not apply."""
    return (run.get("verdicts") or {}).get(gate) != "not applicable"


def _judge(run: Run, direction: str) -> None:
    """The run's thresholds, and which verdicts failed or thresholds it crossed."""
    cand, ref = run.candidate, run.reference or {}
    gates, base = cand.get("gates") or {}, cand.get("baseline") or {}
    sign = 1.0 if direction == "lower" else -1.0  # which side of the anchor the limit lies
    limits = run.acc_limits
    ref_acc, budget = _num(ref.get("accuracy")), _num(gates.get("accuracy_drop_vs_reference"))
    if ref_acc is not None and budget is not None and _applies(cand, "accuracy_vs_reference"):
        limits["accuracy vs reference"] = ref_acc + sign * budget
    base_acc, budget = _num(base.get("accuracy")), _num(gates.get("accuracy_drop_vs_baseline"))
    if base_acc is not None and budget is not None and _applies(cand, "accuracy_vs_baseline"):
        limits["accuracy vs baseline"] = base_acc + sign * budget
    floor = _num(gates.get("min_accuracy"))
    if direction == "higher" and floor and _applies(cand, "min_accuracy"):
        limits["accuracy floor"] = floor
    ratio, regression, ref_p50 = (
        _num(base.get("p50_ratio")),
        _num(gates.get("latency_regression")),
        _num(ref.get("p50_ms")),
    )
    if ratio is not None and regression is not None and ref_p50 is not None and _applies(cand, "latency_vs_baseline"):
        run.p50_limit = ref_p50 * ratio * (1 + regression)
    run.failed = sorted(g for g, status in (cand.get("verdicts") or {}).items() if status == "failed")
    acc, p50 = run.value("accuracy"), run.value("p50_ms")
    if acc is not None:
        gate_of = {
            "accuracy vs reference": "accuracy_vs_reference",
            "accuracy vs baseline": "accuracy_vs_baseline",
            "accuracy floor": "min_accuracy",
        }
        for name, limit in limits.items():
            if (acc > limit) if direction == "lower" else (acc < limit):
                run.crossed.append(gate_of[name])
    if p50 is not None and run.p50_limit is not None and p50 > run.p50_limit:
        run.crossed.append(LATENCY_GATE)


def _when(record: dict[str, Any], where: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(str(record["timestamp"]))
    except ValueError:
        raise EdgeMatrixError(f"{where}: timestamp {record['timestamp']!r} is not ISO 8601") from None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)  # read as UTC, as the store writes


def build_series(records: list[dict[str, Any]], where: str = "history") -> list[Series]:
    """Group the records into one :class:`Series` per (cell, backend), each run judged."""
    refs = {
        (r["cell"], r["backend"], r["timestamp"], r.get("commit")): r for r in records if r.get("role") == "reference"
    }
    grouped: dict[tuple[str, str], list[tuple[datetime, int, Run]]] = {}
    for i, r in enumerate(records):
        if r.get("role") != "candidate":
            continue
        ref = refs.get((r["cell"], r["backend"], r["timestamp"], r.get("commit")))
        grouped.setdefault((str(r["cell"]), str(r["backend"])), []).append((_when(r, where), i, Run(r, ref)))
    out = []
    for (cell, backend), runs in sorted(grouped.items()):
        series = Series(cell, backend, [run for _, _, run in sorted(runs, key=lambda x: (x[0], x[1]))])
        for run in series.runs:
            _judge(run, series.direction)
        out.append(series)
    return out


# ----------------------------------------------------------------------------------------------
# charts: matplotlib SVG, inlined


def _svg(fig: Any) -> str:
    import matplotlib

    from edgematrix.report.plots import _plain_text

    _plain_text(fig)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "edgematrix-dashboard", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _ticks(ax: Any, runs: list[Run]) -> None:
    step = max(1, math.ceil(len(runs) / _MAX_TICKS))
    shown = list(range(0, len(runs), step))
    ax.set_xticks(shown, [runs[i].commit[:7] or "?" for i in shown], rotation=90, fontsize=7, family="monospace")
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.set_xlabel("commit (oldest → newest)", fontsize=8)
    ax.grid(alpha=0.3)


def _points(ax: Any, runs: list[Run], key: str, urls: list[str | None], **kw: Any) -> list[float]:
    xs = [i for i, run in enumerate(runs) if run.value(key) is not None]
    ys = [float(runs[i].value(key) or 0.0) for i in xs]
    if xs:
        ax.plot(xs, ys, color=kw["color"], linewidth=1.2, linestyle=kw.pop("linestyle", "-"))
        dots = ax.scatter(xs, ys, s=18, zorder=3, **kw)
        dots.set_urls([urls[i] for i in xs])
    return ys


def _limit_line(ax: Any, values: list[float | None], label: str, color: str, style: str) -> list[float]:
    ys = [math.nan if v is None else v for v in values]
    if any(not math.isnan(v) for v in ys):
        ax.plot(range(len(ys)), ys, drawstyle="steps-mid", color=color, linestyle=style, linewidth=1.3, label=label)
    return [v for v in ys if not math.isnan(v)]


#: the gate a regression on the latency chart is of; every other regression is ringed on the accuracy chart
LATENCY_GATE = "latency_vs_baseline"


def _rings(ax: Any, runs: list[Run], key: str, urls: list[str | None], gid: str) -> None:
    def marked(run: Run) -> bool:
        gates = {*run.failed, *run.crossed}
        return bool(gates - {LATENCY_GATE}) if key == "accuracy" else LATENCY_GATE in gates

    xs = [i for i, run in enumerate(runs) if marked(run) and run.value(key) is not None]
    if xs:
        rings = ax.scatter(
            xs,
            [runs[i].value(key) for i in xs],
            s=150,
            facecolors="none",
            edgecolors="#cf222e",
            linewidths=2.0,
            zorder=4,
            label="regression",
        )
        rings.set_urls([urls[i] for i in xs])
        rings.set_gid(gid)


def _span(ax: Any, values: list[float], min_span: float) -> None:
    if values:
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.08, min_span / 2)
        ax.set_ylim(lo - pad, hi + pad)


def accuracy_chart(series: Series, urls: list[str | None]) -> str:
    """The candidate's (and the reference's) metric over the runs, with the accuracy thresholds."""
    from edgematrix.report.plots import _figure

    runs = series.runs
    fig, axes = _figure(10.5, 3.1)
    ax = axes[0, 0]
    values = _points(ax, runs, "accuracy", urls, color="#0969da", label="candidate")
    refs = [run.reference or {} for run in runs]
    ref_vals = [_num(r.get("accuracy")) for r in refs]
    if any(v is not None for v in ref_vals):
        ax.plot(range(len(runs)), [math.nan if v is None else v for v in ref_vals], color="#8c959f", linewidth=1.0)
        ax.plot([], [], color="#8c959f", label="FP32 reference")
        values += [v for v in ref_vals if v is not None]
    styles = {
        "accuracy vs reference": ("#bf8700", "--"),
        "accuracy vs baseline": ("#cf222e", "--"),
        "accuracy floor": ("#82071e", ":"),
    }
    for name, (color, style) in styles.items():
        values += _limit_line(ax, [run.acc_limits.get(name) for run in runs], f"gate: {name}", color, style)
    _rings(ax, runs, "accuracy", urls, "accuracy-regressions")
    better = "lower is better" if series.direction == "lower" else "higher is better"
    ax.set_ylabel(f"{series.metric}\n({better})", fontsize=9)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    _span(ax, values, 1.0 if series.direction == "higher" and max(values, default=0) > 1 else 0.0)
    _ticks(ax, runs)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{series.cell} / {series.backend}: {series.metric}", fontsize=10)
    return _svg(fig)


def latency_chart(series: Series, urls: list[str | None]) -> str:
    """The candidate's p50 and p90 over the runs (and the reference's p50), with the latency gate."""
    from edgematrix.report.plots import _figure

    runs = series.runs
    fig, axes = _figure(10.5, 3.1)
    ax = axes[0, 0]
    values = _points(ax, runs, "p50_ms", urls, color="#0969da", label="candidate p50")
    values += _points(ax, runs, "p90_ms", urls, color="#8250df", label="candidate p90", linestyle="--", marker="s")
    ref_vals = [_num((run.reference or {}).get("p50_ms")) for run in runs]
    if any(v is not None for v in ref_vals):
        ax.plot(range(len(runs)), [math.nan if v is None else v for v in ref_vals], color="#8c959f", linewidth=1.0)
        ax.plot([], [], color="#8c959f", label="FP32 reference p50")
        values += [v for v in ref_vals if v is not None]
    values += _limit_line(ax, [run.p50_limit for run in runs], "gate: latency (p50)", "#cf222e", "--")
    _rings(ax, runs, "p50_ms", urls, "latency-regressions")
    ax.set_ylabel("latency (ms)", fontsize=9)
    ax.set_ylim(bottom=0, top=max(values, default=1.0) * 1.08)
    _ticks(ax, runs)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{series.cell} / {series.backend}: p50 and p90 latency", fontsize=10)
    return _svg(fig)


# ----------------------------------------------------------------------------------------------
# pages


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:.4g}{unit}"


def _commit_html(run: Run, repo_url: str | None) -> str:
    sha = run.commit
    label = sha[:10] or "(unknown)"
    dirty = " <span class='muted'>(dirty)</span>" if run.candidate.get("dirty") else ""
    url = commit_url(repo_url, sha)
    if url is None:
        return f"<span class='sha' title='{_e(sha)}'>{_e(label)}</span>{dirty}"
    return f"<a class='sha' href='{_e(url)}' title='{_e(sha)}'>{_e(label)}</a>{dirty}"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _status_html(run: Run) -> str:
    if run.regression:
        return f"<span class='bad'>regression: {_e('; '.join(run.reasons()))}</span>"
    return "<span class='ok'>ok</span>"


def _gates_html(series: Series) -> str:
    last = series.runs[-1]
    gates, base = last.candidate.get("gates") or {}, last.candidate.get("baseline") or {}
    if not gates:
        return "<p class='muted'>The latest record has no gates (a history written before records kept them).</p>"
    rows = [f"<li>{_e(k)}: <code>{_e(f'{v:g}')}</code></li>" for k, v in sorted(gates.items())]
    if base:
        what = f"accuracy {_fmt(_num(base.get('accuracy')))}"
        if _num(base.get("p50_ratio")) is not None:
            what += f", candidate/reference p50 {_fmt(_num(base.get('p50_ratio')))}"
        rows.append(f"<li>baseline ({_e(base.get('device', ''))}): {_e(what)}</li>")
    else:
        rows.append("<li>baseline: none recorded for this backend and device</li>")
    return "<ul class='gates'>" + "".join(rows) + "</ul>"


def cell_page(series: Series, repo_url: str | None) -> str:
    """One cell and backend: the latest run, the gates, both charts and the table of runs."""
    runs = series.runs
    urls = [commit_url(repo_url, run.commit) for run in runs]
    last = runs[-1]
    metric = series.metric
    n_reg = sum(run.regression for run in runs)
    latest = (
        f"<p id='latest'>Latest run: {_commit_html(last, repo_url)} ({_e(str(last.candidate['timestamp'])[:16])}): "
        f"{_e(metric)} <b id='latest-accuracy'>{_fmt(last.value('accuracy'))}</b>, "
        f"p50 <b id='latest-p50'>{_fmt(last.value('p50_ms'), ' ms')}</b>, "
        f"p90 <b id='latest-p90'>{_fmt(last.value('p90_ms'), ' ms')}</b> — {_status_html(last)}</p>"
    )
    rows = []
    for i, run in reversed(list(enumerate(runs))):
        verdicts = run.candidate.get("verdicts") or {}
        shown = ", ".join(f"{g} {s}" for g, s in sorted(verdicts.items()) if s in ("failed", "inconclusive"))
        rows.append(
            f"<tr class='{'regression' if run.regression else 'run'}' data-commit='{_e(run.commit)}'>"
            f"<td class='num'>{i + 1}</td><td>{_commit_html(run, repo_url)}</td>"
            f"<td>{_e(str(run.candidate['timestamp'])[:16])}</td>"
            f"<td class='num'>{_fmt(run.value('accuracy'))}</td><td class='num'>{_fmt(run.value('p50_ms'))}</td>"
            f"<td class='num'>{_fmt(run.value('p90_ms'))}</td><td class='num'>{_fmt(run.p50_limit)}</td>"
            f"<td>{_status_html(run)}{f' <span class=muted>({_e(shown)})</span>' if shown and not run.failed else ''}"
            "</td></tr>"
        )
    body = (
        "<nav><a href='index.html'>← all cells</a></nav>\n"
        f"<h1>{_e(series.cell)} <span class='muted'>/ {_e(series.backend)}</span></h1>\n{latest}\n"
        f"<p class='muted'>{len(runs)} runs, {n_reg} regression{'s' * (n_reg != 1)} (a failed gate verdict, or a "
        "value beyond a threshold drawn for its run: ringed in red). Points link to their commits.</p>\n"
        f"<div class='chart' id='accuracy-chart'>{accuracy_chart(series, urls)}</div>\n"
        f"<div class='chart' id='latency-chart'>{latency_chart(series, urls)}</div>\n"
        f"<h2>Gates of the latest run</h2>\n{_gates_html(series)}\n"
        "<h2>Runs (newest first)</h2>\n<table id='runs'><thead><tr><th class='num'>#</th><th>commit</th>"
        f"<th>recorded (UTC)</th><th class='num'>{_e(metric)}</th><th class='num'>p50 ms</th>"
        "<th class='num'>p90 ms</th><th class='num'>p50 gate ms</th><th>status</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>"
    )
    return _page(f"{series.cell} / {series.backend} — edgematrix history", body)


def index_page(all_series: list[Series], repo_url: str | None, source: str) -> str:
    """Every cell and backend: runs, the latest values and status, regressions, a link to its page."""
    rows = []
    for s in all_series:
        last = s.runs[-1]
        rows.append(
            f"<tr class='{'regression' if last.regression else 'run'}' data-cell='{_e(s.cell)}' "
            f"data-backend='{_e(s.backend)}'><td><a href='{_e(s.page)}'>{_e(s.cell)}</a></td><td>{_e(s.backend)}</td>"
            f"<td class='num'>{len(s.runs)}</td><td>{_commit_html(last, repo_url)}</td>"
            f"<td>{_e(s.metric)}</td><td class='num'>{_fmt(last.value('accuracy'))}</td>"
            f"<td class='num'>{_fmt(last.value('p50_ms'))}</td><td class='num'>{_fmt(last.value('p90_ms'))}</td>"
            f"<td class='num'>{sum(r.regression for r in s.runs)}</td><td>{_status_html(last)}</td></tr>"
        )
    body = (
        "<h1>edgematrix: results over commits</h1>\n"
        f"<p class='muted'>From the history <code>{_e(source)}</code>: {len(all_series)} cell/backend series. "
        "Each links to its page: accuracy and p50/p90 latency over the runs with the gate thresholds drawn in "
        "and regressions marked.</p>\n"
        "<table id='cells'><thead><tr><th>cell</th><th>backend</th><th class='num'>runs</th><th>latest commit</th>"
        "<th>metric</th><th class='num'>latest</th><th class='num'>p50 ms</th><th class='num'>p90 ms</th>"
        "<th class='num'>regressions</th><th>latest run</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>"
    )
    return _page("edgematrix history", body)


def _page_name(cell: str, backend: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cell}--{backend}").lstrip(".") or "cell"
    name, n = f"{stem}.html", 2
    while name in taken or name == "index.html":
        name, n = f"{stem}-{n}.html", n + 1
    taken.add(name)
    return name


def write_dashboard(
    history: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, repo_url: str | None = None
) -> dict[str, Path]:
    """Write the static site of ``history`` into ``out_dir``; return the pages by name.

    Keys: ``dashboard`` (``index.html``) and ``dashboard:<cell>:<backend>`` (one page each).
    ``repo_url`` (e.g. ``https://github.com/org/repo``) makes commits links.
    """
    from edgematrix.report.history import read_history

    if repo_url is not None and not re.match(r"^https?://[^\s'\"<>]+$", repo_url):
        raise EdgeMatrixError(f"repository URL {repo_url!r} is not an http(s) URL (e.g. https://github.com/org/repo)")
    all_series = build_series(read_history(history), str(history))
    if not all_series:
        raise EdgeMatrixError(f"history {str(history)!r} has no candidate records: nothing to draw")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for s in all_series:
        s.page = _page_name(s.cell, s.backend, taken)
    paths: dict[str, Path] = {}
    for s in all_series:
        path = out / s.page
        path.write_text(cell_page(s, repo_url), encoding="utf-8")
        paths[f"dashboard:{s.cell}:{s.backend}"] = path
    index = out / "index.html"
    index.write_text(index_page(all_series, repo_url, Path(history).name), encoding="utf-8")
    return {"dashboard": index, **paths}

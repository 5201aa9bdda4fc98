"""PNG plots of the results (matplotlib, Agg canvas: no display, no global pyplot state).

* :func:`plot_latency_distributions` — the per-round latency of every benchmark in one
  ``benchmark.json`` (violins + ECDFs, p50 marked), against a base run's when one is given.
* :func:`plot_history` — p50, same-run speedup and accuracy of each cell's candidates over time,
  from the JSON-lines history store.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError

_DPI = 110
_LOG_SPAN = 4.0  # log latency axis when the slowest sample is this many times the fastest


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _plain_text(fig: Any) -> None:
    """Text from a results folder (backend, cell and model names) shows as it is: matplotlib would parse
    ``$...$`` in it as mathtext (and fail on what it cannot parse). Titles, legends and annotations
    stop parsing math; tick labels given as text get their ``$`` escaped (matplotlib re-creates tick
    labels when drawing); matplotlib's numeric tick labels keep their mathtext (log axes: ``$10^{2}$``)."""
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter, FuncFormatter

    def escaped(formatter: Any) -> Any:
        return FuncFormatter(lambda x, pos: str(formatter(x, pos)).replace("$", r"\$"))

    ticks = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), FixedFormatter | FuncFormatter):
                axis.set_major_formatter(escaped(axis.get_major_formatter()))
            if isinstance(axis.get_minor_formatter(), FixedFormatter | FuncFormatter):
                axis.set_minor_formatter(escaped(axis.get_minor_formatter()))
            ticks |= {id(t) for t in axis.get_ticklabels(which="both")}
    for text in fig.findobj(Text):
        if id(text) not in ticks:
            text.set_parse_math(False)


def _save(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    """Render to a temporary PNG next to ``out_png`` and rename it into place."""
    _plain_text(fig)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=_DPI)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# latency distributions


def _benchmarks(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from edgematrix.core.results import read_benchmark_json

    doc = read_benchmark_json(path, require_data=True)
    return doc, doc["benchmarks"]


def _label(bench: dict[str, Any]) -> str:
    extra = bench.get("extra_info", {})
    backend, role, precision = extra.get("backend"), extra.get("role"), extra.get("precision")
    if backend and role:
        return f"{backend}\n{role} ({precision})" if precision else f"{backend}\n{role}"
    return str(bench["name"])


def _key(bench: dict[str, Any]) -> tuple[str, str]:
    extra = bench.get("extra_info", {})
    return str(extra.get("backend", "")), str(extra.get("role", bench["name"]))


def _match(benchmarks: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The base benchmark of each benchmark: same name, else same (backend, role)."""
    by_name = {b["name"]: b for b in base}
    by_key = {_key(b): b for b in base}
    return [by_name.get(b["name"]) or by_key.get(_key(b)) for b in benchmarks]


def _ms(bench: dict[str, Any]) -> np.ndarray:
    return np.asarray(bench["stats"]["data"], dtype=float) * 1e3


def _violin(ax: Any, data: np.ndarray, pos: float, color: Any, width: float, hatch: bool) -> None:
    if data.size >= 2 and np.ptp(data) > 0:
        parts = ax.violinplot([data], positions=[pos], widths=width, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(color)
            body.set_edgecolor("black" if not hatch else "grey")
            body.set_alpha(0.35 if hatch else 0.65)
            if hatch:
                body.set_hatch("///")
    ax.scatter(np.full(data.size, pos), data, s=4, color=color, alpha=0.5, linewidths=0, zorder=2)
    p50 = float(np.median(data))
    ax.hlines(p50, pos - width / 2, pos + width / 2, color="black", linewidth=2, zorder=3)


def _ecdf(ax: Any, data: np.ndarray, color: Any, label: str, dashed: bool) -> None:
    xs = np.sort(data)
    ys = np.arange(1, xs.size + 1) / xs.size
    ax.step(xs, ys, where="post", color=color, linestyle="--" if dashed else "-", linewidth=1.6, label=label)
    ax.plot([float(np.median(data))], [0.5], marker="o", color=color, markeredgecolor="black", zorder=3)


def plot_latency_distributions(
    benchmark_json: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    base_json: str | os.PathLike[str] | None = None,
) -> Path:
    """Plot every benchmark's per-round latency in ``benchmark_json`` into ``out_png``.

    Left: one violin per benchmark (rounds as dots, p50 as a black bar); right: the ECDFs, p50 as a
    dot on the 0.5 line. With ``base_json``, each benchmark's base (matched by name, else by backend
    and role) is drawn beside it, hatched / dashed. Returns ``out_png``.
    """
    doc, benches = _benchmarks(benchmark_json)
    bases: list[dict[str, Any] | None] = [None] * len(benches)
    if base_json is not None:
        bases = _match(benches, _benchmarks(base_json)[1])
    colors = _colors(len(benches))
    fig, axes = _figure(13, 5.2, 1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    ax_v, ax_e = axes[0]
    all_ms = np.concatenate([_ms(b) for b in benches] + [_ms(b) for b in bases if b is not None])
    log = all_ms.min() > 0 and all_ms.max() / all_ms.min() > _LOG_SPAN

    paired = any(b is not None for b in bases)
    width = 0.38 if paired else 0.7
    ticks = []
    for i, (bench, base, color) in enumerate(zip(benches, bases, colors, strict=True)):
        data = _ms(bench)
        p50 = float(np.median(data))
        tick = f"{_label(bench)}\np50 {p50:.2f} ms"
        if base is not None:
            base_ms = _ms(base)
            base_p50 = float(np.median(base_ms))
            _violin(ax_v, base_ms, i - width / 2, color, width * 0.95, hatch=True)
            _violin(ax_v, data, i + width / 2, color, width * 0.95, hatch=False)
            _ecdf(ax_e, base_ms, color, f"{_label(base).replace(chr(10), ' ')}: base p50 {base_p50:.2f}", dashed=True)
            tick += f"\n(base {base_p50:.2f}, {(p50 / base_p50 - 1) * 100:+.1f}%)"
        else:
            _violin(ax_v, data, i, color, width, hatch=False)
        _ecdf(ax_e, data, color, f"{_label(bench).replace(chr(10), ' ')}: p50 {p50:.2f}", dashed=False)
        ticks.append(tick)
    ax_v.set_xticks(range(len(benches)), ticks, fontsize=8)
    ax_v.set_ylabel("latency per round (ms)")
    ax_v.set_title(
        "per-round latency (bar = p50)" + (": base hatched (left), this run solid (right)" if paired else "")
    )
    ax_v.grid(axis="y", alpha=0.3)
    ax_e.set_xlabel("latency per round (ms)")
    ax_e.set_ylabel("fraction of rounds ≤ x")
    ax_e.set_title("ECDF (dot = p50)" + (", base dashed" if paired else ""))
    ax_e.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax_e.set_ylim(0, 1.02)
    ax_e.grid(alpha=0.3)
    ax_e.legend(fontsize=7, loc="lower right")
    if log:
        from matplotlib.ticker import FormatStrFormatter

        ax_v.set_yscale("log")
        ax_e.set_xscale("log")
        for axis in (ax_v.yaxis, ax_e.xaxis):  # 10, 20, 40 rather than 1×10^1, 2×10^1, 4×10^1
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(FormatStrFormatter("%g"))
    extra0 = benches[0].get("extra_info", {})
    cell = extra0.get("cell") or benches[0].get("group") or Path(benchmark_json).parent.name
    machine = doc.get("machine_info", {}).get("cpu_model") or doc.get("machine_info", {}).get("node", "")
    rounds = sorted({len(b["stats"]["data"]) for b in benches})
    fig.suptitle(
        f"{cell}: latency distributions ({'/'.join(map(str, rounds))} rounds per benchmark"
        + (f", {machine}" if machine else "")
        + ")",
        fontsize=11,
    )
    return _save(fig, out_png)


# ----------------------------------------------------------------------------------------------
# history


def _when(record: dict[str, Any], where: str) -> datetime:
    try:
        return datetime.fromisoformat(str(record["timestamp"]))
    except ValueError:
        raise EdgeMatrixError(f"{where}: timestamp {record['timestamp']!r} is not ISO 8601") from None


def plot_history(
    history_jsonl: str | os.PathLike[str], out_png: str | os.PathLike[str], cell: str | None = None
) -> Path:
    """Plot the trend of each (cell, backend) candidate over time: p50, speedup vs FP32, accuracy.

    ``cell`` restricts the plot to one cell. Returns ``out_png``.
    """
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    from edgematrix.report.history import read_history

    records = [r for r in read_history(history_jsonl) if r.get("role") == "candidate"]
    if cell is not None:
        known = sorted({str(r["cell"]) for r in records})
        records = [r for r in records if r["cell"] == cell]
        if not records:
            raise EdgeMatrixError(
                f"history {str(history_jsonl)!r} has no candidate records of cell {cell!r}; cells in it: "
                f"{', '.join(known) or '(none)'}"
            )
    if not records:
        raise EdgeMatrixError(f"history {str(history_jsonl)!r} has no candidate records to plot")
    series: dict[tuple[str, str], list[tuple[datetime, dict[str, Any]]]] = {}
    for r in records:
        series.setdefault((str(r["cell"]), str(r["backend"])), []).append((_when(r, str(history_jsonl)), r))
    # (field, axis label, smallest y span shown: flat series sit mid-axis instead of on a 1e-6 scale)
    panels = [
        ("p50_ms", "p50 (ms)", lambda mid: 0.1 * abs(mid)),
        ("speedup_vs_reference", "speedup vs FP32 (×, same run)", lambda mid: 0.1 * abs(mid)),
        ("accuracy", "accuracy (%)", lambda mid: 1.0),
    ]
    fig, axes = _figure(11, 8.5, len(panels), 1, sharex=True)
    colors = _colors(len(series))
    values: dict[str, list[float]] = {field: [] for field, _, _ in panels}
    for (key, points), color in zip(sorted(series.items()), colors, strict=True):
        points.sort(key=lambda p: p[0])
        label = f"{key[0]} / {key[1]}"
        for (field, _, _), ax in zip(panels, axes[:, 0], strict=True):
            xs = [t for t, r in points if isinstance(r.get(field), int | float)]
            ys = [float(r[field]) for _, r in points if isinstance(r.get(field), int | float)]
            if xs:
                ax.plot(xs, ys, marker="o", markersize=4, color=color, label=label)
                values[field] += ys
    for (field, title, min_span), ax in zip(panels, axes[:, 0], strict=True):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        if values[field]:
            lo, hi = min(values[field]), max(values[field])
            span = min_span((lo + hi) / 2)
            if hi - lo < span:
                ax.set_ylim((lo + hi) / 2 - span / 2, (lo + hi) / 2 + span / 2)
    times = sorted(t for pts in series.values() for t, _ in pts)
    if times[0] == times[-1]:  # one run: an hour either side, not matplotlib's default of years
        ax.set_xlim(times[0] - timedelta(hours=1), times[0] + timedelta(hours=1))
    locator = AutoDateLocator()
    axes[-1, 0].xaxis.set_major_locator(locator)
    axes[-1, 0].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    n_runs = len({r["timestamp"] for r in records})
    fig.suptitle(f"{cell or 'all cells'}: candidate trend over {n_runs} run{'s' * (n_runs != 1)}", fontsize=11)
    return _save(fig, out_png)

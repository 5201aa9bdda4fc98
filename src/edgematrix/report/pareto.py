"""Accuracy-vs-latency Pareto fronts across recipes / strategies, per model and target.

Points come from ``results/*/benchmark.json``: one per benchmark (recipe, or reference), grouped by
``extra_info`` ``model`` and ``target``. The quality axis is the task metric of record,
``extra_info["accuracy"]``, named by ``metric`` and better in the direction of ``metric_direction``
(``"lower"`` for an error: a steering model's MSE); files of the retired strategies pipeline name it
``task_metric`` / ``task_metric_direction`` instead, and are read too. The same artifact measured by
several cells (each cell's FP32 reference; an FP32 cell's candidate, which is its reference) is one
point; models a recipe step measured beside the candidate (``unpruned``, ``ptq`` ...) are points
labelled ``<recipe> (<role>)``.

A point is on the front when no other point dominates it: at least as fast (p50) and at least as
good, and strictly better in one of the two. Two identical points do not dominate each other, so
both stay on the front.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import metric_text
from edgematrix.report.markdown import md_text

_DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class Point:
    label: str
    metric: float  # the quality value (accuracy %, MSE ...)
    p50_ms: float
    model_bytes: int = 0
    speedup: float | None = None  # same-run ratio vs the FP32 reference, when the run measured one
    role: str = "candidate"
    precision: str = ""


@dataclass
class ParetoGroup:
    model: str
    target: str
    metric: str  # name of the quality axis
    direction: str  # "higher" | "lower": which is better
    points: list[Point]

    @property
    def front(self) -> list[bool]:
        return pareto_front([(p.p50_ms, p.metric) for p in self.points], higher_is_better=self.direction == "higher")


def pareto_front(points: Sequence[tuple[float, float]], *, higher_is_better: bool) -> list[bool]:
    """For ``(latency, quality)`` pairs: ``True`` where no other pair dominates (lower latency is better)."""
    sign = 1.0 if higher_is_better else -1.0
    vals = [(float(lat), sign * float(q)) for lat, q in points]
    for lat, q in vals:
        if not (math.isfinite(lat) and math.isfinite(q)):
            raise EdgeMatrixError(f"Pareto point ({lat}, {q}) is not finite; drop it before computing the front")
    out = []
    for i, (lat, q) in enumerate(vals):
        dominated = any(lo <= lat and qo >= q and (lo < lat or qo > q) for j, (lo, qo) in enumerate(vals) if j != i)
        out.append(not dominated)
    return out


def _p50_ms(bench: dict[str, Any]) -> float | None:
    extra = bench.get("extra_info", {})
    value = extra.get("p50_ms")
    if type(value) in (int, float):
        return float(value)
    data = bench.get("stats", {}).get("data")
    if data:
        return float(np.percentile(np.asarray(data, np.float64), 50)) * 1e3
    median = bench.get("stats", {}).get("median")
    return float(median) * 1e3 if type(median) in (int, float) else None


def points_from_benchmarks(
    docs: Iterable[dict[str, Any]], *, source: str = "benchmark.json"
) -> dict[tuple[str, str], ParetoGroup]:
    """Group the benchmarks of pytest-benchmark documents into Pareto groups keyed ``(model, target)``.

    Benchmarks without the quality metric, a latency, or ``model`` and ``target`` in their
    ``extra_info`` (every cell run writes them) are skipped; a group whose benchmarks
    disagree on the metric or its direction raises :class:`EdgeMatrixError`.
    """
    groups: dict[tuple[str, str], ParetoGroup] = {}
    seen: dict[tuple[str, str], set[tuple[str, str]]] = {}
    benches = [bench for doc in docs for bench in doc.get("benchmarks", [])]
    # the cells' own models first, so a model measured again as a step's role keeps its recipe's label
    benches.sort(key=lambda b: b.get("extra_info", {}).get("role", "candidate") not in ("reference", "candidate"))
    for bench in benches:
        extra = bench.get("extra_info", {})
        if "task_metric" in extra:  # the retired strategies pipeline's files
            metric = str(extra["task_metric"])
            direction, key = str(extra.get("task_metric_direction", "higher")), "task_metric_direction"
            value = extra.get(metric)
        else:
            metric = str(extra.get("metric", "accuracy"))
            direction, key = str(extra.get("metric_direction", "higher")), "metric_direction"
            value = extra.get("accuracy")
        if direction not in _DIRECTIONS:
            raise EdgeMatrixError(
                f"{source}: benchmark {bench.get('name')!r} has {key} {direction!r}; "
                f"use one of {', '.join(_DIRECTIONS)}"
            )
        p50 = _p50_ms(bench)
        model, target = str(extra.get("model", "")), str(extra.get("target", ""))
        if type(value) not in (int, float) or p50 is None or not model or not target:
            continue
        group_key = (model, target)
        group = groups.setdefault(group_key, ParetoGroup(model, target, metric, direction, []))
        if (group.metric, group.direction) != (metric, direction):
            raise EdgeMatrixError(
                f"{source}: {model} on {target} mixes quality metrics ({group.metric}, {group.direction} is "
                f"better vs {metric}, {direction}); one model's recipes must report the same task metric"
            )
        role = str(extra.get("role", "candidate"))
        backend = str(extra.get("backend", ""))
        precision = str(extra.get("precision", ""))
        recipe = str(extra.get("recipe", bench.get("name", "?")))
        if role == "reference":
            label = recipe if recipe == "fp32" else f"{precision or 'fp32'} reference"
        else:
            label = recipe if role == "candidate" else f"{recipe} ({role})"
        identity = (str(extra.get("artifact_sha256") or bench.get("name")), backend)
        if identity in seen.setdefault(group_key, set()):
            continue  # the same artifact measured by several cells (their FP32 reference ...): one point
        seen[group_key].add(identity)
        speedup = extra.get("speedup_vs_reference")
        group.points.append(
            Point(
                label=label,
                metric=float(value),
                p50_ms=p50,
                model_bytes=int(extra.get("model_bytes", 0) or 0),
                speedup=float(speedup) if type(speedup) in (int, float) else None,
                role=role,
                precision=precision,
            )
        )
        group.points[-1] = _with_backend(group.points[-1], backend)
    return {k: g for k, g in groups.items() if g.points}


def _with_backend(point: Point, backend: str) -> Point:
    if not backend or backend == "onnxruntime":
        return point
    return Point(
        f"{point.label} @{backend}", point.metric, point.p50_ms, point.model_bytes, point.speedup, point.role,
        point.precision,
    )  # fmt: skip


def collect(results_dir: str | os.PathLike[str]) -> dict[tuple[str, str], ParetoGroup]:
    """Pareto groups of every ``<results_dir>/*/benchmark.json``."""
    from edgematrix.core.results import read_benchmark_json

    root = Path(results_dir)
    docs = []
    for path in sorted(root.glob("*/benchmark.json")):
        docs.append(read_benchmark_json(path, require_data=False))
    return points_from_benchmarks(docs, source=str(root))


def _axis_name(metric: str) -> str:
    """The quality axis's name: ``accuracy (%)``; a lower-case short name upper-cased (``mse`` → ``MSE``)."""
    if metric == "accuracy":
        return "accuracy (%)"
    return metric.upper() if metric == metric.lower() and len(metric) <= 5 else metric


def _size(n: int) -> str:
    if n <= 0:
        return "–"
    return f"{n / 1e3:.0f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def pareto_markdown(group: ParetoGroup) -> str:
    """A markdown table of ``group``: recipe, metric, p50, speedup vs FP32, size, on front (sorted by p50)."""
    better = "higher" if group.direction == "higher" else "lower"
    unit = " (%)" if group.metric == "accuracy" else ""
    lines = [
        f"| recipe | {md_text(group.metric)}{unit} ({better} is better) | p50 (ms) | speedup vs FP32 | size | on front |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    order = sorted(zip(group.points, group.front, strict=True), key=lambda pf: pf[0].p50_ms)
    for p, on in order:
        speed = f"{p.speedup:.2f}×" if p.speedup is not None else "–"
        lines.append(
            f"| {md_text(p.label)} | {metric_text(p.metric, group.direction)} | {p.p50_ms:.3f} | {speed} | {_size(p.model_bytes)} "
            f"| {'yes' if on else 'no'} |"
        )
    return "\n".join(lines)


def plot_pareto(group: ParetoGroup, out_png: str | os.PathLike[str]) -> Path:
    """Scatter of ``group`` (x: p50 latency, y: quality, better upwards), the front highlighted; PNG at ``out_png``."""
    from edgematrix.report.plots import _figure, _save

    if not group.points:
        raise EdgeMatrixError(f"no points to plot for {group.model} on {group.target}")
    front = group.front
    fig, axes = _figure(7.5, 4.8)
    ax = axes[0][0]
    xs = np.array([p.p50_ms for p in group.points])
    ys = np.array([p.metric for p in group.points])
    on = np.array(front)
    ax.scatter(
        xs[~on], ys[~on], s=55, facecolors="white", edgecolors="0.45", linewidths=1.4, label="dominated", zorder=3
    )
    ax.scatter(
        xs[on], ys[on], s=80, color="tab:red", edgecolors="black", linewidths=0.6, label="Pareto front", zorder=4
    )
    order = np.argsort(xs[on], kind="stable")
    fx, fy = xs[on][order], ys[on][order]
    if len(fx) > 1:
        ax.step(fx, fy, where="post", color="tab:red", alpha=0.6, linewidth=1.5, zorder=2)
    span_x = float(xs.max() / xs.min()) if xs.min() > 0 else 1.0
    if span_x > 4:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.set_xlim(xs.min() / 1.25, xs.max() * 1.9)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_tick))
    else:
        pad_x = (xs.max() - xs.min()) * 0.12 or xs.max() * 0.1
        ax.set_xlim(max(0.0, xs.min() - pad_x), xs.max() + pad_x * 2.5)
    pad_y = (ys.max() - ys.min()) * 0.15 or abs(ys.max()) * 0.1 or 1.0
    ax.set_ylim(ys.min() - pad_y, ys.max() + pad_y)
    if group.direction == "lower":
        ax.invert_yaxis()  # better is up on every Pareto plot
    better = "higher" if group.direction == "higher" else "lower"
    name = _axis_name(group.metric)
    if group.direction == "lower":
        ax.set_ylabel(f"{name}, {better} is better (axis inverted)")
    else:
        ax.set_ylabel(f"{name}, {better} is better")
    ax.set_xlabel("p50 latency (ms), lower is better")
    ax.set_title(f"{group.model} on {group.target}: {name} vs latency (front: upper left)", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5)
    _place_labels(ax, xs, ys, [p.label for p in group.points], front)
    return _save(fig, out_png)


def _minor_tick(value: float, _pos: int) -> str:
    """Label the 2×, 3× and 5× minor ticks of a log axis (0.2, 0.3, 0.5, 2 ...), leave the others blank."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in (2.0, 3.0, 5.0) else ""


_FONT = 8.5
# label candidates, offsets in points from the marker: right, then left, above / below, further out
_OFFSETS = ((7, 6), (7, -13), (-7, 6), (-7, -13), (7, 17), (7, -24), (-7, 17), (-7, -24), (7, 28), (7, -35))


def _place_labels(ax: Any, xs: np.ndarray, ys: np.ndarray, labels: list[str], front: list[bool]) -> None:
    """Annotate each point, choosing the first offset whose (estimated) text box overlaps no label or marker."""
    fig = ax.figure
    fig.canvas.draw()  # settle the layout so data -> pixel transforms are final
    px_per_pt = fig.dpi / 72.0
    char_w, text_h = 0.6 * _FONT * px_per_pt, 1.2 * _FONT * px_per_pt
    marker_r = 6 * px_per_pt
    markers = [tuple(ax.transData.transform((x, y))) for x, y in zip(xs, ys, strict=True)]
    placed: list[tuple[float, float, float, float]] = [
        (mx - marker_r, my - marker_r, mx + marker_r, my + marker_r) for mx, my in markers
    ]
    for i in np.argsort(xs, kind="stable"):
        mx, my = markers[i]
        w = len(labels[i]) * char_w
        best = _OFFSETS[0]
        for dx, dy in _OFFSETS:
            x0 = mx + dx * px_per_pt - (w if dx < 0 else 0)
            y0 = my + dy * px_per_pt
            box = (x0, y0, x0 + w, y0 + text_h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                best = (dx, dy)
                placed.append(box)
                break
        ax.annotate(
            labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=best, fontsize=_FONT,
            ha="right" if best[0] < 0 else "left", va="bottom", color="black" if front[i] else "0.35", zorder=5,
        )  # fmt: skip


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_pareto_reports(
    results_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> tuple[dict[str, Path], str]:
    """For every (model, target) with two or more points: ``pareto-<model>-<target>.png`` in ``out_dir``.

    Returns the PNG paths (keyed ``pareto:<model>:<target>``) and a markdown section (empty when
    there is nothing to compare) whose image links are relative to ``out_dir``'s parent.
    """
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    sections: list[str] = []
    for (model, target), group in sorted(collect(results_dir).items()):
        if len(group.points) < 2:
            continue
        png = plot_pareto(group, out / f"pareto-{_slug(model)}-{_slug(target)}.png")
        paths[f"pareto:{model}:{target}"] = png
        sections += [
            f"#### {md_text(model)} on {md_text(target)}",
            "",
            f"![{md_text(model)} on {md_text(target)}]({out.name}/{png.name})",
            "",
            pareto_markdown(group),
            "",
        ]
    if not sections:
        return paths, ""
    head = ["### Accuracy vs latency (Pareto)", ""]
    return paths, "\n".join(head + sections).rstrip() + "\n"

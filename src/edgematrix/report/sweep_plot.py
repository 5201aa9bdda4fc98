"""The batch-size sweep plot: samples/s vs batch (FP32 reference and candidate) and acceleration vs batch.

Takes the points of ``batch_sweep.json`` (plain dicts, see :class:`edgematrix.pipeline.sweep.SweepPoint`),
so it draws a stored sweep as well as a fresh one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError


def plot_batch_sweep(
    points: Sequence[Mapping[str, Any]],
    out_png: str | os.PathLike[str],
    *,
    title: str = "batch-size sweep",
    candidate_label: str | None = "INT8",
) -> Path:
    """Two panels, x = batch size (log2): per-sample throughput of the FP32 reference and the candidate;
    acceleration (candidate vs FP32 at the same batch, and either vs FP32 at batch 1). PNG at ``out_png``."""
    from matplotlib.ticker import FixedLocator, NullLocator

    from edgematrix.report.plots import _figure, _save

    if not points:
        raise EdgeMatrixError("no sweep points to plot; run the sweep first")
    pts = sorted(points, key=lambda p: int(p["batch"]))
    batches = [int(p["batch"]) for p in pts]
    has_cand = candidate_label is not None and all(p.get("candidate_samples_per_s") is not None for p in pts)
    series: dict[str, list[float]] = {
        "ref_fps": [float(p["reference_samples_per_s"]) for p in pts],
        "ref_x1": [float(p["reference_vs_fp32_b1"]) for p in pts],
    }
    if has_cand:
        series["cand_fps"] = [float(p["candidate_samples_per_s"]) for p in pts]
        series["cand_vs_ref"] = [float(p["candidate_vs_reference"]) for p in pts]
        series["cand_x1"] = [float(p["candidate_vs_fp32_b1"]) for p in pts]
    bad = [k for k, vs in series.items() if not all(math.isfinite(v) and v > 0 for v in vs)]
    if bad:
        raise EdgeMatrixError(f"sweep points hold non-positive or non-finite values in {bad}; re-run the sweep")

    fig, axes = _figure(11.0, 4.4, 1, 2)
    ax_fps, ax_acc = axes[0]
    ax_fps.plot(batches, series["ref_fps"], "o-", color="tab:blue", label="FP32 reference")
    if has_cand:
        ax_fps.plot(batches, series["cand_fps"], "s-", color="tab:red", label=f"{candidate_label} candidate")
    ax_fps.set_ylabel("samples/s (batch / p50), higher is better")
    ax_fps.set_title("per-sample throughput", fontsize=10.5)
    ax_fps.set_ylim(bottom=0, top=max(max(v) for k, v in series.items() if k.endswith("fps")) * 1.18)
    for x, y in zip(batches, series.get("cand_fps", series["ref_fps"]), strict=True):
        ax_fps.annotate(
            f"{y:.0f}" if y >= 100 else f"{y:.3g}",
            (x, y),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=8,
        )

    if has_cand:
        ax_acc.plot(
            batches, series["cand_vs_ref"], "s-", color="tab:red", label=f"{candidate_label} vs FP32, same batch"
        )
        ax_acc.plot(
            batches,
            series["cand_x1"],
            "^--",
            color="tab:purple",
            label=f"{candidate_label} vs FP32 batch 1 (samples/s)",
        )
        for x, y in zip(batches, series["cand_x1"], strict=True):
            ax_acc.annotate(f"{y:.2f}×", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax_acc.plot(batches, series["ref_x1"], "o:", color="tab:blue", label="FP32 vs FP32 batch 1 (samples/s)")
    ax_acc.axhline(1.0, color="0.5", linewidth=0.8)
    top = max(max(v) for k, v in series.items() if not k.endswith("fps"))
    ax_acc.set_ylim(bottom=0, top=max(top * 1.2, 1.2))
    ax_acc.set_ylabel("acceleration (×), same-run ratios")
    ax_acc.set_title("acceleration", fontsize=10.5)

    for ax in (ax_fps, ax_acc):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(batches))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(b) for b in batches])
        ax.set_xlim(min(batches) / 1.5, max(batches) * 1.5)
        ax.set_xlabel("batch size")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8.5)
    fig.suptitle(title, fontsize=11.5)
    return _save(fig, out_png)

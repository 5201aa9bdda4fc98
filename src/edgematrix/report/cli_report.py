"""``edgematrix report``: merged JUnit, markdown summary + PR comment, plots, history.

Thin over the report modules; the CLI verb calls :func:`run_report`.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgematrix.report.merge import find_cells, merge_junit
from edgematrix.report.summary import write_summary


def run_report(
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    history: str | os.PathLike[str] | None = None,
    baselines_dir: str | os.PathLike[str] | None = None,
    html_dir: str | os.PathLike[str] | None = None,
    repo_url: str | None = None,
) -> dict[str, Path]:
    """Write the reports of ``results_dir`` into ``out_dir``; return what was written, by name.

    Keys: ``junit`` (merged), ``summary``, ``pr_comment`` (and ``step_summary`` when
    ``$GITHUB_STEP_SUMMARY`` is set), ``latency:<cell>`` (one PNG per cell, against ``base_dir``'s
    same cell when it has one), ``pareto:<model>:<target>`` (accuracy vs latency across recipes, when a
    model and target have two or more points; its table is appended to ``summary.md``), and with
    ``history``: ``history`` (the store, appended to; each candidate with ``baselines_dir``'s baseline)
    and ``history_plot``, and with ``html_dir`` too the history dashboard (``dashboard`` and one
    ``dashboard:<cell>:<backend>`` page each: ``report/dashboard.py``; commits link to ``repo_url``,
    default ``$GITHUB_SERVER_URL/$GITHUB_REPOSITORY``).
    """
    if html_dir is not None and history is None:
        raise ValueError("html_dir draws the history: give history too")
    from edgematrix.report.pareto import write_pareto_reports
    from edgematrix.report.plots import plot_history, plot_latency_distributions

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"junit": merge_junit(results_dir, out / "junit.xml")}
    paths.update(write_summary(results_dir, out, base_dir=base_dir, baselines_dir=baselines_dir))
    for cell_dir in find_cells(results_dir):
        bench = cell_dir / "benchmark.json"
        if not bench.is_file():
            continue
        base = Path(base_dir) / cell_dir.name / "benchmark.json" if base_dir is not None else None
        paths[f"latency:{cell_dir.name}"] = plot_latency_distributions(
            bench, out / "plots" / f"{cell_dir.name}-latency.png", base if base is not None and base.is_file() else None
        )
    pareto_paths, pareto_md = write_pareto_reports(results_dir, out / "plots")
    paths.update(pareto_paths)
    if pareto_md:  # accuracy-vs-latency across the recipes of each model and target
        summary_md = paths["summary"].read_text(encoding="utf-8").rstrip("\n")
        paths["summary"].write_text(f"{summary_md}\n\n{pareto_md}", encoding="utf-8")
    if history is not None:
        from edgematrix.report.history import append_run

        append_run(history, results_dir, baselines_dir=baselines_dir)
        paths["history"] = Path(history)
        paths["history_plot"] = plot_history(history, out / "plots" / "history.png")
        if html_dir is not None:
            from edgematrix.report.dashboard import repo_url_from_env, write_dashboard

            paths.update(write_dashboard(history, html_dir, repo_url=repo_url or repo_url_from_env()))
    return paths

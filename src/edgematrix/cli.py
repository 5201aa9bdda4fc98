"""``edgematrix`` command line (thin over the library).

Exit codes: 0 success, 1 a gate failed, 2 usage or input error (bad matrix, missing data,
unreachable target...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgematrix.errors import EdgeMatrixError, GateFailure

EXIT_OK, EXIT_GATE, EXIT_INPUT = 0, 1, 2


def _cmd_list(args: argparse.Namespace) -> int:
    from edgematrix.matrix.loader import load_matrix

    m = load_matrix(args.matrix)
    for cell in m.cells.values():
        print(f"{cell.name:<16} {cell.description}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from edgematrix.matrix.loader import load_matrix

    m = load_matrix(args.matrix)
    print(
        f"{args.matrix}: {len(m.targets)} targets, {len(m.models)} models, {len(m.recipes)} recipes, {len(m.cells)} cells — valid"
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from edgematrix.bench.cell import CellOptions, run_cell
    from edgematrix.matrix.loader import load_matrix

    m = load_matrix(args.matrix)
    cell = m.cell(args.cell)
    opts = CellOptions(
        runner=args.runner,
        results_dir=Path(args.results),
        cache_dir=Path(args.cache),
        baselines_dir=Path(args.matrix) / "baselines",
        data_root=args.data_root,
        update_baseline=args.update_baseline,
        progress=not args.no_progress,
        ab_base=Path(args.ab_base) if args.ab_base else None,
    )
    run_cell(cell, opts)
    return EXIT_OK


def _cmd_score(args: argparse.Namespace) -> int:
    from edgematrix.metrics.tusimple import score_files

    result = score_files(args.pred, args.gt)
    if result.missing:
        print(f"note: {result.missing} ground-truth image(s) had no prediction; scored as missed (FN)", file=sys.stderr)
    print(json.dumps(result.as_official()))
    return EXIT_OK


def _fraction(text: str, what: str) -> float:
    """``"5%"`` or ``"0.05"`` -> 0.05; a bare number of 1 or more is refused as ambiguous."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise EdgeMatrixError(f"{what} must be a fraction (0.05) or a percentage (5%); got {text!r}") from None
    if not raw.endswith("%") and value >= 1:
        raise EdgeMatrixError(f"{what} {text!r} is ambiguous: write {value:g}% or {value / 100:g}")
    return value


def _cmd_gate_compare(args: argparse.Namespace) -> int:
    from edgematrix.gates.compare import compare_benchmark_files

    min_effect = _fraction(args.min_effect, "--min-effect")
    confidence = _fraction(args.confidence, "--confidence")
    try:
        budget = float(args.accuracy_budget)
    except ValueError:
        raise EdgeMatrixError(f"--accuracy-budget must be a number of points; got {args.accuracy_budget!r}") from None
    result = compare_benchmark_files(
        args.base, args.cand, min_effect=min_effect, confidence=confidence, accuracy_budget=budget
    )
    width = max(len(row.name) for row in result.rows)
    level = f"{confidence:.0%}"
    for row in result.rows:
        lat = row.latency
        delta = row.accuracy_delta
        accuracy = "accuracy n/a" if delta is None else f"accuracy {delta:+.2f} pts"
        print(
            f"{row.name:<{width}}  ratio {lat.ratio:.3f}  {level} CI {lat.ci_low:.3f}..{lat.ci_high:.3f}  "
            f"p={lat.p_value:.2g}  {accuracy}  {'FAIL' if row.failed else 'ok'}: {row.verdict}"
        )
    for name in result.only_in_base:
        print(f"{name:<{width}}  only in base ({args.base}): not compared")
    for name in result.only_in_candidate:
        print(f"{name:<{width}}  only in candidate ({args.cand}): not compared")
    settings = f"min effect {min_effect:.1%}, confidence {level}, accuracy budget {budget:.2f} pts"
    if result.failed:
        details = "; ".join(
            f"{row.name}: {row.latency.message if row.latency.failed else row.accuracy_message}"
            + (f"; {row.accuracy_message}" if row.latency.failed and row.accuracy_status == "failed" else "")
            for row in result.failures
        )
        raise GateFailure(f"{len(result.failures)} of {len(result.rows)} benchmark(s) failed ({settings}): {details}")
    print(f"{len(result.rows)} benchmark(s) compared, none failed ({settings})")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from edgematrix.report.cli_report import run_report

    written = run_report(
        Path(args.results),
        Path(args.out),
        base_dir=Path(args.base) if args.base else None,
        history=Path(args.history) if args.history else None,
        baselines_dir=Path(args.baselines) if args.baselines else None,
    )
    for key, path in written.items():
        print(f"{key}: {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgematrix", description=__doc__.splitlines()[0])
    p.add_argument("--matrix", default="matrix", help="matrix folder (default: matrix)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the cells of the matrix").set_defaults(func=_cmd_list)
    sub.add_parser("validate", help="validate the matrix TOML files").set_defaults(func=_cmd_validate)

    run = sub.add_parser("run", help="run one cell: build, measure, gate, write results/<cell>/")
    run.add_argument("cell")
    run.add_argument("--runner", default="auto", choices=["auto", "local", "docker", "remote", "emulated"])
    run.add_argument("--results", default="results", help="results folder (default: results)")
    run.add_argument("--cache", default=".cache/edgematrix", help="cache for data, checkpoints, models")
    run.add_argument("--data-root", default=None, help="dataset folder; overrides the model's data_root")
    run.add_argument("--update-baseline", action="store_true", help="write matrix/baselines/<cell>.json from this run")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--ab-base",
        default=None,
        metavar="PATH",
        help="A/B mode: the base branch's candidate (.onnx, or that run's results/<cell>/), measured interleaved",
    )
    run.set_defaults(func=_cmd_run)

    score = sub.add_parser("score", help="score predictions with a task metric")
    score_sub = score.add_subparsers(dest="metric", required=True)
    tus = score_sub.add_parser("tusimple", help="TuSimple Accuracy/FP/FN, as the official evaluator")
    tus.add_argument("pred", help="predictions, one JSON object per line (raw_file, lanes, run_time)")
    tus.add_argument("gt", help="ground truth, one JSON object per line (raw_file, lanes, h_samples)")
    tus.set_defaults(func=_cmd_score)

    rep = sub.add_parser("report", help="merge results/*: JUnit, markdown summary + PR comment, plots, history")
    rep.add_argument("--results", default="results", help="folder of results/<cell>/ (default: results)")
    rep.add_argument("--out", default="report", help="where to write the report (default: report)")
    rep.add_argument("--base", default=None, help="the base branch's results folder: deltas and latency CIs")
    rep.add_argument("--history", default=None, help="append-only JSON-lines history to append to and plot")
    rep.add_argument("--baselines", default=None, help="matrix/baselines to compare with when there is no --base")
    rep.set_defaults(func=_cmd_report)

    gate = sub.add_parser("gate", help="regression gates on benchmark results")
    gate_sub = gate.add_subparsers(dest="gate", required=True)
    cmp = gate_sub.add_parser(
        "compare",
        help="compare two pytest-benchmark JSON files: latency (statistical) and accuracy per benchmark",
        description="Exit 0: no gate failed; 1: a benchmark regressed (latency or accuracy); 2: bad input "
        "(unreadable file, toolchain mismatch, bad option).",
    )
    cmp.add_argument("base", help="the base benchmark.json")
    cmp.add_argument("cand", help="the candidate benchmark.json")
    cmp.add_argument("--min-effect", default="5%", help="smallest slowdown that fails, 5%% or 0.05 (default 5%%)")
    cmp.add_argument("--confidence", default="0.95", help="confidence level, 0.95 or 95%% (default 0.95)")
    cmp.add_argument(
        "--accuracy-budget", default="0.5", help="accuracy points the candidate may lose vs the base (default 0.5)"
    )
    cmp.set_defaults(func=_cmd_gate_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GateFailure as e:
        print(f"edgematrix: gate failed: {e}", file=sys.stderr)
        return EXIT_GATE
    except EdgeMatrixError as e:
        print(f"edgematrix: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("edgematrix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

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
    run.set_defaults(func=_cmd_run)

    score = sub.add_parser("score", help="score predictions with a task metric")
    score_sub = score.add_subparsers(dest="metric", required=True)
    tus = score_sub.add_parser("tusimple", help="TuSimple Accuracy/FP/FN, as the official evaluator")
    tus.add_argument("pred", help="predictions, one JSON object per line (raw_file, lanes, run_time)")
    tus.add_argument("gt", help="ground truth, one JSON object per line (raw_file, lanes, h_samples)")
    tus.set_defaults(func=_cmd_score)
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

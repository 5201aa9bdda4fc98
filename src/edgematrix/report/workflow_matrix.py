"""The CI job matrix, generated from ``matrix/`` (stdlib only: CI runs it before any install).

Every cell of the matrix runs in CI on the runners its target names in ``runner_labels``:

- targets on GitHub-hosted runners (no ``self-hosted`` label) get one job per cell;
- targets on self-hosted device runners get one job per target that runs the target's cells one
  after another, so a board is held by one job at a time (the workflows add a concurrency group
  per target).

``python3 -m edgematrix.report.workflow_matrix`` prints the matrices as JSON;
``--github-output`` prints ``key=value`` lines for ``$GITHUB_OUTPUT`` that a workflow reads back
with ``fromJSON(needs.<job>.outputs.hosted)`` / ``.device``. Because the workflows build their job
matrix from this output, a cell added to ``matrix/cells.toml`` runs in CI without editing YAML.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgematrix.matrix.listing import list_sessions

SELF_HOSTED = "self-hosted"


@dataclass(frozen=True)
class TargetJobs:
    """The cells of one target and the labels of the runners that run them."""

    target: str
    cells: tuple[str, ...]
    runner_labels: tuple[str, ...]

    @property
    def self_hosted(self) -> bool:
        return SELF_HOSTED in self.runner_labels


EVENTS = ("pull_request", "nightly")


def targets_with_cells(root: str | Path = "matrix", event: str = "nightly") -> dict[str, TargetJobs]:
    """Per target (in matrix order): its cells that run on ``event`` and its runner labels.

    ``pull_request`` takes the cells with ``schedule = "pull_request"`` (the default); ``nightly``
    takes every cell.

    Raises ValueError, naming the target and what to add, when a target that has cells has no
    usable ``runner_labels``.
    """
    cells: dict[str, list[str]] = {}
    labels: dict[str, tuple[str, ...]] = {}
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; choose {' or '.join(EVENTS)}")
    for info in list_sessions(root):
        if event == "pull_request" and info.schedule != "pull_request":
            continue
        if info.target not in labels:
            raw = info.target_table.get("runner_labels")
            if not raw or not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
                raise ValueError(
                    f"{root}: target {info.target!r} has cells ({info.name}, ...) but runner_labels is {raw!r}; "
                    f'set runner_labels = ["ubuntu-24.04"] for a GitHub-hosted runner or '
                    f'["self-hosted", "<board label>"] for a device runner in targets.toml'
                )
            labels[info.target] = tuple(raw)
        cells.setdefault(info.target, []).append(info.name)
    return {t: TargetJobs(t, tuple(cells[t]), labels[t]) for t in cells}


def job_matrices(
    root: str | Path = "matrix", event: str = "pull_request"
) -> dict[str, dict[str, list[dict[str, object]]]]:
    """The ``strategy.matrix`` values of the workflows' cell jobs.

    ``hosted``: one entry per cell ``{"cell", "target", "runner_labels"}``;
    ``device``: one entry per self-hosted target ``{"target", "cells", "runner_labels"}``.
    """
    hosted: list[dict[str, object]] = []
    device: list[dict[str, object]] = []
    for t in targets_with_cells(root, event).values():
        if t.self_hosted:
            device.append({"target": t.target, "cells": list(t.cells), "runner_labels": list(t.runner_labels)})
        else:
            hosted.extend(
                {"cell": cell, "target": t.target, "runner_labels": list(t.runner_labels)} for cell in t.cells
            )
    return {"hosted": {"include": hosted}, "device": {"include": device}}


def github_output_lines(matrices: dict[str, dict[str, list[dict[str, object]]]]) -> list[str]:
    """``key=value`` lines for ``$GITHUB_OUTPUT`` (single-line JSON; ``has_*`` guard empty matrices)."""
    lines = []
    for key, value in matrices.items():
        lines.append(f"{key}={json.dumps(value, separators=(',', ':'))}")
        lines.append(f"has_{key}={'true' if value['include'] else 'false'}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m edgematrix.report.workflow_matrix", description=__doc__.splitlines()[0]
    )
    p.add_argument("--matrix", default="matrix", help="matrix folder (default: matrix)")
    p.add_argument(
        "--github-output", action="store_true", help="print key=value lines for $GITHUB_OUTPUT instead of JSON"
    )
    p.add_argument(
        "--event",
        choices=EVENTS,
        default="pull_request",
        help="pull_request: cells scheduled for every PR; nightly: every cell (default: pull_request)",
    )
    args = p.parse_args(argv)
    try:
        matrices = job_matrices(args.matrix, args.event)
    except ValueError as e:
        print(f"workflow_matrix: {e}", file=sys.stderr)
        return 2
    if args.github_output:
        print("\n".join(github_output_lines(matrices)))
    else:
        print(json.dumps(matrices, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

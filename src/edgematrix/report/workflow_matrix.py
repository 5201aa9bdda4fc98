"""The CI job matrix, generated from ``matrix/`` (stdlib only: CI runs it before any install).

Every cell of the matrix runs in CI on the runners its target names in ``runner_labels``:

- targets on the GitHub-hosted runner (``runner_labels = ["ubuntu-24.04"]``) get one job per cell;
  the workflows write that label literally (``runs-on: ubuntu-24.04``), never a label from here;
- targets on self-hosted device runners (``["self-hosted", "<board>"]``) get one job per target that
  runs the target's cells one after another, so a board is held by one job at a time (the workflows
  add a concurrency group per target). Only device.yml and nightly.yml run them, from the default
  branch's copy of the workflows and of ``matrix/`` (docs/security.md);
- any other labels are an error: a label that is neither the hosted runner nor ``self-hosted`` could
  name a board (``["gpu-x86"]``) while looking like a hosted job.

``python3 -m edgematrix.report.workflow_matrix`` prints the matrices as JSON;
``--github-output`` prints ``key=value`` lines for ``$GITHUB_OUTPUT`` that a workflow reads back
with ``fromJSON(needs.<job>.outputs.hosted)`` / ``.device``. Because the workflows build their job
matrix from this output, a cell added to ``matrix/cells.toml`` runs in CI without editing YAML.

``--approve`` (device.yml) decides which commit the device jobs run: the pushed commit of ``main``,
or, for ``pull_request_target``, the head commit a maintainer labelled ``run-device-cells`` -- after
checking with GitHub's API that the labeller may write to the repository and that the pull request's
head is still that commit (a push after the label is refused: it is not what was reviewed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgematrix.matrix.listing import list_sessions

SELF_HOSTED = "self-hosted"
#: the GitHub-hosted runner the workflows name literally (``runs-on: ubuntu-24.04``)
HOSTED_RUNNER = "ubuntu-24.04"
#: the label a maintainer applies to run a pull request's reviewed head commit on the boards
APPROVAL_LABEL = "run-device-cells"
#: repository permissions (GitHub's ``permission`` field) whose holders may approve board runs
APPROVERS = ("admin", "maintain", "write")
_CELL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


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
            if raw != [HOSTED_RUNNER] and SELF_HOSTED not in raw:
                raise ValueError(
                    f"{root}: target {info.target!r} has runner_labels {raw!r}: neither the GitHub-hosted runner "
                    f'["{HOSTED_RUNNER}"] nor a self-hosted device runner ["{SELF_HOSTED}", "<board label>"]; '
                    "set one of them in targets.toml"
                )
            labels[info.target] = tuple(raw)
        if not _CELL_NAME.match(info.name):
            raise ValueError(
                f"{root}: cell name {info.name!r} (target {info.target!r}) must be letters, digits, '_', '.', '-'; "
                "it becomes a nox session, an artifact name and a shell word"
            )
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


def _api(url: str, token: str) -> dict:
    request = urllib.request.Request(
        url,
        headers={
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {token}",
            "X-GitHub-Api-Version": "2022-11-28",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"GitHub API {url} answered {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"GitHub API {url} failed: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"GitHub API {url} answered {type(data).__name__}, expected an object")
    return data


def approved_commit(env: Mapping[str, str]) -> dict[str, str]:
    """The commit device jobs may run for this event (``sha``), from the runner's environment.

    ``push`` / ``workflow_dispatch`` / ``schedule``: ``GITHUB_SHA``, and only on ``refs/heads/main``.
    ``pull_request_target``: the head ``LABELLED_SHA`` of pull request ``PR_NUMBER`` when ``LABEL`` is
    the approval label, ``SENDER`` (who applied it) may write to ``GITHUB_REPOSITORY``, the pull
    request is open and its head is still that commit (GitHub's API, token ``GH_TOKEN``).
    Raises ValueError saying why the boards must not run.
    """
    event = env.get("EVENT_NAME", "")
    if event in ("push", "workflow_dispatch", "schedule"):
        if env.get("GITHUB_REF") != "refs/heads/main":
            raise ValueError(f"{event} on {env.get('GITHUB_REF')!r}: device cells run for refs/heads/main only")
        sha = env.get("GITHUB_SHA", "")
        if not _SHA.match(sha):
            raise ValueError(f"GITHUB_SHA {sha!r} is not a commit SHA")
        return {"sha": sha}
    if event != "pull_request_target":
        raise ValueError(f"event {event!r} never runs device cells (push to main, workflow_dispatch, schedule, label)")
    if env.get("LABEL") != APPROVAL_LABEL:
        raise ValueError(f"label {env.get('LABEL')!r} is not the approval label {APPROVAL_LABEL!r}")
    sha, number, sender = env.get("LABELLED_SHA", ""), env.get("PR_NUMBER", ""), env.get("SENDER", "")
    if not _SHA.match(sha) or not number.isdigit() or not sender:
        raise ValueError(f"incomplete event: head SHA {sha!r}, pull request {number!r}, labelled by {sender!r}")
    api = env.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    repo, token = env.get("GITHUB_REPOSITORY", ""), env.get("GH_TOKEN", "")
    if not re.match(r"^[\w.-]+/[\w.-]+$", repo) or not token:
        raise ValueError(f"GITHUB_REPOSITORY {repo!r} or GH_TOKEN missing")
    permission = _api(f"{api}/repos/{repo}/collaborators/{sender}/permission", token).get("permission")
    if permission not in APPROVERS:
        raise ValueError(
            f"{sender} applied {APPROVAL_LABEL!r} with {permission!r} permission on {repo}; only {', '.join(APPROVERS)} "
            "may approve running a pull request on the boards"
        )
    pull = _api(f"{api}/repos/{repo}/pulls/{number}", token)
    head = (pull.get("head") or {}).get("sha")
    if pull.get("state") != "open":
        raise ValueError(f"pull request #{number} is {pull.get('state')!r}, not open")
    if head != sha:
        raise ValueError(
            f"pull request #{number} moved from {sha} (labelled) to {head}: that commit was not reviewed; "
            f"review it and apply {APPROVAL_LABEL!r} again"
        )
    return {"sha": sha}


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
    p.add_argument(
        "--approve",
        action="store_true",
        help="print sha=<commit the device jobs run> for this event (device.yml; reads the runner's environment)",
    )
    args = p.parse_args(argv)
    if args.approve:
        try:
            approved = approved_commit(os.environ)
        except ValueError as e:
            print(f"::error::workflow_matrix: not approved: {e}", file=sys.stderr)
            return 2
        print("\n".join(f"{k}={v}" for k, v in approved.items()))
        return 0
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

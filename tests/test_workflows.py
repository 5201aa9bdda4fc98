"""The GitHub workflows: schema-valid, zizmor-clean, SHA-pinned, every cell in CI, no fork code on a board.

The workflows build their cell jobs from ``python3 -m edgematrix.report.workflow_matrix``. These tests
run that step exactly as written in the YAML, expand the job matrices from its output and evaluate
the jobs' ``if:`` / ``runs-on:`` / ``env:`` expressions with a small evaluator of GitHub's expression
language, so they check what CI would run rather than what the YAML looks like.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgematrix.matrix.listing import list_sessions
from edgematrix.report import workflow_matrix

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
MATRIX = REPO / "matrix"
EXPECTED_FILES = {"pull_request.yml", "pr_comment.yml", "nightly.yml"}
INSTALL_HINT = "install the test dependency group: `python3 -m pip install --group test` (or run `nox -s tests`)"
MARKER = "<!-- edgematrix-report -->"
APPROVAL_LABEL = "run-device-cells"
REPOSITORY = "edge-org/edgematrix"
# write scopes a job may hold, and why: everything else stays read-only
ALLOWED_WRITES = {
    ("pr_comment.yml", "comment", "pull-requests"),  # the sticky comment
    ("nightly.yml", "report", "contents"),  # push to the edgematrix-history branch
}


# --------------------------------------------------------------------------------------------------
# tools and files


def _tool(name: str) -> str:
    """The test group's console script: next to this interpreter first (nox venv), then PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; {INSTALL_HINT}")
    return found


def _yaml_load(text: str) -> Any:
    try:
        from ruamel.yaml import YAML  # installed with check-jsonschema (test group); YAML 1.2: `on` stays a string
    except ImportError:
        pytest.fail(f"ruamel.yaml (a dependency of check-jsonschema) is not installed; {INSTALL_HINT}")
    return YAML(typ="safe", pure=True).load(text)


def _workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict]:
    return {p.name: _yaml_load(p.read_text()) for p in _workflow_files()}


def _triggers(wf: dict) -> dict:
    on = wf["on"]
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return dict(on)


def _steps(wf: dict) -> Iterator[tuple[str, dict]]:
    for job_id, job in wf["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


# --------------------------------------------------------------------------------------------------
# a small evaluator of GitHub Actions expressions (the subset these workflows use)

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>&&|\|\||==|!=|[!()\[\],.*])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))"
)


class _Filtered(list):
    """The result of ``.*``: a following property applies to every element."""


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()  # GitHub compares strings ignoring case
    return bool(a == b)


def _prop(value: Any, key: Any) -> Any:
    if isinstance(value, _Filtered):
        return _Filtered(_prop(v, key) for v in value)
    if isinstance(value, dict):
        return next((v for k, v in value.items() if isinstance(key, str) and k.lower() == key.lower()), None)
    if isinstance(value, list) and isinstance(key, int | float) and 0 <= int(key) < len(value):
        return value[int(key)]
    return None


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, list):
        return any(_eq(x, needle) for x in haystack)
    return isinstance(haystack, str) and str(needle).lower() in haystack.lower()


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "contains": _contains,
    "startswith": lambda s, p: str(s).lower().startswith(str(p).lower()),
    "join": lambda arr, sep=",": sep.join(str(x) for x in arr) if isinstance(arr, list) else str(arr),
    "fromjson": json.loads,
    "tojson": json.dumps,
    "success": lambda: True,
    "always": lambda: True,
    "failure": lambda: False,
    "cancelled": lambda: False,
}


class _Expr:
    def __init__(self, text: str, ctx: dict) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ValueError(f"cannot parse expression at {text[pos:]!r}")
            kind = m.lastgroup or ""
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0
        self.ctx = {k.lower(): v for k, v in ctx.items()}

    def _peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        tok = self.toks[self.i]
        if expected is not None and tok[1] != expected:
            raise ValueError(f"expected {expected!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def value(self) -> Any:
        v = self._or()
        if self.i != len(self.toks):
            raise ValueError(f"trailing tokens {self.toks[self.i :]}")
        return v

    def _or(self) -> Any:
        v = self._and()
        while self._peek() == "||":
            self._take()
            rhs = self._and()
            v = v or rhs
        return v

    def _and(self) -> Any:
        v = self._cmp()
        while self._peek() == "&&":
            self._take()
            rhs = self._cmp()
            v = v and rhs
        return v

    def _cmp(self) -> Any:
        v = self._unary()
        if self._peek() in ("==", "!="):
            op = self._take()[1]
            rhs = self._unary()
            return _eq(v, rhs) if op == "==" else not _eq(v, rhs)
        return v

    def _unary(self) -> Any:
        if self._peek() == "!":
            self._take()
            return not self._unary()
        return self._postfix()

    def _postfix(self) -> Any:
        v = self._primary()
        while self._peek() in (".", "["):
            if self._take()[1] == ".":
                if self._peek() == "*":
                    self._take()
                    v = _Filtered(v.values() if isinstance(v, dict) else v or [])
                else:
                    v = _prop(v, self._take()[1])
            else:
                key = self._or()
                self._take("]")
                v = _prop(v, key)
        return v

    def _primary(self) -> Any:
        kind, text = self._take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text)
        if text == "(":
            v = self._or()
            self._take(")")
            return v
        if kind != "name":
            raise ValueError(f"unexpected {text!r}")
        if text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text]
        if self._peek() == "(":
            self._take()
            args = []
            while self._peek() != ")":
                args.append(self._or())
                if self._peek() == ",":
                    self._take()
            self._take(")")
            return _FUNCTIONS[text.lower()](*args)
        return self.ctx.get(text.lower())


def _evaluate(expr: str, ctx: dict) -> Any:
    """A job's ``if:`` (with or without ``${{ }}``)."""
    expr = expr.strip()
    if expr.startswith("${{") and expr.endswith("}}"):
        expr = expr[3:-2]
    return _Expr(expr, ctx).value()


def _render(value: Any, ctx: dict) -> Any:
    """A YAML value with ``${{ ... }}`` in it: a lone expression keeps its type, otherwise a string."""
    if not isinstance(value, str):
        return value
    parts = re.split(r"\$\{\{(.*?)\}\}", value)
    if len(parts) == 3 and parts[0] == parts[2] == "":
        return _Expr(parts[1], ctx).value()
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            v = _Expr(part, ctx).value()
            out.append("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
        else:
            out.append(part)
    return "".join(out)


def test_expression_evaluator_follows_github_semantics() -> None:
    ctx = {"github": {"event": {"pull_request": {"labels": [{"name": "Run-Device-Cells"}]}}, "repository": "a/B"}}
    assert _evaluate("contains(github.event.pull_request.labels.*.name, 'run-device-cells')", ctx) is True
    assert _evaluate("github.repository == 'A/b' && !(github.event.x == 'y')", ctx) is True
    assert _evaluate("github.event.missing.deeper || 'fallback'", ctx) == "fallback"
    assert _render("a-${{ join(fromJSON('[1, 2]'), ' ') }}-${{ github.nothing }}", ctx) == "a-1 2-"


# --------------------------------------------------------------------------------------------------
# CI as GitHub would run it: the matrix job's step, then the cell jobs it expands to


def _run_step(step: dict, tmp_path: Path) -> dict[str, str]:
    """Run a ``run:`` step like GitHub's bash (``-eo pipefail``) and return what it wrote to $GITHUB_OUTPUT."""
    out = tmp_path / f"github_output_{os.getpid()}_{id(step)}"
    out.write_text("")
    env = {
        **os.environ,
        **{k: str(v) for k, v in (step.get("env") or {}).items()},
        "GITHUB_OUTPUT": str(out),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"step {step.get('id') or step['run']!r} failed:\n{proc.stderr}"
    outputs = {}
    for line in out.read_text().splitlines():
        key, sep, value = line.partition("=")
        assert sep, f"unexpected $GITHUB_OUTPUT line {line!r}"
        outputs[key] = value
    return outputs


def _job_outputs(job: dict, tmp_path: Path) -> dict[str, str]:
    steps: dict[str, dict] = {}
    for step in job["steps"]:
        if "run" in step:
            outputs = _run_step(step, tmp_path)
            if "id" in step:
                steps[step["id"]] = {"outputs": outputs}
    return {k: _render(v, {"steps": steps}) for k, v in job.get("outputs", {}).items()}


def _expand_matrix(matrix: Any) -> list[dict]:
    if not matrix:
        return [{}]
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] if axes else []
    return combos + list(matrix.get("include", []))


def _nox_sessions(command: str, env: dict[str, str]) -> list[str]:
    """The session names a ``run:`` hands to ``nox -s`` (after the shell expands the step's env)."""
    expanded = re.sub(r'"?\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?"?', lambda m: env.get(m.group(1), m.group(0)), command)
    m = re.search(r"\bnox -s ((?:(?!--|&&|;|\|).)+)", expanded)
    return m.group(1).split() if m else []


class CellJob:
    """One expanded job of a workflow: where it runs, what it runs, under which ``if:``."""

    def __init__(self, workflow: str, job_id: str, job: dict, matrix: dict, needs: dict) -> None:
        self.workflow, self.job_id, self.job, self.matrix = workflow, job_id, job, matrix
        self.ctx = {"matrix": matrix, "needs": needs, "strategy": {}}
        labels = _render(job["runs-on"], self.ctx)
        self.runs_on = [labels] if isinstance(labels, str) else list(labels)
        self.sessions: list[str] = []
        for step in job["steps"]:
            if "nox -s" in step.get("run", ""):
                env = {k: str(_render(v, self.ctx)) for k, v in (step.get("env") or {}).items()}
                self.sessions += _nox_sessions(step["run"], env)
                self.run = step["run"]

    @property
    def self_hosted(self) -> bool:
        return "self-hosted" in self.runs_on

    def runs_for(self, github: dict) -> bool:
        cond = self.job.get("if")
        return True if cond is None else bool(_evaluate(str(cond), {**self.ctx, "github": github}))


@pytest.fixture(scope="module")
def cell_jobs(workflows: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[CellJob]]:
    """Per workflow: every expanded job that runs a nox cell session."""
    tmp = tmp_path_factory.mktemp("gh")
    out: dict[str, list[CellJob]] = {}
    for name, wf in workflows.items():
        needs_outputs: dict[str, dict] = {}
        jobs: list[CellJob] = []
        for job_id, job in wf["jobs"].items():
            if not any("nox -s" in s.get("run", "") and "lint" not in s["run"] for s in job.get("steps", [])):
                continue
            needs = job.get("needs", [])
            for dep in [needs] if isinstance(needs, str) else needs:
                if dep not in needs_outputs:
                    needs_outputs[dep] = {"outputs": _job_outputs(wf["jobs"][dep], tmp)}
            ctx = {"needs": needs_outputs}
            matrix = _render((job.get("strategy") or {}).get("matrix"), ctx)
            jobs += [CellJob(name, job_id, job, m, needs_outputs) for m in _expand_matrix(matrix)]
        out[name] = jobs
    return out


def _push(ref: str = "refs/heads/main") -> dict:
    return {"event_name": "push", "repository": REPOSITORY, "ref": ref, "event": {}}


def _pr(action: str, fork: bool, label: str | None = None, pr_labels: tuple[str, ...] = ()) -> dict:
    head = "mallory/edgematrix" if fork else REPOSITORY
    event: dict[str, Any] = {
        "action": action,
        "pull_request": {
            "number": 7,
            "head": {"repo": {"full_name": head}, "sha": "0" * 40},
            "labels": [{"name": n} for n in (*pr_labels, *([label] if label else []))],
        },
    }
    if label:
        event["label"] = {"name": label}
    return {"event_name": "pull_request", "repository": REPOSITORY, "ref": "refs/pull/7/merge", "event": event}


FORK_EVENTS = {
    "fork opened": _pr("opened", fork=True),
    "fork pushed again": _pr("synchronize", fork=True),
    "fork reopened": _pr("reopened", fork=True),
    # the approval label stays on the PR, but a later push is not what the maintainer reviewed
    "fork pushed after approval": _pr("synchronize", fork=True, pr_labels=(APPROVAL_LABEL,)),
    "fork given another label": _pr("labeled", fork=True, label="documentation"),
    "fork given another label after approval": _pr(
        "labeled", fork=True, label="documentation", pr_labels=(APPROVAL_LABEL,)
    ),
}


# --------------------------------------------------------------------------------------------------
# (1) schema, (2) zizmor


def test_the_three_workflows_replace_ci_yml() -> None:
    names = {p.name for p in _workflow_files()}
    assert names >= EXPECTED_FILES and "ci.yml" not in names


def test_workflows_validate_against_githubs_schema() -> None:
    files = [str(p) for p in _workflow_files()]
    proc = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


def _zizmor(*args: str) -> list[dict]:
    proc = subprocess.run(
        [_tool("zizmor"), "--offline", "--no-config", "--format", "json", *args, str(WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_CONFIG")},
    )
    try:
        findings = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"zizmor printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for name in EXPECTED_FILES:  # it really audited the files
        assert f"completed .github/workflows/{name}" in proc.stderr or name in proc.stderr, proc.stderr
    return findings


def _where(finding: dict) -> str:
    files = re.findall(r"[\w.-]+\.ya?ml", json.dumps(finding["locations"]))
    return files[0] if files else "?"


def test_zizmor_reports_no_medium_or_high_findings() -> None:
    findings = _zizmor("--persona", "regular")
    serious = [
        f"{f['ident']} ({f['determinations']['severity']}) in {_where(f)}"
        for f in findings
        if f["determinations"]["severity"] in ("Medium", "High")
    ]
    assert serious == []


def test_zizmor_ignores_only_the_reviewed_workflow_run_trigger() -> None:
    # pr_comment.yml needs workflow_run (write token, default-branch code, artifacts as data); that is
    # the one finding silenced in the YAML. Any other ignore comment shows up here.
    findings = _zizmor("--persona", "regular", "--no-ignores")
    serious = {(f["ident"], _where(f)) for f in findings if f["determinations"]["severity"] in ("Medium", "High")}
    assert serious == {("dangerous-triggers", "pr_comment.yml")}


# --------------------------------------------------------------------------------------------------
# (3) every cell in CI, on its runners; no fork code on a board


@pytest.mark.parametrize("workflow", ["pull_request.yml", "nightly.yml"])
def test_every_cell_runs_once_on_its_targets_runners(cell_jobs: dict[str, list[CellJob]], workflow: str) -> None:
    sessions = {s.name: s for s in list_sessions(MATRIX)}
    ran = [cell for job in cell_jobs[workflow] for cell in job.sessions]
    # nightly: every matrix cell, once; pull requests: every cell not scheduled nightly-only, once
    wanted = [n for n, s in sessions.items() if workflow == "nightly.yml" or s.schedule == "pull_request"]
    assert sorted(ran) == sorted(wanted)
    for job in cell_jobs[workflow]:
        for cell in job.sessions:
            assert job.runs_on == sessions[cell].target_table["runner_labels"], (cell, job.runs_on)


@pytest.mark.parametrize("workflow", ["pull_request.yml", "nightly.yml"])
def test_cell_jobs_upload_results_and_hosted_jobs_use_the_cpu_torch_index(
    workflows: dict[str, dict], cell_jobs: dict[str, list[CellJob]], workflow: str
) -> None:
    wf = workflows[workflow]
    names = []
    for job in cell_jobs[workflow]:
        uploads = [s for s in job.job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
        assert len(uploads) == 1, job.job_id
        assert uploads[0]["with"]["path"] == "results/"
        assert uploads[0]["if"] == "${{ !cancelled() }}"  # gate failures still upload their results
        names.append(_render(uploads[0]["with"]["name"], job.ctx))
        assert names[-1].startswith("results-")  # the pattern pr_comment.yml and the nightly report download
        assert "-- --no-progress" in job.run
        index = {**wf.get("env", {}), **job.job.get("env", {})}.get("PIP_EXTRA_INDEX_URL")
        if job.self_hosted:  # the boards install their own (CUDA / vendor) wheels
            assert index is None, job.job_id
        else:
            assert index == "https://download.pytorch.org/whl/cpu", job.job_id
    assert len(names) == len(set(names)), "artifact names are unique"
    x86 = sorted(c for j in cell_jobs[workflow] if not j.self_hosted for c in j.sessions)
    every_x86 = sorted(i.name for i in list_sessions(MATRIX) if i.target == "x86_cpu")
    nightly_only = sorted(i.name for i in list_sessions(MATRIX) if i.schedule == "nightly")
    assert {"x86_cpu_fp32", "x86_cpu_int8"} <= set(x86)
    # pull requests run the cells scheduled for them; the nightly run takes every cell
    if workflow == "pull_request.yml":
        assert x86 == sorted(set(every_x86) - set(nightly_only))
    else:
        assert x86 == every_x86


@pytest.mark.parametrize("workflow", ["pull_request.yml", "nightly.yml"])
def test_one_job_per_board_at_a_time(cell_jobs: dict[str, list[CellJob]], workflow: str) -> None:
    device = [j for j in cell_jobs[workflow] if j.self_hosted]
    assert {j.matrix["target"] for j in device} == {"x86_gpu", "jetson", "ti", "driveos"}
    groups = set()
    for job in device:
        conc = job.job["concurrency"]
        assert conc["cancel-in-progress"] is False
        groups.add(_render(conc["group"], job.ctx))
        assert _render(conc["group"], job.ctx) == f"edgematrix-device-{job.matrix['target']}"  # shared by workflows
    assert len(groups) == len(device), "a group per target, so one run's jobs never queue behind each other"


def test_no_device_job_runs_for_fork_pull_requests(
    workflows: dict[str, dict], cell_jobs: dict[str, list[CellJob]]
) -> None:
    for name, wf in workflows.items():
        assert "pull_request_target" not in _triggers(wf), name
    pr_workflows = [n for n, wf in workflows.items() if "pull_request" in _triggers(wf)]
    assert pr_workflows == ["pull_request.yml"]
    device = [j for j in cell_jobs["pull_request.yml"] if j.self_hosted]
    assert device
    for job in device:
        for what, github in FORK_EVENTS.items():
            assert not job.runs_for(github), f"{job.job_id} ({job.matrix['target']}) runs when: {what}"
        # ...while branches of this repository, main, and a maintainer's approval of a fork's commit do
        assert job.runs_for(_pr("opened", fork=False))
        assert job.runs_for(_pr("synchronize", fork=False))
        assert job.runs_for(_push())
        assert job.runs_for(_pr("labeled", fork=True, label=APPROVAL_LABEL))
        # an unrelated label does not re-run the boards for a branch of this repository either
        assert not job.runs_for(_pr("labeled", fork=False, label="documentation"))
    # the approval label must start a run at all
    assert "labeled" in _triggers(workflows["pull_request.yml"])["pull_request"]["types"]
    for job in cell_jobs["pull_request.yml"]:
        if not job.self_hosted:
            assert job.runs_for(_pr("opened", fork=True)), "hosted cells run for forks"


def test_hosted_matrix_never_lists_a_self_hosted_runner() -> None:
    matrices = workflow_matrix.job_matrices(MATRIX)
    assert all("self-hosted" not in e["runner_labels"] for e in matrices["hosted"]["include"])
    assert all("self-hosted" in e["runner_labels"] for e in matrices["device"]["include"])


# --------------------------------------------------------------------------------------------------
# (4) pinned actions, permissions, credentials


def test_every_uses_is_pinned_to_a_commit_sha_with_a_version_comment(workflows: dict[str, dict]) -> None:
    seen = 0
    for path in _workflow_files():
        for line in path.read_text().splitlines():
            m = re.match(r"\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if m:
                seen += 1
                assert re.fullmatch(r"[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}", m.group(1)), (path.name, line)
                assert re.match(r"\s+# v\d+\.\d+\.\d+\s*$", m.group(2)), (path.name, line)
    parsed = [s["uses"] for wf in workflows.values() for _, s in _steps(wf) if "uses" in s]
    parsed += [j["uses"] for wf in workflows.values() for j in wf["jobs"].values() if "uses" in j]
    assert len(parsed) == seen > 0


def test_permissions_are_explicit_and_minimal(workflows: dict[str, dict]) -> None:
    writes = set()
    for name, wf in workflows.items():
        assert "permissions" in wf, f"{name}: no top-level permissions"
        top = wf["permissions"]
        assert isinstance(top, dict) and all(v in ("read", "none") for v in top.values()), (name, top)
        for job_id, job in wf["jobs"].items():
            perms = job.get("permissions", {})
            assert isinstance(perms, dict), (name, job_id, perms)
            writes |= {(name, job_id, scope) for scope, level in perms.items() if level == "write"}
    assert writes == ALLOWED_WRITES


def test_checkouts_do_not_persist_credentials(workflows: dict[str, dict]) -> None:
    checkouts = [
        (name, job_id, s)
        for name, wf in workflows.items()
        for job_id, s in _steps(wf)
        if "actions/checkout@" in str(s.get("uses"))
    ]
    assert checkouts
    for name, job_id, step in checkouts:
        assert step["with"]["persist-credentials"] is False, (name, job_id)


def test_pr_comment_runs_trusted_code_and_treats_artifacts_as_data(workflows: dict[str, dict]) -> None:
    wf = workflows["pr_comment.yml"]
    trigger = _triggers(wf)
    assert list(trigger) == ["workflow_run"]
    assert trigger["workflow_run"]["workflows"] == [workflows["pull_request.yml"]["name"]]
    assert trigger["workflow_run"]["types"] == ["completed"]
    assert wf["permissions"] == {}
    job = wf["jobs"]["comment"]
    assert job["permissions"] == {"contents": "read", "actions": "read", "pull-requests": "write"}
    assert "github.event.workflow_run.event == 'pull_request'" in job["if"]
    steps = job["steps"]
    for step in steps:
        if "actions/checkout@" in str(step.get("uses")):  # the default branch: no ref / repository of the PR
            assert set(step.get("with", {})) == {"persist-credentials"}
        for text in (step.get("run", ""), (step.get("with") or {}).get("script", "")):
            assert "${{" not in text, "event values reach scripts through env only"
            assert "GITHUB_ENV" not in text and "GITHUB_PATH" not in text
    (download,) = [s for s in steps if "actions/download-artifact@" in str(s.get("uses"))]
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    assert download["with"]["path"].startswith("${{ runner.temp }}/"), "artifacts land outside the workspace"
    report = next(s for s in steps if "edgematrix report" in s.get("run", ""))
    assert "--results" in report["run"] and "--out" in report["run"]
    (script,) = [s for s in steps if "actions/github-script@" in str(s.get("uses"))]
    code = script["with"]["script"]
    assert MARKER in code and "updateComment" in code and "createComment" in code
    assert "p.head.sha === HEAD_SHA" in code  # never comments a stale run onto a newer head


def test_nightly_runs_on_a_schedule_and_appends_the_history(workflows: dict[str, dict]) -> None:
    wf = workflows["nightly.yml"]
    trigger = _triggers(wf)
    assert set(trigger) == {"schedule", "workflow_dispatch"}
    assert re.fullmatch(r"[\d*/,-]+( [\d*/,-]+){4}", trigger["schedule"][0]["cron"])
    report = wf["jobs"]["report"]
    assert set(report["needs"]) == {"hosted-cells", "device-cells"}
    runs = "\n".join(s.get("run", "") for s in report["steps"])
    assert "edgematrix report --results results --out report --history history/results.jsonl" in runs
    assert "cmp -s -n" in runs  # append-only: the old history must be a prefix of the new
    assert any(
        "actions/upload-artifact@" in str(s.get("uses")) and s["with"]["path"] == "report/" for s in report["steps"]
    )


# --------------------------------------------------------------------------------------------------
# (5) workflow_matrix


def _expected_from_toml(root: Path, event: str = "pull_request") -> dict:
    """The job matrices, derived independently of edgematrix from the TOML files."""
    data: dict[str, Any] = {"targets": {}, "cells": []}
    for path in sorted(root.glob("*.toml")):
        d = tomllib.loads(path.read_text())
        data["targets"].update(d.get("targets", {}))
        data["cells"] += d.get("cells", [])
    hosted, device = [], []
    order: dict[str, list[str]] = {}
    for cell in data["cells"]:
        if event == "pull_request" and cell.get("schedule", "pull_request") != "pull_request":
            continue
        pattern = cell.get("name", "{target}_{recipe}")  # cells of a second model on a target name it
        order.setdefault(cell["target"], []).extend(
            pattern.format(target=cell["target"], model=cell["model"], recipe=r) for r in cell["recipes"]
        )
    for target, cells in order.items():
        labels = data["targets"][target]["runner_labels"]
        if "self-hosted" in labels:
            device.append({"target": target, "cells": cells, "runner_labels": labels})
        else:
            hosted += [{"cell": c, "target": target, "runner_labels": labels} for c in cells]
    return {"hosted": {"include": hosted}, "device": {"include": device}}


@pytest.mark.parametrize("event", ["pull_request", "nightly"])
def test_workflow_matrix_json_matches_the_matrix(capsys: pytest.CaptureFixture[str], event: str) -> None:
    assert workflow_matrix.main(["--matrix", str(MATRIX), "--event", event]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == _expected_from_toml(MATRIX, event)
    per_target = workflow_matrix.targets_with_cells(MATRIX)
    assert per_target["jetson"].cells == ("jetson_fp16", "jetson_int8")
    assert per_target["jetson"].runner_labels == ("self-hosted", "jetson-orin")
    assert per_target["ti"].runner_labels == ("self-hosted", "ti-tda4")
    assert per_target["x86_gpu"].runner_labels == ("self-hosted", "gpu-x86")
    assert per_target["driveos"].runner_labels == ("self-hosted", "drive-orin")
    assert not per_target["x86_cpu"].self_hosted


def test_workflow_matrix_runs_without_site_packages() -> None:
    # CI calls it before any install: `python -S` (no site-packages) proves it needs the stdlib only
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "edgematrix.report.workflow_matrix", "--github-output"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert set(lines) == {"hosted", "has_hosted", "device", "has_device"}
    expected = _expected_from_toml(MATRIX)
    assert json.loads(lines["hosted"]) == expected["hosted"] and json.loads(lines["device"]) == expected["device"]
    assert lines["has_hosted"] == lines["has_device"] == "true"


def _copy_matrix(tmp_path: Path) -> Path:
    root = tmp_path / "matrix"
    shutil.copytree(MATRIX, root, ignore=shutil.ignore_patterns("baselines"))
    return root


def test_a_new_cell_or_target_joins_ci_without_editing_yaml(tmp_path: Path) -> None:
    root = _copy_matrix(tmp_path)
    with (root / "targets.toml").open("a") as f:
        f.write(
            '\n[targets.rpi]\ndescription = "Raspberry Pi 5"\narch = "aarch64"\nbackend = "onnxruntime"\n'
            'precisions = ["int8"]\nrunner_labels = ["self-hosted", "rpi5"]\n'
        )
    with (root / "cells.toml").open("a") as f:
        f.write('\n[[cells]]\ntarget = "rpi"\nmodel = "ufld_r18"\nrecipes = ["int8"]\n')
    matrices = workflow_matrix.job_matrices(root)
    rpi = {"target": "rpi", "cells": ["rpi_int8"], "runner_labels": ["self-hosted", "rpi5"]}
    assert rpi in matrices["device"]["include"]
    assert matrices == _expected_from_toml(root)


def test_a_target_without_runner_labels_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_matrix(tmp_path)
    text = (root / "targets.toml").read_text()
    (root / "targets.toml").write_text(text.replace('runner_labels = ["self-hosted", "ti-tda4"]\n', ""))
    assert workflow_matrix.main(["--matrix", str(root)]) == 2
    err = capsys.readouterr().err
    assert "target 'ti'" in err and "runner_labels" in err and "targets.toml" in err

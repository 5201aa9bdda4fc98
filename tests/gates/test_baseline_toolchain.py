"""Baselines keyed by the locked toolchain: the committed ones match the lock, every hosted cell has one,
and a run with the lock's packages is gated against them wherever it runs (local or in its container)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgematrix.core.toolchain import LOCK_PATH, current_environment, public_version, read_lock
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.baseline import Baseline, baseline_key, load_baselines, write_baseline
from edgematrix.gates.verdicts import RunFigures, Verdict, evaluate_gates
from edgematrix.matrix.loader import load_matrix
from edgematrix.matrix.schema import Gates
from edgematrix.report.workflow_matrix import job_matrices

REPO = Path(__file__).resolve().parents[2]
BASELINES = REPO / "matrix" / "baselines"
LOCK = read_lock(REPO / LOCK_PATH)
MATRIX = load_matrix(REPO / "matrix")
#: the distribution whose version a backend reports as backend_version
BACKEND_DISTRIBUTION = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}

ENV = {
    "python": "3.11",
    "arch": "x86_64",
    "numpy": "2.4.6",
    "onnxruntime": "1.31.1",
    "torch": "2.13.0+cpu",
}


def _baseline(**kw: object) -> Baseline:
    """The committed x86_cpu_int8 baseline on a test device and the environment ENV."""
    committed = load_baselines(BASELINES, "x86_cpu_int8")
    assert committed
    return replace(committed[0], **{"cpu": "test cpu", "environment": dict(ENV), "ratio_samples": [], **kw})


def _verdicts(baseline: Baseline, environment: dict[str, str], version: str = "1.31.1") -> dict[str, Verdict]:
    b = baseline
    ref = RunFigures(b.reference_accuracy, b.reference_p50_ms, "onnxruntime", version, "test cpu", "fp32", environment)
    cand = RunFigures(b.accuracy, b.candidate_p50_ms, "onnxruntime", version, "test cpu", "int8", environment)
    return {v.gate: v for v in evaluate_gates(Gates(), ref, cand, baseline, same_artifact=False, baseline_hint="h")}


def test_same_environment_is_gated_wherever_it_was_recorded() -> None:
    """A baseline recorded in a container (image tag, Debian's glibc) gates a local run with the same key."""
    recorded_in_container = _baseline(image="edgematrix/x86_cpu:466bd2edc58519cd", libc="glibc 2.36")
    v = _verdicts(recorded_in_container, {**ENV})
    assert v["accuracy_vs_baseline"].status == "passed"
    assert v["latency_vs_baseline"].status == "passed"


def test_another_package_version_is_refused_naming_the_package_and_the_lock() -> None:
    v = _verdicts(_baseline(), {**ENV, "onnxruntime": "1.32.0"}, version="1.32.0")
    msg = v["latency_vs_baseline"].message
    assert v["latency_vs_baseline"].status == "not applicable"
    assert "backend version: baseline '1.31.1', this run '1.32.0'" in msg
    assert "package onnxruntime: baseline '1.31.1', this run '1.32.0'" in msg
    assert "matrix/constraints.txt" in msg and "nox -s lock" in msg
    # a package only one side has, and another Python
    v = _verdicts(_baseline(), {**ENV, "python": "3.12", "openvino": "2026.4.1"})
    msg = v["accuracy_vs_baseline"].message
    assert "python: baseline '3.11', this run '3.12'" in msg
    assert "package openvino: baseline 'absent', this run '2026.4.1'" in msg


def test_a_baseline_without_an_environment_is_refused() -> None:
    v = _verdicts(_baseline(environment={}), dict(ENV))
    msg = v["accuracy_vs_baseline"].message
    assert v["accuracy_vs_baseline"].status == "not applicable"
    assert "environment: baseline '(not recorded)'" in msg and "refused" in msg


def test_environment_round_trips_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    b = _baseline(libc="glibc 2.36")
    path = write_baseline(tmp_path, b)
    assert json.loads(path.read_text())["records"][0]["environment"] == ENV
    assert load_baselines(tmp_path, "x86_cpu_int8") == [b]
    doc = json.loads(path.read_text())
    doc["records"][0]["environment"] = {"numpy": 2}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(EdgeMatrixError, match=r"bad\.json is malformed .*environment must map names to version"):
        load_baselines(tmp_path, "bad")


# -- the committed baselines ----------------------------------------------------------------------

COMMITTED = sorted(p.stem for p in BASELINES.glob("*.json"))


def test_there_are_committed_baselines() -> None:
    assert {"x86_cpu_fp32", "x86_cpu_int8", "x86_cpu_int8.openvino"} <= set(COMMITTED)


@pytest.mark.parametrize("key", COMMITTED)
def test_committed_baseline_toolchain_is_what_the_lock_installs(key: str) -> None:
    records = load_baselines(BASELINES, key)
    assert records
    for b in records:
        _check_record_against_the_lock(key, b)


def _check_record_against_the_lock(key: str, b: Baseline) -> None:
    dist = BACKEND_DISTRIBUTION[b.backend]
    assert public_version(b.backend_version) == LOCK.pins[dist], f"{key}: backend {b.backend} {b.backend_version}"
    recorded = {k: public_version(v) for k, v in b.environment.items()}
    assert recorded == LOCK.environment(), f"{key}: re-record with `nox -s update_baselines` after `nox -s lock`"


@pytest.mark.parametrize("key", COMMITTED)
def test_this_locked_install_applies_the_committed_baselines(key: str) -> None:
    """The test session installs with the lock, so its environment key is what a fresh clone's cell
    session gets: the committed baselines' gates apply to it (passed or failed, never refused)."""
    (b, *_) = load_baselines(BASELINES, key)
    env = current_environment()
    ref = RunFigures(b.reference_accuracy, b.reference_p50_ms, b.backend, b.backend_version, b.cpu, "fp32", env)
    cand = RunFigures(b.accuracy, b.candidate_p50_ms, b.backend, b.backend_version, b.cpu, b.precision, env)
    verdicts = evaluate_gates(Gates(), ref, cand, b, same_artifact=b.precision == "fp32", baseline_hint="h")
    acc = next(v for v in verdicts if v.gate == "accuracy_vs_baseline")
    assert acc.status == "passed", acc.message


def _hosted_cells(event: str) -> list[str]:
    return [str(job["cell"]) for job in job_matrices(REPO / "matrix", event)["hosted"]["include"]]


@pytest.mark.parametrize("event", ["pull_request", "nightly"])
def test_every_cell_ci_runs_on_hosted_runners_has_a_committed_baseline(event: str) -> None:
    missing = []
    for cell_name in _hosted_cells(event):
        cell = MATRIX.cells[cell_name]
        for backend in cell.target.all_backends:
            key = baseline_key(cell_name, backend, cell.target.backend)
            if not (BASELINES / f"{key}.json").is_file():
                missing.append(f"matrix/baselines/{key}.json")
    cells = sorted({m.split("/")[-1].split(".")[0] for m in missing})
    assert not missing, (
        f"{len(missing)} baseline file(s) missing for {event} cells on hosted runners: {', '.join(missing)}. "
        f"Record them with `nox -s update_baselines -- {' '.join(cells)}` and commit them"
    )


def test_baseline_written_by_a_run_carries_this_environment(tmp_path: Path) -> None:
    """What the cell pipeline writes with --update-baseline: the key of the interpreter that ran it."""
    env = current_environment()
    b = replace(_baseline(), environment=env)
    write_baseline(tmp_path, b)
    (loaded,) = load_baselines(tmp_path, "x86_cpu_int8")
    assert loaded.environment == env and loaded.toolchain()["python"] == env["python"]

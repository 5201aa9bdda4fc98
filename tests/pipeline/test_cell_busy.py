"""A cell measured beside two CPU-bound processes: its latency gates are inconclusive, never a false
regression or a false pass, no backend is selected on such a run, and no baseline is recorded from it."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgematrix.measure import contention
from tiny_cells import TINY, make_workspace, run_cell

CELL = "x86_cpu_int8q"


@contextmanager
def _cpu_hogs(n: int = 2) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _gates(out: Path) -> dict[str, tuple[str, str]]:
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    gates = {}
    for case in suite.iter("testcase"):
        skipped = case.find("skipped")
        status = (
            "failed" if case.find("failure") is not None else skipped.get("type") if skipped is not None else "passed"
        )
        gates[str(case.get("name"))] = (status, (skipped.get("message") if skipped is not None else "") or "")
    return gates


@pytest.mark.slow
@pytest.mark.real_contention
def test_a_busy_run_is_inconclusive_and_records_nothing(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = make_workspace(tmp_path_factory, "busy", TINY)
    # a baseline to be gated against, recorded with the verdict off (this test host may be loaded by others)
    with monkeypatch.context() as m:
        m.setattr(contention, "THRESHOLDS", dict.fromkeys(contention.THRESHOLDS, float("inf")))
        assert run_cell(ws, CELL, "--update-baseline") == 0
    baseline = ws / "matrix" / "baselines" / f"{CELL}.json"
    recorded = baseline.read_bytes()

    with _cpu_hogs():
        assert run_cell(ws, CELL) == 0  # inconclusive is not a failure
    out = ws / "results" / CELL
    gates = _gates(out)
    for gate in ("latency_vs_baseline", "latency_vs_baseline[openvino]"):
        status, message = gates[gate]
        assert status == "inconclusive", (gate, status, message)
        assert "not comparable: machine busy — re-measure" in message and "(limit " in message
    assert gates["accuracy_vs_baseline"][0] != "inconclusive"  # accuracy does not depend on load

    bench = json.loads((out / "benchmark.json").read_text())
    assert {b["extra_info"]["selected_backend"] for b in bench["benchmarks"]} == {""}
    assert {b["extra_info"]["machine_state"] for b in bench["benchmarks"]} == {"busy"}
    record = bench["machine_info"]["latency_contention"]
    assert record["busy"] is True and record["reasons"]
    report = (out / "report.md").read_text()
    assert "⏸ inconclusive" in report and "no backend selected" in report

    capsys.readouterr()
    with _cpu_hogs():
        assert run_cell(ws, CELL, "--update-baseline") == 0
    err = capsys.readouterr().err
    assert baseline.read_bytes() == recorded  # nothing recorded from a busy run
    assert "baseline NOT written" in err and "quiet machine" in err

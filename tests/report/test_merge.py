"""Merged JUnit: one testsuite per cell, totals, and clear errors for missing or malformed files."""

from __future__ import annotations

from pathlib import Path

import pytest
from junitparser import JUnitXml

from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.verdicts import Verdict
from edgematrix.report.junit import write_junit
from edgematrix.report.merge import find_cells, merge_junit, read_gates

INT8 = [
    Verdict("accuracy_vs_reference", "passed", "candidate 89.38 vs reference 89.34: drop -0.04 points"),
    Verdict("min_accuracy", "failed", "candidate 80.00 (floor 85.00)"),
    Verdict("accuracy_vs_baseline", "not applicable", "no baseline yet"),
    Verdict("min_accuracy[openvino]", "passed", "candidate 89.39 (floor 85.00)"),
]
FP32 = [
    Verdict("accuracy_vs_reference", "not applicable", "the candidate is the FP32 reference itself"),
    Verdict("min_accuracy", "passed", "candidate 89.34 (floor 85.00)"),
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    write_junit(root / "x86_cpu_int8" / "junit.xml", "x86_cpu_int8", INT8, {"runner": "local", "backends": "ort,ov"})
    write_junit(root / "x86_cpu_fp32" / "junit.xml", "x86_cpu_fp32", FP32, {"runner": "docker"})
    (root / "not_a_cell").mkdir()  # a folder without results is ignored
    (root / "stray.txt").write_text("ignored")
    return root


def test_merge_keeps_one_suite_per_cell_and_totals(results: Path, tmp_path: Path) -> None:
    out = merge_junit(results, tmp_path / "report" / "junit.xml")
    assert out == tmp_path / "report" / "junit.xml"
    xml = JUnitXml.fromfile(str(out))
    assert (xml.tests, xml.failures, xml.errors, xml.skipped) == (6, 1, 0, 2)
    suites = {s.name: s for s in xml}
    assert list(suites) == ["edgematrix.x86_cpu_fp32", "edgematrix.x86_cpu_int8"]  # sorted by cell
    int8 = suites["edgematrix.x86_cpu_int8"]
    assert (int8.tests, int8.failures, int8.skipped) == (4, 1, 1)
    assert [c.name for c in int8] == [v.gate for v in INT8]
    assert {p.name: p.value for p in int8.properties()} == {"runner": "local", "backends": "ort,ov"}
    failed = next(c for c in int8 if c.name == "min_accuracy")
    assert failed.result[0].message == "candidate 80.00 (floor 85.00)"
    fp32 = suites["edgematrix.x86_cpu_fp32"]
    assert (fp32.tests, fp32.failures, fp32.skipped) == (2, 0, 1)
    assert {p.name: p.value for p in fp32.properties()} == {"runner": "docker"}
    text = out.read_text()
    assert "\n\t\t\n" not in text  # re-indented cleanly, no blank lines from the sources' whitespace


def test_read_gates_statuses(results: Path) -> None:
    gates = read_gates(results / "x86_cpu_int8")
    assert [(g.gate, g.status) for g in gates] == [(v.gate, v.status) for v in INT8]
    assert [g.backend_suffix for g in gates] == ["", "", "", "openvino"]
    assert gates[1].failed and gates[1].message == "candidate 80.00 (floor 85.00)"
    assert gates[0].message.startswith("candidate 89.38")


def test_missing_junit_names_the_file(results: Path, tmp_path: Path) -> None:
    crashed = results / "jetson_int8"
    crashed.mkdir()
    (crashed / "config.json").write_text("{}")
    with pytest.raises(EdgeMatrixError, match=r"jetson_int8/junit\.xml.*missing"):
        merge_junit(results, tmp_path / "merged.xml")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("<testsuites><testsuite name='x'>", r"not well-formed XML \(line 1"),
        ("", r"not well-formed XML"),
        ("<html><body/></html>", r"not JUnit XML"),
        ("<testsuites/>", r"holds no <testsuite>"),
    ],
)
def test_malformed_junit_names_the_file(results: Path, tmp_path: Path, text: str, pattern: str) -> None:
    bad = results / "x86_cpu_int8" / "junit.xml"
    bad.write_text(text)
    with pytest.raises(EdgeMatrixError, match=pattern) as info:
        merge_junit(results, tmp_path / "merged.xml")
    assert str(bad) in str(info.value)
    assert not (tmp_path / "merged.xml").exists()


def test_duplicate_suite_is_an_error(results: Path, tmp_path: Path) -> None:
    write_junit(results / "copy_of_int8" / "junit.xml", "x86_cpu_int8", INT8, {})
    with pytest.raises(EdgeMatrixError, match="appears in both"):
        merge_junit(results, tmp_path / "merged.xml")


def test_no_results(tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match="does not exist"):
        find_cells(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeMatrixError, match="no cell results"):
        merge_junit(tmp_path / "empty", tmp_path / "merged.xml")

"""One JUnit testsuite per cell, one testcase per gate; the failure text is the verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from junitparser import Failure, JUnitXml, Properties, Property, Skipped, TestCase, TestSuite

from edgematrix.gates.verdicts import Verdict


def write_junit(path: Path, cell: str, verdicts: Sequence[Verdict], properties: Mapping[str, object]) -> Path:
    suite = TestSuite(f"edgematrix.{cell}")
    props = Properties()
    for key, value in properties.items():
        props.add_property(Property(key, str(value)))
    suite.append(props)
    for v in verdicts:
        case = TestCase(v.gate, classname=f"edgematrix.{cell}")
        if v.status == "failed":
            case.result = [Failure(v.message)]
        elif v.status == "not applicable":
            case.result = [Skipped(v.message)]
        else:
            case.system_out = v.message
        suite.add_testcase(case)
    xml = JUnitXml()
    xml.add_testsuite(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    xml.write(str(path), pretty=True)
    return path

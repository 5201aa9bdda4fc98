"""One JUnit testsuite per cell, one testcase per gate; the failure text is the verdict."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from junitparser import Failure, JUnitXml, Properties, Property, Skipped, TestCase, TestSuite

from edgematrix.gates.verdicts import Verdict

#: characters XML 1.0 cannot hold (control characters, lone surrogates, U+FFFE / U+FFFF)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: object) -> str:
    """``value`` as text XML 1.0 can hold: characters it cannot are replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(value))


def write_junit(path: Path, cell: str, verdicts: Sequence[Verdict], properties: Mapping[str, object]) -> Path:
    cell = xml_text(cell)
    suite = TestSuite(f"edgematrix.{cell}")
    props = Properties()
    for key, value in properties.items():
        props.add_property(Property(xml_text(key), xml_text(value)))
    suite.append(props)
    for v in verdicts:
        case = TestCase(xml_text(v.gate), classname=f"edgematrix.{cell}")
        message = xml_text(v.message)
        if v.status == "failed":
            case.result = [Failure(message)]
        elif v.status in ("not applicable", "inconclusive"):  # not judged: the type says why
            case.result = [Skipped(message, v.status)]
        else:
            case.system_out = message
        suite.add_testcase(case)
    xml = JUnitXml()
    xml.add_testsuite(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    xml.write(str(path), pretty=True)
    return path

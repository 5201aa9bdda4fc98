"""Merge every ``results/<cell>/junit.xml`` into one JUnit file (one testsuite per cell, plus totals).

Also the readers the other reports share: which folders under ``results/`` are cells, and the
gate verdicts of one cell's ``junit.xml``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, JUnitXmlError, Skipped, TestCase

from edgematrix.errors import EdgeMatrixError

#: A folder under ``results/`` is a cell when it holds any of these (what a cell run writes).
CELL_MARKERS = ("junit.xml", "benchmark.json", "config.json")
#: a cell's junit.xml is a few kilobytes; results folders are untrusted (a pull request's run wrote them)
MAX_JUNIT_BYTES = 16 * 2**20


@dataclass(frozen=True)
class GateResult:
    """One testcase of a cell's JUnit file: a gate and its verdict."""

    cell: str
    gate: str
    status: str  # "passed" | "failed" | "not applicable" | "inconclusive" (a JUnit <error> counts as failed)
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def backend_suffix(self) -> str:
        """``openvino`` for ``min_accuracy[openvino]``; ``""`` for a gate of the primary backend."""
        if self.gate.endswith("]") and "[" in self.gate:
            return self.gate[self.gate.rindex("[") + 1 : -1]
        return ""


def find_cells(results_dir: str | os.PathLike[str]) -> list[Path]:
    """The cell folders under ``results_dir`` (sorted by name); raise when there are none."""
    root = Path(results_dir)
    if not root.is_dir():
        raise EdgeMatrixError(
            f"results folder {str(root)!r} does not exist; run a cell first (e.g. `nox -s x86_cpu_int8`) "
            "or pass the folder its results were downloaded to"
        )
    cells = sorted(p for p in root.iterdir() if p.is_dir() and any((p / m).is_file() for m in CELL_MARKERS))
    if not cells:
        raise EdgeMatrixError(
            f"no cell results under {str(root)!r}: expected folders <cell>/ holding {', '.join(CELL_MARKERS)}"
        )
    return cells


def read_junit(path: str | os.PathLike[str]) -> JUnitXml:
    """Parse one cell's ``junit.xml``; raise :class:`EdgeMatrixError` naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise EdgeMatrixError(
            f"JUnit file {str(path)!r} is missing: the cell's run did not finish writing its results; "
            "re-run the cell (its artifacts are written even when a gate fails)"
        )
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(MAX_JUNIT_BYTES + 1)
    except OSError as exc:
        raise EdgeMatrixError(f"cannot read JUnit file {str(path)!r}: {exc}") from None
    if size > MAX_JUNIT_BYTES:
        raise EdgeMatrixError(
            f"JUnit file {str(path)!r} is {size} bytes; a cell's gates fit in far less than {MAX_JUNIT_BYTES} bytes"
        )
    if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in head.upper():
        raise EdgeMatrixError(
            f"JUnit file {str(path)!r} declares a DTD or entities, which edgematrix never writes; refused "
            "(results folders are untrusted input)"
        )
    try:
        xml = JUnitXml.fromfile(str(path))
    except SyntaxError as exc:  # xml.etree's ParseError (and lxml's XMLSyntaxError) derive from it
        line, col = getattr(exc, "position", None) or (exc.lineno, exc.offset)
        raise EdgeMatrixError(
            f"JUnit file {str(path)!r} is not well-formed XML (line {line}, column {col}): {exc}; "
            "re-run the cell to regenerate it"
        ) from None
    except JUnitXmlError as exc:
        raise EdgeMatrixError(
            f"JUnit file {str(path)!r} is not JUnit XML ({exc}): its root must be <testsuites> or <testsuite>"
        ) from None
    except OSError as exc:
        raise EdgeMatrixError(f"cannot read JUnit file {str(path)!r}: {exc}") from None
    suites = list(xml)
    if not suites:
        raise EdgeMatrixError(f"JUnit file {str(path)!r} holds no <testsuite>; re-run the cell to regenerate it")
    for i, suite in enumerate(suites):
        if not suite.name:
            raise EdgeMatrixError(f"JUnit file {str(path)!r}: testsuite #{i + 1} has no name attribute")
    return xml


def _status(case: TestCase) -> tuple[str, str]:
    for result in case.result:
        text = result.message or result.text or ""
        if isinstance(result, Failure | Error):
            return "failed", text
        if isinstance(result, Skipped):
            return ("inconclusive" if result.type == "inconclusive" else "not applicable"), text
    return "passed", case.system_out or ""


def read_gates(cell_dir: str | os.PathLike[str]) -> list[GateResult]:
    """The gate verdicts in ``<cell_dir>/junit.xml``, in file order."""
    cell_dir = Path(cell_dir)
    xml = read_junit(cell_dir / "junit.xml")
    out = []
    for suite in xml:
        for case in suite:
            status, message = _status(case)
            out.append(GateResult(cell_dir.name, str(case.name), status, " ".join(message.split())))
    return out


def merge_junit(results_dir: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Write every ``<results_dir>/<cell>/junit.xml`` into ``out_path`` as one ``<testsuites>``.

    Each cell's testsuite is kept whole (properties included); the root carries the totals
    (``tests``, ``failures``, ``errors``, ``skipped``, ``time``). A cell folder without a
    ``junit.xml``, a malformed file, or two files with the same testsuite name raise
    :class:`EdgeMatrixError` naming the file(s).
    """
    out_path = Path(out_path)
    merged = JUnitXml("edgematrix")
    seen: dict[str, Path] = {}
    for cell_dir in find_cells(results_dir):
        path = cell_dir / "junit.xml"
        for suite in read_junit(path):
            if suite.name in seen:
                raise EdgeMatrixError(
                    f"testsuite {suite.name!r} appears in both {str(seen[suite.name])!r} and {str(path)!r}; "
                    "a results folder holds each cell once — remove the stale copy"
                )
            seen[suite.name] = path
            suite = copy.deepcopy(suite)
            suite.update_statistics()  # recount from the testcases rather than trusting the attributes
            merged.append(suite)  # append, not add_testsuite: that one folds equal suites together
    merged.update_statistics()
    for elem in merged._elem.iter():  # drop the source files' indentation, so pretty-printing re-indents cleanly
        if elem.text is not None and not elem.text.strip():
            elem.text = None
        if elem.tail is not None and not elem.tail.strip():
            elem.tail = None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    merged.write(str(tmp), pretty=True)
    os.replace(tmp, out_path)
    return out_path

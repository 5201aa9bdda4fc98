"""Atomic writes and staged result folders: the old results stay until the new ones are complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgematrix.fileio import atomic_write_text, staged_folder


class _Gate(Exception):
    pass


def _old(tmp_path: Path) -> Path:
    final = tmp_path / "results" / "cell"
    final.mkdir(parents=True)
    (final / "report.md").write_text("old report")
    return final


def test_success_replaces_the_folder_whole(tmp_path: Path) -> None:
    final = _old(tmp_path)
    with staged_folder(final) as out:
        assert out != final and out.parent == final.parent and out.name.startswith(".cell.")
        atomic_write_text(out / "report.md", "new report")
        assert (final / "report.md").read_text() == "old report"  # untouched while the run goes on
    assert (final / "report.md").read_text() == "new report"
    assert sorted(p.name for p in final.parent.iterdir()) == ["cell"]  # no staging or old folder left
    assert final.stat().st_mode & 0o777 != 0o700


@pytest.mark.parametrize("error", [ValueError("bad input"), KeyboardInterrupt()])
def test_a_failed_run_loses_nothing(tmp_path: Path, error: BaseException) -> None:
    final = _old(tmp_path)
    with pytest.raises(type(error)), staged_folder(final, publish_on=(_Gate,)) as out:
        (out / "report.md").write_text("half")
        raise error
    assert (final / "report.md").read_text() == "old report"
    assert sorted(p.name for p in final.parent.iterdir()) == ["cell"]


def test_a_failed_gate_still_publishes(tmp_path: Path) -> None:
    final = _old(tmp_path)
    with pytest.raises(_Gate), staged_folder(final, publish_on=(_Gate,)) as out:
        (out / "report.md").write_text("failed report")
        raise _Gate("min_accuracy")
    assert (final / "report.md").read_text() == "failed report"


def test_first_run_creates_the_folder(tmp_path: Path) -> None:
    final = tmp_path / "results" / "new"
    with staged_folder(final) as out:
        (out / "a.json").write_text("{}")
    assert (final / "a.json").read_text() == "{}"

"""docs/extending.md cannot rot: the commits it cites are in this repository's history, every line of its diff
excerpts is in the ``git show`` it is labelled with, the paths it names exist, and the interface tables list
members that exist on the base classes (every abstract method and every class attribute without a default
among the required ones)."""

from __future__ import annotations

import importlib
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "extending.md"
#: the commits the page is about: the step, the task (module and registration line) and the backend
SUBJECT_COMMITS = {"45c9d08", "85a83e5", "78b2f2f", "36b0e66"}

HASH = re.compile(r"(?<![\w/.:-])[0-9a-f]{7,40}(?![\w-])")
GIT_SHOW = re.compile(r"`git show ([0-9a-f]{7,40}) -- ([^`\s]+)`")
SPAN = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"[\w.-]+(/[\w.-]+)+/?")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
TABLE = re.compile(r"^\| member of `([\w.]+)\.(\w+)` \|")
ROW = re.compile(r"^\| `(\w+)` \| (required|optional) \|")


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)


@cache
def _history() -> None:
    """Fail with what to do when the history the page cites is not here (no git, or a shallow clone)."""
    inside = _git("rev-parse", "--is-inside-work-tree")
    assert inside.returncode == 0 and inside.stdout.strip() == "true", (
        f"{REPO} is not a git work tree ({inside.stderr.strip()}): docs/extending.md cites commits of the "
        "repository's history; run the tests in a clone"
    )
    shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip()
    assert shallow != "true", (
        "this clone is shallow, so the commits docs/extending.md cites are not here; fetch the history "
        "(git fetch --unshallow, or actions/checkout with fetch-depth: 0)"
    )


@cache
def _show(commit: str, path: str) -> str:
    done = _git("show", "--format=", commit, "--", path)
    assert done.returncode == 0, f"git show {commit} -- {path}: {done.stderr.strip()}"
    return done.stdout


def _cited_hashes(text: str) -> set[str]:
    return {h for h in HASH.findall(text) if any(c.isdigit() for c in h)}


def test_every_cited_commit_is_in_the_history_of_head() -> None:
    _history()
    cited = _cited_hashes(_doc())
    assert cited >= SUBJECT_COMMITS, f"the page no longer cites {sorted(SUBJECT_COMMITS - cited)}"
    for commit in sorted(cited):
        found = _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
        assert found.returncode == 0, f"docs/extending.md cites {commit}, which is no commit of this repository"
        ancestor = _git("merge-base", "--is-ancestor", found.stdout.strip(), "HEAD")
        assert ancestor.returncode == 0, f"docs/extending.md cites {commit}, which is not in the history of HEAD"


def test_every_git_show_names_a_file_its_commit_changed() -> None:
    _history()
    commands = GIT_SHOW.findall(_doc())
    assert len(commands) >= 6, "the page shows each extension's module and registration with git show"
    for commit, path in commands:
        changed = _git("show", "--name-only", "--format=", commit).stdout.split()
        assert path in changed, f"git show {commit} -- {path}: {commit} changed {changed}, not {path}"


def _diff_blocks(text: str) -> list[tuple[str, str, list[str]]]:
    """(commit, path, lines) of every ```diff block, with the git show command written last before it."""
    blocks: list[tuple[str, str, list[str]]] = []
    command: tuple[str, str] | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "```diff":
            assert command is not None, f"docs/extending.md line {i + 1}: a diff block without a git show before it"
            end = lines.index("```", i + 1)
            blocks.append((*command, lines[i + 1 : end]))
            i = end + 1
            continue
        found = GIT_SHOW.findall(line)
        if found:
            command = found[-1]
        i += 1
    return blocks


def test_every_quoted_diff_line_is_in_its_commit() -> None:
    _history()
    blocks = _diff_blocks(_doc())
    assert len(blocks) >= 6
    for commit, path, lines in blocks:
        real = {line.rstrip() for line in _show(commit, path).splitlines()}
        quoted = [line for line in lines if line != "..."]
        assert any(line.startswith("+") for line in quoted), f"the excerpt of {commit} -- {path} adds nothing"
        missing = [line for line in quoted if line.rstrip() not in real]
        assert not missing, f"not in `git show {commit} -- {path}`: {missing}"


def test_every_cited_path_exists() -> None:
    text = _doc()
    paths = [s for s in SPAN.findall(text) if PATH.fullmatch(s)]
    assert len(paths) >= 20
    for path in paths:
        # a full path from the repository root, or one inside the package (core/registries.py)
        assert (REPO / path).exists() or (REPO / "src" / "edgematrix" / path).exists(), f"no such path: {path}"
    for link, _anchor in LINK.findall(text):
        if "://" not in link:
            assert (DOC.parent / link).exists(), f"broken link: {link}"


def _annotated_without_default(cls: type) -> set[str]:
    """Public class attributes declared on ``cls`` or its bases with no value: a subclass must set them."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names |= {n for n in vars(klass).get("__annotations__", {}) if not n.startswith("_")}
    return {n for n in names if not hasattr(cls, n)}


def _tables(text: str) -> dict[tuple[str, str], dict[str, str]]:
    tables: dict[tuple[str, str], dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        header = TABLE.match(line)
        if header:
            current = tables.setdefault((header[1], header[2]), {})
            continue
        row = ROW.match(line)
        if current is not None and row:
            current[row[1]] = row[2]
        elif current is not None and not line.startswith("|"):
            current = None
    return tables


EXPECTED_TABLES = {
    ("edgematrix.tasks.base", "TaskAdapter"),
    ("edgematrix.backends.base", "Runner"),
    ("edgematrix.pipeline.steps.base", "RecipeStep"),
}


@pytest.mark.parametrize("module, name", sorted(EXPECTED_TABLES))
def test_interface_tables_match_the_base_classes(module: str, name: str) -> None:
    tables = _tables(_doc())
    assert set(tables) == EXPECTED_TABLES
    members = tables[module, name]
    cls = getattr(importlib.import_module(module), name)
    declared = _annotated_without_default(cls)
    for member in members:
        assert hasattr(cls, member) or member in declared, f"{name} has no member {member!r}"
    required = {m for m, kind in members.items() if kind == "required"}
    must = set(cls.__abstractmethods__) | declared
    assert must <= required, f"{name}: {sorted(must - required)} must be listed as required"
    optional = {m for m, kind in members.items() if kind == "optional"}
    assert not optional & must, f"{name}: {sorted(optional & must)} are listed as optional but are required"

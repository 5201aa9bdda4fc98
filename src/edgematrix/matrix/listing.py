"""Stdlib-only view of the matrix for the noxfile: session names, descriptions, tags.

Full validation (pydantic) happens inside the session, where the package is installed; this
module only needs enough structure to name the sessions and check reachability before an install.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SessionInfo:
    name: str
    target: str
    model: str
    recipe: str
    description: str
    target_table: dict = field(repr=False, hash=False, compare=False)
    schedule: str = "pull_request"  # "nightly": CI runs the cell in the nightly full matrix only
    packages: tuple[str, ...] = ()  # the model's own packages (pip arguments) its session installs

    @property
    def tags(self) -> list[str]:
        return [self.target, self.recipe, self.model, "cells"]


def list_sessions(root: str | Path = "matrix") -> list[SessionInfo]:
    tables: dict[str, dict] = {"targets": {}, "models": {}, "recipes": {}}
    cells: list[dict] = []
    for path in sorted(Path(root).glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML: {e}") from None
        for kind in tables:
            tables[kind].update(data.get(kind, {}))
        cells.extend(data.get("cells", []))
    out = []
    for i, cell in enumerate(cells):
        try:
            target = tables["targets"][cell["target"]]
            for recipe in cell["recipes"]:
                r = tables["recipes"][recipe]
                m = tables["models"][cell["model"]]
                desc = cell.get("description") or (
                    f"{r['description']} — {m['description'].split(',')[0]} on {target['description']}"
                )
                pattern = cell.get("name", "{target}_{recipe}")
                name = pattern.format(target=cell["target"], model=cell["model"], recipe=recipe)
                schedule = cell.get("schedule", "pull_request")
                packages = tuple(str(p) for p in m.get("packages", []))
                out.append(SessionInfo(name, cell["target"], cell["model"], recipe, desc, target, schedule, packages))
        except (KeyError, TypeError) as e:
            raise ValueError(f"matrix cells[{i}] refers to something undefined or malformed: {e}") from None
    return out

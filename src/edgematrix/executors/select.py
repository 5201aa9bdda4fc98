"""Pick the runner for a cell and explain the choice (stdlib only: the noxfile imports it).

A target lists what a host must have (``requires``), as ``module:NAME`` (importable Python
module), ``command:NAME`` (executable on PATH), ``path:/abs/path`` (file or folder) or
``env:NAME`` (environment variable set), plus its ``arch``. ``auto`` picks the first runner of
the target that can run here and says why; when none can, the error names what is missing and
how to provide it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALL_RUNNERS = ("auto", "local", "docker", "remote", "emulated")

_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


class RunnerChoiceError(Exception):
    """Raised with a user-facing message; ``edgematrix.errors`` wraps it as RunnerUnavailableError."""


@dataclass(frozen=True)
class Choice:
    runner: str
    reason: str


def host_arch() -> str:
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def missing_requirements(arch: str, requires: Sequence[str]) -> list[str]:
    """What this host lacks for a target, as human-readable phrases (empty = all present)."""
    missing = []
    here = host_arch()
    if arch != here:
        missing.append(f"an {arch} host (this host is {here})")
    for req in requires:
        kind, _, name = req.partition(":")
        if kind == "module":
            if importlib.util.find_spec(name) is None:
                missing.append(f"the Python module {name!r}")
        elif kind == "command":
            if shutil.which(name) is None:
                missing.append(f"the command {name!r} on PATH")
        elif kind == "path":
            if not os.path.exists(name):
                missing.append(f"the path {name}")
        elif kind == "env":
            if not os.environ.get(name):
                missing.append(f"the environment variable {name}")
        else:
            raise RunnerChoiceError(
                f"requirement {req!r} has unknown kind {kind!r}; use module:, command:, path: or env:"
            )
    return missing


def choose_runner(cell: str, target_name: str, target: Mapping, requested: str = "auto") -> Choice:
    """Decide where ``cell`` runs. ``target`` is the target's table (dict or pydantic dump)."""
    if requested not in ALL_RUNNERS:
        raise RunnerChoiceError(f"unknown runner {requested!r}; choose from {', '.join(ALL_RUNNERS)}")
    offered = list(target.get("runners", ["local"]))
    missing = missing_requirements(target["arch"], target.get("requires", []))
    what = f"target {target_name!r} ({target.get('device') or target.get('description', '')}, {target['arch']}, backend {target['backend']})"
    if requested not in ("auto", "local"):
        if requested not in offered:
            raise RunnerChoiceError(
                f"cell {cell}: {what} does not offer runner {requested!r}; its runners: {', '.join(offered)}"
            )
        if requested == "docker":
            image_arch = target.get("image_arch") or target["arch"]
            if image_arch != host_arch():
                raise RunnerChoiceError(
                    f"cell {cell}: {what}: its image is {image_arch} and this host is {host_arch()}; the docker "
                    "runner runs images natively. Use --runner emulated for a functional check under qemu-user, "
                    "or a runner with that architecture"
                )
            return Choice("docker", f"requested; the image of docker/{target.get('image') or target_name}/")
        return Choice(requested, "requested")
    if not missing and "local" in offered:
        reason = "this host has everything the target needs" if requested == "auto" else "requested"
        return Choice("local", reason)
    if requested == "local" and "local" not in offered:
        raise RunnerChoiceError(f"cell {cell}: {what} cannot run locally; its runners: {', '.join(offered)}")
    how = []
    labels = target.get("runner_labels") or []
    if labels:
        how.append(f"run it on a CI runner labelled [{', '.join(labels)}] (or any host that has the above)")
    others = [r for r in offered if r != "local"]
    for r in others:
        hint = {
            "docker": f"--runner docker with the image recipe docker/{target.get('image') or target_name}/",
            "remote": "--runner remote --remote URL of an edgematrix latency server on the device",
            "emulated": "--runner emulated (functional check under qemu-user; latency not gated)",
        }[r]
        how.append(hint)
    raise RunnerChoiceError(
        f"cell {cell} cannot run on this host: {what} needs "
        + "; ".join(missing)
        + ".\nTo run it: "
        + "\n  or ".join(how or ["run it on a host that has the above"])
    )

"""The registries of every extension axis: built-ins, registered objects, entry-point plugins (one of a
built-in's name is shadowed, and listed as such) and import paths; ``edgematrix list --plugins``."""

from __future__ import annotations

from importlib import metadata

import pytest

from edgematrix.cli import main
from edgematrix.errors import EdgeMatrixError, UnknownNameError
from edgematrix.registry import Provider, Registry, is_import_path


def _registry() -> Registry[object]:
    reg: Registry[object] = Registry("gadget", builtin={"json": "json:dumps"}, group="edgematrix.test_gadgets")
    # two plugins found in the group: one new name, one that a built-in shadows (no distribution installed)
    reg._plugins = {
        "pretty": metadata.EntryPoint("pretty", "pprint:pformat", "edgematrix.test_gadgets"),
        "json": metadata.EntryPoint("json", "pickle:dumps", "edgematrix.test_gadgets"),
    }
    return reg


def test_names_come_from_builtins_plugins_registration_and_import_paths() -> None:
    import json
    import pprint
    import textwrap

    reg = _registry()

    @reg.register("mine")
    def mine() -> None: ...

    assert reg.get("json") is json.dumps  # the built-in wins over a plugin of the same name
    assert reg.get("pretty") is pprint.pformat
    assert reg.get("textwrap:dedent") is textwrap.dedent  # an import path, no registration
    assert "textwrap:dedent" in reg and "textwrap:fill" not in reg  # contained once resolved (no import)
    assert reg.providers() == [
        Provider("json", "built-in", "json:dumps"),
        Provider("json", "plugin (shadowed by the built-in)", "pickle:dumps", "?"),
        Provider(
            "mine",
            "registered",
            f"{__name__}:test_names_come_from_builtins_plugins_registration_and_import_paths.<locals>.mine",
        ),
        Provider("pretty", "plugin", "pprint:pformat", "?"),
        Provider("textwrap:dedent", "import path", "textwrap:dedent", ""),
    ]


def test_unknown_names_and_bad_import_paths_say_what_to_do() -> None:
    reg = _registry()
    with pytest.raises(
        UnknownNameError,
        match=r"unknown gadget 'nope'; known: json, pretty \(plugins are looked for in entry-point group "
        r"'edgematrix\.test_gadgets'; an import path 'package\.module:Attribute' is imported as it is\)",
    ):
        reg.get("nope")
    with pytest.raises(
        EdgeMatrixError, match=r"gadget 'no_such_pkg_xyz\.mod:Thing': cannot import module 'no_such_pkg_xyz\.mod'"
    ):
        reg.get("no_such_pkg_xyz.mod:Thing")
    with pytest.raises(
        EdgeMatrixError, match=r"gadget 'json:nothing_here': module 'json' has no attribute 'nothing_here'"
    ):
        reg.get("json:nothing_here")
    assert is_import_path("a.b:C") and not is_import_path("lane") and not is_import_path(":C")


def test_list_plugins_prints_every_axis_with_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    assert header == ["kind", "name", "source", "distribution", "object"]
    rows = {(r.split()[0], r.split()[2] if r.startswith("model family") else r.split()[1]) for r in out[1:] if r}
    assert ("task", "outputs") in rows and ("backend", "openvino") in rows
    outputs = next(r for r in out if r.startswith("task") and " outputs " in r)
    assert outputs.split() == ["task", "outputs", "built-in", "-", "edgematrix.tasks.outputs:OutputsTask"]
    assert any(r.startswith("recipe step") and "prune_ratio" in r for r in out)
    assert any(r.startswith("model family") and "ufld_v2" in r for r in out)


def test_an_import_path_resolved_once_is_not_listed_as_a_name() -> None:
    """Resolving ``package.module:Class`` caches the object under its path; the registry's names (what an
    unknown-name error lists) stay the built-in, registered and plugin names."""
    from edgematrix.core.registries import tasks

    before = tasks.names()
    tasks.get("edgematrix.tasks.outputs:OutputsTask")
    assert tasks.names() == before and "edgematrix.tasks.outputs:OutputsTask" not in before

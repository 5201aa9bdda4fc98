"""Load the matrix folder (``matrix/*.toml``), validate it and expand it into cells."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgematrix.errors import MatrixError, UnknownNameError
from edgematrix.matrix.schema import CellSpec, Gates, MatrixFile, Model, Recipe, Target

DEFAULT_MATRIX_DIR = Path("matrix")


@dataclass(frozen=True)
class Cell:
    """One session of the matrix: a target, a model and a recipe, with its gates."""

    name: str
    target_name: str
    target: Target
    model_name: str
    model: Model
    recipe_name: str
    recipe: Recipe
    gates: Gates
    description: str

    @property
    def tags(self) -> list[str]:
        return [self.target_name, self.recipe_name, self.model_name]

    def resolved(self) -> dict[str, Any]:
        """The fully resolved configuration, as written next to the results."""
        return {
            "cell": self.name,
            "description": self.description,
            "target": {"name": self.target_name, **self.target.model_dump(mode="json")},
            "model": {"name": self.model_name, **self.model.model_dump(mode="json")},
            "recipe": {"name": self.recipe_name, **self.recipe.model_dump(mode="json")},
            "gates": self.gates.model_dump(mode="json"),
        }

    def resolved_json(self) -> str:
        return json.dumps(self.resolved(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class Matrix:
    root: Path
    targets: dict[str, Target]
    models: dict[str, Model]
    recipes: dict[str, Recipe]
    cells: dict[str, Cell]

    def cell(self, name: str) -> Cell:
        if name not in self.cells:
            raise UnknownNameError(f"unknown cell {name!r}; cells of {self.root}: {', '.join(sorted(self.cells))}")
        return self.cells[name]


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Valid keys at ``loc`` (the parent of an unknown key), walking the pydantic schema."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
            continue
        args = getattr(current, "__args__", ())
        # dict[str, X] / list[X] / X | None: step into the value type
        inner = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        current = inner[-1]
        if isinstance(part, str) and part in current.model_fields:
            current = current.model_fields[part].annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    args = [a for a in getattr(current, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
    return sorted(args[-1].model_fields) if args else None


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        if e["type"] == "extra_forbidden":
            valid = _field_names(MatrixFile, loc[:-1])
            hint = f" (valid keys here: {', '.join(valid)})" if valid else ""
            lines.append(f"{path}: {key}: unknown key{hint}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{path}: {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def load_file(path: Path) -> MatrixFile:
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise MatrixError(
            f"{path}: not UTF-8 text (byte {e.start}, line {line}: {e.reason}); TOML files are UTF-8, save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise MatrixError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise MatrixError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return MatrixFile.model_validate(raw)
    except ValidationError as e:
        raise MatrixError("invalid matrix file\n" + _format_validation(path, e)) from None


def _merge(kind: str, into: dict[str, Any], new: dict[str, Any], origin: dict[str, Path], path: Path) -> None:
    for name, value in new.items():
        if name in into:
            raise MatrixError(f"{path}: {kind}.{name} is already defined in {origin[name]}; names must be unique")
        into[name] = value
        origin[name] = path


def _unknown(path: Path, where: str, kind: str, name: str, known: dict[str, Any]) -> MatrixError:
    return MatrixError(
        f"{path}: {where}: unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known)) or '(none)'}"
    )


def load_matrix(root: str | os.PathLike = DEFAULT_MATRIX_DIR) -> Matrix:
    """Load every ``*.toml`` under ``root`` and expand the cells."""
    root = Path(root)
    if not root.is_dir():
        raise MatrixError(f"matrix folder {root} not found; run from the repository root or pass --matrix DIR")
    files = sorted(root.glob("*.toml"))
    if not files:
        raise MatrixError(f"no *.toml files in {root}")
    targets: dict[str, Target] = {}
    models: dict[str, Model] = {}
    recipes: dict[str, Recipe] = {}
    specs: list[tuple[Path, int, CellSpec]] = []
    defaults = Gates()
    origins: dict[str, dict[str, Path]] = {"targets": {}, "models": {}, "recipes": {}}
    defaults_from: Path | None = None
    for path in files:
        mf = load_file(path)
        _merge("targets", targets, mf.targets, origins["targets"], path)
        _merge("models", models, mf.models, origins["models"], path)
        _merge("recipes", recipes, mf.recipes, origins["recipes"], path)
        specs.extend((path, i, spec) for i, spec in enumerate(mf.cells))
        if mf.defaults is not None:
            if defaults_from is not None:
                raise MatrixError(f"{path}: [defaults] is already set in {defaults_from}")
            defaults, defaults_from = mf.defaults.gates, path

    from edgematrix.core.registries import backends, families, tasks  # names only: nothing is imported

    for name, model in models.items():
        path = origins["models"][name]
        for key, value, registry in (("family", model.family, families), ("task", model.task, tasks)):
            if value not in registry:
                raise MatrixError(
                    f"{path}: models.{name}.{key}: unknown {registry.kind} {value!r}; known: {', '.join(registry.names())}"
                    + (f" (plugins: entry-point group {registry.group!r})" if registry.group else "")
                )
    for name, target in targets.items():
        for backend in target.all_backends:
            if backend not in backends:
                raise MatrixError(
                    f"{origins['targets'][name]}: targets.{name}: unknown backend {backend!r}; known: "
                    f"{', '.join(backends.names())} (plugins: entry-point group {backends.group!r})"
                )

    cells: dict[str, Cell] = {}
    for path, i, spec in specs:
        where = f"cells[{i}]"
        if spec.target not in targets:
            raise _unknown(path, f"{where}.target", "target", spec.target, targets)
        if spec.model not in models:
            raise _unknown(path, f"{where}.model", "model", spec.model, models)
        target = targets[spec.target]
        for recipe_name in spec.recipes:
            if recipe_name not in recipes:
                raise _unknown(path, f"{where}.recipes", "recipe", recipe_name, recipes)
            recipe = recipes[recipe_name]
            if recipe.precision not in target.precisions:
                raise MatrixError(
                    f"{path}: {where}: recipe {recipe_name!r} needs precision {recipe.precision!r}, which target "
                    f"{spec.target!r} does not offer (its precisions: {', '.join(target.precisions)})"
                )
            name = spec.name.format(target=spec.target, model=spec.model, recipe=recipe_name)
            if name in cells:
                raise MatrixError(
                    f"{path}: {where}: cell {name!r} is declared twice (session names are {spec.name}); give the "
                    'cells of a second model on this target name = "{target}_{model}_{recipe}"'
                )
            if (
                recipe.quantize is not None
                and recipe.quantize.accuracy_budget is not None
                and models[spec.model].task != "lane"
            ):
                raise MatrixError(
                    f"{path}: {where}: recipe {recipe_name!r} (mixed precision by sensitivity) scores held-out lane "
                    f"images; model {spec.model!r} is a {models[spec.model].task!r} model"
                )
            split = recipe.split
            if split is not None and models[spec.model].task != "multitask":
                raise MatrixError(
                    f"{path}: {where}: recipe {recipe_name!r} splits a multi-head model; model {spec.model!r} is a "
                    f"{models[spec.model].task!r} model"
                )
            desc = (
                spec.description or f"{recipe.description} — {model_desc(models[spec.model])} on {target.description}"
            )
            cells[name] = Cell(
                name=name,
                target_name=spec.target,
                target=target,
                model_name=spec.model,
                model=models[spec.model],
                recipe_name=recipe_name,
                recipe=recipe,
                gates=spec.gates or defaults,
                description=desc,
            )
    return Matrix(root=root, targets=targets, models=models, recipes=recipes, cells=cells)


def model_desc(model: Model) -> str:
    return model.description.split(",")[0]

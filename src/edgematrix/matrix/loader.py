"""Load the matrix folder (``matrix/*.toml``), validate it and expand it into cells."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgematrix.errors import EdgeMatrixError, MatrixError, UnknownNameError
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

    from edgematrix.core.registries import backends, recipe_steps

    for name in models:
        models[name] = resolve_model(name, models[name], origins["models"][name], root.resolve().parent)
    for name, recipe in recipes.items():
        unknown = sorted(set(recipe.steps) - set(recipe_steps.names()))
        if unknown:
            raise MatrixError(
                f"{origins['recipes'][name]}: recipes.{name}.steps: unknown recipe step(s) {', '.join(unknown)}; known: "
                f"{', '.join(recipe_steps.names())} (plugins: entry-point group {recipe_steps.group!r})"
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
            _check_model_recipe(path, where, spec.model, models[spec.model], recipe_name, recipe, target)
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


#: the dataset format of each built-in task (a model's ``dataset`` defaults to its task's)
TASK_DATASETS = {
    "lane": "tusimple",
    "detection": "coco",
    "multitask": "scenes",
    "steering": "driving_log",
    "outputs": "images",
}


def _absolute(value: str, base: Path) -> str:
    """``value`` as an absolute path: ``~`` expanded, a relative path taken from ``base`` (the repository)."""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_model(name: str, model: Model, path: Path, base: Path) -> Model:
    """``model`` validated beyond its schema and completed: names resolved against the registries (plugins
    and import paths included), paths made absolute (relative ones are taken from ``base``, the folder
    holding the matrix folder), the default dataset of its task, and for an ONNX file the shape of every
    input (declared, or fixed in the file) with every dynamic dimension declared."""
    from edgematrix.core.registries import families, tasks
    from edgematrix.registry import is_import_path, load_object

    where = f"{path}: models.{name}"
    update: dict[str, Any] = {}
    if is_import_path(model.task):
        try:
            tasks.get(model.task)
        except EdgeMatrixError as e:
            raise MatrixError(f"{where}.task: {e}") from None
    elif model.task not in tasks:
        raise MatrixError(
            f"{where}.task: unknown task {model.task!r}; known: {', '.join(tasks.names())} (plugins: entry-point "
            f"group {tasks.group!r}; or an import path, task = 'package.module:TaskClass')"
        )
    resolve_train = getattr(tasks.get(model.task), "resolve_train", None)  # a TaskAdapter's (plugins may not be)
    if resolve_train is not None:
        update["train"] = resolve_train(model.train, where)
    if model.family is not None and model.family not in families:
        raise MatrixError(
            f"{where}.family: unknown model family {model.family!r}; known: {', '.join(families.names())} "
            f"(plugins: entry-point group {families.group!r}; or your own module: factory = 'package.module:function')"
        )
    if model.factory is not None:
        try:
            factory = load_object(model.factory, f"{where}.factory")
        except EdgeMatrixError as e:
            raise MatrixError(str(e)) from None
        if not callable(factory):
            raise MatrixError(f"{where}.factory: {model.factory!r} is a {type(factory).__name__}, not a function")
    for key in ("onnx", "checkpoint"):
        value = getattr(model, key)
        if value is not None:
            resolved = _absolute(value, base)
            if not Path(resolved).is_file():
                raise MatrixError(f"{where}.{key}: file {resolved} not found (paths are relative to {base})")
            update[key] = resolved
    if model.data_root:
        update["data_root"] = _absolute(model.data_root, base)
    if not model.dataset and model.task in TASK_DATASETS:
        update["dataset"] = TASK_DATASETS[model.task]
    if model.onnx is not None:
        update.update(_onnx_inputs(where, model, Path(update["onnx"])))
        if getattr(tasks.get(model.task), "needs_module", False):
            raise MatrixError(
                f"{where}: task {model.task!r} decodes its outputs with the torch model's geometry, which an ONNX "
                "file does not carry; give the model as family or factory + checkpoint, or use task 'outputs' "
                "(agreement with the FP32 reference) or a task of your own"
            )
    return model.model_copy(update=update)


def _onnx_inputs(where: str, model: Model, onnx_path: Path) -> dict[str, Any]:
    """``input_shapes`` of every runtime input and ``input_shape`` of the image input of an ONNX model."""
    from edgematrix.core.onnx_io import read_interface, shape_problems
    from edgematrix.errors import ModelError

    try:
        interface = read_interface(onnx_path)
    except ModelError as e:
        raise MatrixError(f"{where}.onnx: {e}") from None
    declared = dict(model.input_shapes)
    key = "input_shapes"
    if model.input_shape and not declared:
        if len(interface.inputs) != 1:
            raise MatrixError(
                f"{where}.input_shape: the model has {len(interface.inputs)} inputs ("
                + ", ".join(f"{s.name} {s.describe()}" for s in interface.inputs)
                + "); declare them by name: input_shapes = { NAME = [...] }"
            )
        declared, key = {interface.inputs[0].name: model.input_shape}, "input_shape"
    problems = shape_problems(interface, declared, key)
    if problems:
        raise MatrixError(f"{where}: {onnx_path.name}: " + "; ".join(problems))
    shapes = {s.name: list(declared.get(s.name, s.dims)) for s in interface.inputs}
    image = model.images.input
    if image and image not in shapes:
        raise MatrixError(
            f"{where}.images.input: {image!r} is not an input of {onnx_path.name} (inputs: {', '.join(shapes)})"
        )
    four_d = [n for n, s in shapes.items() if len(s) == 4]
    main = image or (four_d[0] if len(four_d) == 1 else next(iter(shapes)))
    return {"input_shapes": shapes, "input_shape": shapes[main]}


def _check_model_recipe(
    path: Path, where: str, model_name: str, model: Model, recipe_name: str, recipe: Recipe, target: Target
) -> None:
    """A model given as an ONNX file cannot take recipe steps that change a torch model, nor run on the torch
    backend: refused here, naming the recipe and why."""
    if model.source != "onnx":
        return
    from edgematrix.core.registries import recipe_steps

    for step in recipe_steps.names():
        cls = recipe_steps.get(step)
        if getattr(cls, "needs_torch", False) and cls.applies(recipe):
            sections = ", ".join(f"[{k}]" for k in ("prune", "finetune", "qat") if getattr(recipe, k) is not None)
            sections = sections or "a plugin step"
            raise MatrixError(
                f"{path}: {where}: recipe {recipe_name!r} needs the torch model: its step {step!r} ({sections}) changes the module's weights or channels and re-exports it, and model {model_name!r} "
                f"is an ONNX file ({Path(model.onnx or '').name}) with no torch module to change. Give the model as "
                "factory = 'package.module:function' + checkpoint, or use a recipe that works on the ONNX file "
                "(INT8 PTQ, FP16, FX8, mixed precision, split)"
            )
    if "torch" in target.all_backends:
        raise MatrixError(
            f"{path}: {where}: target runs the torch backend, which runs the trained torch module; model "
            f"{model_name!r} is an ONNX file: use a target with an ONNX backend (onnxruntime, openvino, tensorrt, ...)"
        )

"""The source stage: the dataset, the model and its FP32 ONNX file, each cached by content.

Three model sources (``[models.X]``, exactly one of them):

- ``family`` (built-in or plugin) or ``factory = "package.module:function"`` (your own module): the torch
  module is built, then trained (cached by config + data + code: edgematrix's and, for your factory or task,
  your package's own sources) or, with ``checkpoint``, loaded from that state dict
  (``torch.load(weights_only=True)``); then exported to FP32 ONNX (cached by the weights and the export
  code; ONNX Runtime's outputs checked against torch's);
- ``onnx = "path"``: the file as it is, copied into the cache with its inputs fixed to the declared shapes
  (:func:`edgematrix.core.onnx_io.fix_input_shapes`), then run once by ONNX Runtime at those shapes.

Each source prints three stages: data, the model (train / checkpoint / ONNX file), the FP32 ONNX
(export / check).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from edgematrix.errors import ModelError
from edgematrix.pipeline.context import Artifact, CellContext, Source

if TYPE_CHECKING:
    from edgematrix.matrix.loader import Cell
    from edgematrix.tasks.base import TaskAdapter


def user_code(model_cfg: Any, task: Any) -> list[str]:
    """Hashes of the code outside edgematrix that makes the model: a factory's package and a plugin task's
    package (their own source files, wherever they are installed); [] for edgematrix's own."""
    from edgematrix.core.cache import object_code_hash
    from edgematrix.registry import load_object

    hashes = [object_code_hash(load_object(model_cfg.factory, "factory"))] if model_cfg.factory else []
    if not type(task).__module__.startswith("edgematrix."):
        hashes.append(object_code_hash(type(task)))
    return hashes


def training_key(cell: Cell, task: TaskAdapter, data_key: str, torch_version: str) -> str:
    """The training cache's key: the model (family or factory), its params, input shape and training config,
    the dataset's key, the training code (``task.train_code``; a factory's and a plugin task's own packages,
    :func:`user_code`) and torch's release (``2.13.0`` of ``2.13.0+cpu``). Also used by ``edgematrix
    cache-key`` to name a CI cache by its training inputs without building anything."""
    from edgematrix.core.cache import code_hash, content_key

    model_cfg = cell.model
    return content_key(
        model_cfg.origin, model_cfg.params, model_cfg.input_shape, model_cfg.train.model_dump(), data_key,
        code_hash(list(task.train_code)), torch_version.split("+")[0], *user_code(model_cfg, task),
    )  # fmt: skip


def build_source(ctx: CellContext) -> Source:
    cell, options, stages, task = ctx.cell, ctx.options, ctx.stages, ctx.task
    model_cfg = cell.model
    configured = options.data_root if options.data_root is not None else model_cfg.data_root
    real = bool(configured or os.environ.get("EDGEMATRIX_DATA_ROOT"))
    stages.start("data", f"{model_cfg.dataset or f'task {task.name}'} ({'real' if real else 'synthetic'})")
    data = task.load_data(model_cfg, options.data_root, options.cache_dir)
    stages.done(escape(f"{data.label} at {data.root} ({len(data.train)} train / {len(data.test)} test, {data.key})"))
    if model_cfg.source == "onnx":
        return _onnx_source(ctx, data)
    return _torch_source(ctx, data)


def _torch_source(ctx: CellContext, data: Any) -> Source:
    import torch

    from edgematrix.core.cache import code_hash, content_key, file_sha256
    from edgematrix.models.sources import build_module, load_weights, output_count

    cell, options, stages, task = ctx.cell, ctx.options, ctx.stages, ctx.task
    model_cfg = cell.model
    cache = options.cache_dir
    model = build_module(model_cfg)
    own_code = user_code(model_cfg, task)  # code outside edgematrix keys the caches by its own sources
    if model_cfg.checkpoint is not None:
        ckpt = Path(model_cfg.checkpoint)
        stages.start("checkpoint", f"{ckpt} (torch.load weights_only=True) into {model_cfg.origin}")
        tensors = load_weights(model, ckpt)
        stages.done(escape(f"{tensors} tensors loaded; not trained (the checkpoint's weights are the FP32 reference)"))
        cache_hit, seconds = True, 0.0
        origin = f"checkpoint {ckpt} (sha256 {file_sha256(ckpt)[:12]}), {model_cfg.source} {model_cfg.origin}"
    else:
        train_key = training_key(cell, task, data.key, torch.__version__)
        ckpt = cache / "checkpoints" / f"{cell.model_name}-{train_key}.pt"
        stages.start(
            "train", f"{model_cfg.train.epochs} epochs, batch {model_cfg.train.batch_size} (cache key {train_key})"
        )
        trained = task.train(model, data, model_cfg.train, ckpt, progress=options.progress)
        stages.done(escape("reused cached checkpoint" if trained.cache_hit else f"checkpoint {ckpt}"))
        cache_hit, seconds = trained.cache_hit, trained.seconds
        origin = "cached checkpoint" if cache_hit else f"trained in {seconds:.0f} s"
    names = tuple(task.output_names)
    if not names:  # a task that takes the model's outputs as they come (outputs): name them in order
        count = output_count(model, list(model_cfg.input_shape))
        names = ("output",) if count == 1 else tuple(f"output{i}" for i in range(count))
        setattr(task, "output_names", names)  # noqa: B010 - the task's names for this model (a ClassVar)
    export_key = content_key(file_sha256(ckpt), code_hash(["export/onnx_export"]), *own_code)
    art_dir = cache / "artifacts" / f"{cell.model_name}-{export_key}"
    fp32 = art_dir / "fp32.onnx"
    stages.start("export", f"ONNX opset 17 → {fp32}")
    note = _export(model, list(model_cfg.input_shape), fp32, names)
    stages.done(escape(note))
    return Source(data, model, ckpt, data.key, cache_hit, seconds, art_dir, Artifact(fp32, "fp32"), note, origin=origin)


def _export(model: Any, input_shape: list[int], fp32: Path, names: tuple[str, ...]) -> str:
    from edgematrix.core.cache import load_json_entry, reuse, seal, write_json_entry
    from edgematrix.export.onnx_export import export_onnx

    check = load_json_entry(fp32.parent / "export.json", "export check") if reuse(fp32, "FP32 ONNX export") else None
    if isinstance(check, dict):
        return f"reused cached export; max |onnx - torch| = {check['max_abs_diff']:.2e} (atol {check['atol']:g})"
    res = export_onnx(model, tuple(input_shape), fp32, output_names=names, input_name="input")
    seal(fp32)
    check = {"max_abs_diff": res.max_abs_diff, "atol": res.atol, "rtol": res.rtol, "simplified": res.simplified}
    write_json_entry(fp32.parent / "export.json", check)
    return (
        f"max |onnx - torch| = {res.max_abs_diff:.2e} (atol {res.atol:g}, rtol {res.rtol:g}), "
        f"simplified={res.simplified}"
    )


def _onnx_source(ctx: CellContext, data: Any) -> Source:
    from edgematrix.core.cache import code_hash, content_key, file_sha256, reuse, seal
    from edgematrix.core.onnx_io import fix_input_shapes, read_interface

    cell, options, stages, task = ctx.cell, ctx.options, ctx.stages, ctx.task
    model_cfg = cell.model
    path = Path(str(model_cfg.onnx))
    shapes = {name: list(shape) for name, shape in model_cfg.input_shapes.items()}
    shown = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items())
    stages.start("model", f"ONNX file {path}, inputs fixed to the declared shapes ({shown})")
    interface = read_interface(path)
    digest = file_sha256(path)
    art_dir = (
        options.cache_dir
        / "artifacts"
        / f"{cell.model_name}-{content_key(digest, shapes, code_hash(['core/onnx_io']))}"
    )
    fp32 = art_dir / "fp32.onnx"
    if reuse(fp32, "FP32 ONNX (inputs fixed)"):
        fixed = read_interface(fp32)
        how = "reused cached copy"
    else:
        fixed = fix_input_shapes(path, fp32, shapes)
        seal(fp32)
        how = "copied"
    files_dims = "; ".join(f"{s.name} {s.describe()}" for s in interface.inputs)
    outputs = ", ".join(f"{s.name} {s.describe()}" for s in fixed.outputs)
    stages.done(
        escape(
            f"{how} (opset {interface.opset}, producer {interface.producer or '?'}, sha256 {digest[:12]}); the file's "
            f"inputs {files_dims}; outputs {outputs}"
        )
    )
    missing = [n for n in task.output_names if n not in fixed.output_names]
    if missing:
        raise ModelError(
            f"{path}: task {task.name!r} reads output(s) {', '.join(missing)}, which the model does not have (its "
            f"outputs: {', '.join(fixed.output_names)}); use task 'outputs' or a task written for this model"
        )
    input_name = _input_name(task, fixed.input_names, model_cfg)
    stages.start("check", f"ONNX Runtime runs the model at the declared shapes ({shown})")
    note = _check_runs(fp32, task.feed(data.test, 0, input_name))
    stages.done(escape(note))
    origin = f"ONNX file {path} (sha256 {digest[:12]}), inputs fixed to {shown}; not trained or exported"
    return Source(
        data, None, path, data.key, True, 0.0, art_dir, Artifact(fp32, "fp32"), note,
        input_name=input_name, origin=origin,
    )  # fmt: skip


def _input_name(task: Any, names: list[str], model_cfg: Any) -> str:
    """The input a one-input task feeds: the image input (``images.input``), the model's only input, else
    the input the task is written for (``input``)."""
    if model_cfg.images.input:
        return str(model_cfg.images.input)
    if len(names) == 1:
        return names[0]
    image = getattr(task, "image_input", "")
    return str(image or ("input" if "input" in names else names[0]))


def _check_runs(fp32: Path, feed: dict[str, Any]) -> str:
    """Run ``fp32`` once on ``feed`` with ONNX Runtime: every output finite; a note of their shapes."""
    import numpy as np

    from edgematrix.backends.base import create_runner

    with create_runner("onnxruntime", path=fp32, providers=("CPUExecutionProvider",), intra_op_threads=1) as runner:
        outputs = runner.infer(feed)
    bad = [
        n for n, v in outputs.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()
    ]
    if bad:
        raise ModelError(
            f"{fp32}: output(s) {', '.join(bad)} are not finite on the first evaluation input; check the declared "
            "preprocessing ([models.X.images]) and input shapes"
        )
    shapes = ", ".join(f"{n} {np.asarray(v).dtype}{list(np.asarray(v).shape)}" for n, v in outputs.items())
    return f"outputs on the first evaluation sample: {shapes}; all finite"

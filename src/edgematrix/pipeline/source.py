"""The source stage: the dataset, the trained model and its FP32 ONNX export, each cached by content.

data (the model's dataset, real or synthetic) → train (cached by config + data + code) → export FP32
ONNX (cached by checkpoint + export code; ONNX Runtime's outputs checked against torch's).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from edgematrix.pipeline.context import Artifact, CellContext, Source

if TYPE_CHECKING:
    from edgematrix.matrix.loader import Cell
    from edgematrix.tasks.base import TaskAdapter


def training_key(cell: Cell, task: TaskAdapter, data_key: str, torch_version: str) -> str:
    """The training cache's key: the model, its training config, the dataset's key, the training code
    (``task.train_code``) and torch's release (``2.13.0`` of ``2.13.0+cpu``). Also used by
    ``edgematrix cache-key`` to name a CI cache by its training inputs without building anything."""
    from edgematrix.core.cache import code_hash, content_key

    model_cfg = cell.model
    return content_key(
        model_cfg.family, model_cfg.params, model_cfg.input_shape, model_cfg.train.model_dump(), data_key,
        code_hash(list(task.train_code)), torch_version.split("+")[0],
    )  # fmt: skip


def build_source(ctx: CellContext) -> Source:
    import torch

    from edgematrix.core.cache import (
        code_hash,
        content_key,
        file_sha256,
        load_json_entry,
        reuse,
        seal,
        write_json_entry,
    )
    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.models import create_model

    cell, options, stages, task = ctx.cell, ctx.options, ctx.stages, ctx.task
    model_cfg = cell.model
    cache = options.cache_dir

    configured = options.data_root if options.data_root is not None else model_cfg.data_root
    real = bool(configured or os.environ.get("EDGEMATRIX_DATA_ROOT"))
    stages.start("data", f"{model_cfg.dataset} ({'real' if real else 'synthetic'})")
    data = task.load_data(model_cfg, options.data_root, cache)
    stages.done(f"{data.label} at {data.root} ({len(data.train)} train / {len(data.test)} test images, {data.key})")

    model = create_model(model_cfg.family, model_cfg.input_shape, **model_cfg.params)
    train_key = training_key(cell, task, data.key, torch.__version__)
    ckpt = cache / "checkpoints" / f"{cell.model_name}-{train_key}.pt"
    stages.start(
        "train", f"{model_cfg.train.epochs} epochs, batch {model_cfg.train.batch_size} (cache key {train_key})"
    )
    trained = task.train(model, data, model_cfg.train, ckpt, progress=options.progress)
    stages.done("reused cached checkpoint" if trained.cache_hit else f"checkpoint {ckpt}")

    art_dir = (
        cache / "artifacts" / f"{cell.model_name}-{content_key(file_sha256(ckpt), code_hash(['export/onnx_export']))}"
    )
    fp32 = art_dir / "fp32.onnx"
    stages.start("export", f"ONNX opset 17 → {fp32}")
    check = load_json_entry(art_dir / "export.json", "export check") if reuse(fp32, "FP32 ONNX export") else None
    if isinstance(check, dict):
        note = f"reused cached export; max |onnx - torch| = {check['max_abs_diff']:.2e} (atol {check['atol']:g})"
    else:
        res = export_onnx(model, tuple(model_cfg.input_shape), fp32, output_names=task.output_names, input_name="input")
        seal(fp32)
        check = {"max_abs_diff": res.max_abs_diff, "atol": res.atol, "rtol": res.rtol, "simplified": res.simplified}
        write_json_entry(art_dir / "export.json", check)
        note = (
            f"max |onnx - torch| = {res.max_abs_diff:.2e} (atol {res.atol:g}, rtol {res.rtol:g}), "
            f"simplified={res.simplified}"
        )
    stages.done(note)
    return Source(
        data, model, ckpt, data.key, trained.cache_hit, trained.seconds, art_dir, Artifact(fp32, "fp32"), note
    )

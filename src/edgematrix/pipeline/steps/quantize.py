"""INT8 post-training quantization (``[recipes.X.quantize]``): the step, and the PTQ every other step uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgematrix.pipeline.context import Artifact, CellContext
from edgematrix.pipeline.steps.base import RecipeStep

#: fields of [quantize] that configure the mixed-precision search, not the quantized model itself
_PTQ_ONLY_FIELDS = {"accuracy_budget", "sensitivity_images", "max_float_layers"}


def ptq(
    ctx: CellContext,
    source_fp32: Path,
    tag: str,
    *,
    exclude: tuple[str, ...] = (),
    out: Path | None = None,
    probe: bool = False,
) -> tuple[Path, str]:
    """INT8 PTQ of ``source_fp32`` with the recipe's [quantize] section, cached by content and sealed.

    ``probe``: a latency probe of the pruning search, calibrated on 2 images with minmax (the graph,
    hence the latency, does not depend on the calibration). Returns the QDQ file and a note.
    """
    from edgematrix.core.cache import code_hash, content_key, file_sha256, reuse, seal
    from edgematrix.optimize.graph import pad_input_channels
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

    assert ctx.source is not None
    q, backend, split = ctx.cell.recipe.quantize, ctx.shipped_backend, ctx.source.data.train
    assert q is not None
    qcfg = QuantizeConfig(
        method="minmax" if probe else q.method,
        calibration_images=2 if probe else q.calibration_images,
        per_channel=q.per_channel,
        percentile=q.percentile,
        symmetric_activations=q.symmetric_for(backend),
        exclude_nodes=exclude,
    )
    if out is None:
        qkey = content_key(
            q.model_dump(exclude=_PTQ_ONLY_FIELDS), qcfg.symmetric_activations, exclude,
            code_hash(["optimize/quantize", "optimize/graph"]), ctx.source.data_key, file_sha256(source_fp32),
        )  # fmt: skip
        out = ctx.source.art_dir / f"{tag}-{qkey}.onnx"
    if reuse(out, "INT8 model"):
        return out, f"reused cached INT8 model {out.name}"
    n = min(qcfg.calibration_images, len(split))
    input_name = ctx.source.input_name
    calib = (ctx.task.feed(split, i, input_name) for i in range(n))  # every input of the model, by name
    source, padded = source_fp32, 0
    if q.pad_input_channels:
        source = source_fp32.with_name(f"{source_fp32.stem}-pad{q.pad_input_channels}.onnx")
        padded = pad_input_channels(source_fp32, source, input_name, q.pad_input_channels)
    qres = quantize_static_qdq(source, out, calib, input_name=input_name, config=qcfg)
    seal(out)
    pad_note = f", input conv padded to {q.pad_input_channels} channels" if padded else ""
    return out, f"{qres.quantized_nodes} nodes quantized{pad_note} → {out.name}"


def export_cached(model: Any, input_shape: list[int], path: Path, output_names: tuple[str, ...]) -> str:
    """Export ``model`` to ``path`` unless a sealed export is there already; returns a note."""
    from edgematrix.core.cache import reuse, seal
    from edgematrix.export.onnx_export import export_onnx

    if reuse(path, "ONNX export"):
        return f"reused cached export {path.name}"
    res = export_onnx(model, tuple(input_shape), path, output_names=output_names, input_name="input")
    seal(path)
    return f"max |onnx - torch| = {res.max_abs_diff:.2e} → {path.name}"


class PtqStep(RecipeStep):
    """INT8 PTQ of the FP32 model: a QDQ model in the form the target's backend runs fastest."""

    name = "ptq"
    order = 40

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        q = recipe.quantize
        others = recipe.prune is not None or recipe.qat is not None or recipe.split is not None
        return q is not None and q.mode == "static" and q.accuracy_budget is None and not others

    def build(self) -> None:
        ctx = self.ctx
        assert ctx.source is not None and ctx.build is not None
        q = ctx.cell.recipe.quantize
        assert q is not None
        form = "S8S8 symmetric, TensorRT form" if q.symmetric_for(ctx.shipped_backend) else "U8S8, ORT CPU form"
        ctx.stages.start("quantize", f"INT8 PTQ ({q.method}, {q.calibration_images} calibration images, QDQ {form})")
        path, note = ptq(ctx, ctx.build.candidate.path, "int8")
        ctx.build.candidate = Artifact(path, "int8")  # an fx8 recipe rewrites it next (steps/fx8.py)
        ctx.stages.done(note)

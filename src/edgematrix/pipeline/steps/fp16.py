"""FP16 (recipes of precision ``fp16`` without other steps): the FP32 ONNX model converted to FP16 with
ONNX Runtime's converter, inputs and outputs kept in float32 — an FP16 candidate is an FP16 artifact on
every backend that runs ONNX (TensorRT builds its FP16 engine from it; the ``torch`` backend runs the
module under FP16 autocast instead)."""

from __future__ import annotations

from typing import Any

from edgematrix.pipeline.context import Artifact
from edgematrix.pipeline.steps.base import RecipeStep


class Fp16Step(RecipeStep):
    name = "fp16"
    order = 40

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        others = (recipe.quantize, recipe.prune, recipe.qat, recipe.split)
        return str(recipe.precision) == "fp16" and all(x is None for x in others)

    def build(self) -> None:
        import onnx

        from edgematrix.core.cache import code_hash, content_key, file_sha256, reuse, seal
        from edgematrix.fileio import atomic_write_bytes

        ctx = self.ctx
        src, build = ctx.source, ctx.build
        assert src is not None and build is not None
        key = content_key(file_sha256(src.fp32.path), code_hash(["pipeline/steps/fp16"]))
        out = src.art_dir / f"fp16-{key}.onnx"
        ctx.stages.start(
            "fp16", f"FP32 ONNX → FP16 (ONNX Runtime's float16 converter, float32 inputs/outputs) → {out.name}"
        )
        if reuse(out, "FP16 model"):
            note = "reused cached FP16 model"
        else:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(src.fp32.path)), keep_io_types=True)
            atomic_write_bytes(out, model.SerializeToString())
            seal(out)
            note = f"{out.stat().st_size / 1e6:.1f} MB (FP32 {src.fp32.path.stat().st_size / 1e6:.1f} MB)"
        build.candidate = Artifact(out, "fp16")
        ctx.stages.done(note)

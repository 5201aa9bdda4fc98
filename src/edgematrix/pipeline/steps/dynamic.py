"""Dynamic-range INT8 (``[recipes.X.quantize]`` with ``mode = "dynamic"``): ONNX Runtime's
``quantize_dynamic``.

Weights are stored as int8; activations are quantized at run time, per inference, from their observed
range (``DynamicQuantizeLinear`` → ``ConvInteger`` / ``MatMulInteger``): no calibration data, nothing
learned. It is TF Lite's "dynamic range quantization"; ONNX Runtime recommends it for the MatMuls of
transformers and RNNs rather than CNNs, whose int8 fast path is static QDQ (:mod:`.quantize`).
``per_channel`` of the section applies to the weights. The file is cached by content and sealed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgematrix.pipeline.context import Artifact
from edgematrix.pipeline.steps.base import RecipeStep

#: the integer operators quantize_dynamic writes (counted into the facts and the report)
DYNAMIC_OPS = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul")


def quantize_dynamic_int8(source: Path, out: Path, *, per_channel: bool) -> dict[str, int]:
    """Dynamic-range INT8 of ``source`` (FP32 ONNX) written to ``out``; returns the count of each integer op.

    A model in which nothing was quantized (no Conv / MatMul) raises :class:`~edgematrix.errors.ModelError`.
    """
    import contextlib
    import io
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgematrix.errors import ModelError

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer logs advice through the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(source, tmp, weight_type=QuantType.QInt8, per_channel=per_channel)
        ops = [n.op_type for n in onnx.load(str(tmp)).graph.node]
        counts = {op: ops.count(op) for op in DYNAMIC_OPS if op in ops}
        if not counts:
            raise ModelError(f"quantize_dynamic quantized nothing in {source} (no Conv / MatMul); nothing is INT8")
        tmp.replace(out)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
    return counts


class DynamicInt8Step(RecipeStep):
    """The FP32 model with int8 weights and run-time activation quantization (see the module docstring)."""

    name = "dynamic_int8"
    order = 40

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        return recipe.quantize is not None and recipe.quantize.mode == "dynamic"

    def build(self) -> None:
        from edgematrix.core.cache import (
            code_hash,
            content_key,
            file_sha256,
            load_json_entry,
            reuse,
            seal,
            write_json_entry,
        )

        ctx = self.ctx
        assert ctx.source is not None and ctx.build is not None
        q = ctx.cell.recipe.quantize
        assert q is not None
        source = ctx.build.candidate.path
        ctx.stages.start(
            "quantize", f"dynamic-range INT8 (onnxruntime quantize_dynamic, int8 weights, per_channel={q.per_channel})"
        )
        key = content_key(file_sha256(source), q.per_channel, code_hash(["pipeline/steps/dynamic"]))
        out = ctx.source.art_dir / f"dynamic-int8-{key}.onnx"
        counts = load_json_entry(out.with_suffix(".json"), "dynamic INT8 facts") if reuse(out, "INT8 model") else None
        if isinstance(counts, dict):
            note = f"reused cached {out.name}"
        else:
            counts = quantize_dynamic_int8(source, out, per_channel=q.per_channel)
            seal(out)
            write_json_entry(out.with_suffix(".json"), counts)
            note = f"→ {out.name}"
        self.ops = {str(k): int(v) for k, v in counts.items()}
        ctx.build.candidate = Artifact(out, "int8")
        ctx.build.facts.update({"quantize_mode": "dynamic", "dynamic_int8_ops": self._ops_text()})
        ctx.stages.done(f"{self._ops_text()} {note}")

    def _ops_text(self) -> str:
        return ", ".join(f"{n} {op}" for op, n in self.ops.items())

    def report(self) -> list[str]:
        m, primary = self.ctx.measured, self.ctx.primary
        cand, ref = m[primary, "candidate"], m[primary, "reference"]
        return [
            "",
            "## Dynamic-range INT8",
            "",
            f"onnxruntime quantize_dynamic: {self._ops_text()}; int8 weights, activations quantized on every run "
            f"(no calibration). {cand.artifact.model_bytes() / ref.artifact.model_bytes():.3f}× the FP32 file; "
            f"same run: {ref.samples.p50_ms / cand.samples.p50_ms:.2f}× the FP32 reference's speed on {primary}.",
        ]

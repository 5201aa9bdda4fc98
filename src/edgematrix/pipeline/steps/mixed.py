"""Mixed precision by sensitivity (``[recipes.X.quantize] accuracy_budget``): full INT8 PTQ, each
quantized layer's accuracy effect on held-out training images, and the greedy set of layers kept in
float until the budget holds; the layers and their latency cost vs full INT8 are reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgematrix.pipeline.context import Artifact, Fact
from edgematrix.pipeline.steps.base import RecipeStep
from edgematrix.pipeline.steps.prune import runner_options
from edgematrix.pipeline.steps.quantize import ptq


class MixedPrecisionStep(RecipeStep):
    name = "mixed_precision"
    order = 40

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        q = recipe.quantize
        return q is not None and q.accuracy_budget is not None and recipe.prune is None and recipe.qat is None

    def stage_count(self) -> int:
        return 2

    def build(self) -> None:
        import tempfile

        from edgematrix.backends.base import create_runner
        from edgematrix.core.cache import (
            code_hash,
            content_key,
            file_sha256,
            load_json_entry,
            reuse,
            seal,
            write_json_entry,
        )
        from edgematrix.optimize.mixed_precision import MixedPrecisionResult, mixed_precision_search

        ctx = self.ctx
        src, build, stages, cell, task = ctx.source, ctx.build, ctx.stages, ctx.cell, ctx.task
        assert src is not None and build is not None
        q = cell.recipe.quantize
        assert q is not None and q.accuracy_budget is not None
        stages.start("quantize", f"INT8 PTQ, every layer ({q.method}, {q.calibration_images} calibration images)")
        full, note = ptq(ctx, src.fp32.path, "int8")
        build.extra["int8_full"] = Artifact(full, "int8")
        stages.done(note)

        # held-out scoring subset: the last images of the training split (calibration takes the first)
        k = min(q.sensitivity_images, len(src.data.train))
        subset = task.holdout(src.data.train, k)
        # the shipped model's form is the target's; the search scores it on the backend this run executes
        # (an emulation's stand-in runs the same file)
        backend = ctx.primary
        key = content_key(
            q.model_dump(), q.symmetric_for(ctx.shipped_backend), file_sha256(src.fp32.path), src.data_key,
            code_hash(["optimize/quantize", "optimize/graph", "optimize/mixed_precision"]),
        )  # fmt: skip
        folder = src.art_dir / f"mixed-{key}"
        meta = folder / "mixed.json"
        stages.start(
            "sensitivity",
            f"per-layer sensitivity on {k} held-out training images, keep float until within "
            f"{q.accuracy_budget:g} points of FP32 (at most {q.max_float_layers} layers)",
        )
        cached = load_json_entry(meta, "mixed-precision search")
        if isinstance(cached, dict) and reuse(Path(cached["path"]), "mixed-precision model"):
            info = cached
            stages.done(f"reused cached search: float {', '.join(info['float_nodes']) or '(none)'}")
        else:
            options = runner_options(ctx, backend, "candidate", "int8")

            def evaluate(path: Path) -> float:
                with tempfile.TemporaryDirectory() as tmp, create_runner(backend, path=path, **options) as run:
                    score = task.evaluate(run, subset, Path(tmp), "probe", model=src.model, input_name="input")
                return float(score.accuracy)

            def quantize(exclude: tuple[str, ...], out: Path) -> Path:
                return ptq(ctx, src.fp32.path, "mixed", exclude=exclude, out=out)[0]

            res: MixedPrecisionResult = mixed_precision_search(
                src.fp32.path, folder, budget=q.accuracy_budget, quantize=quantize, evaluate=evaluate,
                max_float_layers=q.max_float_layers, progress=stages.say,
            )  # fmt: skip
            info = res.as_dict()
            seal(Path(info["path"]))
            write_json_entry(meta, info)
            stages.done(
                f"float: {', '.join(res.float_nodes) or '(none)'}; subset accuracy FP32 {res.fp32_score:.2f}, "
                f"full INT8 {res.int8_score:.2f}, mixed {res.final_score:.2f} ({res.evaluations} evaluations)"
            )
        build.candidate = Artifact(Path(info["path"]), cell.recipe.precision)
        self.info = info
        build.facts.update(
            {
                "accuracy_budget": float(info["budget"]),
                "float_layers": ",".join(info["float_nodes"]),
                "float_layer_count": len(info["float_nodes"]),
                "sensitivity_images": k,
                "subset_accuracy_fp32": round(float(info["fp32_score"]), 4),
                "subset_accuracy_int8_full": round(float(info["int8_score"]), 4),
                "subset_accuracy_mixed": round(float(info["final_score"]), 4),
            }
        )

    def verdicts(self) -> list[Any]:
        from edgematrix.gates.verdicts import Verdict

        info = self.info
        drop = float(info["fp32_score"]) - float(info["final_score"])
        return [
            Verdict(
                "mixed_precision_budget",
                "passed" if drop <= float(info["budget"]) else "failed",
                f"held-out subset: mixed {float(info['final_score']):.2f} vs FP32 {float(info['fp32_score']):.2f}, "
                f"drop {drop:+.2f} points (budget {float(info['budget']):g}); full INT8 "
                f"{float(info['int8_score']):.2f}; float: {', '.join(info['float_nodes']) or '(none)'}",
            )
        ]

    def facts(self) -> dict[str, Fact]:
        m, primary = self.ctx.measured, self.ctx.primary
        cand, full = m[primary, "candidate"], m[primary, "int8_full"]
        return {
            "int8_full_accuracy": round(full.score.accuracy, 6),
            "latency_cost_vs_int8_full": round(cand.samples.p50_ms / full.samples.p50_ms, 4),
        }

    def report(self) -> list[str]:
        info = self.info
        m, primary = self.ctx.measured, self.ctx.primary
        cand, full = m[primary, "candidate"], m[primary, "int8_full"]
        lines = [
            "",
            "## Mixed precision",
            "",
            f"Kept in float ({len(info['float_nodes'])}): {', '.join(info['float_nodes']) or '(none)'}. "
            f"Latency cost vs full INT8 (same run): {cand.samples.p50_ms:.2f} vs {full.samples.p50_ms:.2f} ms "
            f"({cand.samples.p50_ms / full.samples.p50_ms:.2f}×); test accuracy {cand.score.accuracy:.2f} vs full "
            f"INT8 {full.score.accuracy:.2f}.",
            "",
            "| layer | op | held-out accuracy with this layer float | gain vs full INT8 |",
            "|---|---|---:|---:|",
        ]
        for sens in info["sensitivities"][:12]:
            lines.append(
                f"| {sens['node']} | {sens['op_type']} | {sens['score_kept_float']:.2f} | {sens['gain']:+.2f} |"
            )
        return lines

"""Quantization-aware training (``[recipes.X.qat]`` + ``[quantize]``): ModelOpt fake quantization,
fine-tuned by distillation from the FP32 model; the deployed form is the QAT weights through the PTQ
pipeline, measured beside PTQ of the original model and ModelOpt's own QDQ export."""

from __future__ import annotations

from typing import Any

from edgematrix.pipeline.context import Artifact, Fact
from edgematrix.pipeline.steps.base import RecipeStep
from edgematrix.pipeline.steps.quantize import ptq


class QatStep(RecipeStep):
    name = "qat"
    order = 20
    needs_torch = True

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        return recipe.qat is not None

    def stage_count(self) -> int:
        return 2

    def build(self) -> None:
        import numpy as np
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
        from edgematrix.optimize.qat import qat_model

        ctx = self.ctx
        src, build, stages, cell, task = ctx.source, ctx.build, ctx.stages, ctx.cell, ctx.task
        assert src is not None and build is not None
        qs = cell.recipe.qat
        assert qs is not None
        # ModelOpt's CPU fake quantization fails in backward on channels-last tensors
        dcfg = task.distill_config(qs, cell.model.train, channels_last=False)
        key = content_key(
            file_sha256(src.checkpoint), qs.model_dump(), src.data_key,
            code_hash([*task.train_code, "train/distill", "optimize/qat"]), torch.__version__.split("+")[0],
        )  # fmt: skip
        qat_path = src.art_dir / f"qat-{key}.onnx"
        qat_fp32 = src.art_dir / f"qat-{key}-fp32.onnx"
        meta = qat_path.with_suffix(".json")
        stages.start(
            "qat",
            f"ModelOpt INT8 fake quantization, {qs.calibration_images} calibration images, {qs.epochs} epochs of "
            f"distillation (alpha {qs.alpha:g}, T {qs.temperature:g}, lr {qs.lr:g})",
        )
        reused = reuse(qat_path, "QAT model") and reuse(qat_fp32, "QAT model")
        cached = load_json_entry(meta, "QAT facts") if reused else None
        if isinstance(cached, dict):
            info = cached
            stages.done(f"reused cached QAT model {qat_path.name}")
        else:
            train = src.data.train
            n = min(qs.calibration_images, len(train))
            calib = [task.preprocess(train.images[i : i + 1]) for i in range(n)]

            def finetune(student: Any) -> Any:
                return task.finetune(student, src.model, src.data, dcfg, progress=ctx.options.progress, label="qat")

            res = qat_model(
                src.model, calib, finetune, qat_path, qat_fp32, input_shape=cell.model.input_shape,
                output_names=task.output_names,
            )  # fmt: skip
            info = {
                "qdq_pairs": res.qdq_pairs, "max_rel_diff": res.max_rel_diff,
                "folded_batchnorms": res.folded_batchnorms, "seconds": res.seconds, "history": res.history,
                "calibration_images": res.calibration_images,
            }  # fmt: skip
            seal(qat_path)
            seal(qat_fp32)
            write_json_entry(meta, info)
            stages.done(
                f"{res.qdq_pairs} DequantizeLinear, {res.folded_batchnorms} BatchNorms folded, trained in "
                f"{res.seconds:.0f} s, ModelOpt QDQ vs torch: max relative difference {res.max_rel_diff:.2e}"
            )
        q = cell.recipe.quantize
        assert q is not None
        stages.start(
            "quantize",
            f"the QAT-trained weights through the PTQ pipeline ({q.method}, {q.calibration_images} images: the "
            "deployed QDQ form), and PTQ of the original FP32 model to compare",
        )
        cand, note = ptq(ctx, qat_fp32, "qat-int8")
        ptq_path, note2 = ptq(ctx, src.fp32.path, "int8")
        build.candidate = Artifact(cand, cell.recipe.precision)
        build.extra["ptq"] = Artifact(ptq_path, "int8")
        build.extra["qat_modelopt_qdq"] = Artifact(qat_path, "int8")
        stages.done(f"QAT: {note}; PTQ: {note2}")
        self.info = info
        build.facts.update(
            {
                "qat_epochs": qs.epochs,
                "qat_qdq_pairs": int(info["qdq_pairs"]),
                "qat_export_max_rel_diff": float(np.float64(info["max_rel_diff"])),
                "distill_alpha": qs.alpha,
            }
        )

    def verdicts(self) -> list[Any]:
        from edgematrix.gates.verdicts import Verdict

        qs = self.ctx.cell.recipe.qat
        assert qs is not None
        diff = float(self.info["max_rel_diff"])
        return [
            Verdict(
                "qat_export_matches_torch",
                "passed" if diff <= qs.export_tolerance else "failed",
                f"ModelOpt QDQ ONNX on ONNX Runtime vs the fake-quantized torch model: max |diff| / max |torch| "
                f"{diff:.2e} (tolerance {qs.export_tolerance:g})",
            )
        ]

    def facts(self) -> dict[str, Fact]:
        m, primary = self.ctx.measured, self.ctx.primary
        cand, ptq_ = m[primary, "candidate"], m[primary, "ptq"]
        return {
            "ptq_accuracy": round(ptq_.score.accuracy, 6),
            "qat_minus_ptq_accuracy": round(cand.score.accuracy - ptq_.score.accuracy, 6),
            "qat_vs_ptq_p50_ratio": round(cand.samples.p50_ms / ptq_.samples.p50_ms, 4),
        }

    def report(self) -> list[str]:
        ctx = self.ctx
        m, primary = ctx.measured, ctx.primary
        ref, ptq_, cand, mo = (m[primary, r] for r in ("reference", "ptq", "candidate", "qat_modelopt_qdq"))
        from edgematrix.gates.verdicts import metric_loss, metric_text

        extras = list(ref.score.extras)
        metric, direction = ctx.task.metric, ctx.task.metric_direction
        worse = "drop vs FP32" if direction == "higher" else "rise vs FP32 (lower is better)"
        lines = [
            "",
            "## QAT vs PTQ",
            "",
            f"| model | {metric} | {worse} |" + "".join(f" {k} |" for k in extras) + " p50 (ms) | size |",
            "|---|---:|---:|" + "---:|" * len(extras) + "---:|---:|",
        ]
        for label, x in (
            ("FP32 reference", ref),
            ("PTQ (INT8)", ptq_),
            ("QAT (INT8, PTQ form)", cand),
            ("QAT (ModelOpt QDQ)", mo),
        ):
            loss = metric_loss(ref.score.accuracy, x.score.accuracy, direction)
            lines.append(
                f"| {label} | {metric_text(x.score.accuracy, direction)} | "
                + (f"{loss:+.2f} |" if direction == "higher" else f"{loss:+.3g} |")
                + "".join(f" {x.score.extras.get(k, 0.0):.4f} |" for k in extras)
                + f" {x.samples.p50_ms:.2f} | {x.artifact.model_bytes() / 1e6:.1f} MB |"
            )
        hist = self.info.get("history") or []
        last = ", ".join(f"{k} {v:.3f}" for k, v in hist[-1].items() if k != "epoch") if hist else "cached"
        lines += [
            "",
            "The deployed QAT model is the QAT-trained weights through the PTQ pipeline (the form ONNX Runtime's "
            "int8 kernels fuse); ModelOpt's own QDQ export (TensorRT's form, quantizers on layer inputs only) is "
            "measured too.",
            "",
            f"QAT: {self.info['qdq_pairs']} DequantizeLinear, {self.info['folded_batchnorms']} BatchNorms folded, "
            f"{len(hist)} epochs (last: {last}); QAT − PTQ {metric} "
            + (
                f"{cand.score.accuracy - ptq_.score.accuracy:+.2f} points."
                if direction == "higher"
                else f"{cand.score.accuracy - ptq_.score.accuracy:+.3g} (lower is better)."
            ),
        ]
        return lines

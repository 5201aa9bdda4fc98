"""Split a multi-head model (``[recipes.X.split]``): encoder and one subgraph per head (joins checked),
each deployed in its placement's precision (INT8 heads calibrated on the encoder's cached features);
after the latency stage, frames are streamed sequentially vs 2-stage pipelined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgematrix.pipeline.context import Artifact
from edgematrix.pipeline.steps.base import RecipeStep

SPLIT_JOIN_ATOL = 1e-4  # encoder → heads vs the whole FP32 model (max abs difference)


class SplitStep(RecipeStep):
    name = "split"
    order = 50

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        return recipe.split is not None

    def stage_count(self) -> int:
        s = self.ctx.cell.recipe.split
        return 1 + int(bool(s is not None and s.pipeline))

    def build(self) -> None:
        from edgematrix.core.cache import code_hash, content_key, file_sha256
        from edgematrix.export.split import split_model
        from edgematrix.optimize.quantize import QuantizeConfig
        from edgematrix.optimize.subgraph import deploy_split

        ctx = self.ctx
        src, build, stages, cell, task = ctx.source, ctx.build, ctx.stages, ctx.cell, ctx.task
        assert src is not None and build is not None
        s, q, backend = cell.recipe.split, cell.recipe.quantize, ctx.shipped_backend
        assert s is not None
        heads = list(task.output_names)
        placements = s.placements(heads)
        plan = ", ".join(
            f"{n} {p.precision}@{p.device}" + (f"/{p.threads}t" if p.threads else "") for n, p in placements.items()
        )
        stages.start("split", f"encoder + {len(heads)} heads ({plan}); joins checked to {SPLIT_JOIN_ATOL:g}")
        key = content_key(
            file_sha256(src.fp32.path), s.model_dump(), q.model_dump() if q else None, src.data_key,
            q.symmetric_for(backend) if q else None,
            code_hash(["export/split", "optimize/subgraph", "optimize/quantize"]),
        )  # fmt: skip
        folder = src.art_dir / f"split-{key}"
        split = split_model(src.fp32.path, folder / "fp32", heads=heads, atol=SPLIT_JOIN_ATOL)
        qcfg = QuantizeConfig(
            method=q.method if q else "minmax",
            calibration_images=s.calibration_images,
            per_channel=q.per_channel if q else True,
            percentile=q.percentile if q else 99.999,
            symmetric_activations=q.symmetric_for(backend) if q else False,
        )
        train = src.data.train
        n = min(s.calibration_images, len(train))
        calibration = (task.preprocess(train.images[i : i + 1]) for i in range(n))
        deployed = deploy_split(
            split, folder / "deployed", placements, calibration=calibration, calibration_images=n,
            quantize_config=qcfg, cache_dir=ctx.options.cache_dir / "split-features",
        )  # fmt: skip
        build.candidate = Artifact(deployed.manifest, cell.recipe.precision, kind="split")
        cut = ",".join(f.name for f in split.features)
        self.info: dict[str, Any] = {
            "max_abs_diff": split.max_abs_diff,
            "atol": SPLIT_JOIN_ATOL,
            "features": [(f.name, list(f.shape)) for f in split.features],
            "auto_cut": split.auto_cut,
            "placements": {k: v.model_dump() for k, v in placements.items()},
            "files": {k: str(v) for k, v in deployed.files.items()},
            "notes": {k: list(v) for k, v in deployed.notes.items() if v},
        }
        build.facts.update(
            {"split_max_abs_diff": float(split.max_abs_diff), "split_features": cut, "split_placements": plan}
        )
        stages.done(
            f"cut at {cut} ({'found' if split.auto_cut else 'given'}), encoder → heads vs whole model max |diff| "
            f"{split.max_abs_diff:.2e}; deployed {deployed.manifest}"
        )

    def after_measure(self) -> None:
        """Stream test frames through the deployed split: sequential vs 2-stage pipelined (vs the whole model)."""
        from edgematrix.backends.base import create_runner
        from edgematrix.backends.split.runner import SplitRunner
        from edgematrix.measure.pipeline import measure_pipeline

        ctx = self.ctx
        s = ctx.cell.recipe.split
        assert s is not None and ctx.source is not None and ctx.build is not None
        if not s.pipeline:
            return
        test = ctx.source.data.test
        n = min(s.frames, len(test))
        frames = [{"input": ctx.task.preprocess(test.images[i : i + 1])} for i in range(n)]
        threads = ctx.cell.target.threads
        ctx.stages.start(
            "pipeline",
            f"{n} frames: sequential (encoder, heads; {threads or 'all'} threads each) vs pipelined (encoder of frame "
            "t+1 beside the heads of frame t, each stage with its placement's threads), alternating 3 rounds",
        )
        manifest = ctx.build.candidate.path
        seq = SplitRunner(manifest, intra_op_threads=threads, threads=threads)
        pipe = SplitRunner(manifest, intra_op_threads=threads)
        with seq, pipe, create_runner("onnxruntime", path=ctx.source.fp32.path, intra_op_threads=threads) as whole:
            report = measure_pipeline(seq, frames, pipelined=pipe, whole=whole, rounds=3)
        summary = report.summary()
        self.info["pipeline"] = {**summary, "reason": report.reason()}
        ctx.build.facts.update({f"pipeline_{k}" if not k.startswith("pipeline") else k: v for k, v in summary.items()})
        ctx.stages.done(
            f"sequential {report.sequential_fps:.1f} FPS, pipelined {report.pipelined_fps:.1f} FPS "
            f"({report.speedup:.2f}×); {report.reason()}"
        )

    def verdicts(self) -> list[Any]:
        from edgematrix.gates.verdicts import Verdict

        info = self.info
        diff, atol = info["max_abs_diff"], info["atol"]
        cut = ", ".join(f"{n} {shape}" for n, shape in info["features"])
        return [
            Verdict(
                "split_joins_match",
                "passed" if diff <= atol else "failed",
                f"FP32 encoder → heads vs the whole model: max |diff| {diff:.2e} (tolerance {atol:g}, seeded "
                f"inputs); cut at {cut}",
            )
        ]

    def report(self) -> list[str]:
        info = self.info
        lines = [
            "",
            "## Split model",
            "",
            f"Encoder → heads equals the whole FP32 model within {info['atol']:g} (max |diff| "
            f"{info['max_abs_diff']:.2e}); cut at {', '.join(f'`{n}` {shape}' for n, shape in info['features'])} "
            f"({'found automatically' if info['auto_cut'] else 'as configured'}).",
            "",
            "| subgraph | precision | device | threads | size |",
            "|---|---|---|---:|---:|",
        ]
        for name, p in info["placements"].items():
            size = Path(info["files"][name]).stat().st_size / 1e6 if name in info["files"] else float("nan")
            lines.append(f"| {name} | {p['precision']} | {p['device']} | {p['threads'] or 'target'} | {size:.2f} MB |")
        notes = [f"- {name}: {n}" for name, ns in info["notes"].items() for n in ns]
        lines += ["", *notes] if notes else []
        pipe = info.get("pipeline")
        if pipe:
            lines += [
                "",
                "### Pipelined vs sequential",
                "",
                f"{pipe['frames']} frames, {pipe['rounds']} alternating rounds: sequential "
                f"{pipe['sequential_fps']:.1f} FPS (encoder {pipe['sequential_encoder_ms']:.2f} ms + heads "
                f"{pipe['sequential_heads_ms']:.2f} ms per frame), pipelined {pipe['pipelined_fps']:.1f} FPS: "
                f"**{pipe['pipeline_speedup']:.2f}×** (paired per round)"
                + (f"; whole FP32 model {pipe['whole_fps']:.1f} FPS" if "whole_fps" in pipe else "")
                + ".",
                "",
                f"Why: {pipe['reason']}.",
            ]
        return lines

"""Latency-aware structured pruning (``[recipes.X.prune]``, optional ``[finetune]`` and ``[quantize]``).

Search the pruning ratio that gives the requested speedup *in the precision the recipe deploys* on the
target's backend (each probe measured in the rounds the latency stage will run), prune, fine-tune by
distillation from the unpruned model, export, and (with ``[quantize]``) quantize both the pruned and
the unpruned model: the speedup of record is pruned INT8 vs unpruned INT8, in the same rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgematrix.pipeline.context import Artifact, Fact
from edgematrix.pipeline.steps.base import RecipeStep
from edgematrix.pipeline.steps.quantize import export_cached, ptq


def runner_options(ctx: Any, backend: str, role: str, precision: str) -> dict[str, Any]:
    """A backend's runner arguments for one role of this cell (the backend owns them: ``options_for``)."""
    from edgematrix.core.registries import backends

    model = {"input_shape": ctx.cell.model.input_shape, "output_names": ctx.task.output_names}
    cls = backends.get(backend)
    options: dict[str, Any] = cls.options_for(ctx.cell.target.model_dump(), role=role, precision=precision, model=model)
    return options


def finish_pruned(ctx: Any, student: Any, facts: dict[str, Fact], key: tuple[Any, ...] = ()) -> None:
    """The pruned ``student`` (a pruned copy of the source model) to the candidate: fine-tuned by distillation
    from the unpruned model when the recipe has ``[finetune]`` (cached by content; ``key``: what else made the
    student), exported, and with ``[quantize]`` quantized together with the unpruned model (the speedup's
    base, role ``unpruned``). ``facts`` (plus parameter counts and fine-tune settings) go into ``ctx.build``."""
    import torch

    from edgematrix.core.cache import code_hash, content_key, file_sha256
    from edgematrix.optimize.prune import channel_counts, parameter_count
    from edgematrix.tasks.base import TrainOutcome

    src, build, stages, cell, task = ctx.source, ctx.build, ctx.stages, ctx.cell, ctx.task
    recipe, p = cell.recipe, cell.recipe.prune
    counts = channel_counts(student)
    ft = recipe.finetune
    tune_key = content_key(
        file_sha256(src.checkpoint), counts, p.importance, ft.model_dump() if ft else None, src.data_key,
        code_hash([*task.train_code, "train/distill", "optimize/prune"]), torch.__version__.split("+")[0], *key,
    )  # fmt: skip
    facts = {**facts, "params": parameter_count(student), "unpruned_params": parameter_count(src.model)}
    if ft is not None:
        from edgematrix.train.lane import reuse_checkpoint, save_checkpoint

        dcfg = task.distill_config(ft, cell.model.train)
        ft_ckpt = ctx.options.cache_dir / "checkpoints" / f"{cell.model_name}-pruned-{tune_key}.pt"
        stages.start(
            "finetune",
            f"distillation from the unpruned model: {ft.epochs} epochs, lr {ft.lr:g}, alpha {ft.alpha:g}, "
            f"T {ft.temperature:g} (cache key {tune_key})",
        )
        if reuse_checkpoint(student, ft_ckpt) is not None:
            student.eval()
            tuned = TrainOutcome(ft_ckpt, True, 0.0, [])
        else:
            tuned = task.finetune(student, src.model, src.data, dcfg, progress=ctx.options.progress, label="finetune")
            save_checkpoint(student, ft_ckpt, {"history": tuned.history, "seconds": tuned.seconds})
        last = tuned.history[-1] if tuned.history else {}
        stages.done(
            "reused cached checkpoint"
            if tuned.cache_hit
            else f"{tuned.seconds:.0f} s, last epoch kd {last.get('kd', 0):.3f} task {last.get('task', 0):.3f}"
        )
        facts.update({"finetune_epochs": ft.epochs, "distill_alpha": ft.alpha, "distill_temperature": ft.temperature})
    pruned_fp32 = src.art_dir / f"pruned-{tune_key}.onnx"
    stages.start("export pruned", f"ONNX → {pruned_fp32.name}")
    stages.done(export_cached(student, cell.model.input_shape, pruned_fp32, task.output_names))
    build.candidate_module = student
    build.candidate = Artifact(pruned_fp32, "fp32")
    if recipe.quantize is not None:
        stages.start("quantize", "INT8 PTQ of the pruned model, and of the unpruned one (the speedup's base)")
        pruned_int8, note = ptq(ctx, pruned_fp32, "pruned-int8")
        unpruned, note2 = ptq(ctx, src.fp32.path, "int8")
        build.candidate = Artifact(pruned_int8, recipe.precision)
        build.extra["unpruned"] = Artifact(unpruned, "int8")
        stages.done(f"pruned: {note}; unpruned: {note2}")
    build.facts.update(facts)


class PruneStep(RecipeStep):
    name = "prune"
    order = 10
    needs_torch = True

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        return recipe.prune is not None and recipe.prune.speedup is not None  # a fixed ratio: steps/prune_ratio.py

    def stage_count(self) -> int:
        recipe = self.ctx.cell.recipe
        return 2 + int(recipe.finetune is not None) + int(recipe.quantize is not None)

    def _search_meter(self, section: Any) -> Any:
        """The device's latency server with ``--runner remote``, else the primary backend on this host."""
        from edgematrix.backends.meter import LocalMeter
        from edgematrix.measure.harness import LatencyConfig

        ctx = self.ctx
        config = LatencyConfig(
            warmup=5,
            min_rounds=section.probe_rounds,
            max_rounds=max(section.probe_rounds, 400),
            min_time_s=section.probe_min_time_s,
            max_time_s=max(section.probe_min_time_s * 4, 30.0),
        )
        if ctx.options.remote:
            from edgematrix.server.client import RemoteMeter

            return RemoteMeter(ctx.options.remote, config=config)
        backend = ctx.primary
        return LocalMeter(
            backend=backend, config=config,
            runner_options=runner_options(ctx, backend, "candidate", ctx.cell.recipe.precision),
        )  # fmt: skip

    def build(self) -> None:
        import copy
        import tempfile

        import torch

        from edgematrix.backends.meter import LocalMeter
        from edgematrix.optimize.prune import (
            LatencyCache,
            PruneSettings,
            RoundMember,
            prune_model,
            save_search,
            search_pruning_ratio,
        )

        ctx = self.ctx
        src, build, stages, cell = ctx.source, ctx.build, ctx.stages, ctx.cell
        assert src is not None and build is not None
        recipe, shape = cell.recipe, cell.model.input_shape
        p = recipe.prune
        assert p is not None and p.speedup is not None
        settings = PruneSettings(
            speedup=p.speedup, round_to=p.round_to, ignored_layers=tuple(p.ignored_layers), importance=p.importance,
            tolerance=p.tolerance, max_probes=p.max_probes, max_ratio=p.max_ratio, pairs=p.pairs,
            remeasure=p.remeasure, confidence=p.confidence, bound=p.bound,
        )  # fmt: skip
        int8 = recipe.quantize is not None
        task = ctx.task
        outputs = task.output_names

        def deploy(m: Any, folder: Path) -> Path:
            fp32 = folder / "fp32.onnx"
            export_cached(m, shape, fp32, outputs)
            if not int8:
                return fp32
            return ptq(ctx, fp32, "probe", out=folder / "int8.onnx", probe=True)[0]

        cache_dir = ctx.options.cache_dir / "prune"
        cache = LatencyCache(cache_dir / "latency.json")
        stages.start(
            "prune search",
            f"{p.speedup:g}× in {recipe.precision} on {ctx.primary} (±{p.tolerance:.0%}, ≤{p.max_probes} probes, "
            f"round_to {p.round_to}, ignored {', '.join(p.ignored_layers) or 'none'}; {len(cache)} cached measurements)",
        )

        def on_probe(pr: Any) -> None:
            src_ = "cached" if pr.cached else "measured"
            stages.say(
                f"ratio {pr.ratio:.3f}: {pr.latency_ms:.2f} ms vs unpruned {pr.baseline_ms:.2f} ms in the same blocks "
                f"({src_}), speedup {pr.speedup:.2f}× ({p.confidence:.0%} interval {pr.low:.2f}..{pr.high:.2f}×, "
                f"{pr.blocks} blocks: {pr.verdict}), widths {pr.channels}, {pr.params / 1e6:.1f} M params"
            )

        meter = self._search_meter(p)
        rounds: list[RoundMember] = []
        feed = None
        backends = cell.target.all_backends
        if isinstance(meter, LocalMeter) and "torch" not in backends:
            # each probe runs among the models the latency stage interleaves with the candidate, in the
            # plan's order, on its input (both change the ratio), so the search measures what the same-run
            # check will: the FP32 reference and the candidate on every backend, then the unpruned model
            feed = {"input": task.preprocess(src.data.test.images[0:1])}
            for b in backends:
                reference: Any = "unpruned" if b == ctx.primary and not int8 else src.fp32.path
                rounds.append(RoundMember(f"{b}:reference", b, reference, runner_options(ctx, b, "reference", "fp32")))
                rounds.append(
                    RoundMember(f"{b}:candidate", b, "probe", runner_options(ctx, b, "candidate", recipe.precision))
                )
            if int8:
                unpruned_options = runner_options(ctx, ctx.primary, "unpruned", "int8")
                rounds.append(RoundMember(f"{ctx.primary}:unpruned", ctx.primary, "unpruned", unpruned_options))
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="edgematrix-prune-", dir=cache_dir) as work:
            search = search_pruning_ratio(
                src.model, input_shape=shape, settings=settings, meter=meter, deploy=deploy, cache=cache,
                work_dir=work, backend=ctx.primary, precision=recipe.precision, on_probe=on_probe, rounds=rounds,
                feed=feed,
            )  # fmt: skip
        chosen = search.chosen
        assert chosen is not None
        stages.done(
            f"ratio {chosen.ratio:.3f}: {chosen.speedup:.2f}× (requested {p.speedup:g}× {p.bound.replace('_', ' ')}, "
            f"tolerance {p.tolerance:.0%}), {chosen.latency_ms:.2f} vs unpruned {chosen.baseline_ms:.2f} ms in the "
            f"same blocks, {len(search.probes)} probes, {search.measurements} blocks measured; {search.reason}"
        )

        example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        student = prune_model(
            copy.deepcopy(src.model), example, chosen.ratio, round_to=p.round_to, ignored_layers=p.ignored_layers,
            importance=p.importance,
        )  # fmt: skip
        facts: dict[str, Fact] = {
            "prune_requested_speedup": float(p.speedup),
            "prune_ratio": float(chosen.ratio),
            "prune_search_speedup": round(chosen.speedup, 4),
            "prune_search_landed": int(search.landed),
            "prune_search_low": round(chosen.low, 4),
            "prune_search_high": round(chosen.high, 4),
            "prune_search_noise": round(search.noise, 4),
            "prune_tolerance": float(p.tolerance),
            "prune_probes": len(search.probes),
            "prune_widths": chosen.channels,
            "prune_round_to": p.round_to,
            "prune_ignored_layers": ",".join(p.ignored_layers),
        }
        finish_pruned(ctx, student, facts)
        self.search = search
        save_search(search, ctx.out / "prune_search.json")

    # -- gates and report on the same-run measurements -----------------------------------------

    def _base(self) -> Any:
        """The speedup's base: the unpruned model in the deployed precision (else the FP32 reference)."""
        m = self.ctx.measured
        return m.get((self.ctx.primary, "unpruned"), m[self.ctx.primary, "reference"])

    def _speedup(self) -> float:
        cand = self.ctx.measured[self.ctx.primary, "candidate"]
        return float(self._base().samples.p50_ms / cand.samples.p50_ms)

    def verdicts(self) -> list[Any]:
        from edgematrix.gates.verdicts import Verdict

        p = self.ctx.cell.recipe.prune
        assert p is not None and p.speedup is not None
        search, chosen = self.search, self.search.chosen
        assert chosen is not None
        landing_lo = p.speedup * (1 - p.tolerance) if p.bound == "nearest" else p.speedup
        base, cand = self._base(), self.ctx.measured[self.ctx.primary, "candidate"]
        speedup = self._speedup()
        floor = p.speedup * (1 - p.tolerance)
        precision = self.ctx.cell.recipe.precision
        return [
            Verdict(
                "prune_search_landed",
                "passed" if search.landed else "failed",
                f"search probe at ratio {chosen.ratio:.3f}: {chosen.speedup:.2f}× vs requested {p.speedup:g}× "
                f"({p.bound.replace('_', ' ')}: {landing_lo:.2f}..{p.speedup * (1 + p.tolerance):.2f}×), "
                f"{len(search.probes)} probes; {search.reason}",
            ),
            Verdict(
                "prune_speedup_vs_unpruned",
                "passed" if speedup >= floor else "failed",
                f"same run, {precision} vs unpruned {precision}: p50 {base.samples.p50_ms:.2f} / "
                f"{cand.samples.p50_ms:.2f} ms = {speedup:.2f}× (requested {p.speedup:g}×, floor {floor:.2f}×)",
            ),
        ]

    def facts(self) -> dict[str, Fact]:
        base, cand = self._base(), self.ctx.measured[self.ctx.primary, "candidate"]
        ratios = sorted(b / c for b, c in zip(base.samples.samples_s, cand.samples.samples_s, strict=True))
        return {
            "speedup_vs_unpruned": round(self._speedup(), 4),
            "speedup_vs_unpruned_round_median": round(float(ratios[len(ratios) // 2]), 4),
        }

    def report(self) -> list[str]:
        ctx = self.ctx
        p = ctx.cell.recipe.prune
        assert p is not None and p.speedup is not None
        search = self.search
        assert search.chosen is not None
        primary = ctx.primary
        cand, ref = ctx.measured[primary, "candidate"], ctx.measured[primary, "reference"]
        lines = [
            "",
            "## Pruning search",
            "",
            f"Requested {p.speedup:g}× in {ctx.cell.recipe.precision} on {primary} (±{p.tolerance:.0%}). Each probe "
            f"is measured in {p.pairs} blocks alternating with the unpruned model; its speedup is the ratio of the "
            f"medians. Chosen: ratio {search.chosen.ratio:.3f} ({'within' if search.landed else 'NOT within'} "
            f"tolerance): {search.reason}.",
            "",
            "| probe | ratio | widths | params (M) | p50 (ms) | unpruned p50, same blocks (ms) | speedup | source |",
            "|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        for i, pr in enumerate(search.probes, start=1):
            mark = " **(chosen)**" if pr is search.chosen else ""
            lines.append(
                f"| {i} | {pr.ratio:.3f}{mark} | {pr.channels} | {pr.params / 1e6:.2f} | {pr.latency_ms:.2f} "
                f"| {pr.baseline_ms:.2f} | {pr.speedup:.2f}× | {'cache' if pr.cached else 'measured'} |"
            )
        base = self._base()
        lines += [
            "",
            f"Same run, interleaved: unpruned {base.precision} {base.samples.p50_ms:.2f} ms, pruned "
            f"{cand.samples.p50_ms:.2f} ms → {self._speedup():.2f}×; vs the FP32 reference "
            f"{ref.samples.p50_ms / cand.samples.p50_ms:.2f}×. Accuracy: pruned {cand.score.accuracy:.2f} vs unpruned "
            f"FP32 {ref.score.accuracy:.2f}"
            + (f", unpruned {base.precision} {base.score.accuracy:.2f}" if base.role == "unpruned" else "")
            + ".",
        ]
        return lines

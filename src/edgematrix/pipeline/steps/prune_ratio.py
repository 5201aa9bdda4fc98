"""Structured pruning by a fixed ratio (``[recipes.X.prune]`` with ``ratio`` instead of ``speedup``).

``ratio`` of the channels / neurons is removed with torch-pruning (DepGraph, the section's ``importance``),
channel counts kept at multiples of ``round_to``, ``ignored_layers`` untouched:

- ``scope = "local"``: the same fraction of every layer (each layer ranks its own channels);
- ``scope = "global"``: one ranking across all layers removes ``ratio`` of the total, so the layers whose
  channels matter least lose most (none more than ``max_layer_ratio``).

No latency search: the speedup is what the pruned model measures, beside the unpruned one in the same
rounds. The rest is the latency-aware step's (:func:`~edgematrix.pipeline.steps.prune.finish_pruned`):
distillation fine-tune (``[finetune]``), export, and with ``[quantize]`` static INT8 of the pruned and the
unpruned model, the speedup's base.
"""

from __future__ import annotations

from typing import Any

from edgematrix.pipeline.context import Fact
from edgematrix.pipeline.steps.prune import PruneStep, finish_pruned


class FixedRatioPruneStep(PruneStep):
    name = "prune_ratio"
    order = 10
    needs_torch = True

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        return recipe.prune is not None and recipe.prune.ratio is not None

    def build(self) -> None:
        import copy

        import torch

        from edgematrix.optimize.prune import channel_counts, parameter_count, prune_model

        ctx = self.ctx
        src, stages, cell = ctx.source, ctx.stages, ctx.cell
        assert src is not None and ctx.build is not None
        p = cell.recipe.prune
        assert p is not None and p.ratio is not None
        scope = (
            f"global: one channel ranking across layers, no layer losing more than {p.max_layer_ratio:g}"
            if p.scope == "global"
            else "local: the same fraction of every layer"
        )
        stages.start(
            "prune",
            f"{p.ratio:g} of the channels ({scope}), {p.importance} importance, round_to {p.round_to}, ignored "
            f"{', '.join(p.ignored_layers) or 'none'}",
        )
        example = torch.randn(*cell.model.input_shape, generator=torch.Generator().manual_seed(0))
        student = prune_model(
            copy.deepcopy(src.model), example, p.ratio, round_to=p.round_to, ignored_layers=p.ignored_layers,
            importance=p.importance, global_pruning=p.scope == "global",
            max_layer_ratio=p.max_layer_ratio if p.scope == "global" else 1.0,
        )  # fmt: skip
        self.before, self.after = channel_counts(src.model), channel_counts(student)
        params, unpruned = parameter_count(student), parameter_count(src.model)
        widths = "/".join(str(out) for _, out in self.after.values())  # every Conv / Linear, in order
        stages.done(f"widths {widths}; {params:,} of {unpruned:,} parameters ({params / unpruned:.1%})")
        facts: dict[str, Fact] = {
            "prune_ratio": float(p.ratio),
            "prune_scope": p.scope,
            "prune_widths": widths,
            "prune_round_to": p.round_to,
            "prune_ignored_layers": ",".join(p.ignored_layers),
            "prune_importance": p.importance,
        }
        if p.scope == "global":
            facts["prune_max_layer_ratio"] = float(p.max_layer_ratio)
        finish_pruned(ctx, student, facts, key=(p.scope, p.max_layer_ratio if p.scope == "global" else None))

    def verdicts(self) -> list[Any]:
        return []  # a fixed ratio requests no speedup: the speedup is reported (facts, report), not gated

    def report(self) -> list[str]:
        from edgematrix.gates.verdicts import metric_text

        ctx = self.ctx
        p = ctx.cell.recipe.prune
        assert p is not None and p.ratio is not None
        m, primary = ctx.measured, ctx.primary
        cand, ref, base = m[primary, "candidate"], m[primary, "reference"], self._base()
        direction, metric = ctx.task.metric_direction, ctx.task.metric
        lines = [
            "",
            f"## Pruning: fixed ratio {p.ratio:g}, {p.scope}",
            "",
            "| layer | channels before | after | kept |",
            "|---|---:|---:|---:|",
        ]
        for name, (_, out) in self.before.items():
            kept = self.after[name][1]
            lines.append(f"| {name} | {out} | {kept} | {kept / out:.0%} |")
        lines += [
            "",
            f"Same run, interleaved: unpruned {base.precision} {base.samples.p50_ms:.3f} ms, pruned "
            f"{cand.samples.p50_ms:.3f} ms → {self._speedup():.2f}×; vs the FP32 reference "
            f"{ref.samples.p50_ms / cand.samples.p50_ms:.2f}×. {metric}: pruned "
            f"{metric_text(cand.score.accuracy, direction)} vs unpruned FP32 {metric_text(ref.score.accuracy, direction)}"
            + (
                f", unpruned {base.precision} {metric_text(base.score.accuracy, direction)}"
                if base.role == "unpruned"
                else ""
            )
            + f" ({direction} is better).",
        ]
        return lines

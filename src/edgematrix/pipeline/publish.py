"""The gate and publish stages: verdicts once for every executor, then the results folder.

Gates per backend (the primary backend's names carry no suffix: stable JUnit names): accuracy vs the
FP32 reference and vs the reviewed baseline, the absolute floor, the statistical latency gate on
same-run ratios vs the baseline of this device (inconclusive on a busy machine, not applicable under
emulation), FP32 agreement of other backends; then A/B mode, each recipe step's gates and the
device-vs-host checks of an emulated or remote run. The backend selection keeps the primary unless
another is decidably faster. Written: benchmark.json, junit.xml, report.md, artifacts.json, the
predictions (already written by the evaluate stage) and, with ``--update-baseline``, the baselines.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgematrix.errors import GateFailure
from edgematrix.pipeline.context import CellContext, CellResult, Measured, console
from edgematrix.pipeline.evaluate import FP32_AGREEMENT_TOLERANCE, device_verdicts

ROLE_ORDER = ("reference", "candidate", "base")
#: runner facts copied into every benchmark's extra_info: how the model ran (provider and its exact options,
#: I/O binding, stream, torch mode) and the host time of the timed calls beside their device time
RUNNER_FACTS = (
    "provider", "provider_options", "use_tf32", "cudnn_conv_algo_search", "io_binding", "compute_stream",
    "end_of_run_sync", "mode", "channels_last", "cuda_graph", "allow_tf32", "cudnn_benchmark", "timer",
    "host_p50_ms", "host_p90_ms",
)  # fmt: skip


def busy_reasons(measured: dict[tuple[str, str], Measured]) -> tuple[str, ...]:
    """Why the machine was busy during the latency rounds (empty: quiet, or no record, as on a GPU)."""
    record = next((m.samples.contention for m in measured.values() if m.samples.contention is not None), None)
    return tuple(record.reasons()) if record is not None else ()


def gate_and_publish(ctx: CellContext, steps: list[Any], final: Path) -> CellResult:
    from edgematrix.core.results import BenchmarkEntry, BenchmarkInfo, write_benchmark_json
    from edgematrix.fileio import atomic_write_text
    from edgematrix.gates.baseline import Baseline, baseline_key, libc, load_baselines, write_baseline
    from edgematrix.gates.latency import select_fastest
    from edgematrix.gates.verdicts import RunFigures, Verdict, evaluate_gates
    from edgematrix.report.junit import write_junit
    from edgematrix.report.markdown import render_report

    cell, options, measured, evaluation, task = ctx.cell, ctx.options, ctx.measured, ctx.evaluation, ctx.task
    src, build, out = ctx.source, ctx.build, ctx.out
    assert src is not None and build is not None and evaluation is not None
    backends, primary = ctx.backends, ctx.primary
    ref_of_record = measured[primary, "reference"]
    ref_p50 = ref_of_record.samples.p50_ms
    same = "candidate" not in {r for _, r in evaluation.results}
    busy = busy_reasons(measured) if evaluation.latency_gated else ()
    ab = (primary, "base") in measured
    comparisons = len(backends) + int(ab)  # latency comparisons judged together (family-wise)

    verdicts: list[Verdict] = []
    notes: list[str] = []
    failed_backend: dict[str, bool] = {}
    for b in backends:
        key = baseline_key(cell.name, b, primary)
        path_hint = f"matrix/baselines/{key}.json"
        hint = (
            f"this run writes {path_hint} (--update-baseline); review and commit it"
            if options.update_baseline
            else f"create one with `nox -s {cell.name} -- --update-baseline` and commit {path_hint}"
        )
        records = [] if options.update_baseline else load_baselines(options.baselines_dir, key)
        ref, cand = measured[b, "reference"], measured[b, "candidate"]
        version = str(cand.facts.get("version", ""))
        # the latency ratio stays within the backend: candidate vs that backend's FP32 reference, paired
        # round by round (the rounds are interleaved, so machine drift cancels in each pair)
        paired = evaluation.latency_gated  # interleaved rounds: one sample per model per round
        ratios = (
            tuple(c / r for c, r in zip(cand.samples.samples_s, ref.samples.samples_s, strict=True)) if paired else ()
        )
        figs_ref = RunFigures(ref_of_record.score.accuracy, ref.samples.p50_ms, b, version, evaluation.device)
        figs_cand = RunFigures(
            cand.score.accuracy, cand.samples.p50_ms, b, version, evaluation.device, cand.precision,
            evaluation.environment, evaluation.power_mode, ratios, busy,
        )  # fmt: skip
        vs = evaluate_gates(
            cell.gates, figs_ref, figs_cand, records, same_artifact=same, baseline_hint=hint, comparisons=comparisons
        )
        if not evaluation.latency_gated:
            never = (
                f"latency on {evaluation.where} is the emulator's or this host's, not the device's: reported, "
                "never gated"
            )
            vs = [Verdict(v.gate, "not applicable", never) if v.gate == "latency_vs_baseline" else v for v in vs]
        if b != primary and ref.rel_diff is not None:
            ok = ref.rel_diff <= FP32_AGREEMENT_TOLERANCE
            vs.append(
                Verdict(
                    "fp32_outputs_match_reference",
                    "passed" if ok else "failed",
                    f"FP32 outputs on {b} vs {primary} FP32: max relative difference {ref.rel_diff:.2e} "
                    f"(tolerance {FP32_AGREEMENT_TOLERANCE:g}, {task.agreement_output or 'every output'}, "
                    f"{len(src.data.test)} samples)",
                )
            )
        if b != primary:
            vs = [Verdict(f"{v.gate}[{b}]", v.status, v.message) for v in vs]
        failed_backend[b] = any(v.failed for v in vs)
        verdicts.extend(vs)
        if options.update_baseline and busy:
            notes.append(
                f"baseline NOT written to {path_hint}: the machine was busy during the latency rounds "
                f"({'; '.join(busy)}); re-run --update-baseline on a quiet machine"
            )
        elif options.update_baseline:
            bl = Baseline(
                cell=cell.name, precision=cand.precision, backend=b, backend_version=version,
                accuracy=round(cand.score.accuracy, 4), reference_accuracy=round(ref_of_record.score.accuracy, 4),
                p50_ratio=round(cand.samples.p50_ms / figs_ref.p50_ms, 4),
                candidate_p50_ms=round(cand.samples.p50_ms, 3), reference_p50_ms=round(figs_ref.p50_ms, 3),
                artifact_sha256=cand.artifact.sha256(), cpu=evaluation.device,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                image=os.environ.get("EDGEMATRIX_IMAGE", "local"),
                environment=evaluation.environment, libc=libc(), power_mode=evaluation.power_mode,
                ratio_samples=[round(x, 6) for x in ratios] if not same and evaluation.latency_gated else [],
            )  # fmt: skip
            written = write_baseline(options.baselines_dir, bl, key)
            notes.append(f"baseline written to {written} — review and commit it")

    if ab:
        verdicts.extend(_ab_verdicts(ctx, busy, comparisons))
        failed_backend[primary] = any(v.failed for v in verdicts if "[" not in v.gate)
    step_verdicts = [v for step in steps for v in step.verdicts()] + device_verdicts(ctx)
    if step_verdicts:
        verdicts.extend(step_verdicts)
        failed_backend[primary] = failed_backend[primary] or any(v.failed for v in step_verdicts)
    step_facts: dict[str, Any] = {}
    for step in steps:
        step_facts.update(step.facts())

    passing = [b for b in backends if not failed_backend[b]]
    sel = None
    if passing:
        sel = select_fastest(
            {b: measured[b, "candidate"].samples.samples_s for b in passing},
            preferred=[primary, *backends],
            busy=busy,
            min_effect=cell.gates.latency_min_effect,
            confidence=cell.gates.latency_confidence,
        )
    selected = sel.selected if sel is not None else ""
    selection = _selection_text(backends, passing, sel, measured)

    rows, entries = [], []
    roles = [*ROLE_ORDER, *build.extra]
    for b, role in [(b, r) for b in backends for r in roles if (b, r) in measured]:
        m = measured[b, role]
        fields: dict[str, Any] = {
            "role": role,
            "recipe": cell.recipe_name,
            "precision": m.precision,
            "backend": b,
            "primary_backend": primary,
            "backend_version": str(m.facts.get("version", "")),
            "inference_precision": str(m.facts.get("inference_precision", m.precision)),
            "accuracy": round(m.score.accuracy, 6),
            "metric": task.metric,
            "metric_direction": task.metric_direction,
            **{k: round(v, 6) for k, v in m.score.extras.items()},
            "model_bytes": m.artifact.model_bytes(),
            "model_kind": m.artifact.kind,
            "input_shape": cell.model.shape_text(),
            "artifact_sha256": m.artifact.sha256(),
            "threads": int(m.facts.get("intra_op_threads", m.facts.get("threads", 0)) or 0),
            "p50_ms": round(m.samples.p50_ms, 4),
            "p90_ms": round(m.samples.p90_ms, 4),
            "p99_ms": round(m.samples.p99_ms, 4),
            "speedup_vs_reference": round(ref_p50 / m.samples.p50_ms, 4),
            "max_rel_diff_vs_reference": round(m.rel_diff, 8) if m.rel_diff is not None else 0.0,
            "selected_backend": selected,
            "cell": cell.name,
            "target": cell.target_name,
            "model": cell.model_name,
            "runner": ctx.runner.runner,
            "executor": ctx.executor.name,
            "device": evaluation.device,
            "latency_kind": m.latency_kind,
            "accuracy_source": m.accuracy_source,
            "dataset": src.data.tag,
        }
        fields.update({k: v for k, v in m.facts.items() if k in RUNNER_FACTS and type(v) in (str, int, float)})
        if m.samples.contention is not None:
            fields.update(m.samples.contention.extra_info(f"{b}:{role}"))
        if role == "candidate":
            fields.update(build.facts)
            fields.update(step_facts)
        extra = BenchmarkInfo(**fields).extra_info()  # the typed record: what every reader gets back
        suffix = role if b == primary else f"{role}@{b}"
        entries.append(BenchmarkEntry(f"{cell.name}[{suffix}]", cell.name, m.samples.samples_s, extra))
        shown = task.summary_extras if task.summary_extras is not None else tuple(m.score.extras)
        extras = {k: m.score.extras[k] for k in shown if k in m.score.extras}
        rows.append({**extra, "extras": extras, "speedup": ref_p50 / m.samples.p50_ms})
    machine = dict(evaluation.machine)
    record = ref_of_record.samples.contention
    if record is not None:
        from edgematrix.gates.compare import CONTENTION_KEY

        machine[CONTENTION_KEY] = record.as_dict()
    write_benchmark_json(out / "benchmark.json", entries, machine_extra=machine, latency_config=ctx.latency)
    manifest = {
        "reference": str(src.fp32.path.resolve()),
        "candidate": str(build.candidate.path.resolve()),
        "reference_kind": src.fp32.kind,
        "candidate_kind": build.candidate.kind,  # onnx | split (a manifest of subgraphs)
    }
    atomic_write_text(out / "artifacts.json", json.dumps(manifest, indent=2))

    cand = measured[primary, "candidate"]
    write_junit(
        out / "junit.xml", cell.name, verdicts,
        {
            "runner": ctx.runner.runner, "executor": ctx.executor.name, "backends": ",".join(backends),
            "selected_backend": selected or "(none)", "reference_p50_ms": f"{ref_p50:.3f}",
            "candidate_p50_ms": f"{cand.samples.p50_ms:.3f}",
        },
    )  # fmt: skip
    context = {
        "runner": f"{ctx.runner.runner} ({ctx.runner.reason}); evaluated and measured on {evaluation.where}",
        "data": f"{src.data.label} at {src.data.root} ({len(src.data.test)} test samples)",
        "metric": f"{task.metric} (points; the `accuracy` column)",
        "training": src.origin or ("cached checkpoint" if src.cache_hit else f"trained in {src.train_seconds:.0f} s"),
        "export check": src.export_note,
        "threads": ", ".join(sorted({str(r["threads"]) for r in rows})),
        "latency rounds": f"{ref_of_record.samples.rounds} per model, {len(measured)} models"
        + (" interleaved (spinning off)" if evaluation.latency_gated else "; emulated: reported, never gated"),
        "machine during the rounds": record.summary() if record is not None else "not recorded",
        "device": evaluation.device,
        "backends": "; ".join(
            f"{b} {measured[b, 'candidate'].facts.get('version', '')}"
            + (f" ({', '.join(cell.target.providers)})" if b == "onnxruntime" and cell.target.providers else "")
            for b in backends
        ),
        "stage seconds": ", ".join(f"{k} {v:.1f}" for k, v in ctx.stages.seconds.items()),
    }
    sources = sorted({m.accuracy_source for m in measured.values()})
    if sources != ["local"]:
        context["accuracy source"] = "; ".join(sources)
    slowest = max(measured.values(), key=lambda m: m.samples.p50_ms)
    rule = task.latency_rule(slowest.samples.p50_ms)
    if rule:
        context["official timing rule"] = f"slowest model ({slowest.role} on {slowest.backend}): {rule}"
    report = render_report(cell.name, cell.description, rows, verdicts, context, notes, selection=selection)
    sections = [line for step in steps for line in step.report()]
    if sections:
        report += "\n" + "\n".join(sections) + "\n"
    atomic_write_text(out / "report.md", report)
    result = CellResult(cell.name, final, verdicts, rows, ctx.stages.seconds, selection)
    print_summary(result)
    for note in notes:
        console.print(escape(note))
    if result.failed:
        raise GateFailure(
            f"{cell.name}: {len(result.failed)} gate(s) failed:\n"
            + "\n".join(f"  {v.gate}: {v.message}" for v in result.failed)
            + f"\nartifacts: {final}"
        )
    return result


def _ab_verdicts(ctx: CellContext, busy: tuple[str, ...], comparisons: int) -> list[Any]:
    """A/B mode: this branch's candidate vs the base branch's, measured in the same rounds."""
    from edgematrix.gates.latency import compare_latency
    from edgematrix.gates.verdicts import Verdict

    g = ctx.cell.gates
    base, cand = ctx.measured[ctx.primary, "base"], ctx.measured[ctx.primary, "candidate"]
    lv = compare_latency(
        base.samples.samples_s, cand.samples.samples_s, min_effect=g.latency_min_effect,
        confidence=g.latency_confidence, busy=busy, comparisons=comparisons,
    )  # fmt: skip
    status = {"regression": "failed", "inconclusive": "inconclusive"}.get(lv.status, "passed")
    drop = base.score.accuracy - cand.score.accuracy
    ok = drop <= g.accuracy_drop_vs_baseline
    return [
        Verdict("latency_vs_base", status, f"A/B, same run: {lv.message}"),
        Verdict(
            "accuracy_vs_base",
            "passed" if ok else "failed",
            f"candidate {cand.score.accuracy:.2f} vs base branch {base.score.accuracy:.2f}: drop {drop:+.2f} points "
            f"(budget {g.accuracy_drop_vs_baseline:.2f})",
        ),
    ]


def _selection_text(backends: list[str], passing: list[str], sel: Any, measured: dict) -> str:
    if len(backends) == 1:
        return ""
    if sel is None:
        return f"no backend passes the cell's gates ({', '.join(backends)} measured)"
    p50 = {b: measured[b, "candidate"].samples.p50_ms for b in backends}
    if not sel.selected:
        return f"none — {sel.message}; candidate p50 " + ", ".join(f"{b} {p50[b]:.2f} ms" for b in backends)
    others = [f"{b} {p50[b]:.2f} ms ({p50[b] / p50[sel.selected]:.2f}×)" for b in backends if b != sel.selected]
    text = f"{sel.selected} — candidate p50 {p50[sel.selected]:.2f} ms; " + ", ".join(others) + f". {sel.message}"
    failing = [b for b in backends if b not in passing]
    if failing:
        text += f"; not eligible (a gate failed): {', '.join(failing)}"
    return text


def print_summary(result: CellResult) -> None:
    from rich.table import Table

    from edgematrix.report.markdown import extras_keys

    t = Table(title=f"{result.cell}", show_lines=False)
    keys = extras_keys(result.rows)
    metric = str(result.rows[0].get("metric", "accuracy")) if result.rows else "accuracy"
    for col in ("backend", "role", "precision", metric, *keys, "p50 ms", "p90 ms", "p99 ms", "speedup", "MB"):
        t.add_column(col, justify="right" if col not in ("backend", "role", "precision") else "left")
    for r in result.rows:
        t.add_row(
            str(r["backend"]),
            r["role"],
            r["precision"],
            f"{r['accuracy']:.2f}",
            *(f"{r['extras'].get(k, float('nan')):.3f}" for k in keys),
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['model_bytes'] / 1e6:.1f}",
        )
    console.print(t)
    if result.selection:
        console.print(f"selected backend: {escape(result.selection)}")
    for v in result.verdicts:
        colour = {"passed": "green", "failed": "red"}.get(v.status, "yellow")
        console.print(f"  [{colour}]{v.status:>14}[/]  {escape(v.gate)}: {escape(v.message)}")
    console.print(f"artifacts: {result.out_dir}/ (benchmark.json, junit.xml, report.md, predictions-*)")

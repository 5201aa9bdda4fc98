"""The evaluate and measure stages: a plan of every (backend, role) model, the executor runs it, and the
pipeline scores the outputs once, the same way whatever executor produced them.

Roles: ``reference`` (the FP32 model, the reference of record), ``candidate`` (what the recipe deploys),
``base`` (A/B mode: the base branch's candidate) and the models recipe steps measure beside the
candidate (``unpruned``, ``ptq``, ``int8`` ...), on the primary backend only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgematrix.errors import BackendError
from edgematrix.executors.base import EvaluationPlan, ModelRun
from edgematrix.pipeline.context import Artifact, CellContext, Measured

#: an FP32 reference on another backend must match ONNX Runtime's FP32 outputs (relative to the range)
FP32_AGREEMENT_TOLERANCE = 1e-3
#: the same model on another machine (container under qemu, a board) gives the host's outputs to this:
#: float 1e-3; quantized 1e-2 (int8 kernels of other architectures round requantization differently:
#: measured ufld_r18 INT8 on ONNX Runtime aarch64 under qemu vs x86-64, 1.4e-3 at most over 150 images)
DEVICE_OUTPUT_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-3, "int8": 1e-2, "fx8": 1e-2}
#: an emulated or remote device's task accuracy may differ from this host's by this much (points)
DEVICE_ACCURACY_TOLERANCE = 0.1


def gpu_int8_runtime_missing() -> str:
    """Why a QDQ INT8 model cannot run on this GPU host ("" when a GPU INT8 runtime is present): the GPU
    targets' INT8 runtime is ONNX Runtime's TensorRT execution provider, present only when a session with it
    can be created (ONNX Runtime lists it even where TensorRT's libraries are missing)."""
    from edgematrix.backends.onnxruntime.loader import tensorrt_ep_unavailable

    why = tensorrt_ep_unavailable()
    if not why:
        return ""
    return (
        f"no GPU INT8 runtime on this host: {why}. The CUDA execution provider alone would run the QDQ model as "
        "dequantized float kernels, which is not an INT8 measurement, and torch has no kernels for it: not "
        "measured, and no CPU figure is reported for a GPU cell"
    )


def _options(ctx: CellContext, backend: str, role: str, precision: str, artifact: Artifact) -> dict[str, Any]:
    from edgematrix.pipeline.steps.prune import runner_options

    if artifact.kind == "split":
        threads = ctx.cell.target.threads
        return {"intra_op_threads": threads, "threads": threads}
    return runner_options(ctx, backend, role, precision)


def plan(ctx: CellContext, ab_base: Path | None) -> EvaluationPlan:
    """Every model to evaluate and measure, in the order the latency stage interleaves them."""
    from edgematrix.measure.harness import LatencyConfig

    src, build, cell = ctx.source, ctx.build, ctx.cell
    assert src is not None and build is not None
    same = build.candidate.path == src.fp32.path and build.candidate.precision == "fp32"
    roles: dict[str, Artifact] = {"reference": src.fp32}
    if not same:
        roles["candidate"] = build.candidate
    low = [a.precision for a in roles.values() if a.precision not in ("fp32", "fp16")]
    if low and "torch" in ctx.backends:  # torch runs FP32/FP16 modules; a QDQ model needs a GPU INT8 runtime
        reason = gpu_int8_runtime_missing()
        others = [b for b in ctx.backends if b != "torch"]
        if reason or not others:
            raise BackendError(
                f"{cell.name}: {reason or 'the torch backend runs FP32/FP16 modules; a GPU INT8 runtime runs QDQ models'}"
            )
        ctx.backends = others  # the INT8 runtime's backend runs every role of the cell (its FP32 is the reference)
    runs = []
    for b in ctx.backends:
        for role, art in roles.items():
            if b == "torch":  # the trained module itself (FP16 roles run it under autocast)
                module = src.model if role == "reference" else (build.candidate_module or src.model)
                art = Artifact(src.fp32.path if role == "reference" else art.path, art.precision, "module", module)
            runs.append(ModelRun(b, role, art, _options(ctx, b, role, art.precision, art)))
    extra = dict(build.extra)
    if ab_base is not None:
        extra = {"base": Artifact(ab_base, build.candidate.precision), **extra}
    if extra and "torch" in ctx.backends:
        raise BackendError(
            f"{cell.name}: recipe {cell.recipe_name!r} compares ONNX models; the torch target runs modules"
        )
    for role, art in extra.items():  # the primary backend only
        runs.append(ModelRun(ctx.primary, role, art, _options(ctx, ctx.primary, role, art.precision, art)))
    feeds = ctx.task.feeds(src.data.test, src.input_name)
    lat = cell.recipe.latency
    config = LatencyConfig(
        warmup=lat.warmup, min_rounds=lat.min_rounds, max_rounds=lat.max_rounds, min_time_s=lat.min_time_s,
        max_time_s=lat.max_time_s,
    )  # fmt: skip
    return EvaluationPlan(cell.name, runs, feeds, feeds[0], config, say=ctx.stages.say)


def run_plan(ctx: CellContext, evaluation_plan: EvaluationPlan) -> None:
    """Run the plan on the cell's executor and score every model's outputs into ``ctx.measured``."""
    import shutil

    from edgematrix.core.compare import compare_outputs

    stages, task, src = ctx.stages, ctx.task, ctx.source
    assert src is not None
    runs = evaluation_plan.runs
    lcfg = evaluation_plan.latency
    stages.start(
        "evaluate + measure",
        f"{len(evaluation_plan.feeds)} test samples through {len(runs)} model(s) on {', '.join(ctx.backends)} "
        f"({ctx.executor.name} executor), then batch 1 interleaved, ≥{lcfg.min_rounds} rounds, ≥{lcfg.min_time_s:g} s",
    )
    evaluation = ctx.executor.evaluate(evaluation_plan)
    ctx.evaluation = evaluation
    ref_key = (ctx.primary, "reference")
    ref_outputs = evaluation.results[ref_key].outputs
    agree = [task.agreement_output] if task.agreement_output else None  # None: every output
    for run in runs:
        res = evaluation.results[run.key]
        tag = run.role if run.backend == ctx.primary else f"{run.role}-{run.backend}"
        kwargs = {"reference": ref_outputs} if task.needs_reference else {}
        score = task.score(res.outputs, src.data.test, ctx.out, tag, model=src.model, **kwargs)
        task.record_latency(score, res.samples.p50_ms)  # the submission's timing: the latency stage's p50
        rel = None if run.key == ref_key else compare_outputs(ref_outputs, res.outputs, names=agree).max_rel
        ctx.measured[run.key] = Measured(
            run.backend, run.role, run.artifact, score, res.samples, res.facts, rel, res.latency_kind,
            res.accuracy_source,
        )  # fmt: skip
    if "candidate" not in {r.role for r in runs}:  # a reference-only cell: the candidate is the reference itself
        for b in ctx.backends:
            m = ctx.measured[b, "reference"]
            ctx.measured[b, "candidate"] = Measured(
                b, "candidate", m.artifact, m.score, m.samples, m.facts, m.rel_diff, m.latency_kind, m.accuracy_source
            )
            if m.score.predictions_file is not None:
                src_file = m.score.predictions_file
                shutil.copyfile(src_file, src_file.with_name(src_file.name.replace("-reference", "-candidate", 1)))
    stages.done(
        f"{task.metric}: "
        + ", ".join(f"{r}@{b} {m.score.accuracy:.2f}" for (b, r), m in ctx.measured.items())
        + "; p50 "
        + ", ".join(f"{r}@{b} {m.samples.p50_ms:.2f} ms" for (b, r), m in ctx.measured.items())
    )


def device_verdicts(ctx: CellContext) -> list[Any]:
    """Gates of an emulated or remote device: its outputs match this host's, and its accuracy too."""
    from edgematrix.core.compare import compare_outputs
    from edgematrix.gates.verdicts import Verdict

    evaluation, src = ctx.evaluation, ctx.source
    assert src is not None
    out = []
    for (b, role), res in evaluation.results.items():
        if res.device_outputs is None or res.host_outputs is None:
            continue
        m = ctx.measured[b, role]
        tol = DEVICE_OUTPUT_TOLERANCE.get(m.precision, 1e-2)
        n = len(res.device_outputs)
        cmp = compare_outputs(res.host_outputs[:n], res.device_outputs, tolerance=tol)
        suffix = "" if b == ctx.primary else f"[{b}]"
        out.append(
            Verdict(
                f"device_outputs_match_host[{role}]{suffix}",
                "passed" if cmp.passed else "failed",
                f"{evaluation.where} vs this host, {role} ({m.precision}): {cmp.summary()}",
            )
        )
        ref = {"reference": evaluation.results[ctx.primary, "reference"].outputs} if ctx.task.needs_reference else {}
        dev = ctx.task.score(res.device_outputs, src.data.test, None, role, model=src.model, **ref)
        host = ctx.task.score(res.host_outputs[:n], src.data.test, None, role, model=src.model, **ref)
        d = dev.accuracy - host.accuracy
        out.append(
            Verdict(
                f"device_accuracy_matches_host[{role}]{suffix}",
                "passed" if abs(d) <= DEVICE_ACCURACY_TOLERANCE else "failed",
                f"{ctx.task.metric} on the device {dev.accuracy:.2f} vs this host {host.accuracy:.2f} on the same "
                f"{n} sample(s): {d:+.2f} points (tolerance {DEVICE_ACCURACY_TOLERANCE:g})",
            )
        )
    return out

"""Run one cell of the matrix end to end.

data → train (cached) → ONNX export + numeric check (cached) → recipe (INT8 PTQ, cached) →
task accuracy of reference and candidate → interleaved latency → gates → artifacts::

    results/<cell>/config.json            resolved configuration + where it ran
    results/<cell>/benchmark.json         pytest-benchmark JSON (per-round data, extra_info)
    results/<cell>/junit.xml              one testcase per gate
    results/<cell>/predictions-<role>.*, labels.json   the task's submission format (TuSimple, COCO results, ...)
    results/<cell>/report.md              the human summary
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgematrix.errors import BackendError, EdgeMatrixError, GateFailure, RunnerUnavailableError
from edgematrix.executors.select import Choice, RunnerChoiceError, choose_runner
from edgematrix.matrix.loader import Cell

console = Console(stderr=True, highlight=False, width=shutil.get_terminal_size((130, 24)).columns)


@dataclass
class CellOptions:
    runner: str = "auto"
    results_dir: Path = Path("results")
    cache_dir: Path = Path(".cache/edgematrix")
    baselines_dir: Path = Path("matrix/baselines")
    data_root: str | None = None
    update_baseline: bool = False
    progress: bool = True
    ab_base: Path | None = None  # A/B mode: the base branch's candidate (.onnx, or its results/<cell>/ folder)
    remote: str | None = None  # --runner remote: URL of the device's `edgematrix serve`


@dataclass
class CellResult:
    cell: str
    out_dir: Path
    verdicts: list[Any]
    rows: list[dict[str, Any]]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    selection: str = ""

    @property
    def failed(self) -> list[Any]:
        return [v for v in self.verdicts if v.failed]


def pick_runner(cell: Cell, requested: str) -> Choice:
    try:
        return choose_runner(cell.name, cell.target_name, cell.target.model_dump(), requested)
    except RunnerChoiceError as e:
        ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        suffix = "\n(CI=true: an unreachable cell fails the job; it never passes silently.)" if ci else ""
        raise RunnerUnavailableError(str(e) + suffix) from None


class _Stages:
    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.seconds: dict[str, float] = {}

    def start(self, name: str, detail: str) -> None:
        self.n += 1
        self._name, self._t0 = name, time.perf_counter()
        console.print(f"[bold cyan][{self.n}/{self.total}] {name}[/]: {detail}")

    def done(self, detail: str = "") -> None:
        dt = time.perf_counter() - self._t0
        self.seconds[self._name] = round(dt, 2)
        console.print(f"      done in {dt:.1f} s{': ' + detail if detail else ''}")


def run_cell(cell: Cell, options: CellOptions) -> CellResult:
    """Run ``cell`` and write its artifacts; raises GateFailure (after writing them) when a gate fails."""
    choice = pick_runner(cell, options.runner)
    console.print(f"[bold]{cell.name}[/]: {cell.description}")
    console.print(f"runner: {choice.runner} ({choice.reason})")
    if choice.runner in ("remote", "emulated"):
        if cell.model.task != "lane":
            raise RunnerUnavailableError(
                f"{cell.name}: the {choice.runner} runner ships lane models and the TuSimple test bundle; a "
                f"{cell.model.task!r} cell runs with --runner local or docker"
            )
        from edgematrix.pipeline.device import run_device_cell

        return run_device_cell(cell, options, choice)
    return _run_lane_cell(cell, options, choice)


@dataclass
class _Artifacts:
    """What steps 1-4 produce: data, the trained model and the reference/candidate ONNX files."""

    root: Path
    synthetic: bool
    train: Any  # the task's split (TaskData.train)
    test: Any  # the task's split (TaskData.test)
    model: Any  # torch module (the adapter decodes its outputs, e.g. with a lane model's geometry)
    cache_hit: bool
    train_seconds: float
    fp32_path: Path
    cand_path: Path
    export_note: str

    precision: str = "fp32"
    cand_model: Any = None  # the candidate's torch module when it is not ``model`` (a pruned model)
    # further models measured interleaved on the primary backend: role -> (ONNX file, precision)
    extra_roles: dict[str, tuple[Path, str]] = field(default_factory=dict)
    facts: dict[str, float | int | str] = field(default_factory=dict)  # recipe facts for extra_info
    prune_search: Any = None  # edgematrix.optimize.prune.SearchResult
    qat_info: dict[str, Any] | None = None
    mixed_info: dict[str, Any] | None = None
    split_info: dict[str, Any] | None = None
    data: Any = None  # TaskData

    @property
    def same(self) -> bool:
        """A reference-only cell: the candidate is the FP32 model run in FP32."""
        return self.cand_path == self.fp32_path and self.precision == "fp32"


@dataclass
class _Measured:
    """One (backend, role): its score, latency samples and runtime facts."""

    backend: str
    role: str
    path: Path
    precision: str
    score: Any  # TaskScore
    samples: Any  # LatencySamples
    facts: dict[str, Any]
    rel_diff: float | None  # max |out - ORT FP32 out| / max |ORT FP32 out| on the first test images


AGREEMENT_IMAGES = 8
FP32_AGREEMENT_TOLERANCE = 1e-3  # relative; an FP32 reference on another backend must match ORT's


def _run_lane_cell(cell: Cell, options: CellOptions, choice: Choice) -> CellResult:
    from edgematrix.fileio import atomic_write_text, staged_folder

    ab_base = _resolve_ab_base(options.ab_base)  # inputs are checked before anything is built or replaced
    final = options.results_dir / cell.name
    # the previous results stay in place until this run's are complete (or a gate failed: published too)
    with staged_folder(final, publish_on=(GateFailure,)) as out:
        config = {
            **cell.resolved(),
            "runner": {"name": choice.runner, "reason": choice.reason, "host": platform.node()},
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True))
        stages = _Stages(_stage_count(cell.recipe))
        art = _build_artifacts(cell, options, stages, out)
        measured, lcfg = _measure(cell, art, out, stages, ab_base)
        if cell.recipe.split is not None and cell.recipe.split.pipeline:
            _pipeline_stage(cell, art, stages)
        return _gate_and_report(cell, options, choice, art, measured, lcfg, stages, out, final)


def _build_artifacts(cell: Cell, options: CellOptions, stages: _Stages, out: Path) -> _Artifacts:
    """Steps 1-4: data, training, export, recipe; each cached by content hash."""
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
    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.models import create_model
    from edgematrix.tasks.base import get_task

    model_cfg, recipe, target = cell.model, cell.recipe, cell.target
    cache = options.cache_dir
    task = get_task(model_cfg.task)

    # 1. data
    configured = options.data_root if options.data_root is not None else model_cfg.data_root
    real = bool(configured or os.environ.get("EDGEMATRIX_DATA_ROOT"))
    stages.start("data", f"{model_cfg.dataset} ({'real' if real else 'synthetic'})")
    data = task.load_data(model_cfg, options.data_root, cache)
    train_split, test_split, data_key, root = data.train, data.test, data.key, data.root
    stages.done(f"{data.label} at {root} ({len(train_split)} train / {len(test_split)} test images, {data_key})")

    # 2. train (cached by config + data + code)
    model = create_model(model_cfg.family, model_cfg.input_shape, **model_cfg.params)
    train_key = content_key(
        model_cfg.family,
        model_cfg.params,
        model_cfg.input_shape,
        model_cfg.train.model_dump(),
        data_key,
        code_hash(list(task.train_code)),  # the lane task: not train/distill (it does not train this)
        torch.__version__.split("+")[0],
    )
    ckpt = cache / "checkpoints" / f"{cell.model_name}-{train_key}.pt"
    stages.start(
        "train", f"{model_cfg.train.epochs} epochs, batch {model_cfg.train.batch_size} (cache key {train_key})"
    )
    trained = task.train(model, data, model_cfg.train, ckpt, progress=options.progress)
    stages.done("reused cached checkpoint" if trained.cache_hit else f"checkpoint {ckpt}")

    # 3. export FP32 ONNX (cached by checkpoint + export code)
    art_dir = (
        cache / "artifacts" / f"{cell.model_name}-{content_key(file_sha256(ckpt), code_hash(['export/onnx_export']))}"
    )
    fp32_path = art_dir / "fp32.onnx"
    stages.start("export", f"ONNX opset 17 → {fp32_path}")
    check = load_json_entry(art_dir / "export.json", "export check") if reuse(fp32_path, "FP32 ONNX export") else None
    if isinstance(check, dict):
        export_note = f"reused cached export; max |onnx - torch| = {check['max_abs_diff']:.2e} (atol {check['atol']:g})"
    else:
        res = export_onnx(
            model, tuple(model_cfg.input_shape), fp32_path, output_names=task.output_names, input_name="input"
        )
        seal(fp32_path)
        check = {"max_abs_diff": res.max_abs_diff, "atol": res.atol, "rtol": res.rtol, "simplified": res.simplified}
        write_json_entry(art_dir / "export.json", check)
        export_note = (
            f"max |onnx - torch| = {res.max_abs_diff:.2e} (atol {res.atol:g}, rtol {res.rtol:g}), "
            f"simplified={res.simplified}"
        )
    stages.done(export_note)

    # 4. recipe: prune (+ distillation fine-tune), QAT, PTQ, mixed precision
    built = _Artifacts(
        root, data.synthetic, train_split, test_split, model, trained.cache_hit, trained.seconds, fp32_path, fp32_path,
        export_note, recipe.precision, data=data,
    )  # fmt: skip
    ctx = _RecipeContext(cell, options, stages, art_dir, data_key, ckpt, built, out)
    if recipe.split is not None:
        _split_stages(ctx)
    elif recipe.prune is not None:
        _prune_stages(ctx)
    elif recipe.qat is not None:
        _qat_stages(ctx)
    elif recipe.quantize is not None and recipe.quantize.accuracy_budget is not None:
        _mixed_precision_stages(ctx)
    elif recipe.quantize is not None:
        q = recipe.quantize
        form = "S8S8 symmetric, TensorRT form" if q.symmetric_for(target.backend) else "U8S8, ORT CPU form"
        stages.start("quantize", f"INT8 PTQ ({q.method}, {q.calibration_images} calibration images, QDQ {form})")
        built.cand_path, note = _ptq(ctx, fp32_path, recipe.precision)
        stages.done(note)
    return built


@dataclass
class _RecipeContext:
    cell: Cell
    options: CellOptions
    stages: _Stages
    art_dir: Path
    data_key: str
    ckpt: Path
    art: _Artifacts
    out: Path  # the results folder being written (staged; moved into place at the end)


def _stage_count(recipe: Any) -> int:
    """data, train, export, accuracy, latency + the recipe's own stages."""
    n = 5
    if recipe.split is not None:
        return n + 1 + int(recipe.split.pipeline)
    if recipe.prune is not None:
        n += 2 + (1 if recipe.finetune is not None else 0) + (1 if recipe.quantize is not None else 0)
    elif recipe.qat is not None:
        n += 2
    elif recipe.quantize is not None:
        n += 2 if recipe.quantize.accuracy_budget is not None else 1
    return n


_PTQ_ONLY_FIELDS = {"accuracy_budget", "sensitivity_images", "max_float_layers"}


def _ptq(
    ctx: _RecipeContext,
    source_fp32: Path,
    tag: str,
    *,
    exclude: tuple[str, ...] = (),
    out: Path | None = None,
    probe: bool = False,
) -> tuple[Path, str]:
    """INT8 PTQ of ``source_fp32`` with the recipe's [quantize] section (cached by content).

    ``probe``: a latency probe of the pruning search, calibrated on 2 images with minmax (the graph,
    hence the latency, does not depend on the calibration).
    """
    from edgematrix.core.cache import code_hash, content_key, file_sha256, reuse, seal
    from edgematrix.optimize.graph import pad_input_channels
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq
    from edgematrix.tasks.base import get_task

    q, backend, split = ctx.cell.recipe.quantize, ctx.cell.target.backend, ctx.art.train
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
            code_hash(["optimize/quantize", "optimize/graph"]), ctx.data_key, file_sha256(source_fp32),
        )  # fmt: skip
        out = ctx.art_dir / f"{tag}-{qkey}.onnx"
    if reuse(out, "INT8 model"):
        return out, f"reused cached INT8 model {out.name}"
    n = min(qcfg.calibration_images, len(split))
    preprocess = get_task(ctx.cell.model.task).preprocess
    calib = (preprocess(split.images[i : i + 1]) for i in range(n))
    source, padded = source_fp32, 0
    if q.pad_input_channels:
        source = source_fp32.with_name(f"{source_fp32.stem}-pad{q.pad_input_channels}.onnx")
        padded = pad_input_channels(source_fp32, source, "input", q.pad_input_channels)
    qres = quantize_static_qdq(source, out, calib, input_name="input", config=qcfg)
    seal(out)
    pad_note = f", input conv padded to {q.pad_input_channels} channels" if padded else ""
    return out, f"{qres.quantized_nodes} nodes quantized{pad_note} → {out.name}"


def _export_cached(model: Any, input_shape: list[int], path: Path, output_names: tuple[str, ...]) -> str:
    from edgematrix.core.cache import reuse, seal
    from edgematrix.export.onnx_export import export_onnx

    if reuse(path, "ONNX export"):
        return f"reused cached export {path.name}"
    res = export_onnx(model, tuple(input_shape), path, output_names=output_names, input_name="input")
    seal(path)
    return f"max |onnx - torch| = {res.max_abs_diff:.2e} → {path.name}"


def _search_meter(cell: Cell, options: CellOptions, section: Any) -> Any:
    """The LatencyMeter of the pruning search: the device's latency server when the cell runs with
    ``--runner remote`` (``options.remote``), else the cell's primary backend on this host, as the
    cell's own latency stage runs it."""
    from edgematrix.backends.meter import LocalMeter
    from edgematrix.measure.harness import LatencyConfig

    config = LatencyConfig(
        warmup=5,
        min_rounds=section.probe_rounds,
        max_rounds=max(section.probe_rounds, 400),
        min_time_s=section.probe_min_time_s,
        max_time_s=max(section.probe_min_time_s * 4, 30.0),
    )
    remote = getattr(options, "remote", None)
    if remote:
        from edgematrix.server.client import RemoteMeter

        return RemoteMeter(remote, config=config)
    backend = cell.target.backend
    return LocalMeter(backend=backend, config=config, runner_options=_runner_kwargs(backend, cell, "candidate"))


def _prune_stages(ctx: _RecipeContext) -> None:
    """Latency-aware pruning search → prune → distillation fine-tune → export (→ INT8 PTQ)."""
    import copy
    import tempfile

    import torch

    from edgematrix.backends.meter import LocalMeter
    from edgematrix.core.cache import code_hash, content_key, file_sha256
    from edgematrix.optimize.prune import (
        LatencyCache,
        PruneSettings,
        RoundMember,
        channel_counts,
        parameter_count,
        prune_model,
        save_search,
        search_pruning_ratio,
    )
    from edgematrix.tasks.base import TrainOutcome, get_task

    cell, stages, art = ctx.cell, ctx.stages, ctx.art
    recipe, shape = cell.recipe, cell.model.input_shape
    p = recipe.prune
    assert p is not None
    settings = PruneSettings(
        speedup=p.speedup, round_to=p.round_to, ignored_layers=tuple(p.ignored_layers), importance=p.importance,
        tolerance=p.tolerance, max_probes=p.max_probes, max_ratio=p.max_ratio, pairs=p.pairs,
        remeasure=p.remeasure, confidence=p.confidence, bound=p.bound,
    )  # fmt: skip
    int8 = recipe.quantize is not None
    task = get_task(cell.model.task)
    outputs = task.output_names

    def deploy(m: Any, folder: Path) -> Path:
        fp32 = folder / "fp32.onnx"
        _export_cached(m, shape, fp32, outputs)
        if not int8:
            return fp32
        return _ptq(ctx, fp32, "probe", out=folder / "int8.onnx", probe=True)[0]

    cache_dir = ctx.options.cache_dir / "prune"
    cache = LatencyCache(cache_dir / "latency.json")
    stages.start(
        "prune search",
        f"{p.speedup:g}× in {recipe.precision} on {cell.target.backend} (±{p.tolerance:.0%}, ≤{p.max_probes} probes, "
        f"round_to {p.round_to}, ignored {', '.join(p.ignored_layers) or 'none'}; {len(cache)} cached measurements)",
    )

    def on_probe(pr: Any) -> None:
        src = "cached" if pr.cached else "measured"
        console.print(
            f"      ratio {pr.ratio:.3f}: {pr.latency_ms:.2f} ms vs unpruned {pr.baseline_ms:.2f} ms in the same blocks "
            f"({src}), speedup {pr.speedup:.2f}× ({p.confidence:.0%} interval {pr.low:.2f}..{pr.high:.2f}×, "
            f"{pr.blocks} blocks: {pr.verdict}), widths {pr.channels}, {pr.params / 1e6:.1f} M params"
        )

    meter = _search_meter(cell, ctx.options, p)
    rounds: list[RoundMember] = []
    feed = None
    if isinstance(meter, LocalMeter) and "torch" not in cell.target.all_backends:
        # each probe runs among the models the latency stage interleaves with the candidate, in _measure's
        # order, on its input (both change the ratio), so the search measures what the same-run check
        # will: the FP32 reference and the candidate on every backend, then the unpruned INT8 model
        feed = {"input": task.preprocess(art.test.images[0:1])}
        primary = cell.target.backend
        for b in cell.target.all_backends:
            ref = RoundMember(
                f"{b}:reference", b, "unpruned" if b == primary and not int8 else art.fp32_path,
                _runner_kwargs(b, cell, "reference"),
            )  # fmt: skip
            rounds.append(ref)
            rounds.append(RoundMember(f"{b}:candidate", b, "probe", _runner_kwargs(b, cell, "candidate")))
        if int8:
            rounds.append(
                RoundMember(f"{primary}:unpruned", primary, "unpruned", _runner_kwargs(primary, cell, "unpruned"))
            )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgematrix-prune-", dir=cache_dir) as work:
        search = search_pruning_ratio(
            art.model, input_shape=shape, settings=settings, meter=meter, deploy=deploy, cache=cache, work_dir=work,
            backend=cell.target.backend, precision=recipe.precision, on_probe=on_probe, rounds=rounds, feed=feed,
        )  # fmt: skip
    chosen = search.chosen
    assert chosen is not None
    stages.done(
        f"ratio {chosen.ratio:.3f}: {chosen.speedup:.2f}× (requested {p.speedup:g}× {p.bound.replace('_', ' ')}, "
        f"tolerance {p.tolerance:.0%}), {chosen.latency_ms:.2f} vs unpruned {chosen.baseline_ms:.2f} ms in the same "
        f"blocks, {len(search.probes)} probes, {search.measurements} blocks measured; {search.reason}"
    )

    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    student = prune_model(
        copy.deepcopy(art.model), example, chosen.ratio, round_to=p.round_to, ignored_layers=p.ignored_layers,
        importance=p.importance,
    )  # fmt: skip
    counts = channel_counts(student)
    ft = recipe.finetune
    tune_key = content_key(
        file_sha256(ctx.ckpt), counts, p.importance, ft.model_dump() if ft else None, ctx.data_key,
        code_hash([*task.train_code, "train/distill", "optimize/prune"]), torch.__version__.split("+")[0],
    )  # fmt: skip
    facts: dict[str, float | int | str] = {
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
        "params": parameter_count(student),
        "unpruned_params": parameter_count(art.model),
    }
    if ft is not None:
        from edgematrix.train.distill import DistillConfig
        from edgematrix.train.lane import reuse_checkpoint, save_checkpoint

        tcfg = cell.model.train
        dcfg = DistillConfig(
            epochs=ft.epochs, batch_size=ft.batch_size, lr=ft.lr, weight_decay=ft.weight_decay,
            warmup_fraction=ft.warmup_fraction, alpha=ft.alpha, temperature=ft.temperature, seed=ft.seed,
            amp=ft.amp, flip=tcfg.flip, label_sigma=tcfg.label_sigma, expectation_weight=tcfg.expectation_weight,
        )  # fmt: skip
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
            tuned = task.finetune(student, art.model, art.data, dcfg, progress=ctx.options.progress, label="finetune")
            save_checkpoint(student, ft_ckpt, {"history": tuned.history, "seconds": tuned.seconds})
        last = tuned.history[-1] if tuned.history else {}
        stages.done(
            "reused cached checkpoint"
            if tuned.cache_hit
            else f"{tuned.seconds:.0f} s, last epoch kd {last.get('kd', 0):.3f} task {last.get('task', 0):.3f}"
        )
        facts.update({"finetune_epochs": ft.epochs, "distill_alpha": ft.alpha, "distill_temperature": ft.temperature})
    pruned_fp32 = ctx.art_dir / f"pruned-{tune_key}.onnx"
    stages.start("export pruned", f"ONNX → {pruned_fp32.name}")
    stages.done(_export_cached(student, shape, pruned_fp32, outputs))
    art.cand_model, art.cand_path = student, pruned_fp32
    if recipe.quantize is not None:
        stages.start("quantize", "INT8 PTQ of the pruned model, and of the unpruned one (the speedup's base)")
        art.cand_path, note = _ptq(ctx, pruned_fp32, "pruned-int8")
        unpruned, note2 = _ptq(ctx, art.fp32_path, "int8")
        art.extra_roles["unpruned"] = (unpruned, "int8")
        stages.done(f"pruned: {note}; unpruned: {note2}")
    art.facts.update(facts)
    art.prune_search = search
    save_search(search, ctx.out / "prune_search.json")


def _qat_stages(ctx: _RecipeContext) -> None:
    """ModelOpt QAT (distilled from the FP32 model) → QDQ ONNX; PTQ of the same model to compare."""
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
    from edgematrix.tasks.base import get_task
    from edgematrix.train.distill import DistillConfig

    cell, stages, art = ctx.cell, ctx.stages, ctx.art
    qs, tcfg = cell.recipe.qat, cell.model.train
    task = get_task(cell.model.task)
    assert qs is not None
    dcfg = DistillConfig(
        epochs=qs.epochs, batch_size=qs.batch_size, lr=qs.lr, weight_decay=qs.weight_decay,
        warmup_fraction=qs.warmup_fraction, alpha=qs.alpha, temperature=qs.temperature, seed=qs.seed, amp=qs.amp,
        flip=tcfg.flip, label_sigma=tcfg.label_sigma, expectation_weight=tcfg.expectation_weight,
        channels_last=False,  # ModelOpt's CPU fake quantization fails in backward on channels-last tensors
    )  # fmt: skip
    key = content_key(
        file_sha256(ctx.ckpt), qs.model_dump(), ctx.data_key,
        code_hash([*task.train_code, "train/distill", "optimize/qat"]), torch.__version__.split("+")[0],
    )  # fmt: skip
    qat_path = ctx.art_dir / f"qat-{key}.onnx"
    qat_fp32 = ctx.art_dir / f"qat-{key}-fp32.onnx"
    meta = qat_path.with_suffix(".json")
    stages.start(
        "qat",
        f"ModelOpt INT8 fake quantization, {qs.calibration_images} calibration images, {qs.epochs} epochs of "
        f"distillation (alpha {qs.alpha:g}, T {qs.temperature:g}, lr {qs.lr:g})",
    )
    cached = (
        load_json_entry(meta, "QAT facts") if reuse(qat_path, "QAT model") and reuse(qat_fp32, "QAT model") else None
    )
    if isinstance(cached, dict):
        info = cached
        stages.done(f"reused cached QAT model {qat_path.name}")
    else:
        n = min(qs.calibration_images, len(art.train))
        calib = [task.preprocess(art.train.images[i : i + 1]) for i in range(n)]

        def finetune(student: Any) -> Any:
            return task.finetune(student, art.model, art.data, dcfg, progress=ctx.options.progress, label="qat")

        res = qat_model(
            art.model, calib, finetune, qat_path, qat_fp32, input_shape=cell.model.input_shape,
            output_names=task.output_names,
        )  # fmt: skip
        info = {
            "qdq_pairs": res.qdq_pairs, "max_rel_diff": res.max_rel_diff, "folded_batchnorms": res.folded_batchnorms,
            "seconds": res.seconds, "history": res.history, "calibration_images": res.calibration_images,
        }  # fmt: skip
        seal(qat_path)
        seal(qat_fp32)
        write_json_entry(meta, info)
        stages.done(
            f"{res.qdq_pairs} DequantizeLinear, {res.folded_batchnorms} BatchNorms folded, trained in {res.seconds:.0f} s, "
            f"ModelOpt QDQ vs torch: max relative difference {res.max_rel_diff:.2e}"
        )
    q = cell.recipe.quantize
    assert q is not None
    stages.start(
        "quantize",
        f"the QAT-trained weights through the PTQ pipeline ({q.method}, {q.calibration_images} images: the "
        "deployed QDQ form), and PTQ of the original FP32 model to compare",
    )
    art.cand_path, note = _ptq(ctx, qat_fp32, "qat-int8")
    ptq_path, note2 = _ptq(ctx, art.fp32_path, "int8")
    art.extra_roles["ptq"] = (ptq_path, "int8")
    art.extra_roles["qat_modelopt_qdq"] = (qat_path, "int8")
    stages.done(f"QAT: {note}; PTQ: {note2}")
    art.qat_info = info
    art.facts.update(
        {
            "qat_epochs": qs.epochs,
            "qat_qdq_pairs": int(info["qdq_pairs"]),
            "qat_export_max_rel_diff": float(np.float64(info["max_rel_diff"])),
            "distill_alpha": qs.alpha,
        }
    )


SPLIT_JOIN_ATOL = 1e-4  # encoder → heads vs the whole FP32 model (max abs difference)


def _split_stages(ctx: _RecipeContext) -> None:
    """Split the FP32 model into encoder / head subgraphs (joins checked), then deploy each in its
    placement's precision; INT8 heads are calibrated on the encoder's cached features."""
    from edgematrix.core.cache import code_hash, content_key, file_sha256
    from edgematrix.export.split import split_model
    from edgematrix.optimize.quantize import QuantizeConfig
    from edgematrix.optimize.subgraph import deploy_split
    from edgematrix.tasks.base import get_task

    cell, stages, art = ctx.cell, ctx.stages, ctx.art
    s, q, backend = cell.recipe.split, cell.recipe.quantize, cell.target.backend
    assert s is not None
    task = get_task(cell.model.task)
    heads = list(task.output_names)
    placements = s.placements(heads)
    plan = ", ".join(
        f"{n} {p.precision}@{p.device}" + (f"/{p.threads}t" if p.threads else "") for n, p in placements.items()
    )
    stages.start("split", f"encoder + {len(heads)} heads ({plan}); joins checked to {SPLIT_JOIN_ATOL:g}")
    key = content_key(
        file_sha256(art.fp32_path), s.model_dump(), q.model_dump() if q else None, ctx.data_key,
        q.symmetric_for(backend) if q else None, code_hash(["export/split", "optimize/subgraph", "optimize/quantize"]),
    )  # fmt: skip
    folder = ctx.art_dir / f"split-{key}"
    split = split_model(art.fp32_path, folder / "fp32", heads=heads, atol=SPLIT_JOIN_ATOL)
    qcfg = QuantizeConfig(
        method=q.method if q else "minmax",
        calibration_images=s.calibration_images,
        per_channel=q.per_channel if q else True,
        percentile=q.percentile if q else 99.999,
        symmetric_activations=q.symmetric_for(backend) if q else False,
    )
    n = min(s.calibration_images, len(art.train))
    calibration = (task.preprocess(art.train.images[i : i + 1]) for i in range(n))
    deployed = deploy_split(
        split, folder / "deployed", placements, calibration=calibration, calibration_images=n,
        quantize_config=qcfg, cache_dir=ctx.options.cache_dir / "split-features",
    )  # fmt: skip
    art.cand_path = deployed.manifest
    cut = ",".join(f.name for f in split.features)
    art.split_info = {
        "max_abs_diff": split.max_abs_diff,
        "atol": SPLIT_JOIN_ATOL,
        "features": [(f.name, list(f.shape)) for f in split.features],
        "auto_cut": split.auto_cut,
        "placements": {k: v.model_dump() for k, v in placements.items()},
        "files": {k: str(v) for k, v in deployed.files.items()},
        "notes": {k: list(v) for k, v in deployed.notes.items() if v},
    }
    art.facts.update(
        {
            "split_max_abs_diff": float(split.max_abs_diff),
            "split_features": cut,
            "split_placements": plan,
        }
    )
    stages.done(
        f"cut at {cut} ({'found' if split.auto_cut else 'given'}), encoder → heads vs whole model max |diff| "
        f"{split.max_abs_diff:.2e}; deployed {deployed.manifest}"
    )


def _pipeline_stage(cell: Cell, art: _Artifacts, stages: _Stages) -> None:
    """Stream test frames through the deployed split: sequential vs 2-stage pipelined (vs the whole FP32 model)."""
    from edgematrix.backends.base import create_runner
    from edgematrix.backends.split.runner import SplitRunner
    from edgematrix.measure.pipeline import measure_pipeline
    from edgematrix.tasks.base import get_task

    s = cell.recipe.split
    assert s is not None and art.split_info is not None
    task = get_task(cell.model.task)
    n = min(s.frames, len(art.test))
    frames = [{"input": task.preprocess(art.test.images[i : i + 1])} for i in range(n)]
    threads = cell.target.threads
    stages.start(
        "pipeline",
        f"{n} frames: sequential (encoder, heads; {threads or 'all'} threads each) vs pipelined (encoder of frame "
        "t+1 beside the heads of frame t, each stage with its placement's threads), alternating 3 rounds",
    )
    seq = SplitRunner(art.cand_path, intra_op_threads=threads, threads=threads)
    pipe = SplitRunner(art.cand_path, intra_op_threads=threads)
    with seq, pipe, create_runner("onnxruntime", path=art.fp32_path, intra_op_threads=threads) as whole:
        report = measure_pipeline(seq, frames, pipelined=pipe, whole=whole, rounds=3)
    summary = report.summary()
    art.split_info["pipeline"] = {**summary, "reason": report.reason()}
    art.facts.update({f"pipeline_{k}" if not k.startswith("pipeline") else k: v for k, v in summary.items()})
    stages.done(
        f"sequential {report.sequential_fps:.1f} FPS, pipelined {report.pipelined_fps:.1f} FPS "
        f"({report.speedup:.2f}×); {report.reason()}"
    )


def _mixed_precision_stages(ctx: _RecipeContext) -> None:
    """Full INT8 PTQ, then per-layer sensitivity and the greedy float set that meets the budget."""
    import copy

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
    from edgematrix.data.lanes import LaneSplit
    from edgematrix.optimize.mixed_precision import MixedPrecisionResult, mixed_precision_search
    from edgematrix.tasks.base import get_task

    cell, stages, art = ctx.cell, ctx.stages, ctx.art
    q = cell.recipe.quantize
    assert q is not None and q.accuracy_budget is not None
    stages.start("quantize", f"INT8 PTQ, every layer ({q.method}, {q.calibration_images} calibration images)")
    full, note = _ptq(ctx, art.fp32_path, "int8")
    art.extra_roles["int8_full"] = (full, "int8")
    stages.done(note)

    # held-out scoring subset: the last images of the training split (calibration takes the first)
    k = min(q.sensitivity_images, len(art.train))
    ds = copy.copy(art.train.dataset)
    ds.samples = art.train.samples[-k:]
    subset = LaneSplit(ds, art.train.images[-k:])
    task = get_task(cell.model.task)
    backend = cell.target.backend

    key = content_key(
        q.model_dump(), q.symmetric_for(backend), file_sha256(art.fp32_path), ctx.data_key,
        code_hash(["optimize/quantize", "optimize/graph", "optimize/mixed_precision"]),
    )  # fmt: skip
    folder = ctx.art_dir / f"mixed-{key}"
    meta = folder / "mixed.json"
    stages.start(
        "sensitivity",
        f"per-layer sensitivity on {k} held-out training images, keep float until within {q.accuracy_budget:g} "
        f"points of FP32 (at most {q.max_float_layers} layers)",
    )
    cached = load_json_entry(meta, "mixed-precision search")
    if isinstance(cached, dict) and reuse(Path(cached["path"]), "mixed-precision model"):
        info = cached
        stages.done(f"reused cached search: float {', '.join(info['float_nodes']) or '(none)'}")
    else:
        import tempfile

        def evaluate(path: Path) -> float:
            with (
                tempfile.TemporaryDirectory() as tmp,
                create_runner(backend, path=path, **_runner_kwargs(backend, cell, "candidate")) as run,
            ):
                score = task.evaluate(run, subset, Path(tmp), "probe", model=art.model, input_name="input")
            return float(score.accuracy)

        def quantize(exclude: tuple[str, ...], out: Path) -> Path:
            return _ptq(ctx, art.fp32_path, "mixed", exclude=exclude, out=out)[0]

        res: MixedPrecisionResult = mixed_precision_search(
            art.fp32_path, folder, budget=q.accuracy_budget, quantize=quantize, evaluate=evaluate,
            max_float_layers=q.max_float_layers, progress=lambda msg: console.print(f"      {msg}"),
        )  # fmt: skip
        info = res.as_dict()
        seal(Path(info["path"]))
        write_json_entry(meta, info)
        stages.done(
            f"float: {', '.join(res.float_nodes) or '(none)'}; subset accuracy FP32 {res.fp32_score:.2f}, "
            f"full INT8 {res.int8_score:.2f}, mixed {res.final_score:.2f} ({res.evaluations} evaluations)"
        )
    art.cand_path = Path(info["path"])
    art.mixed_info = info
    art.facts.update(
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


def _gpu_int8_runtime_missing() -> str:
    """Why a QDQ INT8 model cannot run on this GPU host ("" when a GPU INT8 runtime is present)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        return ""
    try:
        import onnxruntime as ort

        if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
            return ""
    except ImportError:
        pass
    return (
        "no GPU INT8 runtime on this host: the QDQ INT8 model needs TensorRT or onnxruntime-gpu (CUDA / TensorRT "
        "execution provider), and torch has no kernels for it. Not measured: no CPU figure is reported for a GPU "
        "cell. Install the `tensorrt` extra (or onnxruntime-gpu) on the GPU runner."
    )


def _runner_kwargs(backend: str, cell: Cell, role: str) -> dict[str, Any]:
    """Constructor arguments of a backend's runner for this cell and role."""
    target = cell.target
    if backend == "onnxruntime":
        return {"providers": tuple(target.providers), "intra_op_threads": target.threads}  # 0: physical cores
    if backend == "torch":
        from edgematrix.tasks.base import get_task

        # the trained torch module itself: FP32 eager as the reference; an FP16 candidate runs under
        # autocast, channels-last, replayed as a CUDA graph (the fastest batch-1 form measured)
        fast = role != "reference" and cell.recipe.precision == "fp16"
        return {
            "input_shape": tuple(cell.model.input_shape),
            "device": "cuda",
            "mode": "fp16" if fast else "fp32",
            "channels_last": fast,
            "cuda_graph": fast,
            "output_names": get_task(cell.model.task).output_names,
        }
    if backend == "openvino":
        # Exact FP32 for every role: OpenVINO would otherwise run the float layers in bf16 on CPUs
        # that have it, and the FP32 reference would not be what it says. For the INT8 QDQ model the
        # quantized layers run in u8 either way; with the rest in f32 it was also faster here
        # (ORT/OV INT8 p50 1.16x exact vs 1.12x default, benchmarks/openvino_vs_ort.py).
        return {"intra_op_threads": target.threads, "exact_fp32": True}
    return {}


def _create_runner(cell: Cell, backend: str, role: str, path: Path, module: Any) -> Any:
    """The runner of one (backend, role): a torch module, an ONNX file, or a split model's manifest."""
    from edgematrix.backends.base import create_runner

    if backend == "torch":
        return create_runner("torch", module=module, **_runner_kwargs("torch", cell, role))
    if path.suffix == ".json":  # a split model: encoder + heads, each on the backend, batch-1 sequential
        threads = cell.target.threads
        return create_runner("split", path=path, inner_backend=backend, intra_op_threads=threads, threads=threads)
    return create_runner(backend, path=path, **_runner_kwargs(backend, cell, role))


def model_bytes(path: Path) -> int:
    """Size of a model: the ONNX file, or the sum of a split manifest's subgraph files."""
    if path.suffix == ".json":
        from edgematrix.backends.split.manifest import load_manifest

        return load_manifest(path, verify=False).model_bytes()
    return path.stat().st_size


def _resolve_ab_base(path: Path | None) -> Path | None:
    """The base branch's candidate model: an .onnx file, or a results folder's artifacts.json."""
    if path is None:
        return None
    if path.is_dir():
        manifest = path / "artifacts.json"
        if not manifest.is_file():
            raise EdgeMatrixError(f"--ab-base {path}: no artifacts.json; pass the base run's results/<cell>/ or .onnx")
        path = Path(json.loads(manifest.read_text())["candidate"])
    if not path.is_file():
        raise EdgeMatrixError(f"--ab-base: model {path} not found; run the cell on the base branch first")
    return path


def _measure(
    cell: Cell, art: _Artifacts, out: Path, stages: _Stages, ab_base: Path | None = None
) -> tuple[dict[tuple[str, str], _Measured], Any]:
    """Steps 5-6: task accuracy per (backend, role), output agreement, interleaved latency.

    In A/B mode the base branch's candidate runs as role ``base`` on the primary backend, in the same
    interleaved rounds as this branch's candidate, so drift of a shared runner cancels out.
    """
    import numpy as np

    from edgematrix.measure.harness import LatencyConfig, measure_interleaved
    from edgematrix.tasks.base import get_task

    target, recipe = cell.target, cell.recipe
    backends = target.all_backends
    if "torch" in backends and recipe.precision == "int8":
        reason = _gpu_int8_runtime_missing()
        raise BackendError(
            f"{cell.name}: {reason or 'the GPU INT8 path through onnxruntime-gpu/TensorRT is not wired to the torch target yet'}"
        )
    roles = {"reference": art.fp32_path} if art.same else {"reference": art.fp32_path, "candidate": art.cand_path}
    keys = [(b, r) for b in backends for r in roles]
    if ab_base is not None:
        roles["base"] = ab_base
        keys.append((target.backend, "base"))
    if art.extra_roles and target.backend == "torch":
        raise BackendError(
            f"{cell.name}: recipe {cell.recipe_name!r} compares ONNX models; the torch target runs modules"
        )
    for role, (path, _precision) in art.extra_roles.items():  # primary backend only, like the A/B base
        roles[role] = path
        keys.append((target.backend, role))
    modules = {"reference": art.model, "candidate": art.cand_model if art.cand_model is not None else art.model}
    runners = {k: _create_runner(cell, k[0], k[1], roles[k[1]], modules.get(k[1], art.model)) for k in keys}
    task = get_task(cell.model.task)
    primary = (target.backend, "reference")
    probe = [
        {"input": task.preprocess(art.test.images[i : i + 1])} for i in range(min(AGREEMENT_IMAGES, len(art.test)))
    ]
    scores, rel = {}, {}
    stages.start("accuracy", f"{len(art.test)} test images per model on {', '.join(backends)}")
    for r in runners.values():
        r.__enter__()
    try:
        for (backend, role), runner in runners.items():
            tag = role if backend == target.backend else f"{role}-{backend}"
            scores[backend, role] = task.evaluate(runner, art.test, out, tag, model=art.model, input_name="input")
        agree = task.agreement_output
        ref_out = [np.asarray(runners[primary].infer(f)[agree]) for f in probe]
        for key, runner in runners.items():
            if key != primary:
                diffs = [
                    np.abs(np.asarray(runner.infer(f)[agree]) - o).max() / np.abs(o).max()
                    for f, o in zip(probe, ref_out, strict=True)
                ]
                rel[key] = float(max(diffs))
        stages.done(f"{task.metric}: " + ", ".join(f"{r}@{b} {s.accuracy:.2f}" for (b, r), s in scores.items()))

        lat = recipe.latency
        lcfg = LatencyConfig(
            warmup=lat.warmup,
            min_rounds=lat.min_rounds,
            max_rounds=lat.max_rounds,
            min_time_s=lat.min_time_s,
            max_time_s=lat.max_time_s,
        )
        stages.start(
            "latency",
            f"batch 1, {len(runners)} model(s) interleaved, ≥{lcfg.min_rounds} rounds, ≥{lcfg.min_time_s:g} s",
        )
        samples: dict[str, Any]
        if set(backends) == {"torch"}:
            # GPU: CUDA-event timing of the device-side forward; host overhead is kept separately
            import torch

            from edgematrix.measure.gpu import measure_cuda_interleaved

            x = torch.from_numpy(probe[0]["input"]).to("cuda")
            fns = {f"{b}:{r}": (lambda run=run: run.infer_device(x)) for (b, r), run in runners.items()}
            samples = measure_cuda_interleaved(fns, lcfg)
        else:
            samples = measure_interleaved({f"{b}:{r}": run for (b, r), run in runners.items()}, probe[0], lcfg)
        stages.done(", ".join(f"{k} p50 {v.p50_ms:.2f} ms" for k, v in samples.items()))
        facts = {k: r.facts() for k, r in runners.items()}
        for b, r in keys:  # the submission's timing field: the latency stage's p50, never the scoring pass's wall time
            task.record_latency(scores[b, r], samples[f"{b}:{r}"].p50_ms)
    finally:
        for r in runners.values():
            r.__exit__(None, None, None)
    precision_of: dict[str, str] = {"reference": "fp32", "candidate": recipe.precision, "base": recipe.precision}
    precision_of.update({role: precision for role, (_path, precision) in art.extra_roles.items()})
    measured = {
        (b, r): _Measured(
            b, r, roles[r], precision_of[r], scores[b, r], samples[f"{b}:{r}"], facts[b, r], rel.get((b, r))
        )
        for (b, r) in keys
    }
    if art.same:  # a reference-only cell: the candidate is the reference itself
        for b in backends:
            m = measured[b, "reference"]
            measured[b, "candidate"] = _Measured(
                b, "candidate", m.path, m.precision, m.score, m.samples, m.facts, m.rel_diff
            )
            src = m.score.predictions_file
            if src is not None:
                shutil.copyfile(src, src.with_name(src.name.replace("predictions-reference", "predictions-candidate")))
    return measured, lcfg


def _busy_reasons(measured: dict[tuple[str, str], _Measured]) -> tuple[str, ...]:
    """Why the machine was busy during the latency rounds (empty: quiet, or no record, as on a GPU)."""
    record = next((m.samples.contention for m in measured.values() if m.samples.contention is not None), None)
    return tuple(record.reasons()) if record is not None else ()


def _gate_and_report(
    cell: Cell,
    options: CellOptions,
    choice: Choice,
    art: _Artifacts,
    measured: dict[tuple[str, str], _Measured],
    lcfg: Any,
    stages: _Stages,
    out: Path,
    final: Path,
) -> CellResult:
    """Gates, benchmark.json, junit.xml, report.md into ``out`` (the staged folder that becomes ``final``)."""
    from edgematrix.core.cache import file_sha256
    from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
    from edgematrix.fileio import atomic_write_text
    from edgematrix.gates.baseline import (
        Baseline,
        baseline_key,
        current_environment,
        libc,
        load_baselines,
        write_baseline,
    )
    from edgematrix.gates.verdicts import RunFigures, Verdict, evaluate_gates
    from edgematrix.measure.environment import capture_environment
    from edgematrix.report.junit import write_junit
    from edgematrix.report.markdown import render_report
    from edgematrix.tasks.base import get_task

    target = cell.target
    backends = target.all_backends
    task = get_task(cell.model.task)
    task_metric = task.metric
    env = capture_environment({"edgematrix_runner": choice.runner})
    device = str(env.get("cpu_model") or platform.processor())
    if "torch" in backends:  # GPU facts (name, driver, CUDA, clocks, temperature, locked clocks) via NVML
        from edgematrix.measure.gpu import gpu_facts

        env.update(gpu_facts())
        device = str(env.get("gpu") or device)
    environment = current_environment()  # the baseline key: python, arch, numeric package versions
    image = os.environ.get("EDGEMATRIX_IMAGE", "local")  # where it ran (not keyed): the image tag in a container
    power_mode = os.environ.get("EDGEMATRIX_POWER_MODE", "")  # device runners export nvpmodel / TI OPP
    ref_of_record = measured[target.backend, "reference"]
    ref_p50 = ref_of_record.samples.p50_ms
    sha = {p: file_sha256(p) for p in {m.path for m in measured.values()}}
    busy = _busy_reasons(measured)  # a contended run's latency gates are inconclusive, never pass/fail
    ab = (target.backend, "base") in measured
    comparisons = len(backends) + int(ab)  # latency comparisons judged together (family-wise)

    # gates, per backend (the primary backend's gate names carry no suffix: stable JUnit names)
    verdicts: list[Verdict] = []
    notes: list[str] = []
    per_backend_failed: dict[str, bool] = {}
    for b in backends:
        key = baseline_key(cell.name, b, target.backend)
        path_hint = f"matrix/baselines/{key}.json"
        hint = (
            f"this run writes {path_hint} (--update-baseline); review and commit it"
            if options.update_baseline
            else f"create one with `nox -s {cell.name} -- --update-baseline` and commit {path_hint}"
        )
        baseline = [] if options.update_baseline else load_baselines(options.baselines_dir, key)
        ref, cand = measured[b, "reference"], measured[b, "candidate"]
        version = str(cand.facts.get("version", ""))
        # the latency ratio stays within the backend: candidate vs that backend's FP32 reference,
        # paired round by round (the rounds are interleaved, so machine drift cancels in each pair)
        ratios = tuple(c / r for c, r in zip(cand.samples.samples_s, ref.samples.samples_s, strict=True))
        figs_ref = RunFigures(ref_of_record.score.accuracy, ref.samples.p50_ms, b, version, device)
        figs_cand = RunFigures(
            cand.score.accuracy, cand.samples.p50_ms, b, version, device, cand.precision, environment, power_mode,
            ratios, busy,
        )  # fmt: skip
        vs = evaluate_gates(
            cell.gates, figs_ref, figs_cand, baseline, same_artifact=art.same, baseline_hint=hint,
            comparisons=comparisons,
        )  # fmt: skip
        if b != target.backend and ref.rel_diff is not None:
            ok = ref.rel_diff <= FP32_AGREEMENT_TOLERANCE
            vs.append(
                Verdict(
                    "fp32_outputs_match_reference",
                    "passed" if ok else "failed",
                    f"FP32 outputs on {b} vs ONNX Runtime FP32: max relative difference {ref.rel_diff:.2e} "
                    f"(tolerance {FP32_AGREEMENT_TOLERANCE:g}, {AGREEMENT_IMAGES} images)",
                )
            )
        if b != target.backend:
            vs = [Verdict(f"{v.gate}[{b}]", v.status, v.message) for v in vs]
        per_backend_failed[b] = any(v.failed for v in vs)
        verdicts.extend(vs)
        if options.update_baseline and busy:
            notes.append(
                f"baseline NOT written to {path_hint}: the machine was busy during the latency rounds "
                f"({'; '.join(busy)}); re-run --update-baseline on a quiet machine"
            )
        elif options.update_baseline:
            bl = Baseline(
                cell=cell.name,
                precision=cand.precision,
                backend=b,
                backend_version=version,
                accuracy=round(cand.score.accuracy, 4),
                reference_accuracy=round(ref_of_record.score.accuracy, 4),
                p50_ratio=round(cand.samples.p50_ms / figs_ref.p50_ms, 4),
                candidate_p50_ms=round(cand.samples.p50_ms, 3),
                reference_p50_ms=round(figs_ref.p50_ms, 3),
                artifact_sha256=sha[cand.path],
                cpu=device,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                image=image,
                environment=environment,
                libc=libc(),
                power_mode=power_mode,
                ratio_samples=[round(x, 6) for x in ratios] if not art.same else [],
            )
            written = write_baseline(options.baselines_dir, bl, key)
            notes.append(f"baseline written to {written} — review and commit it")

    if ab:
        verdicts.extend(
            _ab_verdicts(
                cell, measured[target.backend, "base"], measured[target.backend, "candidate"], busy, comparisons
            )
        )
        per_backend_failed[target.backend] = any(v.failed for v in verdicts if "[" not in v.gate)
    recipe_verdicts, recipe_facts = _recipe_verdicts(cell, art, measured)
    if recipe_verdicts:
        verdicts.extend(recipe_verdicts)
        per_backend_failed[target.backend] = per_backend_failed[target.backend] or any(
            v.failed for v in recipe_verdicts
        )

    # backend selection among the backends that pass all their gates: another backend replaces the
    # primary only when decidably faster on paired rounds, and a busy run selects nothing
    passing = [b for b in backends if not per_backend_failed[b]]
    sel = None
    if passing:
        from edgematrix.gates.latency import select_fastest

        sel = select_fastest(
            {b: measured[b, "candidate"].samples.samples_s for b in passing},
            preferred=[target.backend, *backends],
            busy=busy,
            min_effect=cell.gates.latency_min_effect,
            confidence=cell.gates.latency_confidence,
        )
    selected = sel.selected if sel is not None else ""
    selection = _selection_text(backends, passing, sel, measured)

    rows, entries = [], []
    role_order = ("reference", "candidate", "base", *art.extra_roles)
    for b, role in [(b, r) for b in backends for r in role_order if (b, r) in measured]:
        m = measured[b, role]
        extra: dict[str, float | int | str] = {
            "role": role,
            "recipe": cell.recipe_name,
            "precision": m.precision,
            "backend": b,
            "backend_version": str(m.facts.get("version", "")),
            "inference_precision": str(m.facts.get("inference_precision", m.precision)),
            "accuracy": round(m.score.accuracy, 6),
            **{k: round(v, 6) for k, v in m.score.extras.items()},
            "model_bytes": model_bytes(m.path),
            "input_shape": "x".join(map(str, cell.model.input_shape)),
            "artifact_sha256": sha[m.path],
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
            "runner": choice.runner,
            "dataset": art.data.tag,
            "metric": task_metric,
        }
        if m.samples.contention is not None:
            extra.update(m.samples.contention.extra_info(f"{b}:{role}"))
        if role == "candidate":
            extra.update(art.facts)
            extra.update(recipe_facts)
        suffix = role if b == target.backend else f"{role}@{b}"
        entries.append(
            BenchmarkEntry(
                name=f"{cell.name}[{suffix}]", group=cell.name, samples_s=m.samples.samples_s, extra_info=extra
            )
        )
        shown = task.summary_extras if task.summary_extras is not None else tuple(m.score.extras)
        extras = {k: m.score.extras[k] for k in shown if k in m.score.extras}
        rows.append({**extra, "extras": extras, "speedup": ref_p50 / m.samples.p50_ms})
    record = ref_of_record.samples.contention
    if record is not None:
        from edgematrix.gates.compare import CONTENTION_KEY

        env[CONTENTION_KEY] = record.as_dict()
    write_benchmark_json(out / "benchmark.json", entries, machine_extra=env, latency_config=lcfg)
    manifest = {"reference": str(art.fp32_path.resolve()), "candidate": str(art.cand_path.resolve())}
    atomic_write_text(out / "artifacts.json", json.dumps(manifest, indent=2))

    cand = measured[target.backend, "candidate"]
    junit_props = {
        "runner": choice.runner,
        "backends": ",".join(backends),
        "selected_backend": selected or "(none)",
        "reference_p50_ms": f"{ref_p50:.3f}",
        "candidate_p50_ms": f"{cand.samples.p50_ms:.3f}",
    }
    write_junit(out / "junit.xml", cell.name, verdicts, junit_props)
    threads = ", ".join(sorted({str(r["threads"]) for r in rows}))
    context = {
        "runner": f"{choice.runner} ({choice.reason})",
        "data": f"{art.data.label} at {art.root} ({len(art.test)} test images)",
        "metric": f"{task_metric} (points; the `accuracy` column)",
        "training": "cached checkpoint" if art.cache_hit else f"trained in {art.train_seconds:.0f} s",
        "export check": art.export_note,
        "threads": threads,
        "latency rounds": f"{ref_of_record.samples.rounds} per model, {len(measured)} models interleaved (spinning off)",
        "machine during the rounds": record.summary() if record is not None else "not recorded",
        "cpu": env.get("cpu_model", ""),
        "backends": "; ".join(
            f"{b} {measured[b, 'candidate'].facts.get('version', '')}"
            + (f" ({', '.join(target.providers)})" if b == "onnxruntime" and target.providers else "")
            for b in backends
        ),
        "stage seconds": ", ".join(f"{k} {v:.1f}" for k, v in stages.seconds.items()),
    }
    slowest = max(measured.values(), key=lambda m: m.samples.p50_ms)
    rule = task.latency_rule(slowest.samples.p50_ms)
    if rule:
        context["official timing rule"] = f"slowest model ({slowest.role} on {slowest.backend}): {rule}"
    report = render_report(cell.name, cell.description, rows, verdicts, context, notes, selection=selection)
    report += _recipe_report(cell, art, measured)
    atomic_write_text(out / "report.md", report)
    result = CellResult(cell.name, final, verdicts, rows, stages.seconds, selection)
    _print_summary(result)
    for note in notes:
        console.print(escape(note))
    if result.failed:
        raise GateFailure(
            f"{cell.name}: {len(result.failed)} gate(s) failed:\n"
            + "\n".join(f"  {v.gate}: {v.message}" for v in result.failed)
            + f"\nartifacts: {final}"
        )
    return result


def _recipe_verdicts(
    cell: Cell, art: _Artifacts, measured: dict[tuple[str, str], _Measured]
) -> tuple[list[Any], dict[str, float | int | str]]:
    """Recipe-specific gates (JUnit testcases) and the same-run facts they are based on."""
    from edgematrix.gates.verdicts import Verdict

    primary = cell.target.backend
    cand = measured[primary, "candidate"]
    out: list[Verdict] = []
    facts: dict[str, float | int | str] = {}
    if art.split_info is not None:
        diff, atol = art.split_info["max_abs_diff"], art.split_info["atol"]
        cut = ", ".join(f"{n} {shape}" for n, shape in art.split_info["features"])
        out.append(
            Verdict(
                "split_joins_match",
                "passed" if diff <= atol else "failed",
                f"FP32 encoder → heads vs the whole model: max |diff| {diff:.2e} (tolerance {atol:g}, seeded inputs); "
                f"cut at {cut}",
            )
        )
    p = cell.recipe.prune
    if p is not None and art.prune_search is not None:
        search = art.prune_search
        chosen = search.chosen
        landing_lo = p.speedup * (1 - p.tolerance) if p.bound == "nearest" else p.speedup
        out.append(
            Verdict(
                "prune_search_landed",
                "passed" if search.landed else "failed",
                f"search probe at ratio {chosen.ratio:.3f}: {chosen.speedup:.2f}× vs requested {p.speedup:g}× "
                f"({p.bound.replace('_', ' ')}: {landing_lo:.2f}..{p.speedup * (1 + p.tolerance):.2f}×), "
                f"{len(search.probes)} probes",
            )
        )
        base = measured.get((primary, "unpruned"), measured[primary, "reference"])
        ratios = [b / c for b, c in zip(base.samples.samples_s, cand.samples.samples_s, strict=True)]
        speedup = base.samples.p50_ms / cand.samples.p50_ms
        facts["speedup_vs_unpruned"] = round(speedup, 4)
        facts["speedup_vs_unpruned_round_median"] = round(float(sorted(ratios)[len(ratios) // 2]), 4)
        floor = p.speedup * (1 - p.tolerance)
        out.append(
            Verdict(
                "prune_speedup_vs_unpruned",
                "passed" if speedup >= floor else "failed",
                f"same run, {cell.recipe.precision} vs unpruned {cell.recipe.precision}: p50 "
                f"{base.samples.p50_ms:.2f} / {cand.samples.p50_ms:.2f} ms = {speedup:.2f}× "
                f"(requested {p.speedup:g}×, floor {floor:.2f}×)",
            )
        )
    if art.qat_info is not None:
        qs = cell.recipe.qat
        assert qs is not None
        ptq = measured[primary, "ptq"]
        diff = float(art.qat_info["max_rel_diff"])
        out.append(
            Verdict(
                "qat_export_matches_torch",
                "passed" if diff <= qs.export_tolerance else "failed",
                f"ModelOpt QDQ ONNX on ONNX Runtime vs the fake-quantized torch model: max |diff| / max |torch| "
                f"{diff:.2e} (tolerance {qs.export_tolerance:g})",
            )
        )
        facts["ptq_accuracy"] = round(ptq.score.accuracy, 6)
        facts["qat_minus_ptq_accuracy"] = round(cand.score.accuracy - ptq.score.accuracy, 6)
        facts["qat_vs_ptq_p50_ratio"] = round(cand.samples.p50_ms / ptq.samples.p50_ms, 4)
    if art.mixed_info is not None:
        info = art.mixed_info
        full = measured[primary, "int8_full"]
        drop = float(info["fp32_score"]) - float(info["final_score"])
        out.append(
            Verdict(
                "mixed_precision_budget",
                "passed" if drop <= float(info["budget"]) else "failed",
                f"held-out subset: mixed {float(info['final_score']):.2f} vs FP32 {float(info['fp32_score']):.2f}, "
                f"drop {drop:+.2f} points (budget {float(info['budget']):g}); full INT8 "
                f"{float(info['int8_score']):.2f}; float: {', '.join(info['float_nodes']) or '(none)'}",
            )
        )
        facts["int8_full_accuracy"] = round(full.score.accuracy, 6)
        facts["latency_cost_vs_int8_full"] = round(cand.samples.p50_ms / full.samples.p50_ms, 4)
    return out, facts


def _recipe_report(cell: Cell, art: _Artifacts, measured: dict[tuple[str, str], _Measured]) -> str:
    """Markdown sections appended to report.md for pruning, QAT and mixed precision."""
    from edgematrix.tasks.base import get_task

    task_metric = get_task(cell.model.task).metric
    primary = cell.target.backend
    cand = measured[primary, "candidate"]
    lines: list[str] = []
    if art.split_info is not None:
        lines += _split_report(art.split_info)
    search = art.prune_search
    if search is not None:
        p = cell.recipe.prune
        assert p is not None
        lines += [
            "",
            "## Pruning search",
            "",
            f"Requested {p.speedup:g}× in {cell.recipe.precision} on {primary} (±{p.tolerance:.0%}). Each probe is "
            f"measured {p.pairs}× alternating with the unpruned model; its speedup is the ratio of the medians. "
            f"Chosen: ratio {search.chosen.ratio:.3f} "
            f"({'within' if search.landed else 'NOT within'} tolerance).",
            "",
            "| probe | ratio | widths | params (M) | p50 (ms) | unpruned p50, same pairs (ms) | speedup | source |",
            "|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        for i, pr in enumerate(search.probes, start=1):
            mark = " **(chosen)**" if pr is search.chosen else ""
            lines.append(
                f"| {i} | {pr.ratio:.3f}{mark} | {pr.channels} | {pr.params / 1e6:.2f} | {pr.latency_ms:.2f} "
                f"| {pr.baseline_ms:.2f} | {pr.speedup:.2f}× | {'cache' if pr.cached else 'measured'} |"
            )
        base = measured.get((primary, "unpruned"), measured[primary, "reference"])
        lines += [
            "",
            f"Same run, interleaved: unpruned {base.precision} {base.samples.p50_ms:.2f} ms, pruned "
            f"{cand.samples.p50_ms:.2f} ms → {base.samples.p50_ms / cand.samples.p50_ms:.2f}×; vs the FP32 "
            f"reference {measured[primary, 'reference'].samples.p50_ms / cand.samples.p50_ms:.2f}×. Accuracy: "
            f"pruned {cand.score.accuracy:.2f} vs unpruned FP32 {measured[primary, 'reference'].score.accuracy:.2f}"
            + (f", unpruned {base.precision} {base.score.accuracy:.2f}" if base.role == "unpruned" else "")
            + ".",
        ]
    if art.qat_info is not None:
        ptq, ref = measured[primary, "ptq"], measured[primary, "reference"]
        lines += [
            "",
            "## QAT vs PTQ",
            "",
            f"| model | {task_metric} | drop vs FP32 |"
            + "".join(f" {k} |" for k in ref.score.extras)
            + " p50 (ms) | size |",
            "|---|---:|---:|" + "---:|" * len(ref.score.extras) + "---:|---:|",
        ]
        mo = measured[primary, "qat_modelopt_qdq"]
        rows = (
            ("FP32 reference", ref),
            ("PTQ (INT8)", ptq),
            ("QAT (INT8, PTQ form)", cand),
            ("QAT (ModelOpt QDQ)", mo),
        )
        for label, m in rows:
            lines.append(
                f"| {label} | {m.score.accuracy:.2f} | {ref.score.accuracy - m.score.accuracy:+.2f} |"
                + "".join(f" {m.score.extras.get(k, 0.0):.4f} |" for k in ref.score.extras)
                + f" {m.samples.p50_ms:.2f} | {model_bytes(m.path) / 1e6:.1f} MB |"
            )
        hist = art.qat_info.get("history") or []
        lines += [
            "",
            "The deployed QAT model is the QAT-trained weights through the PTQ pipeline (the form ONNX Runtime's "
            "int8 kernels fuse); ModelOpt's own QDQ export (TensorRT's form, quantizers on layer inputs only) is "
            "measured too.",
            "",
            f"QAT: {art.qat_info['qdq_pairs']} DequantizeLinear, {art.qat_info['folded_batchnorms']} BatchNorms folded, "
            f"{len(hist)} epochs (last: "
            + (", ".join(f"{k} {v:.3f}" for k, v in hist[-1].items() if k != "epoch") if hist else "cached")
            + f"); QAT − PTQ accuracy {cand.score.accuracy - ptq.score.accuracy:+.2f} points.",
        ]
    if art.mixed_info is not None:
        info, full = art.mixed_info, measured[primary, "int8_full"]
        lines += [
            "",
            "## Mixed precision",
            "",
            f"Kept in float ({len(info['float_nodes'])}): {', '.join(info['float_nodes']) or '(none)'}. "
            f"Latency cost vs full INT8 (same run): {cand.samples.p50_ms:.2f} vs {full.samples.p50_ms:.2f} ms "
            f"({cand.samples.p50_ms / full.samples.p50_ms:.2f}×); test accuracy {cand.score.accuracy:.2f} vs full INT8 "
            f"{full.score.accuracy:.2f}.",
            "",
            "| layer | op | held-out accuracy with this layer float | gain vs full INT8 |",
            "|---|---|---:|---:|",
        ]
        for sens in info["sensitivities"][:12]:
            lines.append(
                f"| {sens['node']} | {sens['op_type']} | {sens['score_kept_float']:.2f} | {sens['gain']:+.2f} |"
            )
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def _split_report(info: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Split model",
        "",
        f"Encoder → heads equals the whole FP32 model within {info['atol']:g} (max |diff| {info['max_abs_diff']:.2e}); "
        f"cut at {', '.join(f'`{n}` {shape}' for n, shape in info['features'])} "
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
            f"{pipe['frames']} frames, {pipe['rounds']} alternating rounds: sequential {pipe['sequential_fps']:.1f} FPS "
            f"(encoder {pipe['sequential_encoder_ms']:.2f} ms + heads {pipe['sequential_heads_ms']:.2f} ms per frame), "
            f"pipelined {pipe['pipelined_fps']:.1f} FPS: **{pipe['pipeline_speedup']:.2f}×** (paired per round)"
            + (f"; whole FP32 model {pipe['whole_fps']:.1f} FPS" if "whole_fps" in pipe else "")
            + ".",
            "",
            f"Why: {pipe['reason']}.",
        ]
    return lines


def _ab_verdicts(cell: Cell, base: _Measured, cand: _Measured, busy: tuple[str, ...], comparisons: int) -> list[Any]:
    """A/B mode: this branch's candidate vs the base branch's, measured in the same rounds."""
    from edgematrix.gates.latency import compare_latency
    from edgematrix.gates.verdicts import Verdict

    g = cell.gates
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


def _print_summary(result: CellResult) -> None:
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
        console.print(f"selected backend: {result.selection.replace('**', '')}")
    for v in result.verdicts:
        colour = {"passed": "green", "failed": "red"}.get(v.status, "yellow")
        console.print(f"  [{colour}]{v.status:>14}[/]  {escape(v.gate)}: {escape(v.message)}")
    console.print(f"artifacts: {result.out_dir}/ (benchmark.json, junit.xml, report.md, predictions-*)")

"""Run one cell of the matrix end to end.

data → train (cached) → ONNX export + numeric check (cached) → recipe (INT8 PTQ, cached) →
task accuracy of reference and candidate → interleaved latency → gates → artifacts::

    results/<cell>/config.json            resolved configuration + where it ran
    results/<cell>/benchmark.json         pytest-benchmark JSON (per-round data, extra_info)
    results/<cell>/junit.xml              one testcase per gate
    results/<cell>/predictions-<role>.json, labels.json   TuSimple submission format
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

from edgematrix.errors import GateFailure, RunnerUnavailableError
from edgematrix.matrix.loader import Cell
from edgematrix.runners.select import Choice, RunnerChoiceError, choose_runner

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


@dataclass
class CellResult:
    cell: str
    out_dir: Path
    verdicts: list[Any]
    rows: list[dict[str, Any]]
    stage_seconds: dict[str, float] = field(default_factory=dict)

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
    if cell.model.task != "lane":
        raise RunnerUnavailableError(f"task {cell.model.task!r} has no cell pipeline in this version")
    return _run_lane_cell(cell, options, choice)


def _run_lane_cell(cell: Cell, options: CellOptions, choice: Choice) -> CellResult:
    # Heavy imports here: `edgematrix --help` and the noxfile stay fast.
    import torch

    from edgematrix.backends.base import create_runner
    from edgematrix.bench.artifacts import BenchmarkEntry, write_benchmark_json
    from edgematrix.bench.tasks import tasks
    from edgematrix.data.lanes import fingerprint, load_split, preprocess, resolve_data_root
    from edgematrix.data.synthetic_lanes import SyntheticConfig
    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.gates.baseline import Baseline, load_baseline, write_baseline
    from edgematrix.gates.verdicts import RunFigures, evaluate_gates
    from edgematrix.measure.environment import capture_environment
    from edgematrix.measure.harness import LatencyConfig, measure_interleaved
    from edgematrix.models import create_model
    from edgematrix.models.ufld import OUTPUT_NAMES
    from edgematrix.optimize.graph import pad_input_channels
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq
    from edgematrix.report.junit import write_junit
    from edgematrix.report.markdown import render_report
    from edgematrix.train.cache import code_hash, content_key, file_sha256
    from edgematrix.train.lane import train_lane_model

    model_cfg, recipe, target = cell.model, cell.recipe, cell.target
    out = options.results_dir / cell.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = options.cache_dir
    quantized = recipe.quantize is not None
    stages = _Stages(6 if quantized else 5)
    h, w = model_cfg.input_shape[2], model_cfg.input_shape[3]

    config = {
        **cell.resolved(),
        "runner": {"name": choice.runner, "reason": choice.reason, "host": platform.node()},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    # 1. data
    configured = options.data_root if options.data_root is not None else model_cfg.data_root
    syn = SyntheticConfig(**model_cfg.synthetic.model_dump())
    stages.start(
        "data", "synthetic TuSimple" if not (configured or os.environ.get("EDGEMATRIX_DATA_ROOT")) else "TuSimple"
    )
    root, synthetic = resolve_data_root(configured, syn, cache)
    train_split = load_split(root, "train", (h, w))
    test_split = load_split(root, "test", (h, w), limit=model_cfg.eval_images)
    data_key = fingerprint(root)
    stages.done(f"{root} ({len(train_split.samples)} train / {len(test_split.samples)} test images, {data_key})")

    # 2. train (cached by config + data + code)
    model = create_model(model_cfg.family, model_cfg.input_shape, **model_cfg.params)
    train_key = content_key(
        model_cfg.family,
        model_cfg.params,
        model_cfg.input_shape,
        model_cfg.train.model_dump(),
        data_key,
        code_hash(["models", "train", "data"]),
        torch.__version__.split("+")[0],
    )
    ckpt = cache / "checkpoints" / f"{cell.model_name}-{train_key}.pt"
    stages.start(
        "train", f"{model_cfg.train.epochs} epochs, batch {model_cfg.train.batch_size} (cache key {train_key})"
    )
    trained = train_lane_model(model, train_split, model_cfg.train, ckpt, progress=options.progress)
    stages.done("reused cached checkpoint" if trained.cache_hit else f"checkpoint {ckpt}")

    # 3. export FP32 ONNX (cached by checkpoint + export code)
    ckpt_sha = file_sha256(ckpt)
    art_dir = cache / "artifacts" / f"{cell.model_name}-{content_key(ckpt_sha, code_hash(['export']))}"
    fp32_path = art_dir / "fp32.onnx"
    stages.start("export", f"ONNX opset 17 → {fp32_path}")
    export_note = "reused cached export"
    if not fp32_path.is_file():
        res = export_onnx(model, tuple(model_cfg.input_shape), fp32_path, output_names=OUTPUT_NAMES, input_name="input")
        export_note = f"max |onnx - torch| = {res.max_abs_diff:.2e} (atol {res.atol:g}, rtol {res.rtol:g}), simplified={res.simplified}"
        (art_dir / "export.json").write_text(
            json.dumps(
                {"max_abs_diff": res.max_abs_diff, "atol": res.atol, "rtol": res.rtol, "simplified": res.simplified}
            )
        )
    elif (art_dir / "export.json").is_file():
        e = json.loads((art_dir / "export.json").read_text())
        export_note = f"reused cached export; max |onnx - torch| = {e['max_abs_diff']:.2e} (atol {e['atol']:g})"
    stages.done(export_note)

    # 4. recipe
    cand_path = fp32_path
    if quantized:
        q = recipe.quantize
        assert q is not None
        qcfg = QuantizeConfig(
            method=q.method,
            calibration_images=q.calibration_images,
            per_channel=q.per_channel,
            percentile=q.percentile,
            symmetric_activations=q.symmetric_for(target.backend),
        )
        qkey = content_key(q.model_dump(), qcfg.symmetric_activations, code_hash(["optimize"]), data_key)
        cand_path = art_dir / f"{recipe.precision}-{qkey}.onnx"
        form = "S8S8 symmetric, TensorRT form" if qcfg.symmetric_activations else "U8S8, ORT CPU form"
        stages.start("quantize", f"INT8 PTQ ({q.method}, {q.calibration_images} calibration images, QDQ {form})")
        if not cand_path.is_file():
            n = min(q.calibration_images, len(train_split.samples))
            calib = (preprocess(train_split.images[i : i + 1]) for i in range(n))
            source, padded = fp32_path, 0
            if q.pad_input_channels:
                source = art_dir / f"fp32-pad{q.pad_input_channels}.onnx"
                padded = pad_input_channels(fp32_path, source, "input", q.pad_input_channels)
            qres = quantize_static_qdq(source, cand_path, calib, input_name="input", config=qcfg)
            pad_note = f", input conv padded to {q.pad_input_channels} channels" if padded else ""
            stages.done(f"{qres.quantized_nodes} nodes quantized{pad_note} → {cand_path.name}")
        else:
            stages.done("reused cached INT8 model")

    # 5. accuracy of reference and candidate on the backend
    runner_args = {"providers": tuple(target.providers), "intra_op_threads": target.threads}  # 0: physical cores
    same = cand_path == fp32_path
    roles = {"reference": fp32_path} if same else {"reference": fp32_path, "candidate": cand_path}
    runners = {role: create_runner(target.backend, path=path, **runner_args) for role, path in roles.items()}
    evaluate = tasks.get(model_cfg.task)
    scores = {}
    stages.start("accuracy", f"{len(test_split.samples)} test images per model on {target.backend}")
    for r in runners.values():
        r.__enter__()
    try:
        for role, runner in runners.items():
            scores[role] = evaluate(runner, test_split, out, role, geometry=model.geometry, input_name="input")
        if same:
            scores["candidate"] = scores["reference"]
            shutil.copyfile(out / "predictions-reference.json", out / "predictions-candidate.json")
        stages.done(", ".join(f"{k} {v.accuracy:.2f}%" for k, v in scores.items()))

        # 6. latency, interleaved in one run
        lat = recipe.latency
        lcfg = LatencyConfig(
            warmup=lat.warmup,
            min_rounds=lat.min_rounds,
            max_rounds=lat.max_rounds,
            min_time_s=lat.min_time_s,
            max_time_s=lat.max_time_s,
        )
        feed = {"input": preprocess(test_split.images[:1])}
        stages.start(
            "latency",
            f"batch 1, {len(runners)} model(s) interleaved, ≥{lcfg.min_rounds} rounds, ≥{lcfg.min_time_s:g} s",
        )
        samples = measure_interleaved(runners, feed, lcfg)
        if same:
            samples["candidate"] = samples["reference"]
        stages.done(", ".join(f"{k} p50 {v.p50_ms:.2f} ms" for k, v in samples.items()))
        facts = {role: r.facts() for role, r in runners.items()}
        threads = int(facts["reference"].get("intra_op_threads", target.threads))
    finally:
        for r in runners.values():
            r.__exit__(None, None, None)
    facts.setdefault("candidate", facts["reference"])

    backend_version = str(facts["candidate"].get("version", ""))
    ref_p50 = samples["reference"].p50_ms
    rows, entries = [], []
    precision_of = {"reference": "fp32", "candidate": recipe.precision}
    paths = {"reference": fp32_path, "candidate": cand_path}
    for role in ("reference", "candidate"):
        s, sc, path = samples[role], scores[role], paths[role]
        sha = file_sha256(path)
        extra = {
            "role": role,
            "recipe": cell.recipe_name,
            "precision": precision_of[role],
            "backend": target.backend,
            "backend_version": backend_version,
            "accuracy": round(sc.accuracy, 6),
            **{k: round(v, 6) for k, v in sc.extras.items()},
            "model_bytes": path.stat().st_size,
            "input_shape": "x".join(map(str, model_cfg.input_shape)),
            "artifact_sha256": sha,
            "threads": threads,
            "p50_ms": round(s.p50_ms, 4),
            "p90_ms": round(s.p90_ms, 4),
            "p99_ms": round(s.p99_ms, 4),
            "speedup_vs_reference": round(ref_p50 / s.p50_ms, 4),
            "cell": cell.name,
            "target": cell.target_name,
            "model": cell.model_name,
            "runner": choice.runner,
            "dataset": "synthetic-tusimple" if synthetic else "tusimple",
        }
        entries.append(
            BenchmarkEntry(name=f"{cell.name}[{role}]", group=cell.name, samples_s=s.samples_s, extra_info=extra)
        )
        rows.append(
            {**extra, "fp": sc.extras.get("fp", 0.0), "fn": sc.extras.get("fn", 0.0), "speedup": ref_p50 / s.p50_ms}
        )
    env = capture_environment({"edgematrix_runner": choice.runner})
    write_benchmark_json(out / "benchmark.json", entries, machine_extra=env, latency_config=lcfg)

    # gates
    hint = (
        f"this run writes matrix/baselines/{cell.name}.json (--update-baseline); review and commit it"
        if options.update_baseline
        else f"create one with `nox -s {cell.name} -- --update-baseline` and commit matrix/baselines/{cell.name}.json"
    )
    baseline = None if options.update_baseline else load_baseline(options.baselines_dir, cell.name)
    device = str(env.get("cpu_model") or platform.processor())
    figs = {
        role: RunFigures(scores[role].accuracy, samples[role].p50_ms, target.backend, backend_version, device)
        for role in ("reference", "candidate")
    }
    verdicts = evaluate_gates(
        cell.gates, figs["reference"], figs["candidate"], baseline, same_artifact=same, baseline_hint=hint
    )
    notes = []
    if options.update_baseline:
        b = Baseline(
            cell=cell.name,
            precision=recipe.precision,
            backend=target.backend,
            backend_version=backend_version,
            accuracy=round(scores["candidate"].accuracy, 4),
            reference_accuracy=round(scores["reference"].accuracy, 4),
            p50_ratio=round(samples["candidate"].p50_ms / ref_p50, 4),
            candidate_p50_ms=round(samples["candidate"].p50_ms, 3),
            reference_p50_ms=round(ref_p50, 3),
            artifact_sha256=str(rows[1]["artifact_sha256"]),
            cpu=device,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        notes.append(f"baseline written to {write_baseline(options.baselines_dir, b)} — review and commit it")
    junit_props = {
        "runner": choice.runner,
        "backend": target.backend,
        "backend_version": backend_version,
        "reference_p50_ms": f"{ref_p50:.3f}",
        "candidate_p50_ms": f"{samples['candidate'].p50_ms:.3f}",
    }
    write_junit(out / "junit.xml", cell.name, verdicts, junit_props)
    context = {
        "runner": f"{choice.runner} ({choice.reason})",
        "data": f"{'synthetic TuSimple' if synthetic else 'TuSimple'} at {root} ({len(test_split.samples)} test images)",
        "training": "cached checkpoint" if trained.cache_hit else f"trained in {trained.seconds:.0f} s",
        "export check": export_note,
        "threads": threads,
        "latency rounds": f"{samples['reference'].rounds} per model, interleaved (spinning off)",
        "cpu": env.get("cpu_model", ""),
        "backend": f"{target.backend} {backend_version} ({', '.join(target.providers) or 'default'})",
        "stage seconds": ", ".join(f"{k} {v:.1f}" for k, v in stages.seconds.items()),
    }
    (out / "report.md").write_text(render_report(cell.name, cell.description, rows, verdicts, context, notes))
    result = CellResult(cell.name, out, verdicts, rows, stages.seconds)
    _print_summary(result)
    if result.failed:
        raise GateFailure(
            f"{cell.name}: {len(result.failed)} gate(s) failed:\n"
            + "\n".join(f"  {v.gate}: {v.message}" for v in result.failed)
            + f"\nartifacts: {out}"
        )
    return result


def _print_summary(result: CellResult) -> None:
    from rich.table import Table

    t = Table(title=f"{result.cell}", show_lines=False)
    for col in ("role", "precision", "accuracy %", "FP", "FN", "p50 ms", "p90 ms", "p99 ms", "speedup", "MB"):
        t.add_column(col, justify="right" if col not in ("role", "precision") else "left")
    for r in result.rows:
        t.add_row(
            r["role"],
            r["precision"],
            f"{r['accuracy']:.2f}",
            f"{r['fp']:.3f}",
            f"{r['fn']:.3f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['model_bytes'] / 1e6:.1f}",
        )
    console.print(t)
    for v in result.verdicts:
        colour = {"passed": "green", "failed": "red"}.get(v.status, "yellow")
        console.print(f"  [{colour}]{v.status:>14}[/]  {v.gate}: {v.message}")
    console.print(f"artifacts: {result.out_dir}/ (benchmark.json, junit.xml, report.md, predictions-*.json)")

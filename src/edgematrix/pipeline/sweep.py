"""Batch-size sweep of a cell that has run: throughput and acceleration of its models at batch 1..N.

``run_sweep(results_dir, cell, [1, 2, 4, 8])`` reads ``results/<cell>/artifacts.json`` (the FP32
reference and the candidate ONNX files, exported with a static batch of 1) and ``config.json``,
writes a verified batch-N copy of each model next to it (:func:`edgematrix.export.rebatch.rebatch_onnx`),
and measures every batch on the cell's *selected* backend (the one its run chose, else its backend of
record; ONNX Runtime with intra-op spinning off), interleaved:

    batch N:  FP32 batch-N  |  candidate batch-N  |  FP32 batch-1 (the anchor)   -- same rounds

so each acceleration is a same-run ratio: candidate vs FP32 at the same batch, and the per-sample
throughput (N / p50) of either model vs the FP32 model at batch 1, measured in the same rounds.

Writes ``results/<cell>/batch_sweep.json``, ``batch_sweep.png`` (samples/s vs batch; acceleration
vs batch) and a "Batch-size sweep" section of ``report.md`` (replaced when the sweep runs again).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.harness import LatencyConfig

DEFAULT_BATCHES = (1, 2, 4, 8)
ROLES = ("reference", "candidate")
REPORT_HEADING = "## Batch-size sweep"
MAX_BATCH = 1024
CONTAINER_CACHE = "/cache"  # where the docker runner mounts the cache (edgematrix.executors.docker.CACHE)


@dataclass(frozen=True)
class SweepPoint:
    """One batch size: p50s of the batch-N models and of the FP32 batch-1 anchor, measured in the same rounds."""

    batch: int
    rounds: int
    fp32_b1_p50_ms: float
    reference_p50_ms: float
    reference_p90_ms: float
    candidate_p50_ms: float | None = None
    candidate_p90_ms: float | None = None
    reference_max_rel_diff: float = 0.0  # per-sample outputs of the batch-N file vs batch 1
    candidate_max_rel_diff: float | None = None

    @property
    def reference_samples_per_s(self) -> float:
        return self.batch / (self.reference_p50_ms * 1e-3)

    @property
    def candidate_samples_per_s(self) -> float | None:
        return None if self.candidate_p50_ms is None else self.batch / (self.candidate_p50_ms * 1e-3)

    @property
    def fp32_b1_samples_per_s(self) -> float:
        return 1.0 / (self.fp32_b1_p50_ms * 1e-3)

    @property
    def candidate_vs_reference(self) -> float | None:
        """Candidate vs FP32 at the same batch (p50 ratio)."""
        return None if self.candidate_p50_ms is None else self.reference_p50_ms / self.candidate_p50_ms

    @property
    def candidate_vs_fp32_b1(self) -> float | None:
        """Candidate samples/s at this batch ÷ FP32 samples/s at batch 1."""
        fps = self.candidate_samples_per_s
        return None if fps is None else fps / self.fp32_b1_samples_per_s

    @property
    def reference_vs_fp32_b1(self) -> float:
        """FP32 samples/s at this batch ÷ FP32 samples/s at batch 1 (what batching alone gives)."""
        return self.reference_samples_per_s / self.fp32_b1_samples_per_s

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in (
            "reference_samples_per_s",
            "candidate_samples_per_s",
            "fp32_b1_samples_per_s",
            "candidate_vs_reference",
            "candidate_vs_fp32_b1",
            "reference_vs_fp32_b1",
        ):
            d[key] = getattr(self, key)
        return d


@dataclass
class SweepResult:
    cell: str
    model: str
    candidate_precision: str  # "" when only the reference was swept
    points: list[SweepPoint]
    facts: dict[str, Any] = field(default_factory=dict)  # backend, version, threads, latency config, host ...
    models: dict[str, dict[int, str]] = field(default_factory=dict)  # role -> batch -> ONNX file
    json_path: Path | None = None
    png_path: Path | None = None
    report_path: Path | None = None


def parse_batches(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]``; anything else is a clear error."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise EdgeMatrixError(
            f"--batches must be comma-separated positive integers, e.g. 1,2,4,8; got {text!r}"
        ) from None
    return _check_batches(values)


def _check_batches(batches: Sequence[int]) -> list[int]:
    values = list(batches)
    if not values:
        raise EdgeMatrixError("no batch sizes given; pass e.g. --batches 1,2,4,8")
    bad = [b for b in values if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH]
    if bad:
        raise EdgeMatrixError(f"batch sizes must be integers in 1..{MAX_BATCH}; got {bad!r}")
    if len(set(values)) != len(values):
        raise EdgeMatrixError(f"batch sizes repeat: {values!r}")
    return sorted(values)


def load_cell_results(results_dir: Path, cell: str) -> tuple[Path, dict[str, Any], dict[str, str]]:
    """``results/<cell>/``, its config.json and artifacts.json; a cell that has not run is a clear error."""
    out = Path(results_dir) / cell
    if not out.is_dir():
        raise EdgeMatrixError(
            f"no results for cell {cell!r} in {out}: run it first (`nox -s {cell}` or `edgematrix run {cell}`), "
            "or pass --results with the folder holding results/<cell>/"
        )
    docs: list[dict[str, Any]] = []
    for name in ("config.json", "artifacts.json"):
        path = out / name
        if not path.is_file():
            raise EdgeMatrixError(
                f"{path} is missing: the run of {cell!r} did not finish; run it again (`nox -s {cell}`)"
            )
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise EdgeMatrixError(f"{path} is not valid JSON ({e}); run the cell again (`nox -s {cell}`)") from None
        if not isinstance(doc, dict):
            raise EdgeMatrixError(f"{path} is not a JSON object; run the cell again (`nox -s {cell}`)")
        docs.append(doc)
    config, artifacts = docs
    from edgematrix.core.results import read_config

    config = read_config(out / "config.json").model_dump(mode="json")  # validated: the pipeline's record
    for role in ROLES:
        if not isinstance(artifacts.get(role), str):
            raise EdgeMatrixError(f"{out / 'artifacts.json'} names no {role!r} model; run the cell again")
    return out, config, {k: v for k, v in artifacts.items() if isinstance(v, str)}


def resolve_model_path(path: str, cache_dir: Path | None) -> Path:
    """A model path from artifacts.json, as seen from this host.

    A cell run with ``--runner docker`` records paths inside its container, where the cache is mounted
    at :data:`CONTAINER_CACHE`; with the host's ``cache_dir`` those map back to the host's files.
    """
    p = Path(path)
    if p.exists() or cache_dir is None:
        return p
    try:
        rel = p.relative_to(CONTAINER_CACHE)
    except ValueError:
        return p
    mapped = Path(cache_dir) / rel
    return mapped if mapped.exists() else p


def run_sweep(
    results_dir: Path,
    cell: str,
    batches: Sequence[int] = DEFAULT_BATCHES,
    *,
    roles: Sequence[str] = ROLES,
    latency: LatencyConfig | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Sweep ``batches`` for the cell's models (``roles``: both, or ``("reference",)``); see the module docstring.

    ``latency`` defaults to the recipe's [latency] section recorded in config.json, applied per batch.
    ``cache_dir``: the host's cache, for results of a ``--runner docker`` run (see :func:`resolve_model_path`).
    """
    values = _check_batches(batches)
    unknown = [r for r in roles if r not in ROLES]
    if unknown or "reference" not in roles:
        raise EdgeMatrixError(f"roles must be 'reference' alone or with 'candidate'; got {list(roles)!r}")
    out, config, artifacts = load_cell_results(Path(results_dir), cell)
    paths = {"reference": resolve_model_path(artifacts["reference"], cache_dir)}
    sweep_candidate = "candidate" in roles
    if sweep_candidate:
        cand = resolve_model_path(artifacts["candidate"], cache_dir)
        if cand.resolve() != paths["reference"].resolve():  # an FP32 cell's candidate is the reference itself
            paths["candidate"] = cand
    for role, path in paths.items():
        if not path.is_file():
            raise EdgeMatrixError(
                f"{cell}: the {role} model {path} (from {out / 'artifacts.json'}) is gone, e.g. the cache was "
                f"cleared; run the cell again (`nox -s {cell}`)"
            )
    lcfg = latency or latency_from_config(config)
    kinds = {role: artifact_kind(artifacts, role) for role in paths}
    return _run_sweep_impl(out, cell, config, paths, kinds, values, lcfg, seed, log or (lambda _msg: None))


def rebatch_split(manifest: Path, batch: int, *, seed: int = 0) -> tuple[str, float]:
    """A split model's manifest at batch ``batch`` (each subgraph re-batched and checked per sample, as
    :func:`~edgematrix.export.rebatch.rebatch_onnx` does), written beside it; and the worst per-sample
    difference of the subgraphs."""
    from dataclasses import replace

    from edgematrix.backends.split.manifest import load_manifest
    from edgematrix.core.cache import file_sha256
    from edgematrix.export.rebatch import rebatch_onnx

    if batch == 1:
        return str(manifest), 0.0
    m = load_manifest(manifest)
    subgraphs, worst = [], 0.0
    for entry in m.subgraphs:
        rb = rebatch_onnx(m.path_of(entry.name), batch, seed=seed)
        rel = rb.path.relative_to(m.folder).as_posix()
        subgraphs.append(replace(entry, file=rel, sha256=file_sha256(rb.path)))
        worst = max(worst, rb.max_rel_diff)
    features = tuple(replace(f, shape=(batch, *f.shape[1:])) for f in m.features)
    batched = replace(m.with_subgraphs(tuple(subgraphs), m.folder), features=features)
    return str(batched.save(manifest.with_name(f"{manifest.stem}.b{batch}.json"))), worst


def artifact_kind(artifacts: dict[str, str], role: str) -> str:
    """The kind of a role's model in a results folder's artifacts.json (``onnx`` or ``split``): the file says
    it (``<role>_kind``); files from before it did name a split model's manifest, the only ``.json`` model."""
    kind = artifacts.get(f"{role}_kind")
    if kind:
        return kind
    return "split" if str(artifacts.get(role, "")).endswith(".json") else "onnx"


#: backends that run ONNX files (a sweep re-batches the cell's ONNX models)
ONNX_BACKENDS = ("onnxruntime", "openvino", "tensorrt", "tidl", "trt_cpp")


def sweep_backend(out: Path, target: dict[str, Any]) -> tuple[str, str]:
    """The backend a sweep (or demo) runs on and why: the backend the cell's run selected, else its
    backend of record (no selection: one backend, or a busy run that selected none)."""
    from edgematrix.core.results import read_results

    primary = str(target.get("backend", "onnxruntime"))
    bench = out / "benchmark.json"
    selected = ""
    if bench.is_file():
        results = read_results(bench)
        selected = next((b.info.selected_backend for b in results.benchmarks if b.info.selected_backend), "")
        primary = results.primary_backend or primary
    backend, why = (selected, "the backend the cell's run selected") if selected else (primary, "the backend of record")
    if backend not in ONNX_BACKENDS:
        raise EdgeMatrixError(
            f"the cell's {why} is {backend!r}, which runs torch modules: a batch sweep re-batches ONNX files; "
            f"sweep a cell whose backend runs ONNX ({', '.join(ONNX_BACKENDS)})"
        )
    return backend, why


def latency_from_config(config: dict[str, Any]) -> LatencyConfig:
    lat = (config.get("recipe") or {}).get("latency") or {}
    fields = ("warmup", "min_rounds", "max_rounds", "min_time_s", "max_time_s")
    return LatencyConfig(**{k: lat[k] for k in fields if k in lat})


def _run_sweep_impl(
    out: Path,
    cell: str,
    config: dict[str, Any],
    paths: dict[str, Path],
    kinds: dict[str, str],
    batches: list[int],
    lcfg: LatencyConfig,
    seed: int,
    log: Callable[[str], None],
) -> SweepResult:
    from edgematrix.backends.base import create_runner
    from edgematrix.core.registries import backends
    from edgematrix.export.rebatch import rebatch_onnx
    from edgematrix.measure.harness import measure_interleaved

    target = config.get("target") or {}
    recipe = config.get("recipe") or {}
    model_name = str((config.get("model") or {}).get("name", ""))
    backend, why = sweep_backend(out, target)
    log(f"backend: {backend} ({why})")
    runner_cls = backends.get(backend)
    precision = str(recipe.get("precision", "")) if "candidate" in paths else ""
    started = datetime.now(UTC).isoformat(timespec="seconds")

    files: dict[str, dict[int, str]] = {role: {} for role in paths}
    diffs: dict[str, dict[int, float]] = {role: {} for role in paths}
    for role, path in paths.items():
        for b in batches:
            if kinds.get(role) == "split":  # a split model: every subgraph re-batched, and a manifest of them
                files[role][b], diffs[role][b] = rebatch_split(path, b, seed=seed)
                log(f"{role} batch {b}: {Path(files[role][b]).name} (split model, each subgraph re-batched)")
                continue
            rb = rebatch_onnx(path, b, seed=seed)
            files[role][b], diffs[role][b] = str(rb.path), rb.max_rel_diff
            if b > 1:
                how = "cached" if rb.cached else f"written, per-sample max rel diff vs batch 1 {rb.max_rel_diff:.1e}"
                log(f"{role} batch {b}: {rb.path.name} ({how})")

    def open_runner(role: str, batch: int, name: str) -> Any:
        path = files[role][batch]
        threads = int(target.get("threads", 0))
        if kinds.get(role) == "split":  # a split model: each subgraph on the backend
            return create_runner(
                "split", path=path, name=name, inner_backend=backend, intra_op_threads=threads, threads=threads
            )
        role_precision = precision if role == "candidate" else "fp32"
        options = runner_cls.options_for(target, role=role, precision=role_precision)
        if backend == "onnxruntime":
            options["allow_spinning"] = False
        return create_runner(backend, path=path, name=name, **options)

    rng = np.random.default_rng(seed)
    points: list[SweepPoint] = []
    facts: dict[str, Any] = {}
    fact_keys = ("backend", "version", "provider", "intra_op_threads", "intra_op_allow_spinning", "threads")
    for b in batches:
        runners = {role: open_runner(role, b, f"{role}@b{b}") for role in paths}
        if b > 1:  # the anchor: FP32 at batch 1, in the same rounds
            runners["fp32@b1"] = open_runner("reference", 1, "fp32@b1")
        with contextlib.ExitStack() as stack:
            for runner in runners.values():
                stack.enter_context(runner)
            meta = runners["reference"].input_metadata()
            sample = {name: _input(rng, m.dtype, m.shape, b) for name, m in meta.items()}
            feeds = {key: {n: v[:1] for n, v in sample.items()} if key == "fp32@b1" else sample for key in runners}
            log(f"batch {b}: {len(runners)} models interleaved, ≥{lcfg.min_rounds} rounds, ≥{lcfg.min_time_s:g} s")
            samples = measure_interleaved(runners, feeds, lcfg)
            if not facts:
                f = runners["reference"].facts()
                facts = {k: f[k] for k in fact_keys if k in f}
        ref = samples["reference"]
        anchor = samples["fp32@b1"] if b > 1 else ref
        cand = samples.get("candidate")
        point = SweepPoint(
            batch=b,
            rounds=ref.rounds,
            fp32_b1_p50_ms=anchor.p50_ms,
            reference_p50_ms=ref.p50_ms,
            reference_p90_ms=ref.p90_ms,
            candidate_p50_ms=cand.p50_ms if cand is not None else None,
            candidate_p90_ms=cand.p90_ms if cand is not None else None,
            reference_max_rel_diff=diffs["reference"][b],
            candidate_max_rel_diff=diffs["candidate"][b] if "candidate" in diffs else None,
        )
        points.append(point)
        log(_point_line(point, precision))

    facts.update(
        {
            "host": platform.node(),
            "started": started,
            "latency_config": asdict(lcfg),
            "target": str(target.get("name", "")),
            "recipe": str(recipe.get("name", "")),
            "providers": ",".join(target.get("providers") or ()) if backend == "onnxruntime" else "",
            "sweep_backend": backend,
            "sweep_backend_reason": why,
        }
    )
    result = SweepResult(cell, model_name, precision, points, facts, files)
    _write_outputs(out, result)
    return result


def _input(rng: np.random.Generator, dtype: np.dtype, shape: tuple[Any, ...], batch: int) -> np.ndarray:
    dims = [batch, *(d if isinstance(d, int) else 1 for d in shape[1:])]
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(dims).astype(dtype)
    return rng.integers(0, 2, size=dims).astype(dtype)


def _point_line(p: SweepPoint, precision: str) -> str:
    line = f"batch {p.batch}: FP32 p50 {p.reference_p50_ms:.2f} ms ({p.reference_samples_per_s:.1f} samples/s)"
    if p.candidate_p50_ms is not None:
        line += (
            f", {precision.upper()} p50 {p.candidate_p50_ms:.2f} ms ({p.candidate_samples_per_s:.1f} samples/s), "
            f"{p.candidate_vs_reference:.2f}× vs FP32, {p.candidate_vs_fp32_b1:.2f}× vs FP32 batch 1"
        )
    return line


# ----------------------------------------------------------------------------------------------
# outputs


def _write_outputs(out: Path, result: SweepResult) -> None:
    from edgematrix.report.sweep_plot import plot_batch_sweep

    for p in result.points:
        values = [p.reference_p50_ms, p.fp32_b1_p50_ms] + ([p.candidate_p50_ms] if p.candidate_p50_ms else [])
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise EdgeMatrixError(f"{result.cell}: batch {p.batch} gave a non-positive or non-finite p50: {values}")
    doc = {
        "cell": result.cell,
        "model": result.model,
        "candidate_precision": result.candidate_precision,
        "facts": result.facts,
        "models": {role: {str(b): path for b, path in files.items()} for role, files in result.models.items()},
        "points": [p.as_dict() for p in result.points],
    }
    result.json_path = out / "batch_sweep.json"
    result.json_path.write_text(json.dumps(doc, indent=2))
    label = result.candidate_precision.upper() or None
    title = f"{result.cell}: {result.model}, batch-size sweep"
    result.png_path = plot_batch_sweep(
        [p.as_dict() for p in result.points], out / "batch_sweep.png", title=title, candidate_label=label
    )
    result.report_path = out / "report.md"
    existing = result.report_path.read_text() if result.report_path.is_file() else f"# {result.cell}\n"
    result.report_path.write_text(replace_section(existing, sweep_markdown(result)))


def sweep_markdown(result: SweepResult) -> str:
    """The "Batch-size sweep" section of report.md."""
    f = result.facts
    lcfg = f.get("latency_config", {})
    cand = result.candidate_precision.upper()
    has_cand = bool(cand)
    rounds = ", ".join(f"{p.batch}: {p.rounds}" for p in result.points)
    lines = [
        REPORT_HEADING,
        "",
        f"On {f.get('backend', '?')} {f.get('version', '')}, {f.get('sweep_backend_reason', 'the backend of record')}"
        + (f" ({f['providers']})" if f.get("providers") else "")
        + f", {f.get('intra_op_threads', f.get('threads', '?'))} threads. Each batch is measured interleaved: "
        + ("the FP32 and " + cand + " batch-N models" if has_cand else "the FP32 batch-N model")
        + " and the FP32 batch-1 model in the same rounds, so every ratio below is a same-run ratio. "
        f"Samples/s = N / p50. Rounds per batch: {rounds} (≥{lcfg.get('min_rounds', '?')} rounds, "
        f"≥{lcfg.get('min_time_s', '?')} s each). Batch-N files are checked per sample against batch 1.",
        "",
    ]
    if has_cand:
        lines += [
            f"| batch | FP32 p50 (ms) | {cand} p50 (ms) | FP32 samples/s | {cand} samples/s | "
            f"{cand} vs FP32 (same batch) | {cand} vs FP32 batch 1 | FP32 vs FP32 batch 1 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in result.points:
            assert p.candidate_p50_ms is not None and p.candidate_samples_per_s is not None
            lines.append(
                f"| {p.batch} | {p.reference_p50_ms:.2f} | {p.candidate_p50_ms:.2f} | "
                f"{p.reference_samples_per_s:.1f} | {p.candidate_samples_per_s:.1f} | "
                f"{p.candidate_vs_reference:.2f}× | {p.candidate_vs_fp32_b1:.2f}× | {p.reference_vs_fp32_b1:.2f}× |"
            )
    else:
        lines += [
            "| batch | FP32 p50 (ms) | FP32 samples/s | FP32 vs FP32 batch 1 |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {p.batch} | {p.reference_p50_ms:.2f} | {p.reference_samples_per_s:.1f} | {p.reference_vs_fp32_b1:.2f}× |"
            for p in result.points
        ]
    lines += ["", "![batch-size sweep](batch_sweep.png)", ""]
    return "\n".join(lines)


def replace_section(report: str, section: str) -> str:
    """``report`` with its "Batch-size sweep" section replaced by ``section`` (appended when absent)."""
    start = report.find(REPORT_HEADING + "\n")
    if start < 0:
        return report.rstrip("\n") + "\n\n" + section
    nxt = report.find("\n## ", start + len(REPORT_HEADING))
    tail = report[nxt + 1 :] if nxt >= 0 else ""
    head = report[:start].rstrip("\n") + "\n\n"
    return head + section + ("\n" + tail if tail else "")

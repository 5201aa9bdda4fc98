"""``edgematrix`` command line (thin over the library).

Exit codes: 0 success, 1 a gate failed, 2 usage or input error (bad matrix, missing data,
unreachable target...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgematrix.errors import EdgeMatrixError, GateFailure

if TYPE_CHECKING:
    from edgematrix.matrix.loader import Cell

EXIT_OK, EXIT_GATE, EXIT_INPUT = 0, 1, 2


def _cmd_list(args: argparse.Namespace) -> int:
    from edgematrix.matrix.loader import load_matrix

    if args.plugins:
        if Path(args.matrix).is_dir():  # the matrix's import paths (task = "pkg.mod:Class") are resolved too
            try:
                load_matrix(args.matrix)
            except EdgeMatrixError as e:
                print(f"note: {args.matrix} not loaded ({str(e).splitlines()[0]}); its import paths are not listed",
                      file=sys.stderr)  # fmt: skip
        return _cmd_list_plugins()
    m = load_matrix(args.matrix)
    for cell in m.cells.values():
        print(f"{cell.name:<16} {cell.description}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from edgematrix.matrix.loader import load_matrix

    m = load_matrix(args.matrix)
    print(
        f"{args.matrix}: {len(m.targets)} targets, {len(m.models)} models, {len(m.recipes)} recipes, {len(m.cells)} cells — valid"
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from edgematrix.matrix.loader import load_matrix

    m = load_matrix(args.matrix)
    cell = m.cell(args.cell)
    batches: list[int] = []
    if args.batch_sweep:
        from edgematrix.pipeline.sweep import parse_batches

        batches = parse_batches(args.batch_sweep)  # bad input fails before hours of work
    if args.runner == "auto" and args.remote:
        args.runner = "remote"  # a device URL given: measure there
    if args.runner == "docker":
        return _run_in_docker(args, cell)
    from edgematrix.pipeline.cell import CellOptions, run_cell

    opts = CellOptions(
        runner=args.runner,
        results_dir=Path(args.results),
        cache_dir=Path(args.cache),
        baselines_dir=Path(args.matrix) / "baselines",
        data_root=args.data_root,
        update_baseline=args.update_baseline,
        progress=not args.no_progress,
        ab_base=Path(args.ab_base) if args.ab_base else None,
        remote=args.remote,
    )
    try:
        run_cell(cell, opts)
    except GateFailure:  # a failed gate still wrote the artifacts: sweep them too, then report the failure
        _batch_sweep(opts.results_dir, cell.name, batches, opts.cache_dir)
        raise
    _batch_sweep(opts.results_dir, cell.name, batches, opts.cache_dir)
    return EXIT_OK


def _batch_sweep(results: Path, cell: str, batches: list[int], cache: Path) -> None:
    if not batches:
        return
    from edgematrix.pipeline.sweep import run_sweep

    res = run_sweep(results, cell, batches, cache_dir=cache)
    print(f"batch sweep: {res.png_path}, {res.json_path} (section in {res.report_path})", file=sys.stderr)


def _run_in_docker(args: argparse.Namespace, cell: Cell) -> int:
    from edgematrix.errors import RunnerUnavailableError
    from edgematrix.executors.docker import DockerRunOptions, run_cell_in_container
    from edgematrix.executors.select import RunnerChoiceError, choose_runner

    try:
        choice = choose_runner(cell.name, cell.target_name, cell.target.model_dump(), "docker")
    except RunnerChoiceError as e:
        raise RunnerUnavailableError(str(e)) from None
    print(f"{cell.name}: runner {choice.runner} ({choice.reason})", file=sys.stderr)
    options = DockerRunOptions(
        repo_root=Path(args.source) if args.source else Path(__file__).resolve().parents[2],
        matrix_dir=Path(args.matrix),
        results_dir=Path(args.results),
        cache_dir=Path(args.cache),
        data_root=Path(args.data_root) if args.data_root else None,
        ab_base=Path(args.ab_base) if args.ab_base else None,
        offline_base=args.offline_base,
        rebuild=args.rebuild_image,
        extra_env=args.env,
        cell_args=(["--update-baseline"] if args.update_baseline else [])
        + (["--batch-sweep", args.batch_sweep] if args.batch_sweep else []),
    )
    return run_cell_in_container(cell.name, cell.target_name, cell.target.model_dump(), options)


def _cmd_images(args: argparse.Namespace) -> int:
    from edgematrix.executors.images import build_images
    from edgematrix.matrix.loader import load_matrix

    m = load_matrix(args.matrix)
    targets = {name: t.model_dump() for name, t in m.targets.items()}
    for line in build_images(
        Path(args.source) if args.source else Path(__file__).resolve().parents[2],
        targets,
        args.targets,
        cache_dir=Path(args.cache),
        offline_base=args.offline_base,
        rebuild=args.rebuild,
        list_only=args.images_command == "list",
    ):
        print(line)
    return EXIT_OK


def _cmd_score(args: argparse.Namespace) -> int:
    from edgematrix.metrics.tusimple import score_files

    result = score_files(args.pred, args.gt)
    if result.missing:
        print(f"note: {result.missing} ground-truth image(s) had no prediction; scored as missed (FN)", file=sys.stderr)
    print(json.dumps(result.as_official()))
    return EXIT_OK


def _cmd_score_coco(args: argparse.Namespace) -> int:
    from edgematrix.metrics.coco import score_files

    print(json.dumps(score_files(args.pred, args.gt)))
    return EXIT_OK


def _fraction(text: str, what: str) -> float:
    """``"5%"`` or ``"0.05"`` -> 0.05; a bare number of 1 or more is refused as ambiguous."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise EdgeMatrixError(f"{what} must be a fraction (0.05) or a percentage (5%); got {text!r}") from None
    if not raw.endswith("%") and value >= 1:
        raise EdgeMatrixError(f"{what} {text!r} is ambiguous: write {value:g}% or {value / 100:g}")
    return value


def _cmd_gate_compare(args: argparse.Namespace) -> int:
    from edgematrix.gates.compare import compare_benchmark_files
    from edgematrix.gates.latency import BUSY_PREFIX

    min_effect = _fraction(args.min_effect, "--min-effect")
    confidence = _fraction(args.confidence, "--confidence")
    try:
        budget = float(args.accuracy_budget)
    except ValueError:
        raise EdgeMatrixError(f"--accuracy-budget must be a number of points; got {args.accuracy_budget!r}") from None
    result = compare_benchmark_files(
        args.base, args.cand, min_effect=min_effect, confidence=confidence, accuracy_budget=budget
    )
    width = max(len(row.name) for row in result.rows)
    level = f"{result.rows[0].latency.level * 100:.4g}%"  # family-wise: one interval level for every row
    print(f"base rounds: {result.base_machine}")
    print(f"candidate rounds: {result.cand_machine}")
    for row in result.rows:
        lat = row.latency
        delta = row.accuracy_delta
        accuracy = "accuracy n/a" if delta is None else f"accuracy {delta:+.2f} pts"
        flag = "FAIL" if row.failed else "BUSY" if row.inconclusive else "ok"
        print(
            f"{row.name:<{width}}  ratio {lat.ratio:.3f}  {level} CI {lat.ci_low:.3f}..{lat.ci_high:.3f}  "
            f"p={lat.p_value:.2g}  {accuracy}  {flag}: {row.verdict}"
        )
    for name in result.only_in_base:
        print(f"{name:<{width}}  only in base ({args.base}): not compared")
    for name in result.only_in_candidate:
        print(f"{name:<{width}}  only in candidate ({args.cand}): not compared")
    settings = (
        f"min effect {min_effect:.1%}, confidence {confidence:.0%} over {len(result.rows)} benchmark(s) "
        f"(each interval {level}), accuracy budget {budget:.2f} pts"
    )
    if result.failed:
        details = "; ".join(
            f"{row.name}: {row.latency.message if row.latency.failed else row.accuracy_message}"
            + (f"; {row.accuracy_message}" if row.latency.failed and row.accuracy_status == "failed" else "")
            for row in result.failures
        )
        raise GateFailure(f"{len(result.failures)} of {len(result.rows)} benchmark(s) failed ({settings}): {details}")
    if result.inconclusive:
        busy = result.rows[0].latency.busy
        print(
            f"{len(result.rows)} benchmark(s) compared, none failed, latency not judged: "
            f"{BUSY_PREFIX} — re-measure ({'; '.join(busy)}) ({settings})"
        )
        return EXIT_OK
    print(f"{len(result.rows)} benchmark(s) compared, none failed ({settings})")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from edgematrix.report.cli_report import run_report

    if args.html and not args.history:
        raise EdgeMatrixError("--html DIR draws the history: give it with --history FILE")
    if args.repo_url and not args.html:
        raise EdgeMatrixError("--repo-url links the dashboard's commits: give it with --html DIR")
    if args.html and args.results is None:  # the dashboard of the history as it is: nothing appended
        from edgematrix.report.dashboard import repo_url_from_env, write_dashboard

        written = write_dashboard(Path(args.history), Path(args.html), repo_url=args.repo_url or repo_url_from_env())
    else:
        written = run_report(
            Path(args.results or "results"),
            Path(args.out),
            base_dir=Path(args.base) if args.base else None,
            history=Path(args.history) if args.history else None,
            baselines_dir=Path(args.baselines) if args.baselines else None,
            html_dir=Path(args.html) if args.html else None,
            repo_url=args.repo_url,
        )
    for key, path in written.items():
        print(f"{key}: {path}")
    return EXIT_OK


#: the first part of every CI cache key; bump it when the layout of .cache/edgematrix changes
CACHE_KEY_VERSION = "edgematrix-v1"


def _tree_listing(root: Path) -> str:
    """A folder's content key from every file's relative path and size (cheap: no file is read)."""
    from edgematrix.core.cache import content_key

    return content_key(sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()))


def _named_files(value: object, bases: tuple[Path, ...], found: dict[str, str]) -> None:
    """The sha256 of every existing file a model's config names (a checkpoint, an ONNX file, a factory module),
    as a path of its own or relative to one of ``bases``."""
    from edgematrix.core.cache import file_sha256

    if isinstance(value, dict):
        for v in value.values():
            _named_files(v, bases, found)
    elif isinstance(value, list):
        for v in value:
            _named_files(v, bases, found)
    elif isinstance(value, str) and value and len(value) < 4096:
        for base in bases:
            path = base / Path(value).expanduser()
            if path.is_file():
                found[value] = file_sha256(path)
                break


def cache_keys(cell: Cell, matrix_dir: Path, data_root: str | None = None) -> dict[str, str]:
    """The keys CI stores a cell's ``.cache/edgematrix`` under (``actions/cache``), computed without building.

    ``train``: the pipeline's own training key (:func:`edgematrix.pipeline.source.training_key`) of the
    model, its training config, the training code and torch, with the dataset named by what makes it
    (the real folder's listing, or the synthetic generator's config: its code is training code) and the
    lock. ``full``: that, plus the cell's target, model and recipe config, the files the model config
    names, the whole package's code and the lock. A cache saved under ``key`` holds everything the
    cell built; ``restore-cell`` / ``restore-model`` are the prefixes of caches of the same trained
    model (this cell's first, then any cell of that model): the pipeline's own keys pick what is
    still valid in them and rebuild the rest, and every entry is verified by its seal before reuse.
    """
    import importlib.metadata
    import os
    import platform

    from edgematrix.core.cache import PACKAGE_DIR, code_hash, content_key, file_sha256
    from edgematrix.core.toolchain import LOCK_PATH
    from edgematrix.pipeline.source import training_key
    from edgematrix.tasks.base import get_task

    lock = matrix_dir / LOCK_PATH.name
    if not lock.is_file():
        raise EdgeMatrixError(f"{lock} (the lock) is missing; restore it from git or write it with `nox -s lock`")
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        raise EdgeMatrixError(
            "torch is not installed: the training key names its version; install edgematrix"
        ) from None
    model = cell.model
    root = os.environ.get("EDGEMATRIX_DATA_ROOT") or data_root or model.data_root
    if root:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise EdgeMatrixError(f"data_root {folder} does not exist; point it at the dataset or leave it empty")
        dataset = content_key("folder", model.dataset, _tree_listing(folder))
    else:
        dataset = content_key("synthetic", model.dataset, model.synthetic.model_dump())
    lock_sha = file_sha256(lock)
    train = content_key(training_key(cell, get_task(model.task), dataset, torch_version), lock_sha)
    files: dict[str, str] = {}
    named = {k: v for k, v in model.model_dump(mode="json").items() if k != "data_root"}
    _named_files(named, (Path.cwd(), matrix_dir), files)
    package = sorted(
        p.stem for p in PACKAGE_DIR.iterdir() if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")
    )
    resolved = cell.resolved()
    full = content_key(
        train, resolved["target"], resolved["model"], resolved["recipe"], files, code_hash(package), lock_sha
    )
    model_prefix = f"{CACHE_KEY_VERSION}-{platform.system().lower()}-{platform.machine()}-{cell.model_name}-{train}-"
    return {
        "key": f"{model_prefix}{cell.name}-{full}",
        "restore-cell": f"{model_prefix}{cell.name}-",
        "restore-model": model_prefix,
        "train": train,
        "full": full,
    }


def _cmd_cache_key(args: argparse.Namespace) -> int:
    from edgematrix.matrix.loader import load_matrix

    keys = cache_keys(load_matrix(args.matrix).cell(args.cell), Path(args.matrix), args.data_root)
    if args.github_output:
        for name in ("key", "restore-cell", "restore-model"):
            print(f"{name}={keys[name]}")
        print(f"cache-key {args.cell}: training inputs {keys['train']}, build inputs {keys['full']}", file=sys.stderr)
    else:
        print(keys["key"])
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from edgematrix.server.app import serve
    from edgematrix.server.config import build_config
    from edgematrix.server.token import load_token

    token = load_token(args.token_file)
    assert token is not None  # required=True raises instead
    config = build_config(
        token,
        args.config,
        backend=args.backend,
        max_body_mb=args.max_body_mb,
        queue_limit=args.queue_limit,
        timeout_s=args.timeout_s,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(config, args.host, args.port)


def _option_value(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise EdgeMatrixError(f"--option {text!r} must be KEY=VALUE (VALUE as JSON, else a string)")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _cmd_measure(args: argparse.Namespace) -> int:
    from edgematrix.backends.meter import LocalMeter, parse_shape
    from edgematrix.measure.harness import LatencyConfig
    from edgematrix.measure.meter import LatencyMeter

    config = LatencyConfig(
        warmup=args.warmup,
        min_rounds=args.rounds,
        max_rounds=max(args.rounds, 1000),
        min_time_s=args.min_time_s,
        max_time_s=max(args.min_time_s, 120.0),
    )
    options = dict(_option_value(o) for o in args.option)
    shapes = dict(parse_shape(text) for text in args.shape)
    model = Path(args.model)
    recorded: dict[str, str] = {}
    meter: LatencyMeter
    if args.remote:
        model, recorded = _static_for_remote(model, shapes)
        from edgematrix.server.client import RemoteMeter
        from edgematrix.server.token import load_token

        token = load_token(args.token_file, required=False) if args.protocol == "native" else None
        meter = RemoteMeter(
            args.remote,
            token=token,
            protocol=args.protocol,
            backend=args.backend,
            config=config,
            retries=args.retries,
            timeout_s=args.timeout_s,
            enot_requests=args.enot_requests,
        )
        where = f"{args.remote} ({args.protocol})"
    else:
        if args.protocol != "native":
            raise EdgeMatrixError("--protocol enot needs --remote URL (the ENOT server's address)")
        meter = LocalMeter(backend=args.backend or "onnxruntime", config=config, shapes=shapes)
        where = "this host"
    try:
        report = meter.measure(model, options=options)
    finally:
        if model != Path(args.model):  # the static copy sent to the server
            import shutil

            shutil.rmtree(model.parent, ignore_errors=True)
    report.facts.update(recorded)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return EXIT_OK
    print(
        f"{args.model} on {where}, backend {report.backend}: p50 {report.p50_ms:.3f} ms  p90 {report.p90_ms:.3f} ms  "
        f"p99 {report.p99_ms:.3f} ms  mean {report.mean_ms:.3f} ms  ({report.rounds} rounds)"
    )
    if "input_shape" in report.facts:
        print(f"input_shape {report.facts['input_shape']} ({report.facts.get('input_shape_source', '')})")
    shown = ("device_model", "os", "l4t_release", "jetpack", "power_mode", "tensorrt_version", "onnxruntime_version")
    facts = [f"{k} {report.facts[k]}" for k in shown if k in report.facts]
    if facts:
        print("device: " + " | ".join(facts))
    return EXIT_OK


def _static_for_remote(model: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[Path, dict[str, str]]:
    """An ONNX model for a latency server: refused when a dynamic dimension has no ``--shape``; with shapes,
    a temporary copy with those dims fixed (the server feeds the dims it finds). Other files go as they are."""
    if model.suffix.lower() != ".onnx" or not model.is_file():
        if shapes:
            raise EdgeMatrixError(f"--shape applies to ONNX models; {model} is not one (an engine has fixed shapes)")
        return model, {}
    import tempfile

    from edgematrix.backends.base import TensorMeta
    from edgematrix.backends.meter import feed_shapes, shape_text
    from edgematrix.core.onnx_io import fix_input_shapes, read_interface

    interface = read_interface(model)
    metadata = {s.name: TensorMeta(s.dtype, s.dims) for s in interface.inputs}
    full = feed_shapes(metadata, shapes)  # refuses a dynamic dim without --shape, naming it
    dynamic = [s.name for s in interface.inputs if s.dynamic]
    recorded = {
        "input_shape": shape_text(full),
        "input_shape_source": f"--shape for dynamic input(s) {', '.join(dynamic)}"
        if dynamic
        else "the model's fixed input dims",
    }
    if not dynamic:
        return model, recorded
    folder = Path(tempfile.mkdtemp(prefix="edgematrix-measure-"))
    return fix_input_shapes(model, folder / model.name, full).path, recorded


def _cmd_list_plugins() -> int:
    from edgematrix.core.registries import ALL

    rows = [("kind", "name", "source", "distribution", "object")]
    for registry in ALL.values():
        rows += [(registry.kind, p.name, p.source, p.distribution or "-", p.target) for p in registry.providers()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    groups = ", ".join(str(r.group) for r in ALL.values() if r.group)
    print(f"\nplugins: entry points of the groups {groups} of every installed distribution", file=sys.stderr)
    return EXIT_OK


def _cmd_strategies(args: argparse.Namespace) -> int:
    from edgematrix.matrix.loader import load_matrix
    from edgematrix.report.strategies import build_table, write_table

    m = load_matrix(args.matrix)
    if args.model not in m.models:
        raise EdgeMatrixError(f"unknown model {args.model!r}; the matrix has: {', '.join(sorted(m.models))}")
    cells = [c.name for c in m.cells.values() if c.model_name == args.model and c.target_name == args.target]
    if not cells:
        raise EdgeMatrixError(
            f"the matrix has no cell of model {args.model!r} on target {args.target!r}; cells of {args.model!r}: "
            + (", ".join(sorted(c.name for c in m.cells.values() if c.model_name == args.model)) or "none")
        )
    out = Path(args.out) if args.out else Path(args.results) / f"{args.model}_strategies"
    table = build_table(args.results, cells, model=args.model, target=args.target)
    paths = write_table(args.results, table, out)
    for key, path in paths.items():
        print(f"{key}: {path}")
    if table.failed:
        raise GateFailure(f"{', '.join(table.failed)} (see {paths['report']})")
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    import dataclasses

    from edgematrix.pipeline.sweep import latency_from_config, load_cell_results, parse_batches, run_sweep

    batches = parse_batches(args.batches)
    latency = None
    if args.min_rounds is not None or args.min_time_s is not None:
        _, config, _ = load_cell_results(Path(args.results), args.cell)
        base = latency_from_config(config)
        try:
            latency = dataclasses.replace(
                base,
                min_rounds=args.min_rounds if args.min_rounds is not None else base.min_rounds,
                max_rounds=max(base.max_rounds, args.min_rounds or 0),
                min_time_s=args.min_time_s if args.min_time_s is not None else base.min_time_s,
                max_time_s=max(base.max_time_s, args.min_time_s or 0.0),
            )
        except ValueError as e:
            raise EdgeMatrixError(f"--min-rounds / --min-time-s: {e}") from None
    roles = ("reference",) if args.role == "reference" else ("reference", "candidate")
    result = run_sweep(
        Path(args.results),
        args.cell,
        batches,
        roles=roles,
        latency=latency,
        cache_dir=Path(args.cache),
        log=lambda m: print(m, file=sys.stderr),
    )
    print(f"json: {result.json_path}\nplot: {result.png_path}\nreport: {result.report_path}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgematrix.pipeline.demo import run_demo

    result = run_demo(
        Path(args.results),
        args.cell,
        frames=args.frames,
        fps=args.fps,
        out=Path(args.out) if args.out else None,
        seed=args.seed,
        cache_dir=Path(args.cache),
        log=lambda m: print(m, file=sys.stderr),
    )
    print(result.path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgematrix", description=__doc__.splitlines()[0])
    p.add_argument("--matrix", default="matrix", help="matrix folder (default: matrix)")
    sub = p.add_subparsers(dest="command", required=True)

    lst = sub.add_parser("list", help="list the cells of the matrix (--plugins: the registries and their plugins)")
    lst.add_argument(
        "--plugins",
        action="store_true",
        help="list every model family, task, backend and recipe step: name, kind, where it comes from (built-in, "
        "plugin, import path) and its distribution",
    )
    lst.set_defaults(func=_cmd_list)
    sub.add_parser("validate", help="validate the matrix TOML files").set_defaults(func=_cmd_validate)

    run = sub.add_parser("run", help="run one cell: build, measure, gate, write results/<cell>/")
    run.add_argument("cell")
    run.add_argument("--runner", default="auto", choices=["auto", "local", "docker", "remote", "emulated"])
    run.add_argument("--results", default="results", help="results folder (default: results)")
    run.add_argument("--cache", default=".cache/edgematrix", help="cache for data, checkpoints, models")
    run.add_argument("--data-root", default=None, help="dataset folder; overrides the model's data_root")
    run.add_argument("--update-baseline", action="store_true", help="write matrix/baselines/<cell>.json from this run")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--batch-sweep",
        default="",
        metavar="1,2,4,8",
        help="after the run, sweep these batch sizes (FPS per sample, acceleration vs FP32; batch_sweep.png)",
    )
    run.add_argument(
        "--ab-base",
        default=None,
        metavar="PATH",
        help="A/B mode: the base branch's candidate (.onnx, or that run's results/<cell>/), measured interleaved",
    )
    run.add_argument(
        "--remote",
        default=None,
        metavar="URL",
        help="--runner remote: the device's `edgematrix serve` (token in EDGEMATRIX_TOKEN)",
    )
    dock = run.add_argument_group("--runner docker")
    dock.add_argument(
        "--offline-base",
        action="store_true",
        help="build the image on the debootstrap base of Debian's packages (hosts without a registry; needs root once)",
    )
    dock.add_argument("--rebuild-image", action="store_true", help="rebuild the target image even if it exists")
    dock.add_argument(
        "--env", action="append", default=[], metavar="NAME[=VALUE]", help="pass a variable into the container"
    )
    dock.add_argument("--source", default=None, help="repository mounted at /workspace (default: this checkout)")
    run.set_defaults(func=_cmd_run)

    images = sub.add_parser("images", help="target images: list them, or build them (offline with --offline-base)")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    for verb, text in (
        ("list", "each target image: recipe, tag and whether it is on this host"),
        ("build", "build target images"),
    ):
        v = images_sub.add_parser(verb, help=text)
        v.add_argument(
            "targets", nargs="*", help="targets (default: all; with --offline-base, those with offline_image)"
        )
        v.add_argument("--offline-base", action="store_true", help="on the debootstrap base of Debian's packages")
        v.add_argument("--rebuild", action="store_true", help="build even when the image exists")
        v.add_argument("--cache", default=".cache/edgematrix", help="cache (wheelhouses)")
        v.add_argument("--source", default=None, help="repository with docker/ (default: this checkout)")
        v.set_defaults(func=_cmd_images)

    score = sub.add_parser("score", help="score predictions with a task metric")
    score_sub = score.add_subparsers(dest="metric", required=True)
    tus = score_sub.add_parser("tusimple", help="TuSimple Accuracy/FP/FN, as the official evaluator")
    tus.add_argument("pred", help="predictions, one JSON object per line (raw_file, lanes, run_time)")
    tus.add_argument("gt", help="ground truth, one JSON object per line (raw_file, lanes, h_samples)")
    tus.set_defaults(func=_cmd_score)
    coco = score_sub.add_parser("coco", help="COCO bbox mAP (pycocotools COCOeval summary, fractions)")
    coco.add_argument("pred", help="detections in COCO results format: [{image_id, category_id, bbox, score}]")
    coco.add_argument("gt", help="ground truth: a COCO instances JSON (images, annotations, categories)")
    coco.set_defaults(func=_cmd_score_coco)

    ck = sub.add_parser(
        "cache-key",
        help="the key of everything a cell's build depends on (CI stores .cache/edgematrix under it)",
        description="Prints the content key of the cell's build inputs: dataset, model source, training and recipe "
        "config, the code that builds them and the lock (constraints.txt of --matrix). "
        "Nothing is built. --github-output prints key=, restore-cell= and restore-model= lines for $GITHUB_OUTPUT "
        "(actions/cache's key and restore-keys; docs/ci.md).",
    )
    ck.add_argument("cell")
    ck.add_argument("--data-root", default=None, help="the dataset folder the run will use (as `run --data-root`)")
    ck.add_argument("--github-output", action="store_true", help="key=/restore-cell=/restore-model= lines")
    ck.set_defaults(func=_cmd_cache_key)

    rep = sub.add_parser("report", help="merge results/*: JUnit, markdown summary + PR comment, plots, history")
    rep.add_argument(
        "--results",
        default=None,
        help="folder of results/<cell>/ (default: results; with --html and no --results, only the dashboard of "
        "the history is written, nothing is appended)",
    )
    rep.add_argument("--out", default="report", help="where to write the report (default: report)")
    rep.add_argument("--base", default=None, help="the base branch's results folder: deltas and latency CIs")
    rep.add_argument("--history", default=None, help="append-only JSON-lines history to append to and plot")
    rep.add_argument("--baselines", default=None, help="matrix/baselines to compare with when there is no --base")
    rep.add_argument(
        "--html",
        default=None,
        metavar="DIR",
        help="write the history dashboard (a static site: index.html, a page per cell and backend) into DIR",
    )
    rep.add_argument(
        "--repo-url",
        default=None,
        help="link the dashboard's commits to URL/commit/<sha> (default: $GITHUB_SERVER_URL/$GITHUB_REPOSITORY)",
    )
    rep.set_defaults(func=_cmd_report)

    gate = sub.add_parser("gate", help="regression gates on benchmark results")
    gate_sub = gate.add_subparsers(dest="gate", required=True)
    cmp = gate_sub.add_parser(
        "compare",
        help="compare two pytest-benchmark JSON files: latency (statistical) and accuracy per benchmark",
        description="Exit 0: no gate failed; 1: a benchmark regressed (latency or accuracy); 2: bad input "
        "(unreadable file, toolchain mismatch, bad option).",
    )
    cmp.add_argument("base", help="the base benchmark.json")
    cmp.add_argument("cand", help="the candidate benchmark.json")
    cmp.add_argument("--min-effect", default="5%", help="smallest slowdown that fails, 5%% or 0.05 (default 5%%)")
    cmp.add_argument("--confidence", default="0.95", help="confidence level, 0.95 or 95%% (default 0.95)")
    cmp.add_argument(
        "--accuracy-budget", default="0.5", help="accuracy points the candidate may lose vs the base (default 0.5)"
    )
    cmp.set_defaults(func=_cmd_gate_compare)

    srv = sub.add_parser(
        "serve",
        help="run the device-side latency server (token: EDGEMATRIX_TOKEN or --token-file)",
        description="Serve latency measurements and bundle runs over HTTP; see docs/latency-server.md.",
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for all (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    srv.add_argument("--token-file", default=None, help="token file (mode 600); else $EDGEMATRIX_TOKEN")
    srv.add_argument(
        "--config", default=None, help="server configuration (TOML): served backends, limits, executables, worker env"
    )
    srv.add_argument("--backend", default=None, help="default backend for requests (default onnxruntime)")
    srv.add_argument("--max-body-mb", type=float, default=None, help="largest request body in MiB (default 512)")
    srv.add_argument("--queue-limit", type=int, default=None, help="requests that may wait for the device (default 8)")
    srv.add_argument("--timeout-s", type=float, default=None, help="per-request measurement timeout (default 600)")
    srv.set_defaults(func=_cmd_serve)

    mea = sub.add_parser("measure", help="measure a model's latency here, or on a device with --remote URL")
    mea.add_argument("model", help="the model file (.onnx; .engine/.plan for a TensorRT device backend)")
    mea.add_argument("--remote", default=None, metavar="URL", help="latency server, e.g. http://jetson:8765")
    mea.add_argument("--protocol", default="native", choices=["native", "enot"], help="server protocol")
    mea.add_argument("--backend", default=None, help="backend (default: onnxruntime / the server's)")
    mea.add_argument("--token-file", default=None, help="file holding the shared token; else $EDGEMATRIX_TOKEN")
    mea.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="runner option (JSON value)")
    mea.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    mea.add_argument("--rounds", type=int, default=30, help="at least this many timed rounds (default 30)")
    mea.add_argument("--min-time-s", type=float, default=2.0, help="and at least this long (default 2)")
    mea.add_argument("--retries", type=int, default=3, help="retries on connection errors / busy (default 3)")
    mea.add_argument("--timeout-s", type=float, default=900, help="HTTP timeout per attempt (default 900)")
    mea.add_argument("--enot-requests", type=int, default=1, help="ENOT protocol: requests to send (default 1)")
    mea.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:DIMS",
        help="shape of an input with dynamic dimensions, e.g. images:1x3x640x640 (repeatable, as trtexec's --shapes); "
        "without it such a model is refused",
    )
    mea.add_argument("--json", action="store_true", help="print the report as JSON (with per-round samples)")
    mea.set_defaults(func=_cmd_measure)

    strat = sub.add_parser(
        "strategies",
        help="the strategies table of a model's cells on a target (metric, size, same-run speedup, Pareto front)",
        description="Reads results/<cell>/ of every cell of MODEL on TARGET in the matrix (run them first: "
        "`nox -s pilotnet_strategies` runs PilotNet's and then this) and writes <results>/<model>_strategies/: "
        "report.md (the table), junit.xml (INT8 size gates, every cell measured), strategies.json, pareto.png. "
        "Exit 1 when one of its gates or a cell's own gate failed.",
    )
    strat.add_argument("model", help="a model of the matrix (e.g. pilotnet)")
    strat.add_argument("--target", default="x86_cpu", help="the target whose cells are tabulated (default: x86_cpu)")
    strat.add_argument("--results", default="results", help="folder of results/<cell>/ (default: results)")
    strat.add_argument("--out", default=None, help="where to write the table (default: <results>/<model>_strategies)")
    strat.set_defaults(func=_cmd_strategies)

    swp = sub.add_parser(
        "sweep",
        help="batch-size sweep of a cell that has run: samples/s and acceleration of its models at batch 1..N",
        description="Writes results/<cell>/batch_sweep.json, batch_sweep.png and a section of report.md; the "
        "batch-N models are verified per sample against batch 1 and cached next to the cell's models.",
    )
    swp.add_argument("cell")
    swp.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes (default 1,2,4,8)")
    swp.add_argument("--results", default="results", help="folder holding results/<cell>/ (default: results)")
    swp.add_argument(
        "--role", default="both", choices=["both", "reference"], help="sweep both models, or the FP32 reference only"
    )
    swp.add_argument("--min-rounds", type=int, default=None, help="rounds per batch (default: the recipe's)")
    swp.add_argument("--min-time-s", type=float, default=None, help="seconds per batch (default: the recipe's)")
    swp.add_argument("--cache", default=".cache/edgematrix", help="the cache (maps a docker run's /cache paths)")
    swp.set_defaults(func=_cmd_sweep)

    dem = sub.add_parser(
        "demo",
        help="a synthetic drive with the FP32 reference and the candidate side by side (GIF, or MP4)",
        description="Runs both ONNX models of a cell that has run on every frame and draws their outputs; "
        ".mp4 needs the `demo` extra (imageio-ffmpeg).",
    )
    dem.add_argument("cell")
    dem.add_argument("--frames", type=int, default=48, help="frames of the drive (default 48)")
    dem.add_argument("--fps", type=float, default=12.0, help="frames per second of the video (default 12)")
    dem.add_argument("--out", default=None, help="output .gif or .mp4 (default: results/<cell>/demo.gif)")
    dem.add_argument("--seed", type=int, default=0, help="seed of the synthetic road (default 0)")
    dem.add_argument("--results", default="results", help="folder holding results/<cell>/ (default: results)")
    dem.add_argument("--cache", default=".cache/edgematrix", help="the cache (maps a docker run's /cache paths)")
    dem.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GateFailure as e:
        print(f"edgematrix: gate failed: {e}", file=sys.stderr)
        return EXIT_GATE
    except EdgeMatrixError as e:
        print(f"edgematrix: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ModuleNotFoundError as e:  # an optional runtime imported lazily: name its extra (else a bug: re-raise)
        from edgematrix.extras import missing_extra

        err = missing_extra(e, needed_for=f"`edgematrix {args.command}`")
        if err is None:
            raise
        print(f"edgematrix: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("edgematrix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

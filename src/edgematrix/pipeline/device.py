"""Device cells run from this host: ``--runner emulated`` and ``--runner remote``.

The host builds what the cell deploys (data, training, export, INT8 QDQ — the same cached stages as
a local cell), exports the test split as an evaluation bundle (npz, no pickle), and gets the
device's raw outputs for it back:

- **emulated, arm64 targets** (Jetson): the target's image built on the arm64 debootstrap base runs
  :mod:`edgematrix.executors.on_device` under qemu-user: ONNX Runtime for aarch64 on the same ONNX files.
- **emulated, TI (fx8)**: TDA4's 8-bit fixed point is emulated on this host: the symmetric INT8 QDQ
  model with every scale rounded to a power of two (:mod:`edgematrix.optimize.fx8`), on ONNX Runtime.
- **remote**: the device's latency server (``edgematrix serve``) runs the bundle and measures
  latency with the device's backend (TensorRT engines via trtexec on a Jetson).

The host scores both output sets with the task metric and compares them. Gates: device outputs
match the host's (same model), device accuracy within ``DEVICE_ACCURACY_TOLERANCE`` points of the
host's, and the cell's accuracy gates. Emulated latency is reported as emulated and never gated.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.core.cache import file_sha256
from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.data.tusimple import restamp_run_time
from edgematrix.errors import EdgeMatrixError, GateFailure
from edgematrix.executors.select import Choice
from edgematrix.gates.verdicts import Verdict
from edgematrix.matrix.loader import Cell
from edgematrix.measure.environment import capture_environment
from edgematrix.measure.harness import LatencyConfig
from edgematrix.pipeline import cell as cellmod
from edgematrix.report.junit import write_junit
from edgematrix.tasks.lane import score_lane_outputs

#: an emulated or remote device's task accuracy may differ from the host's by this much (points)
DEVICE_ACCURACY_TOLERANCE = 0.1
#: same model, same runtime family on another architecture: outputs agree to this (relative to the
#: output range). Float models: 1e-3. Quantized models: 1e-2, because int8 kernels of different
#: architectures round requantization differently, so an output may move by a quantization step
#: (measured: ufld_r18 INT8 on ONNX Runtime aarch64 under qemu vs x86-64, 1.4e-3 at most over 150
#: images, with identical TuSimple accuracy). The task-accuracy gate is the criterion that matters.
OUTPUT_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-3, "int8": 1e-2, "fx8": 1e-2}
#: float models under qemu-user run on this many test images only: qemu's TCG emulates float SIMD in
#: software (measured here: 115 s per 288x800 ResNet-18 image in FP32, 9 s in INT8). Their outputs
#: are compared on those images; their accuracy of record is the host's (same numerics, checked).
EMULATED_FLOAT_IMAGES = 3


@dataclass
class DeviceRun:
    """One model's outputs and latency on the (emulated / remote) device."""

    role: str
    path: Path
    precision: str
    outputs: dict[str, np.ndarray]
    samples_ms: list[float]
    latency_kind: str  # "device" | "emulated-qemu-aarch64" | "emulated-host"
    facts: dict[str, Any] = field(default_factory=dict)


def lane_bundle(split: Any) -> Any:
    """The test split as an evaluation bundle: ``input`` (N, 1, 3, H, W) float32, ids = raw_file."""
    from edgematrix.data.lanes import preprocess
    from edgematrix.server.bundle import EvalBundle

    x = preprocess(split.images)[:, None]
    return EvalBundle({"input": x}, ids=tuple(s.raw_file for s in split.samples), meta={"task": "lane"})


def _prefix(outputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in outputs.items()}


def _relative_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name in a:
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        scale = max(float(np.abs(x).max()), 1e-12)
        worst = max(worst, float(np.abs(x - y).max()) / scale)
    return worst


# -- where the device outputs come from ------------------------------------------------------------


def _emulated_container(
    cell: Cell, options: Any, roles: dict[str, tuple[Path, str]], bundle_dir: Path
) -> list[DeviceRun]:
    """Run the models in the target's arm64 image under qemu-user (offline base, never pulled)."""
    from edgematrix.executors.docker import DockerRunOptions, prepare_image, run_command
    from edgematrix.executors.images import docker_client
    from edgematrix.server.wire import npz_to_arrays

    client = docker_client()
    repo = Path(__file__).resolve().parents[3]
    dopts = DockerRunOptions(
        repo_root=repo,
        matrix_dir=repo / "matrix",
        results_dir=options.results_dir,
        cache_dir=options.cache_dir,
        offline_base=True,
        log=lambda s: cellmod.console.print(s, highlight=False),
    )
    spec, tag, built = prepare_image(client, cell.target_name, cell.target.model_dump(), dopts)
    cellmod.console.print(f"      image {tag} ({'built' if built else 'cached'}, {spec.arch}, under qemu-user)")
    with tempfile.TemporaryDirectory(prefix="edgematrix-emulated-", dir=options.cache_dir) as tmp:
        models_dir, out_dir = Path(tmp) / "models", Path(tmp) / "out"
        models_dir.mkdir()
        out_dir.mkdir()
        out_dir.chmod(0o777)  # the container runs as the host uid; keep it writable either way
        names, args = {}, []
        for role, (path, precision) in roles.items():
            names[role] = f"{role}.onnx"
            shutil.copy2(path, models_dir / names[role])
            limit = f"@{EMULATED_FLOAT_IMAGES}" if precision in ("fp32", "fp16") else ""
            args.append(f"/models/{names[role]}{limit}")
        mounts = {
            str(repo): {"bind": "/workspace", "mode": "ro"},
            str(bundle_dir.resolve()): {"bind": "/bundle", "mode": "ro"},
            str(models_dir.resolve()): {"bind": "/models", "mode": "ro"},
            str(out_dir.resolve()): {"bind": "/out", "mode": "rw"},
        }
        command = ["python3", "-m", "edgematrix.executors.on_device", "--bundle", "/bundle", "--out", "/out",
                   *args]  # fmt: skip
        code = run_command(client, tag, command, mounts=mounts, environment={"HOME": "/tmp"},
                           labels={"org.edgematrix.cell": cell.name})  # fmt: skip
        if code != 0:
            raise EdgeMatrixError(f"the emulated device run exited with {code} (image {tag}); its output is above")
        runs = []
        for role, (path, precision) in roles.items():
            stem = Path(names[role]).stem
            outputs = npz_to_arrays((out_dir / f"{stem}.npz").read_bytes())
            doc = json.loads((out_dir / f"{stem}.json").read_text())
            runs.append(DeviceRun(role, path, precision, outputs, list(doc["samples_ms"]), "emulated-qemu-aarch64",
                                  {**doc["facts"], "image": tag}))  # fmt: skip
    return runs


def _emulated_host(roles: dict[str, tuple[Path, str]], bundle: Any) -> list[DeviceRun]:
    """TI FX8: the emulation is the power-of-two QDQ model itself, on this host's ONNX Runtime."""
    from edgematrix.backends.meter import LocalMeter
    from edgematrix.server.bundle import run_bundle_local

    runs = []
    cfg = LatencyConfig(warmup=2, min_rounds=10, max_rounds=10, min_time_s=0.0)
    for role, (path, precision) in roles.items():
        outputs = run_bundle_local(path, bundle)
        report = LocalMeter(config=cfg).measure(path)
        runs.append(DeviceRun(role, path, precision, outputs, list(report.samples_ms), "emulated-host",
                              {"machine": platform.machine()}))  # fmt: skip
    return runs


def _remote(cell: Cell, options: Any, roles: dict[str, tuple[Path, str]], bundle: Any) -> list[DeviceRun]:
    """Outputs via the device's server (ONNX Runtime there), latency with the device's backend."""
    from edgematrix.server.client import RemoteMeter

    if not options.remote:
        raise EdgeMatrixError(
            f"cell {cell.name}: --runner remote needs --remote URL (an `edgematrix serve` on the device) "
            "and the shared token in EDGEMATRIX_TOKEN"
        )
    outputs_meter = RemoteMeter(options.remote, backend="onnxruntime")
    latency_meter = RemoteMeter(options.remote, backend=cell.target.backend)
    facts = dict(outputs_meter.device_facts())
    runs = []
    for role, (path, precision) in roles.items():
        outputs = outputs_meter.run_bundle(path, bundle)
        lat_opts = {"precision": precision} if cell.target.backend == "tensorrt" else {}
        report = latency_meter.measure(path, options=lat_opts)
        runs.append(DeviceRun(role, path, precision, outputs, list(report.samples_ms), "device",
                              {**facts, **report.facts}))  # fmt: skip
    return runs


# -- the cell ----------------------------------------------------------------------------------------


def run_device_cell(cell: Cell, options: Any, choice: Choice) -> Any:
    """Run a device cell with the emulated or remote runner; writes results/<cell>/ like a local cell
    (staged: the previous results stay until this run's are complete)."""
    from edgematrix.fileio import staged_folder

    with staged_folder(options.results_dir / cell.name, publish_on=(GateFailure,)) as out:
        return _run_device_cell_impl(cell, options, choice, out, options.results_dir / cell.name)


def _run_device_cell_impl(cell: Cell, options: Any, choice: Choice, out: Path, final: Path) -> Any:
    config = {
        **cell.resolved(),
        "runner": {"name": choice.runner, "reason": choice.reason, "host": platform.node(), "remote": options.remote},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    # the local cell's stages, with "host" and "device" in place of "accuracy" and "latency", plus "fx8"
    stages = cellmod._Stages(cellmod._stage_count(cell.recipe) + (1 if cell.recipe.precision == "fx8" else 0))
    art = cellmod._build_artifacts(cell, options, stages, out)
    precision = cell.recipe.precision
    roles: dict[str, tuple[Path, str]] = {"reference": (art.fp32_path, "fp32")}
    fx8_facts: dict[str, Any] = {}
    if precision == "fx8":
        from edgematrix.optimize.fx8 import fx8_from_qdq

        stages.start("fx8", "power-of-two scales on every QDQ node (TDA4 8-bit fixed point)")
        fx8_path = art.cand_path.with_name(art.cand_path.stem + "-fx8.onnx")
        report = fx8_from_qdq(art.cand_path, fx8_path)
        fx8_facts = {k: v for k, v in report.summary().items() if isinstance(v, int | float | str)}
        roles["int8"] = (art.cand_path, "int8")
        roles["candidate"] = (fx8_path, "fx8")
        stages.done(f"{fx8_path.name}: {fx8_facts}")
    elif precision == "fp16":
        # TensorRT builds the FP16 engine from the FP32 ONNX; off the device, the FP32 ONNX is what runs
        roles["candidate"] = (art.fp32_path, "fp16")
    else:
        roles["candidate"] = (art.cand_path, precision)

    bundle = lane_bundle(art.test)
    bundle_dir = out / "bundle"
    bundle.save(bundle_dir)
    from edgematrix.server.bundle import run_bundle_local

    stages.start("host", f"{bundle.samples} test images through {len(roles)} model(s) on this host's ONNX Runtime")
    host = {role: run_bundle_local(path, bundle) for role, (path, _) in roles.items()}
    stages.done()

    where = {"emulated": "emulated device", "remote": f"device at {options.remote}"}[choice.runner]
    stages.start("device", f"the same bundle on the {where}")
    if choice.runner == "remote":
        runs = _remote(cell, options, roles, bundle)
    elif cell.target.arch == "aarch64" and precision != "fx8":
        runs = _emulated_container(cell, options, roles, bundle_dir)
    else:
        runs = _emulated_host(roles, bundle)
    stages.done(", ".join(f"{r.role} p50 {np.median(r.samples_ms):.2f} ms ({r.latency_kind})" for r in runs))

    geometry = art.model.geometry
    verdicts: list[Verdict] = []
    entries: list[BenchmarkEntry] = []
    rows = []
    scores = {}
    for run in runs:
        n = len(run.outputs["loc_row"])
        partial = n < bundle.samples
        host_score = score_lane_outputs(_prefix(host[run.role], n), art.test, geometry)
        dev_score = score_lane_outputs(run.outputs, art.test, geometry, out / f"predictions-{run.role}.json")
        restamp_run_time(out / f"predictions-{run.role}.json", float(np.median(run.samples_ms)))
        # a partial device run (float model under qemu): accuracy of record is the host's, on every image
        scores[run.role] = score_lane_outputs(host[run.role], art.test, geometry) if partial else dev_score
        rel = _relative_diff(_prefix(host[run.role], n), run.outputs)
        # on another machine (container under qemu, or a board) the same model must give the host's
        # outputs; the TI emulation runs on this host, so there is nothing to compare there
        if run.latency_kind != "emulated-host":
            tol = OUTPUT_TOLERANCE[run.precision]
            verdicts.append(Verdict(f"device_outputs_match_host[{run.role}]", "passed" if rel <= tol else "failed",
                f"max relative difference {rel:.2e} (tolerance {tol:g} for {run.precision}, {n} of {bundle.samples} images)"))  # fmt: skip
            delta = dev_score.accuracy - host_score.accuracy
            ok = abs(delta) <= DEVICE_ACCURACY_TOLERANCE
            verdicts.append(Verdict(f"device_accuracy_matches_host[{run.role}]", "passed" if ok else "failed",
                f"{where} {dev_score.accuracy:.2f} vs host {host_score.accuracy:.2f}: {delta:+.2f} points "
                f"(tolerance {DEVICE_ACCURACY_TOLERANCE:g}, {n} of {bundle.samples} images)"))  # fmt: skip
        info: dict[str, float | int | str] = {
            "role": "reference" if run.role == "reference" else "candidate" if run.role == "candidate" else run.role,
            "recipe": cell.recipe_name,
            "precision": run.precision,
            "backend": cell.target.backend if choice.runner == "remote" else "onnxruntime",
            "accuracy": float(scores[run.role].accuracy),
            "fp": float(scores[run.role].extras["fp"]),
            "fn": float(scores[run.role].extras["fn"]),
            "accuracy_source": f"host, {bundle.samples} images (device ran {n})" if partial else "device",
            "device_accuracy": float(dev_score.accuracy),
            "device_images": n,
            "host_accuracy": float(host_score.accuracy),
            "max_rel_diff_vs_host": float(rel),
            "model_bytes": int(run.path.stat().st_size),
            "input_shape": "x".join(str(d) for d in cell.model.input_shape),
            "artifact_sha256": file_sha256(run.path),
            "latency_kind": run.latency_kind,
            "latency_gated": "no" if run.latency_kind.startswith("emulated") else "yes",
            "runner": choice.runner,
        }
        if run.role == "candidate":
            info.update(fx8_facts)
        entries.append(BenchmarkEntry(f"{cell.name}[{run.role}]", cell.name, [s / 1e3 for s in run.samples_ms], info))
        rows.append((run, dev_score, host_score, rel))

    ref, cand = scores["reference"], scores["candidate"]
    g = cell.gates
    drop = ref.accuracy - cand.accuracy
    verdicts.append(Verdict("accuracy_vs_reference", "passed" if drop <= g.accuracy_drop_vs_reference else "failed",
        f"candidate {cand.accuracy:.2f} vs reference {ref.accuracy:.2f}: drop {drop:+.2f} points "
        f"(budget {g.accuracy_drop_vs_reference:.2f})"))  # fmt: skip
    verdicts.append(Verdict("min_accuracy", "passed" if cand.accuracy >= g.min_accuracy else "failed",
        f"candidate {cand.accuracy:.2f} (floor {g.min_accuracy:.2f})"))  # fmt: skip
    if precision == "fx8":
        from edgematrix.optimize.fx8 import verify_power_of_two

        try:
            checked = verify_power_of_two(roles["candidate"][0])
            verdicts.append(
                Verdict("fx8_power_of_two_scales", "passed", f"every QDQ scale is a power of two ({checked})")
            )
        except EdgeMatrixError as e:
            verdicts.append(Verdict("fx8_power_of_two_scales", "failed", str(e)))
    if any(r.latency_kind.startswith("emulated") for r in runs):
        verdicts.append(Verdict("latency_vs_baseline", "not applicable",
            "latency under emulation is the emulator's, not the device's: reported, never gated"))  # fmt: skip
    else:
        verdicts.append(Verdict("latency_vs_baseline", "not applicable",
            "device baselines are recorded on the device runner (`nox -s update_baselines` on the board)"))  # fmt: skip

    env = capture_environment({"edgematrix_runner": choice.runner})
    write_benchmark_json(out / "benchmark.json", entries, machine_extra=env,
                         latency_config=LatencyConfig(warmup=2, min_rounds=10, max_rounds=10, min_time_s=0.0))  # fmt: skip
    from edgematrix.data.tusimple import write_label_file

    write_label_file(out / "labels.json", art.test.samples)
    write_junit(out / "junit.xml", cell.name, verdicts, {"runner": choice.runner, "target": cell.target_name})
    (out / "report.md").write_text(_report(cell, choice, where, rows, verdicts, fx8_facts, bundle.samples))
    _print(cell, rows, verdicts)
    failed = [v for v in verdicts if v.failed]
    result = cellmod.CellResult(cell.name, final, verdicts, [], stages.seconds)
    if failed:
        raise GateFailure(f"{cell.name}: " + "; ".join(f"{v.gate}: {v.message}" for v in failed))
    return result


def _report(cell: Cell, choice: Choice, where: str, rows: list, verdicts: list[Verdict], fx8: dict, total: int) -> str:
    lines = [f"# {cell.name} — {choice.runner} run", "", f"{cell.description}. Device outputs from the {where}.", ""]
    if choice.runner == "emulated":
        lines += ["Latency under emulation is the emulator's, not the device's: it is listed, never gated.", ""]
    lines += ["| role | precision | images on the device | accuracy % (device) | accuracy % (host, same images) "
              "| max rel. diff | p50 ms | latency |", "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for run, dev, host, rel in rows:
        lines.append(f"| {run.role} | {run.precision} | {len(run.outputs['loc_row'])} | {dev.accuracy:.2f} | "
                     f"{host.accuracy:.2f} | {rel:.1e} | {np.median(run.samples_ms):.2f} | {run.latency_kind} |")  # fmt: skip
    partial = [run.role for run, *_ in rows if len(run.outputs["loc_row"]) < total]
    if partial:
        lines += ["", f"{', '.join(partial)}: float models under qemu-user ran on the first {EMULATED_FLOAT_IMAGES} "
                  "images only (qemu emulates float SIMD in software); their outputs are matched there and their "
                  "accuracy of record is the host's, on every image."]  # fmt: skip
    by_role = {run.role: dev for run, dev, _, _ in rows}
    if "int8" in by_role:
        c, i, r = by_role["candidate"].accuracy, by_role["int8"].accuracy, by_role["reference"].accuracy
        lines += ["", f"FX8 vs INT8: {c - i:+.2f} points; FX8 vs FP32: {c - r:+.2f} points."]
    if fx8:
        lines += ["", "FX8 rewrite: " + ", ".join(f"{k} {v}" for k, v in fx8.items())]
    lines += ["", "| gate | status | detail |", "|---|---|---|"]
    lines += [f"| {v.gate} | {v.status} | {v.message} |" for v in verdicts]
    return "\n".join(lines) + "\n"


def _print(cell: Cell, rows: list, verdicts: list[Verdict]) -> None:
    for run, dev, host, rel in rows:
        line = (
            f"{run.role:<10} {run.precision:<5} device {dev.accuracy:6.2f}%  host {host.accuracy:6.2f}%  "
            f"max rel diff {rel:.1e}  p50 {np.median(run.samples_ms):.2f} ms ({run.latency_kind})"
        )
        cellmod.console.print(line, markup=False)
    for v in verdicts:
        cellmod.console.print(f"{v.status:>16}  {v.gate}: {v.message}", markup=False)

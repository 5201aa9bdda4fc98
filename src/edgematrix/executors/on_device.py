"""The device side of a device cell: run models over an evaluation bundle, time them, write npz + JSON.

Runs where the device is: inside the emulated Jetson container (arm64 under qemu-user), or on a
board. Needs only numpy and the model's runtime (no torch, no pydantic)::

    python3 -m edgematrix.executors.on_device --bundle DIR --out DIR MODEL.onnx[@N] [MODEL.onnx[@N] ...]

For each model it writes ``<out>/<model stem>.npz`` (raw outputs, ``outputs[name][i]`` for sample i)
and ``<out>/<model stem>.json`` (latency statistics on this machine + facts). ``MODEL@N`` runs only
the first N samples (FP32 under qemu-user: measured 115 s per 288×800 ResNet-18 image here, INT8
9 s: qemu's TCG emulates float SIMD in software). Under emulation the latency is the emulator's,
never the device's: callers label it so and never gate on it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from edgematrix.backends.meter import LocalMeter
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.harness import LatencyConfig


def _parse_model(arg: str) -> tuple[Path, int | None]:
    """``MODEL`` or ``MODEL@N`` (only the first N samples of the bundle)."""
    path, sep, n = arg.rpartition("@")
    if sep and n.isdigit() and int(n) > 0:
        return Path(path), int(n)
    return Path(arg), None


def _outputs(model: Path, bundle: Any, backend: str, limit: int | None) -> tuple[dict[str, Any], list[float]]:
    """The first ``limit`` (all) samples through ``model``: stacked outputs and per-sample wall times (ms)."""
    from edgematrix.backends.base import create_runner
    from edgematrix.server.bundle import stack_outputs

    n = bundle.samples if limit is None else min(limit, bundle.samples)
    per_sample, times_ms = [], []
    t0 = time.perf_counter()
    with create_runner(backend, path=model) as runner:
        runner.infer(bundle.feed(0))  # warm-up (not timed)
        for i in range(n):
            feed = bundle.feed(i)
            ts = time.perf_counter()
            per_sample.append(runner.infer(feed))
            times_ms.append((time.perf_counter() - ts) * 1e3)
            if (i + 1) % 10 == 0 or i + 1 == n:
                print(f"{model.name}: {i + 1}/{n} samples ({(i + 1) / (time.perf_counter() - t0):.2f}/s)", flush=True)
    return stack_outputs(per_sample), times_ms


def run(models: list[str], bundle_dir: Path, out: Path, *, backend: str, rounds: int) -> None:
    from edgematrix.measure.harness import LatencySamples
    from edgematrix.measure.meter import LatencyReport
    from edgematrix.server.bundle import EvalBundle
    from edgematrix.server.wire import arrays_to_npz

    bundle = EvalBundle.load(bundle_dir)
    out.mkdir(parents=True, exist_ok=True)
    for arg in models:
        model, limit = _parse_model(arg)
        outputs, times_ms = _outputs(model, bundle, backend, limit)
        (out / f"{model.stem}.npz").write_bytes(arrays_to_npz(outputs))
        if rounds > 0:  # timed rounds of their own (on a board)
            config = LatencyConfig(warmup=2, min_rounds=rounds, max_rounds=rounds, min_time_s=0.0, max_time_s=3600.0)
            report = LocalMeter(backend=backend, config=config).measure(model)
        else:  # the inference times of the samples themselves (under emulation: minutes saved, same meaning)
            report = LatencyReport.from_samples(backend, LatencySamples(model.name, [t / 1e3 for t in times_ms]))
        doc = report.as_dict()
        doc["facts"] = {**doc["facts"], "machine": platform.machine(), "samples": len(times_ms)}
        (out / f"{model.stem}.json").write_text(json.dumps(doc, indent=1))
        print(f"{model.name}: {len(times_ms)} samples, p50 {report.p50_ms:.2f} ms on {platform.machine()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m edgematrix.executors.on_device", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", metavar="MODEL[@N]", help="ONNX files; @N: only the first N samples")
    p.add_argument("--bundle", required=True, type=Path, help="evaluation bundle folder (inputs.npz + manifest.json)")
    p.add_argument("--out", required=True, type=Path, help="folder for <model>.npz and <model>.json")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument(
        "--rounds", type=int, default=0, help="timed rounds per model; 0: report the samples' own inference times"
    )
    args = p.parse_args(argv)
    try:
        run(args.models, args.bundle, args.out, backend=args.backend, rounds=args.rounds)
    except EdgeMatrixError as e:
        print(f"on_device: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

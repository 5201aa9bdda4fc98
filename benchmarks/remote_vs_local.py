"""Latency through the latency server vs the local harness, same model, same process, interleaved.

    PYTHONPATH=src python benchmarks/remote_vs_local.py [--reps 3] [--width 32] [--size 224] [--rounds 50]
        [--model MODEL.onnx] [--threads 0] [--json]

Exports a ResNet-18 backbone (edgematrix.models.resnet, ``--width`` channels in the stem, input
1×3×``size``×``size``) to ONNX, or takes ``--model``; starts ``edgematrix serve`` on loopback in this
process (a thread; every measurement runs in the server's worker process, as on a board); then
measures the model ``--reps`` times with ``LocalMeter`` and ``RemoteMeter`` in ABBA order (local,
remote, remote, local, ...), with the same harness settings. Prints each p50, the ratio remote /
local of each repetition (its two measurements ran back to back) and their median, the headline
figure. The issue's target: within 10% (0.90..1.10). Exit 1 when outside that band with ``--check``.
Timing claims are this same-run ratio, never absolute times; on a busy machine use more ``--reps``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

from edgematrix.backends.meter import LocalMeter
from edgematrix.measure.harness import LatencyConfig
from edgematrix.measure.meter import LatencyMeter
from edgematrix.server.app import ServerConfig, serve_in_thread
from edgematrix.server.client import RemoteMeter


def export_resnet(path: Path, width: int, size: int) -> Path:
    import torch

    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.models.resnet import ResNet

    torch.manual_seed(0)
    export_onnx(ResNet(18, width=width).eval(), (1, 3, size, size), path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: export a ResNet-18 backbone)")
    p.add_argument("--width", type=int, default=32, help="ResNet stem width (64 = ResNet-18)")
    p.add_argument("--size", type=int, default=224, help="input height = width")
    p.add_argument("--reps", type=int, default=5, help="repetitions per side (ABBA order)")
    p.add_argument("--rounds", type=int, default=50, help="timed rounds per measurement (at least)")
    p.add_argument("--min-time-s", type=float, default=2.0, help="and at least this long per measurement")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads on both sides (0 = physical cores)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 unless remote / local is within 10%")
    args = p.parse_args(argv)

    config = LatencyConfig(warmup=10, min_rounds=args.rounds, min_time_s=args.min_time_s)
    options = {"intra_op_threads": args.threads}
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_resnet(Path(tmp) / "resnet18.onnx", args.width, args.size)
        with serve_in_thread(ServerConfig(token=token, timeout_s=600)) as server:
            meters: dict[str, LatencyMeter] = {
                "local": LocalMeter(config=config),
                "remote": RemoteMeter(server.url, token=token, config=config),
            }
            p50s: dict[str, list[float]] = {"local": [], "remote": []}
            order = ["local", "remote"]
            for rep in range(args.reps):
                for side in order if rep % 2 == 0 else order[::-1]:
                    report = meters[side].measure(model, options=options)
                    p50s[side].append(report.p50_ms)
                    print(
                        f"rep {rep + 1} {side:<6} p50 {report.p50_ms:8.3f} ms ({report.rounds} rounds)", file=sys.stderr
                    )
    local, remote = statistics.median(p50s["local"]), statistics.median(p50s["remote"])
    ratios = [r / lo for r, lo in zip(p50s["remote"], p50s["local"], strict=True)]
    ratio = statistics.median(ratios)
    within = 0.9 <= ratio <= 1.1
    result = {
        "model": str(args.model or f"resnet18 width {args.width} 1x3x{args.size}x{args.size}"),
        "p50_ms": p50s,
        "median_p50_ms": {"local": local, "remote": remote},
        "ratio_per_rep": ratios,
        "ratio_remote_over_local": ratio,
        "within_10_percent": within,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"model: {result['model']}")
        print(f"local  p50s (ms): {', '.join(f'{v:.3f}' for v in p50s['local'])}; median {local:.3f}")
        print(f"remote p50s (ms): {', '.join(f'{v:.3f}' for v in p50s['remote'])}; median {remote:.3f}")
        print(f"remote / local per repetition: {', '.join(f'{r:.3f}' for r in ratios)}")
        print(f"median remote / local = {ratio:.3f} ({'within' if within else 'OUTSIDE'} the 10% target)")
    return 1 if args.check and not within else 0


if __name__ == "__main__":
    sys.exit(main())

"""Where INT8 time goes on ONNX Runtime's CPU provider, and the INT8/FP32 ratio with 1 and 2 threads.

    PYTHONPATH=src python benchmarks/ort_profile.py [--cache .cache/edgematrix] [--fp32 F --int8 I]
        [--rounds 40] [--profile-runs 20] [--json OUT.json]

Takes a cell's cached artifacts (as ``benchmarks/openvino_vs_ort.py`` does: the newest
``artifacts/*/fp32.onnx`` with an ``int8-*.onnx`` beside it, or ``--fp32`` / ``--int8``) and

1. times FP32 and INT8 interleaved (edgematrix.measure.harness, ``allow_spinning = 0``), once with
   one intra-op thread per session and once with two, and prints the same-run INT8/FP32 p50 ratios;
2. profiles both models with ONNX Runtime's own profiler (``enable_profiling``, two threads,
   ``--profile-runs`` runs after the warm-up) and sums the kernels' time per node: the first
   convolution executed (the stem, after the input padding) against every other convolution
   (``Conv`` in FP32, ``QLinearConv`` once ONNX Runtime has fused the QDQ pairs), and the rest.

The profile is of one thread's view of the kernels (per-node wall time, not CPU time); the ratio of
the non-stem convolutions is what INT8 kernels gain where they apply. Claims are same-run ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.measure.harness import LatencyConfig, measure_interleaved

CONV_OPS = {"Conv", "QLinearConv", "ConvInteger", "FusedConv"}


def profile(model: Path, feed: dict[str, np.ndarray], runs: int, threads: int, warmup: int = 5) -> dict[str, Any]:
    """Per-node kernel time (ms per run) of ``runs`` profiled runs; the first ``warmup`` runs of the same
    session (allocation, first-touch) are profiled too and left out."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    # kernel events: cat "Node", name "<node>_kernel_time"; one per node per run, in execution order
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    per_node: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    order: list[str] = []
    for e in kernels:
        node = e["name"].removesuffix("_kernel_time")
        if node not in ops:
            order.append(node)
        ops[node] = e.get("args", {}).get("op_name", "?")
        per_node[node].append(e["dur"] / 1000.0)  # µs → ms
    # each node ran warmup + runs times: its first ``warmup`` are left out
    mean = {n: float(np.mean(v[warmup:])) for n, v in per_node.items()}
    convs = [n for n in order if ops[n] in CONV_OPS]
    if not convs:
        raise SystemExit(f"{model}: no convolution node in the profile (ops seen: {sorted(set(ops.values()))})")
    stem = convs[0]
    return {
        "nodes": len(order),
        "total_ms": sum(mean.values()),
        "stem": {"node": stem, "op": ops[stem], "ms": mean[stem]},
        "other_convs": {"count": len(convs) - 1, "ms": sum(mean[n] for n in convs[1:])},
        "rest_ms": sum(mean[n] for n in order if n not in convs),
        "ops": sorted(set(ops.values())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/edgematrix"), help="edgematrix cache folder")
    parser.add_argument("--fp32", type=Path, default=None, help="FP32 ONNX model (default: from --cache)")
    parser.add_argument("--int8", type=Path, default=None, help="INT8 QDQ ONNX model (default: beside the FP32 one)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds per thread count")
    parser.add_argument("--profile-runs", type=int, default=20, help="profiled runs per model")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from openvino_vs_ort import models_from_args  # the same rule as that script

    fp32, int8 = models_from_args(args, parser)
    print(f"FP32 {fp32} ({fp32.stat().st_size / 1e6:.1f} MB)\nINT8 {int8} ({int8.stat().st_size / 1e6:.1f} MB)")

    rng = np.random.default_rng(0)
    timing: dict[int, dict[str, float]] = {}
    feed: dict[str, np.ndarray] = {}
    for threads in (1, 2):
        runners = {
            "fp32": OnnxrtRunner(fp32, name=f"fp32_t{threads}", intra_op_threads=threads),
            "int8": OnnxrtRunner(int8, name=f"int8_t{threads}", intra_op_threads=threads),
        }
        for r in runners.values():
            r.activate()
        try:
            if not feed:
                meta = runners["fp32"].input_metadata()
                feed = {
                    name: rng.standard_normal([int(d) for d in m.shape]).astype(np.float32)  # type: ignore[union-attr]
                    for name, m in meta.items()
                }
            config = LatencyConfig(warmup=5, min_rounds=args.rounds, max_rounds=args.rounds, min_time_s=0.0)
            samples = measure_interleaved(runners, feed, config)
        finally:
            for r in runners.values():
                r.deactivate()
        timing[threads] = {
            "fp32_p50_ms": samples["fp32"].p50_ms,
            "int8_p50_ms": samples["int8"].p50_ms,
            "ratio": samples["fp32"].p50_ms / samples["int8"].p50_ms,
        }
        t = timing[threads]
        print(
            f"{threads} thread(s) per session, {args.rounds} interleaved rounds: FP32 {t['fp32_p50_ms']:.1f} ms, "
            f"INT8 {t['int8_p50_ms']:.1f} ms -> INT8/FP32 {t['ratio']:.2f}x",
            flush=True,
        )

    prof = {"fp32": profile(fp32, feed, args.profile_runs, 2), "int8": profile(int8, feed, args.profile_runs, 2)}
    print(f"\nONNX Runtime profile, 2 threads, mean of {args.profile_runs} runs (kernel time per node)")
    for key, p in prof.items():
        print(
            f"  {key}: {p['nodes']} nodes, {p['total_ms']:.2f} ms in kernels; stem {p['stem']['op']} "
            f"{p['stem']['ms']:.2f} ms ({100 * p['stem']['ms'] / p['total_ms']:.0f}%), "
            f"{p['other_convs']['count']} other convolutions {p['other_convs']['ms']:.2f} ms, rest {p['rest_ms']:.2f} ms"
        )
    stem_ratio = prof["fp32"]["stem"]["ms"] / prof["int8"]["stem"]["ms"]
    conv_ratio = prof["fp32"]["other_convs"]["ms"] / prof["int8"]["other_convs"]["ms"]
    print(f"  FP32/INT8: stem {stem_ratio:.2f}x, other convolutions {conv_ratio:.2f}x")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "models": {"fp32": str(fp32), "int8": str(int8)},
                    "timing_by_threads": timing,
                    "profile": prof,
                    "stem_ratio": stem_ratio,
                    "other_convs_ratio": conv_ratio,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

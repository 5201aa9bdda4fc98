"""Latency-aware pruning search on the lane model: requested vs achieved speedups.

    PYTHONPATH=src python benchmarks/prune_search.py [--speedups 2,3] [--precision int8] [--cache DIR]

Builds UFLD-v2 ResNet-18 at 288×800 (mid 512, as ``matrix/models.toml``; random weights with one
BatchNorm-statistics pass on synthetic lane frames: latency depends on the architecture, not on
the weights), then for each requested speedup runs :func:`edgematrix.optimize.prune.search_pruning_ratio`
exactly as the ``x86_cpu_prune_x*_int8`` cells do: each probe is exported, quantized to INT8 QDQ
(U8S8, input convolution padded to 4 channels) and measured by a ``LocalMeter`` on ONNX Runtime's
CPU provider. The measurement cache (``--cache``/prune/latency.json) is the cells' own when
``--cache`` is the cells' cache folder.

Each probe is measured in paired blocks with the unpruned model (both in the same interleaved
rounds; ``--pairs`` blocks of at least ``--block-time`` seconds, more near the range's edges) and
lands only when the bootstrap interval of its median ratio lies inside the landing range, measured
on a quiet machine (the harness's contention record). Every probe line says its interval, its
blocks and how many of them ran on a busy machine; the search ends with its reason.

The search's blocks run the unpruned FP32 model, the unpruned and the probed model in the same
rounds, in that order, on the same lane frame, as the check does: what else runs in the rounds,
and on what input, changes the ratio. Then
the chosen model is pruned and deployed again and measured with the unpruned FP32 and unpruned
deployed models in the *same interleaved rounds* (spinning off), in ``--check-blocks`` blocks, and
the table prints requested vs achieved speedups: the search's own figure and the same-run one with
its interval.
Claims are those same-run ratios. The machine's load (``/proc/loadavg``) and the contention
verdicts of the blocks are printed with each figure: on a busy machine they are not claims.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgematrix.backends.base import create_runner
from edgematrix.backends.meter import LocalMeter
from edgematrix.export.onnx_export import export_onnx
from edgematrix.measure.harness import LatencyConfig, measure_interleaved
from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2
from edgematrix.optimize.graph import pad_input_channels
from edgematrix.optimize.prune import (
    LatencyCache,
    PruneSettings,
    RoundMember,
    paired_speedup,
    prune_model,
    search_pruning_ratio,
)
from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

SIZE = (288, 800)
SHAPE = (1, 3, *SIZE)


def lane_images(count: int) -> np.ndarray:
    from PIL import Image

    from edgematrix.data.lanes import preprocess
    from edgematrix.data.synthetic_lanes import render_sample

    h, w = SIZE
    frames = [
        np.asarray(render_sample(seed=0, index=i)[0].resize((w, h), Image.Resampling.BILINEAR)) for i in range(count)
    ]
    return preprocess(np.stack(frames))


def build_model(images: np.ndarray):
    import torch

    torch.manual_seed(0)
    model = UFLDv2(input_size=SIZE, mlp_mid_dim=512, use_aux=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in np.array_split(images, max(1, len(images) // 4)):
            model(torch.from_numpy(batch))
    return model.eval()


def deploy_fn(precision: str, calib: np.ndarray):
    def deploy(model, folder: Path) -> Path:
        fp32 = folder / "fp32.onnx"
        export_onnx(model, SHAPE, fp32, output_names=OUTPUT_NAMES, input_name="input")
        if precision == "fp32":
            return fp32
        padded = folder / "fp32-pad4.onnx"
        pad_input_channels(fp32, padded, "input", 4)
        out = folder / "int8.onnx"
        cfg = QuantizeConfig(method="minmax", calibration_images=2)
        quantize_static_qdq(padded, out, list(calib[:2]), input_name="input", config=cfg)
        return out

    return deploy


def load() -> str:
    """The 1-, 5- and 15-minute load averages and the runnable / all tasks, as /proc/loadavg says."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:4])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedups", default="2,3", help="requested speedups, comma-separated (default 2,3)")
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--bound", choices=("at_least", "nearest"), default="at_least")
    parser.add_argument("--max-probes", type=int, default=8)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=8, help="paired blocks per probe (default 8)")
    parser.add_argument("--remeasure", type=int, default=2, help="more batches of --pairs blocks near an edge")
    parser.add_argument("--confidence", type=float, default=0.90, help="level of each probe's interval")
    parser.add_argument("--block-time", type=float, default=2.0, help="seconds of rounds per paired block (at least)")
    parser.add_argument("--cache", type=Path, default=Path(".cache/edgematrix"), help="cache folder (prune/ inside)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per verification block")
    parser.add_argument("--check-blocks", type=int, default=10, help="blocks of the same-run verification")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    speedups = [float(s) for s in args.speedups.split(",") if s.strip()]

    images = lane_images(8)
    model = build_model(images)
    runner_options = {"providers": ("CPUExecutionProvider",), "intra_op_threads": 0}  # as the x86_cpu cells
    meter = LocalMeter(
        "onnxruntime",
        LatencyConfig(warmup=5, min_rounds=30, max_rounds=400, min_time_s=args.block_time, max_time_s=30.0),
        runner_options,
    )
    cache = LatencyCache(args.cache / "prune" / "latency.json")
    deploy = deploy_fn(args.precision, images)
    cfg = LatencyConfig(warmup=5, min_rounds=args.rounds, max_rounds=args.rounds * 4, min_time_s=args.block_time)
    example = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    rows = []
    doc: dict[str, Any] = {"precision": args.precision, "rows": rows}
    with tempfile.TemporaryDirectory(prefix="prune-search-") as tmp_dir:
        tmp = Path(tmp_dir)
        fp32_path = tmp / "u32" / "fp32.onnx"
        fp32_path.parent.mkdir()
        export_onnx(model, SHAPE, fp32_path, output_names=OUTPUT_NAMES, input_name="input")
        (tmp / "ud").mkdir()
        unpruned_path = deploy(copy.deepcopy(model), tmp / "ud")
        # the rounds of the search's blocks and of the check: the unpruned FP32 model, the unpruned and
        # the pruned deployed model, in this order (what else runs in the rounds changes the ratio)
        rounds = [
            RoundMember("unpruned_fp32", "onnxruntime", fp32_path, runner_options),
            RoundMember("unpruned", "onnxruntime", "unpruned", runner_options),
            RoundMember("pruned", "onnxruntime", "probe", runner_options),
        ]
        for n in speedups:
            settings = PruneSettings(
                speedup=n, round_to=args.round_to, tolerance=args.tolerance, max_probes=args.max_probes,
                pairs=args.pairs, remeasure=args.remeasure, confidence=args.confidence, bound=args.bound,
            )  # fmt: skip
            lo, hi = settings.landing
            print(f"search {n:g}x ({args.precision}, {args.bound}: {lo:.2f}..{hi:.2f}x), load {load()}:", flush=True)
            res = search_pruning_ratio(
                model, input_shape=SHAPE, settings=settings, meter=meter, deploy=deploy, cache=cache,
                work_dir=tmp / f"x{n:g}", backend="onnxruntime", precision=args.precision, rounds=rounds,
                feed={"input": images[:1]},
                on_probe=lambda p: print(
                    f"  ratio {p.ratio:.3f}: {p.latency_ms:7.2f} ms vs unpruned {p.baseline_ms:7.2f} ms (same blocks)  "
                    f"{p.speedup:5.2f}x [{p.low:.2f}..{p.high:.2f}] {p.verdict:7s} {p.blocks} blocks"
                    f"{f', {p.busy_blocks} busy' if p.busy_blocks else ''}  widths {p.channels}"
                    f"{'  (cached)' if p.cached else ''}  load {load()}", flush=True,
                ),
            )  # fmt: skip
            assert res.chosen is not None
            print(f"  {res.reason}", flush=True)

            # same-run check of the chosen ratio, pruned and deployed again, in fresh blocks of the same rounds
            folder = tmp / f"final-x{n:g}"
            folder.mkdir()
            pruned = prune_model(
                copy.deepcopy(model), example, res.chosen.ratio, round_to=args.round_to, ignored_layers=("pool", "cls")
            )
            paths = {"unpruned_fp32": fp32_path, "unpruned": unpruned_path, "pruned": deploy(pruned, folder)}
            runners = {k: create_runner("onnxruntime", path=p, **runner_options) for k, p in paths.items()}
            print(f"  same-run check: {' + '.join(paths)} interleaved, {args.check_blocks} blocks, load {load()}")
            blocks = []
            with contextlib.ExitStack() as stack:
                for r in runners.values():
                    stack.enter_context(r)
                for _ in range(args.check_blocks):
                    m = measure_interleaved(runners, {"input": images[:1]}, cfg)
                    blocks.append(({k: s.p50_ms for k, s in m.items()}, m.contention))
            busy = sum(1 for _, c in blocks if c.busy)
            base = float(np.median([b["unpruned"] for b, _ in blocks]))
            fp32 = float(np.median([b["unpruned_fp32"] for b, _ in blocks]))
            achieved, low, high = paired_speedup([b["unpruned"] / b["pruned"] for b, _ in blocks], args.confidence)
            vs_fp32 = paired_speedup([b["unpruned_fp32"] / b["pruned"] for b, _ in blocks], args.confidence)[0]
            print(
                f"  unpruned FP32 {fp32:.2f} ms, unpruned {args.precision} {base:.2f} ms ({fp32 / base:.2f}x FP32), "
                f"medians of the blocks' p50; {busy} of {len(blocks)} blocks busy; load {load()}"
            )
            if busy:
                print(f"  busy: {'; '.join(next(c for _, c in blocks if c.busy).reasons())}")
            rows.append(
                {"requested": n, "ratio": res.chosen.ratio, "widths": res.chosen.channels,
                 "search_speedup": res.chosen.speedup, "search_interval": [res.chosen.low, res.chosen.high],
                 "search_landed": res.landed, "search_probes": len(res.probes), "search_reason": res.reason,
                 "same_run_speedup": achieved, "same_run_interval": [low, high], "speedup_vs_fp32": vs_fp32,
                 "unpruned_fp32_ms": fp32, "unpruned_ms": base, "p50_ms": float(np.median([b["pruned"] for b, _ in blocks])),
                 "within": lo <= achieved <= hi, "check_busy_blocks": busy, "search": res.as_dict(),
                 "check_blocks": [{"p50_ms": b, "contention": c.as_dict()} for b, c in blocks]}
            )  # fmt: skip
    header = (
        f"{'requested':>9} | {'ratio':>5} | {'search':>7} | {'landed':>6} | {'same-run':>8} | "
        f"{args.confidence:.0%} interval | {'vs FP32':>7} | in range"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        low, high = row["same_run_interval"]
        print(
            f"{row['requested']:>8g}x | {row['ratio']:5.3f} | {row['search_speedup']:6.2f}x | "
            f"{'yes' if row['search_landed'] else 'NO':>6} | {row['same_run_speedup']:7.2f}x | {low:.2f}..{high:.2f}x"
            f"{'':6} | {row['speedup_vs_fp32']:6.2f}x | {'yes' if row['within'] else 'NO'}"
        )
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Multi-task model (segmentation + depth): FP32 vs INT8 PTQ accuracy and latency on ONNX Runtime CPU.

    PYTHONPATH=src nice -n 10 python benchmarks/multitask_int8.py [--cache DIR] [--matrix matrix]

Takes ``models.multitask`` from the matrix: generates its synthetic scenes (or reads its data_root),
trains it with its train config (cached under ``--cache`` by content key), exports ONNX (outputs
``seg`` / ``depth``), quantizes it with the project's PTQ as the cell does (input convolution padded to
4 channels, percentile calibration on 64 training images, per-channel weights, U8S8), then prints
mIoU / pixel accuracy / AbsRel / RMSE / δ1 of FP32 and INT8 on the val split and the INT8/FP32 p50
latency ratio measured interleaved in this run (``allow_spinning = 0``). Claims are the ratios.

``--split`` also scores the ``split_int8_heads`` recipe's deployment: the FP32 model split at the
encoder's ``features`` (:func:`edgematrix.export.split.split_model`), the heads quantized on the FP32
encoder's features of the same 64 calibration images (:func:`edgematrix.optimize.subgraph.deploy_split`),
run encoder → heads through the ``split`` runner.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.core.cache import code_hash, content_key
from edgematrix.export.onnx_export import export_onnx
from edgematrix.matrix.loader import load_matrix
from edgematrix.measure.harness import LatencyConfig, measure_interleaved
from edgematrix.models import create_model
from edgematrix.optimize.graph import pad_input_channels
from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq
from edgematrix.tasks.base import imagenet_preprocess
from edgematrix.tasks.multitask import MultiTaskTask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(".cache/benchmarks/multitask"))
    ap.add_argument("--matrix", type=Path, default=Path("matrix"))
    ap.add_argument("--model", default="multitask")
    ap.add_argument("--rounds", type=int, default=60, help="latency rounds (at least)")
    ap.add_argument("--split", action="store_true", help="also score FP32 encoder + INT8 heads (split runner)")
    args = ap.parse_args(argv)

    cfg = load_matrix(args.matrix).models[args.model]
    task = MultiTaskTask()
    t0 = time.perf_counter()
    data = task.load_data(cfg, None, args.cache)
    print(
        f"data: {data.label} at {data.root}: {len(data.train)} train, {len(data.test)} val ({time.perf_counter() - t0:.0f} s)"
    )

    model = create_model(cfg.family, cfg.input_shape, **cfg.params)
    key = content_key(cfg.model_dump(), data.key, code_hash(task.train_code))
    ckpt = args.cache / "checkpoints" / f"{args.model}-{key}.pt"
    outcome = task.train(model, data, cfg.train, ckpt, progress=sys.stderr.isatty())
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"train: {n_params / 1e6:.3f} M params, "
        + ("reused checkpoint" if outcome.cache_hit else f"{outcome.seconds:.0f} s")
        + (f", last epoch {json.dumps(outcome.history[-1])}" if outcome.history else "")
    )

    art = args.cache / "onnx" / key
    fp32 = art / "fp32.onnx"
    if not fp32.is_file():
        res = export_onnx(model, tuple(cfg.input_shape), fp32, output_names=task.output_names, input_name="input")
        print(f"export: opset {res.opset}, max |onnx - torch| = {res.max_abs_diff:.2e}")
    padded = art / "fp32-pad4.onnx"
    pad_input_channels(fp32, padded, "input", 4)
    int8 = art / "int8.onnx"
    qcfg = QuantizeConfig(method="percentile", calibration_images=64, per_channel=True)
    calib = (imagenet_preprocess(data.train.images[i : i + 1]) for i in range(min(64, len(data.train))))
    q = quantize_static_qdq(padded, int8, calib, input_name="input", config=qcfg)
    print(f"quantize: {q.quantized_nodes} nodes quantized (percentile, per-channel, U8S8)")

    runners = {
        "fp32": OnnxrtRunner(fp32, name="fp32", precision="fp32"),
        "int8": OnnxrtRunner(int8, name="int8", precision="int8"),
    }
    scores = {}
    for role, runner in runners.items():
        with runner:
            scores[role] = task.evaluate(runner, data.test, art / "eval", role, model=model)
    if args.split:
        from edgematrix.backends.base import create_runner
        from edgematrix.export.split import split_model
        from edgematrix.optimize.subgraph import deploy_split

        split = split_model(fp32, art / "split", heads=list(task.output_names))
        feats = ", ".join(f"{f.name} {list(f.shape)}" for f in split.features)
        calib = [imagenet_preprocess(data.train.images[i : i + 1]) for i in range(min(64, len(data.train)))]
        placements = {"encoder": {"precision": "fp32"}, **{h: {"precision": "int8"} for h in task.output_names}}
        deployed = deploy_split(split, art / "split-int8-heads", placements, calibration=calib)
        print(f"split: cut at {feats}; joins max |diff| {split.max_abs_diff:.2e}; heads INT8")
        with create_runner("split", path=deployed.manifest, name="split") as runner:
            scores["split"] = task.evaluate(runner, data.test, art / "eval", "split", model=model)
    print(f"\n{'':6}{'mIoU':>8}{'pix acc':>9}{'AbsRel':>9}{'RMSE m':>9}{'delta1':>9}")
    for role, s in scores.items():
        e = s.extras
        print(f"{role:6}{s.accuracy:8.2f}{e['pixel_acc']:9.2f}{e['abs_rel']:9.4f}{e['rmse']:9.3f}{e['delta1']:9.4f}")
    saved = {role: np.load(s.predictions_file, allow_pickle=False) for role, s in scores.items() if s.predictions_file}
    names = saved["fp32"]["classes"].tolist()
    per_class = {c: tuple(round(float(z["class_iou"][i]), 1) for z in saved.values()) for i, c in enumerate(names)}
    print(f"per-class IoU {'/'.join(saved)}: {per_class}")
    for role in scores:
        if role != "fp32":
            print(f"{role} - fp32 mIoU: {scores[role].accuracy - scores['fp32'].accuracy:+.2f} points")

    feed = {"input": imagenet_preprocess(data.test.images[:1])}
    lat = measure_interleaved(
        runners, feed, LatencyConfig(warmup=10, min_rounds=args.rounds, max_rounds=10 * args.rounds, min_time_s=10)
    )
    p50 = {k: v.p50_ms for k, v in lat.items()}
    print(f"\nlatency p50 (same run, interleaved): fp32 {p50['fp32']:.2f} ms, int8 {p50['int8']:.2f} ms")
    print(f"INT8/FP32 p50 ratio: {p50['int8'] / p50['fp32']:.3f} (speedup {p50['fp32'] / p50['int8']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Detector FP32 vs INT8 (PTQ, and QAT): COCO mAP on the synthetic road scenes and the INT8/FP32 latency ratio.

    PYTHONPATH=src python benchmarks/detector_int8.py [--cache DIR] [--epochs N] [--qat-epochs N] [--no-qat]

Runs the pipeline of an ``x86_cpu`` detection cell by hand, with the ``ssdlite`` model of
``matrix/detection.toml``: generate the synthetic COCO-format set, train (cached by content), export ONNX,
quantize with the project's PTQ (:func:`edgematrix.optimize.quantize.quantize_static_qdq`, U8S8 as ONNX
Runtime's CPU provider runs it, input convolution padded to 4 channels as the cells do), score FP32 and INT8
with the detection adapter through the onnxruntime runner, and time both interleaved in one run (spinning
off). With QAT: ModelOpt fake quantization + distillation from the FP32 model, exported twice (ModelOpt's QDQ,
and the QAT weights through the PTQ pipeline, which is what a QAT cell deploys on ORT CPU).

Prints mAP FP32 / INT8 / delta (points) and the INT8/FP32 p50 ratio; the last line is the same as JSON.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgematrix.backends.base import create_runner
from edgematrix.core.cache import code_hash, content_key
from edgematrix.export.onnx_export import export_onnx
from edgematrix.matrix.loader import load_matrix
from edgematrix.measure.harness import LatencyConfig, measure_interleaved
from edgematrix.models import create_model
from edgematrix.models.detector import OUTPUT_NAMES
from edgematrix.optimize.graph import pad_input_channels
from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq
from edgematrix.tasks.detection import DetectionTask


def _runner(path: Path, name: str):
    return create_runner("onnxruntime", path=path, name=name, allow_spinning=False)


def _ptq(fp32: Path, out: Path, calib: list[np.ndarray], images: int) -> Path:
    padded = fp32.with_name(fp32.stem + "-pad4.onnx")
    pad_input_channels(fp32, padded, "input", 4)
    quantize_static_qdq(padded, out, iter(calib), input_name="input", config=QuantizeConfig(calibration_images=images))
    return out


def _override(cfg: Any, settings: list[str]) -> Any:
    """The model config with ``a.b=json`` settings applied (validated again)."""
    raw = cfg.model_dump()
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    return type(cfg).model_validate(raw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(".edgematrix-cache"))
    ap.add_argument("--matrix", type=Path, default=Path("matrix"))
    ap.add_argument("--model", default="ssdlite")
    ap.add_argument("--epochs", type=int, default=0, help="override the model's train.epochs")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the model's config (JSON value), e.g. train.lr=0.005, params.width=0.75, "
        "input_shape=[1,3,160,256], synthetic.train=800",
    )
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--no-qat", action="store_true")
    ap.add_argument("--qat-recipe", default="det_int8_qat")
    ap.add_argument("--qat-epochs", type=int, default=0, help="override the QAT recipe's epochs")
    ap.add_argument("--latency-s", type=float, default=10.0)
    args = ap.parse_args(argv)

    matrix = load_matrix(args.matrix)
    cfg = matrix.models[args.model]
    if args.epochs:
        args.set.append(f"train.epochs={args.epochs}")
    if args.set:
        cfg = _override(cfg, args.set)
    task = DetectionTask()
    shape = cfg.input_shape
    t0 = time.perf_counter()
    data = task.load_data(cfg, None, args.cache)
    print(f"data: {data.label} at {data.root}: {len(data.train)} train / {len(data.test)} val images "
          f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip

    model = create_model(cfg.family, shape, **cfg.params)
    key = content_key(
        cfg.family, cfg.params, shape, cfg.train.model_dump(), data.key, code_hash(task.train_code), torch.__version__
    )
    ckpt = args.cache / "checkpoints" / f"{args.model}-{key}.pt"
    trained = task.train(model, data, cfg.train, ckpt, progress=sys.stdout.isatty())
    note = "cached" if trained.cache_hit else f"{trained.seconds:.0f} s"
    print(f"train: {cfg.train.epochs} epochs, batch {cfg.train.batch_size} ({note}); history {trained.history[-1:]}")

    art = args.cache / "artifacts" / f"{args.model}-{key}"
    art.mkdir(parents=True, exist_ok=True)
    fp32 = art / "fp32.onnx"
    if not fp32.is_file():
        export_onnx(model, tuple(shape), fp32, output_names=OUTPUT_NAMES, input_name="input")
    calib = [task.preprocess(data.train.images[i : i + 1]) for i in range(args.calibration_images)]
    int8 = _ptq(fp32, art / "int8.onnx", calib, args.calibration_images)

    out = art / "eval"
    scores = {}
    for role, path in (("fp32", fp32), ("int8", int8)):
        with _runner(path, role) as r:
            scores[role] = task.evaluate(r, data.test, out, role, model=model)
        s = scores[role]
        print(f"{role}: mAP {s.accuracy:.2f}  mAP@.5 {s.extras['map50']:.2f}  AR100 {s.extras['ar100']:.2f}")

    feed = {"input": calib[0]}
    lat = measure_interleaved(
        {"fp32": _runner(fp32, "fp32"), "int8": _runner(int8, "int8")},
        feed,
        LatencyConfig(warmup=10, min_rounds=50, min_time_s=args.latency_s, max_time_s=4 * args.latency_s),
    )
    ratio = lat["int8"].p50_ms / lat["fp32"].p50_ms
    result = {
        "map_fp32": round(scores["fp32"].accuracy, 3),
        "map_int8": round(scores["int8"].accuracy, 3),
        "map_delta": round(scores["int8"].accuracy - scores["fp32"].accuracy, 3),
        "map50_fp32": round(scores["fp32"].extras["map50"], 3),
        "map50_int8": round(scores["int8"].extras["map50"], 3),
        "int8_over_fp32_p50": round(ratio, 4),
        "train_seconds": round(trained.seconds, 1),
    }
    print(f"mAP FP32 {result['map_fp32']:.2f} / INT8 {result['map_int8']:.2f} / delta {result['map_delta']:+.2f} points; "
          f"INT8/FP32 p50 {ratio:.3f} (same run, {lat['fp32'].rounds} rounds)")  # fmt: skip

    if not args.no_qat:
        result.update(_qat(args, matrix, cfg, task, data, model, art, calib, shape))
    print(json.dumps(result))
    return 0


def _qat(args, matrix, cfg, task, data, model, art: Path, calib: list[np.ndarray], shape) -> dict[str, float]:
    """ModelOpt QAT with the detection finetune, exported both ways, scored."""
    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.optimize.qat import export_qdq_onnx, fold_batchnorm, quantize_for_qat
    from edgematrix.train.distill import DistillConfig

    qs = matrix.recipes[args.qat_recipe].qat
    epochs = args.qat_epochs or qs.epochs
    dcfg = DistillConfig(
        epochs=epochs, batch_size=qs.batch_size, lr=qs.lr, weight_decay=qs.weight_decay,
        warmup_fraction=qs.warmup_fraction, alpha=qs.alpha, temperature=qs.temperature, seed=qs.seed, amp=qs.amp,
        flip=cfg.train.flip, channels_last=False,
    )  # fmt: skip
    student = copy.deepcopy(model).eval()
    folded = fold_batchnorm(student)
    plain = copy.deepcopy(student)
    quantize_for_qat(student, [torch.from_numpy(a) for a in calib[: qs.calibration_images]])
    outcome = task.finetune(student, model, data, dataclasses.replace(dcfg), progress=sys.stdout.isatty(), label="qat")
    qdq = art / "qat-modelopt.onnx"
    pairs, diff = export_qdq_onnx(student, shape, qdq, OUTPUT_NAMES, calib[0])
    weights = plain.state_dict()
    plain.load_state_dict({k: v for k, v in student.state_dict().items() if k in weights}, strict=True)
    qat_fp32 = art / "qat-fp32.onnx"
    export_onnx(plain.eval(), tuple(shape), qat_fp32, output_names=OUTPUT_NAMES, input_name="input")
    qat_int8 = _ptq(qat_fp32, art / "qat-int8.onnx", calib, args.calibration_images)
    got = {}
    for role, path in (("qat_modelopt_qdq", qdq), ("qat_int8", qat_int8)):
        with _runner(path, role) as r:
            got[role] = task.evaluate(r, data.test, art / "eval", role, model=model).accuracy
    print(f"QAT ({epochs} epochs, {outcome.seconds:.0f} s, {folded} BN folded, {pairs} DequantizeLinear, "
          f"ModelOpt QDQ vs torch max rel diff {diff:.1e}): mAP ModelOpt QDQ {got['qat_modelopt_qdq']:.2f}, "
          f"QAT weights through PTQ {got['qat_int8']:.2f}")  # fmt: skip
    return {
        "map_qat_modelopt_qdq": round(got["qat_modelopt_qdq"], 3),
        "map_qat_int8": round(got["qat_int8"], 3),
        "qat_seconds": round(outcome.seconds, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())

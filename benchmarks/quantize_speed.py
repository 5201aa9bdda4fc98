"""INT8 QDQ vs FP32 latency on ONNX Runtime's CPU provider, for several quantization variants.

    PYTHONPATH=src python benchmarks/quantize_speed.py [--mid-dim 512] [--rounds 30] [--variants a,b]

Builds the full-size UFLDv2 (ResNet-18, 288×800) with random weights, runs one BatchNorm-statistics
pass on synthetic lane images so activations have realistic ranges, exports FP32 ONNX, quantizes
it once per variant and times FP32 and INT8 interleaved in the same process (both sessions with
``session.intra_op.allow_spinning = 0``: spinning threads of one session otherwise slow the other
on a 2-core machine). Prints p50 per model, the FP32/INT8 p50 ratio and the INT8 outputs'
agreement with FP32 on a held-out image. Claims are these same-run ratios, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edgematrix.data.lanes import preprocess
from edgematrix.data.synthetic_lanes import render_sample
from edgematrix.export.onnx_export import export_onnx
from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2
from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

DEFAULT = QuantizeConfig()

# name -> (config, extra session config entries). u8s8_asym is QuantizeConfig()'s default;
# the s8s8_sym* variants are TensorRT-consumable (QuantizeConfig.tensorrt()).
TRT = QuantizeConfig.tensorrt()
VARIANTS: dict[str, tuple[QuantizeConfig, dict[str, str]]] = {
    "u8s8_asym": (DEFAULT, {}),
    "u8s8_asym_keep_relu": (replace(DEFAULT, keep_removable_activations=True), {}),
    "u8s8_asym_per_tensor": (replace(DEFAULT, per_channel=False), {}),
    "u8s8_asym_all_ops": (replace(DEFAULT, op_types=()), {}),
    "s8s8_sym": (TRT, {}),
    "s8s8_sym_nosplit": (replace(TRT, split_fanout=False), {}),
    "s8s8_sym_dedicated": (replace(TRT, split_fanout=False, dedicated_qdq_pair=True), {}),
    "s8s8_sym_int8allowed": (TRT, {"session.qdqisint8allowed": "1"}),
    "s8s8_sym_per_tensor": (replace(TRT, per_channel=False), {}),
    "s8s8_sym_all_ops": (replace(TRT, op_types=()), {}),
    "s8s8_sym_qdq_weights": (replace(TRT, add_qdq_pair_to_weight=True), {}),
}


def lane_images(start: int, count: int, size: tuple[int, int]) -> np.ndarray:
    """Synthetic TuSimple frames, resized to the model input and normalised: float32 [N, 3, H, W]."""
    from PIL import Image

    h, w = size
    frames = [
        np.asarray(render_sample(seed=0, index=i)[0].resize((w, h), Image.Resampling.BILINEAR))
        for i in range(start, start + count)
    ]
    return preprocess(np.stack(frames))


def build_model(mid_dim: int, size: tuple[int, int], bn_images: np.ndarray):
    import torch

    torch.manual_seed(0)
    model = UFLDv2(input_size=size, mlp_mid_dim=mid_dim)
    for m in model.modules():  # cumulative average over the pass instead of momentum 0.1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in np.array_split(bn_images, max(1, len(bn_images) // 4)):
            model(torch.from_numpy(batch))
    return model.eval()


def session(path: Path, threads: int, extra: dict[str, str]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in extra.items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved_p50(fp32, int8, x: np.ndarray, rounds: int, warmup: int) -> tuple[float, float]:
    feed = {"input": x}
    for _ in range(warmup):
        fp32.run(None, feed)
        int8.run(None, feed)
    t_fp32, t_int8 = [], []
    for r in range(rounds):
        order = (fp32, int8) if r % 2 == 0 else (int8, fp32)  # alternate which goes first
        for sess in order:
            t0 = time.perf_counter()
            sess.run(None, feed)
            (t_fp32 if sess is fp32 else t_int8).append(time.perf_counter() - t0)
    return statistics.median(t_fp32), statistics.median(t_int8)


def agreement(fp32, int8, x: np.ndarray) -> tuple[float, float]:
    """(min correlation, max |int8 - fp32| / max|fp32|) over the outputs."""
    a = fp32.run(None, {"input": x})
    b = int8.run(None, {"input": x})
    corr = min(float(np.corrcoef(p.ravel(), q.ravel())[0, 1]) for p, q in zip(a, b, strict=True))
    rel = max(float(np.abs(p - q).max() / np.abs(p).max()) for p, q in zip(a, b, strict=True))
    return corr, rel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mid-dim", type=int, default=512, help="UFLDv2 mlp_mid_dim (default 512)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="intra_op_num_threads of both sessions")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--method", default=DEFAULT.method, help="calibration method for every variant")
    parser.add_argument("--variants", default="", help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=None, help="keep the ONNX files here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    chosen = [v.strip() for v in args.variants.split(",") if v.strip()] or list(VARIANTS)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; available: {list(VARIANTS)}")

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, chosen, args.workdir)
    with tempfile.TemporaryDirectory(prefix="quantize-speed-") as tmp:  # ~200 MB of models: removed
        return _run(args, chosen, Path(tmp))


def _run(args: argparse.Namespace, chosen: list[str], work: Path) -> int:
    size = (288, 800)
    t0 = time.perf_counter()
    images = lane_images(0, 16 + args.calibration_images + 1, size)
    bn_images, calib, held_out = images[:16], images[16:-1], images[-1:]
    model = build_model(args.mid_dim, size, bn_images)
    fp32_path = work / f"ufld_r18_mid{args.mid_dim}_fp32.onnx"
    exported = export_onnx(model, (1, 3, *size), fp32_path, output_names=OUTPUT_NAMES, atol=1e-3, rtol=1e-3)
    print(
        f"exported {fp32_path.name} (opset {exported.opset}, max|ort-torch| {exported.max_abs_diff:.2e}) "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    rows = []
    fp32 = session(fp32_path, args.threads, {})
    for name in chosen:
        config, extra = VARIANTS[name]
        config = replace(config, method=args.method, calibration_images=args.calibration_images)
        t1 = time.perf_counter()
        q = quantize_static_qdq(
            fp32_path, work / f"int8_{len(rows)}.onnx", [c[None] for c in calib], input_name="input", config=config
        )
        t_quant = time.perf_counter() - t1
        int8 = session(q.path, args.threads, extra)
        corr, rel = agreement(fp32, int8, held_out)
        p50_fp32, p50_int8 = interleaved_p50(fp32, int8, held_out, args.rounds, args.warmup)
        row = {
            "variant": name,
            "fp32_p50_ms": p50_fp32 * 1e3,
            "int8_p50_ms": p50_int8 * 1e3,
            "ratio": p50_fp32 / p50_int8,
            "min_corr": corr,
            "max_rel_err": rel,
            "tensorrt_compatible": config.tensorrt_compatible,
            "qdq_pairs": q.qdq_pairs,
            "quantize_s": t_quant,
            "session_config": extra,
            "config": asdict(config),
        }
        rows.append(row)
        print(
            f"{name:24s} fp32 {row['fp32_p50_ms']:7.1f} ms  int8 {row['int8_p50_ms']:6.1f} ms  "
            f"ratio {row['ratio']:4.2f}x  corr {corr:.4f}  rel {rel:.3f}  TRT {config.tensorrt_compatible}",
            flush=True,
        )
        del int8

    print("\nvariant                  ratio (FP32 p50 / INT8 p50)")
    for row in rows:
        print(f"{row['variant']:24s} {row['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

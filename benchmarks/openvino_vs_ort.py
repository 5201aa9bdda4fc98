"""OpenVINO vs ONNX Runtime on the CPU, FP32 and INT8 QDQ, interleaved in one run.

    PYTHONPATH=src python benchmarks/openvino_vs_ort.py [--cache .cache/edgematrix] [--rounds 40]
        [--fp32 fp32.onnx --int8 int8-....onnx] [--data DATASET_DIR] [--threads 2] [--alone]

Takes a cell's cached artifacts (the newest ``artifacts/*/fp32.onnx`` under ``--cache`` and the
``int8-*.onnx`` next to it, or ``--fp32`` / ``--int8``) and measures six runners in the same
rounds, alternating their order every round (edgematrix.measure.harness): ONNX Runtime CPU
(``session.intra_op.allow_spinning = 0``), OpenVINO with ``exact_fp32`` (f32 float layers) and
OpenVINO's default precision (bf16 on CPUs with native bf16), each on FP32 and on INT8. All use
``--threads`` threads. Prints p50 per runner and same-run ratios, then the agreement of OpenVINO's
outputs with ONNX Runtime's on ``--images`` test images of the cached dataset. ``--alone`` also
measures each runner by itself, to show whether interleaving slows one of them. Claims are the
same-run ratios, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgematrix.backends.base import Runner
from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.backends.openvino.runner import OpenvinoRunner
from edgematrix.measure.harness import LatencyConfig, measure_interleaved, measure_one

#: runner key → (backend, model, OpenVINO exact_fp32)
RUNNERS: dict[str, tuple[str, str, bool]] = {
    "ort_fp32": ("onnxruntime", "fp32", False),
    "ov_fp32_exact": ("openvino", "fp32", True),
    "ov_fp32_default": ("openvino", "fp32", False),
    "ort_int8": ("onnxruntime", "int8", False),
    "ov_int8_exact": ("openvino", "int8", True),
    "ov_int8_default": ("openvino", "int8", False),
}


def find_artifacts(cache: Path) -> tuple[Path, Path]:
    """The newest ``artifacts/*/fp32.onnx`` under ``cache`` that has an ``int8-*.onnx`` beside it."""
    candidates = sorted(
        (p for p in (cache / "artifacts").glob("*/fp32.onnx") if any(p.parent.glob("int8-*.onnx"))),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if not candidates:
        raise SystemExit(
            f"no artifacts/*/fp32.onnx with an int8-*.onnx beside it under {cache}; run a cell first "
            "(nox -s x86_cpu_int8) or pass --fp32 and --int8"
        )
    fp32 = candidates[0]
    int8 = max(fp32.parent.glob("int8-*.onnx"), key=lambda p: p.stat().st_mtime)
    return fp32, int8


def models_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Path, Path]:
    """(FP32, INT8) from ``--fp32`` / ``--int8``, or the newest cached pair under ``--cache``."""
    if args.fp32 is None:
        fp32, int8 = find_artifacts(args.cache)
        return fp32, args.int8 or int8
    if args.int8 is None:
        parser.error("--fp32 given without --int8")
    return args.fp32, args.int8


def lane_test_images(data: Path | None, cache: Path, count: int, size: tuple[int, int]) -> np.ndarray:
    """``count`` preprocessed test images (float32 [N, 3, H, W]) from ``data`` or the cached dataset."""
    from edgematrix.data.lanes import load_split, preprocess

    if data is None:
        # a TuSimple-layout dataset (the cache also holds other tasks' datasets: COCO, scenes, driving logs)
        found = sorted(p for p in (cache / "data").glob("*tusimple*") if p.is_dir())
        if not found:
            raise SystemExit(f"no TuSimple dataset under {cache / 'data'}; pass --data DATASET_DIR")
        data = found[0]
    return preprocess(load_split(data, "test", size, limit=count).images)


def make_runners(paths: dict[str, Path], threads: int) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    for key, (backend, model, exact) in RUNNERS.items():
        if backend == "onnxruntime":
            runners[key] = OnnxrtRunner(paths[model], name=key, intra_op_threads=threads, allow_spinning=False)
        else:
            runners[key] = OpenvinoRunner(paths[model], name=key, intra_op_threads=threads, exact_fp32=exact)
    return runners


def agreement(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, float]:
    """(min correlation, max |got - ref| / max|ref|) over the outputs."""
    corr = min(float(np.corrcoef(got[k].ravel(), ref[k].ravel())[0, 1]) for k in ref)
    rel = max(float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in ref)
    return corr, rel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/edgematrix"), help="edgematrix cache folder")
    parser.add_argument("--fp32", type=Path, default=None, help="FP32 ONNX model (default: from --cache)")
    parser.add_argument("--int8", type=Path, default=None, help="INT8 QDQ ONNX model (default: beside the FP32 one)")
    parser.add_argument("--data", type=Path, default=None, help="TuSimple-layout dataset (default: from --cache)")
    parser.add_argument("--images", type=int, default=4, help="test images for the output agreement")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="threads of every runner")
    parser.add_argument("--alone", action="store_true", help="also time each runner by itself")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    fp32, int8 = models_from_args(args, parser)
    paths = {"fp32": fp32, "int8": int8}
    print(f"FP32 {fp32}\nINT8 {int8}", flush=True)

    runners = make_runners(paths, args.threads)
    for runner in runners.values():
        runner.activate()
    try:
        shape = runners["ort_fp32"].input_metadata()["input"].shape
        size = (int(shape[2]), int(shape[3]))  # type: ignore[arg-type]
        images = lane_test_images(args.data, args.cache, args.images, size)
        facts = {key: r.facts() for key, r in runners.items()}
        for key in RUNNERS:
            f = facts[key]
            print(
                f"{key:16s} {f['backend']} {f['version']}, {f.get('intra_op_threads')} threads, "
                f"graph {f['precision']}, inference {f.get('inference_precision', '-')}, "
                f"compute layers {f.get('runtime_precisions', '-')}",
                flush=True,
            )

        # agreement on real images: OpenVINO vs ONNX Runtime on the same file
        rows_agree = []
        pairs = [(k, "ort_" + RUNNERS[k][1]) for k in RUNNERS if k.startswith("ov_")]
        for key, ref_key in pairs:
            corrs, rels = [], []
            for x in images:
                feed = {"input": x[None]}
                corr, rel = agreement(runners[key].infer(feed), runners[ref_key].infer(feed))
                corrs.append(corr)
                rels.append(rel)
            rows_agree.append({"runner": key, "reference": ref_key, "min_corr": min(corrs), "max_rel_err": max(rels)})

        feed = {"input": images[:1]}
        config = LatencyConfig(warmup=args.warmup, min_rounds=args.rounds, max_rounds=args.rounds, min_time_s=0.0)
        samples = measure_interleaved(runners, feed, config)
        alone = {key: measure_one(r, feed, config) for key, r in runners.items()} if args.alone else {}
    finally:
        for runner in runners.values():
            runner.deactivate()

    p50 = {key: s.p50_ms for key, s in samples.items()}
    print(f"\np50, {args.rounds} interleaved rounds, {args.threads} threads (batch 1)")
    for key in RUNNERS:
        extra = f"   alone {alone[key].p50_ms:7.2f} ms" if alone else ""
        print(f"  {key:16s} {p50[key]:7.2f} ms   p90 {samples[key].p90_ms:7.2f} ms{extra}")

    ratios = {
        "ort_fp32 / ov_fp32_exact": p50["ort_fp32"] / p50["ov_fp32_exact"],
        "ort_fp32 / ov_fp32_default": p50["ort_fp32"] / p50["ov_fp32_default"],
        "ov_fp32_exact / ov_fp32_default": p50["ov_fp32_exact"] / p50["ov_fp32_default"],
        "ort_int8 / ov_int8_exact": p50["ort_int8"] / p50["ov_int8_exact"],
        "ort_int8 / ov_int8_default": p50["ort_int8"] / p50["ov_int8_default"],
        "ort_fp32 / ort_int8": p50["ort_fp32"] / p50["ort_int8"],
        "ov_fp32_exact / ov_int8_exact": p50["ov_fp32_exact"] / p50["ov_int8_exact"],
        "ort_fp32 / ov_int8_default": p50["ort_fp32"] / p50["ov_int8_default"],
    }
    print("\nsame-run ratios (p50 / p50; > 1 means the right one is faster)")
    for name, value in ratios.items():
        print(f"  {name:34s} {value:5.2f}x")

    print(f"\noutput agreement with ONNX Runtime on {len(images)} test images (same model file)")
    for row in rows_agree:
        print(
            f"  {row['runner']:16s} vs {row['reference']:9s} min corr {row['min_corr']:.6f}  "
            f"max |diff|/max|ref| {row['max_rel_err']:.2e}"
        )

    if args.json:
        result = {
            "models": {k: str(v) for k, v in paths.items()},
            "rounds": args.rounds,
            "threads": args.threads,
            "p50_ms": p50,
            "alone_p50_ms": {k: s.p50_ms for k, s in alone.items()},
            "ratios": ratios,
            "agreement": rows_agree,
            "facts": facts,
        }
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""x86 GPU target on a real GPU: UFLD-v2 (ResNet-18, 288×800) with PyTorch on CUDA, CUDA-event timing.

    PYTHONPATH=src python benchmarks/gpu_cells.py [--out DIR] [--device cuda] [--quick]
        [--compile-modes default,max-autotune] [--compile-deadline-s 300]

One invocation, in this order (the files are rewritten after every stage, so an interrupted run
still leaves what it measured):

1. **batch sweep** 1, 2, 4, 8, 16, 32 for FP32 eager, FP16 eager (autocast) and FP16 + CUDA graph
   + channels_last, the three measured interleaved at each batch: per-sample latency, FPS, and
   acceleration vs FP32 eager at the same batch (``batch_sweep.png``);
2. **harness overhead**: p50 of :func:`edgematrix.measure.gpu.measure_cuda_interleaved` vs the bare
   CUDA-event loop for the same callable (FP16 eager, batch 1), three alternations (target: the
   ratio within 3% of 1);
3. **batch-1 configurations**, all measured interleaved in the same rounds: FP32, TF32, FP16 and
   BF16 autocast, each with and without channels_last, FP16 + CUDA graph with and without
   channels_last, and ``torch.compile`` default / max-autotune (FP16, channels_last), compile time
   recorded; a configuration that fails is skipped with its error recorded (``configs.png``);
4. **INT8**: looks for a GPU INT8 runtime (TensorRT, onnxruntime-gpu's CUDA / TensorRT execution
   providers). This script never builds an INT8 engine and never reports a CPU number for INT8.

Targets printed as same-run ratios: FP16 + CUDA graph at batch 8 vs FP32 eager at batch 8 (≥ 2×),
the best batch-1 configuration vs torch.compile max-autotune (within 10%), harness overhead (within
3%). The model has random weights (latency does not depend on them); outputs say so.

Writes to ``--out`` (default ``$OUT``, else ``./gpu-results``): ``benchmark-gpu.json``
(pytest-benchmark JSON, per-round GPU times in seconds, ``machine_info`` with the GPU facts),
``summary.json``, ``batch_sweep.png``, ``configs.png``.

What is timed: ``runner.infer_device(x)`` on a fixed NCHW float32 tensor already on the GPU (no
host transfer, no sync), GPU time from CUDA events around each call with one synchronize per round;
the host time of the same calls is recorded beside it (``host_p50_ms``). See
:mod:`edgematrix.measure.gpu` for exactly what each number includes.

Time budget: under 8 minutes on one H200. The stages before torch.compile take about two minutes
(estimate: cuDNN autotuning and graph capture per runner, a few seconds of rounds per stage);
``torch.compile`` max-autotune dominates (Triton autotuning). A compile is not started after
``--compile-deadline-s`` (default 300 s) of the run; it is then recorded as skipped, with the reason.

``--quick --device cpu`` is a smoke run of the whole script on a tiny model (64×160) with the host
clock instead of CUDA events: CUDA graphs, torch.compile and TF32 are then refused by the runner and
recorded as skipped. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.fileio import atomic_write_text
from edgematrix.measure.gpu import (
    CudaEventTimer,
    EventTimer,
    HostEventTimer,
    bare_cuda_event_loop,
    gpu_facts,
    measure_cuda_interleaved,
)
from edgematrix.measure.harness import LatencyConfig, LatencySamples

INT8_NOT_MEASURED = "not measured: no GPU INT8 runtime (TensorRT / onnxruntime-gpu) on this host"
FULL_INPUT = (288, 800)
QUICK_INPUT = (64, 160)
SWEEP_BATCHES = (1, 2, 4, 8, 16, 32)
QUICK_SWEEP_BATCHES = (1, 2, 8)
TARGET_GRAPH_B8 = 2.0  # FP16 + CUDA graph at batch 8 at least this many times FP32 eager's speed
TARGET_VS_MAX_AUTOTUNE = 1.10  # best batch-1 p50 at most 10% above torch.compile max-autotune's
TARGET_OVERHEAD = 0.03  # harness p50 within 3% of the bare loop's
_RUNNER_PREFIX = re.compile(r"runner '[^']*': ")


@dataclass(frozen=True)
class Config:
    key: str
    mode: str
    channels_last: bool = False
    cuda_graph: bool = False
    compile: str | None = None

    @property
    def label(self) -> str:
        parts = [self.mode]
        if self.channels_last:
            parts.append("channels_last")
        if self.cuda_graph:
            parts.append("CUDA graph")
        if self.compile:
            parts.append(f"compile {self.compile}")
        return " + ".join(parts)


BATCH1_CONFIGS = (
    Config("fp32", "fp32"),
    Config("fp32_cl", "fp32", channels_last=True),
    Config("tf32", "tf32"),
    Config("tf32_cl", "tf32", channels_last=True),
    Config("fp16", "fp16"),
    Config("fp16_cl", "fp16", channels_last=True),
    Config("bf16", "bf16"),
    Config("bf16_cl", "bf16", channels_last=True),
    Config("fp16_graph", "fp16", cuda_graph=True),
    Config("fp16_cl_graph", "fp16", channels_last=True, cuda_graph=True),
)
COMPILE_CONFIGS = {
    "default": Config("fp16_cl_compile_default", "fp16", channels_last=True, compile="default"),
    # mode="max-autotune" (which adds CUDA-graph trees) crashed this process with "CUDA error:
    # unspecified launch failure" on its first call on the H200 (torch 2.11, 2026-11-21), after the
    # CUDA-graph runners of the same process; the no-cudagraphs variant runs the same Triton autotuning.
    "max-autotune": Config(
        "fp16_cl_compile_max_autotune", "fp16", channels_last=True, compile="max-autotune-no-cudagraphs"
    ),
}
SWEEP_CONFIGS = (
    Config("fp32", "fp32"),
    Config("fp16", "fp16"),
    Config("fp16_cl_graph", "fp16", channels_last=True, cuda_graph=True),
)
REFERENCE_KEY = "fp32"
GRAPH_KEY = "fp16_cl_graph"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class Run:
    """State of one invocation: the log, the entries so far, the summary, and writing them."""

    def __init__(self, out: Path, quick: bool, device: str) -> None:
        self.out = out
        self.quick = quick
        self.device = device
        self.t0 = time.perf_counter()
        self.entries: dict[str, BenchmarkEntry] = {}
        self.machine_extra: dict[str, Any] = {}
        self.latency_config = LatencyConfig()
        self.summary: dict[str, Any] = {
            "script": "benchmarks/gpu_cells.py",
            "started": datetime.now(UTC).isoformat(),
            "complete": False,
            "quick": quick,
            "device": device,
            "weights": "random",
            "weights_note": "random initialisation (seed 0): latency does not depend on the weights; "
            "no accuracy is claimed",
            "stages": {},
            "skipped": {},
            "errors": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, message: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        print(f"[{stamp} +{self.elapsed():6.1f}s] {message}", flush=True)

    def skip(self, name: str, reason: str) -> None:
        self.summary["skipped"][name] = reason
        self.log(f"SKIPPED {name}: {reason}")

    @contextlib.contextmanager
    def stage(self, name: str) -> Any:
        self.log(f"== stage {name}")
        t = time.perf_counter()
        try:
            yield
        except Exception as exc:  # recorded, the run goes on to the next stage; the exit code says so
            self.summary["errors"][name] = f"{type(exc).__name__}: {exc}"
            self.log(f"ERROR in stage {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            self.summary["stages"][name] = {"seconds": round(time.perf_counter() - t, 2)}
            self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary["elapsed_s"] = round(self.elapsed(), 2)
        if self.entries:
            write_benchmark_json(
                self.out / "benchmark-gpu.json",
                list(self.entries.values()),
                machine_extra=self.machine_extra,
                latency_config=self.latency_config,
            )
        atomic_write_text(self.out / "summary.json", json.dumps(self.summary, indent=2, allow_nan=False) + "\n")


# -- runners and timing -------------------------------------------------------------------------


class Bench:
    """The model, the inputs, the timer and the runner factory shared by the stages."""

    def __init__(self, run: Run, args: argparse.Namespace) -> None:
        import torch

        from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2

        self.torch = torch
        self.run = run
        self.device = args.device
        self.is_cuda = args.device.startswith("cuda")
        self.size = QUICK_INPUT if args.quick else FULL_INPUT
        torch.manual_seed(0)
        if args.quick:
            self.model = UFLDv2(input_size=self.size, mlp_mid_dim=32, width=8).eval()
            self.model_desc = f"UFLDv2(input_size={self.size}, mlp_mid_dim=32, width=8) [quick]"
        else:
            self.model = UFLDv2(input_size=self.size, mlp_mid_dim=512).eval()
            self.model_desc = "UFLDv2(mlp_mid_dim=512), ResNet-18, 288x800"
        self.model.to(args.device)  # once; every runner deep-copies it on the device
        self.output_names = OUTPUT_NAMES
        self.timer: EventTimer = CudaEventTimer() if self.is_cuda else HostEventTimer()
        self.device_name = (
            torch.cuda.get_device_name(torch.device(args.device)) if self.is_cuda else f"CPU ({_cpu_name()})"
        )
        self.inputs: dict[int, Any] = {}

    def input(self, batch: int) -> Any:
        """A fixed NCHW float32 batch on the device (what a preprocessing step hands over)."""
        if batch not in self.inputs:
            gen = self.torch.Generator().manual_seed(batch)
            x = self.torch.randn((batch, 3, *self.size), generator=gen, dtype=self.torch.float32)
            self.inputs[batch] = x.to(self.device)
        return self.inputs[batch]

    def runner(self, cfg: Config, batch: int, name: str) -> Any | None:
        """An active runner, or None with the reason recorded (never skipped silently)."""
        from edgematrix.backends.torch.runner import TorchRunner

        t = time.perf_counter()
        try:
            runner = TorchRunner(
                self.model,
                input_shape=(batch, 3, *self.size),
                device=self.device,
                mode=cfg.mode,
                channels_last=cfg.channels_last,
                cuda_graph=cfg.cuda_graph,
                compile=cfg.compile,
                name=name,
                output_names=self.output_names,
            )
            runner.activate()
        except Exception as exc:
            self.run.skip(name, f"{type(exc).__name__}: {exc}")
            return None
        took = time.perf_counter() - t
        extra = f", compile {runner.facts().get('compile_s')} s" if cfg.compile else ""
        self.run.log(f"  ready {name} ({cfg.label}) in {took:.1f} s{extra}")
        return runner

    def measure(self, runners: Mapping[str, Any], batch: int, config: LatencyConfig, what: str) -> Any:
        x = self.input(batch)
        fns = {key: _device_call(r, x) for key, r in runners.items()}
        last = [time.perf_counter()]

        def progress(rounds: int, elapsed: float) -> None:
            if time.perf_counter() - last[0] >= 5.0:
                last[0] = time.perf_counter()
                self.run.log(f"  {what}: {rounds} rounds, {elapsed:.1f} s")

        self.run.log(f"  measuring {what}: {', '.join(runners)} interleaved ({self.timer.name} timer)")
        result = measure_cuda_interleaved(fns, config, progress, timer=self.timer)
        self.run.log(f"  {what}: {result.rounds} rounds, {result.synchronizations} synchronizations")
        return result

    def release(self, runners: Iterable[Any]) -> None:
        for runner in runners:
            with contextlib.suppress(Exception):
                runner.deactivate()
        if self.is_cuda:
            self.torch.cuda.empty_cache()


def _device_call(runner: Any, x: Any) -> Callable[[], Any]:
    """What is timed: one ``infer_device`` on a fixed device tensor (no host transfer, no sync)."""

    def call() -> Any:
        return runner.infer_device(x)

    return call


def _cpu_name() -> str:
    from edgematrix.backends.torch.runner import _cpu_name as cpu_name

    return cpu_name()


def _entry(
    bench: Bench,
    *,
    name: str,
    group: str,
    cfg: Config,
    batch: int,
    gpu: LatencySamples,
    host: LatencySamples,
    runner: Any,
    role: str,
    reference_p50_s: float | None,
    extra: Mapping[str, float | int | str] | None = None,
) -> BenchmarkEntry:
    p50 = gpu.percentile(50)
    facts = runner.facts()
    info: dict[str, float | int | str] = {
        "role": role,
        "backend": "torch",
        "backend_version": str(facts.get("version", "")),
        "config": cfg.key,
        "recipe": f"torch_{cfg.key}",
        "mode": cfg.mode,
        "precision": cfg.mode,
        "batch": int(batch),
        "channels_last": int(cfg.channels_last),
        "cuda_graph": int(cfg.cuda_graph),
        "compile": cfg.compile or "none",
        "gpu": bench.device_name,
        "device": str(facts.get("device", bench.device)),
        "timer": bench.timer.name,
        "weights": "random",
        "input_shape": f"{batch}x3x{bench.size[0]}x{bench.size[1]}",
        "p50_ms": gpu.p50_ms,
        "p90_ms": gpu.p90_ms,
        "p99_ms": gpu.p99_ms,
        "host_p50_ms": host.p50_ms,
        "host_p90_ms": host.p90_ms,
        "rounds": gpu.rounds,
    }
    if p50 > 0:
        info["per_sample_ms"] = p50 * 1e3 / batch
        info["fps"] = batch / p50
        if reference_p50_s is not None:
            info["speedup_vs_reference"] = reference_p50_s / p50
    for key in ("compile_s", "activation_s", "cudnn_benchmark", "cuda_runtime_version", "cudnn_version"):
        if key in facts:
            info[key] = facts[key]
    for key, value in (extra or {}).items():
        info[key] = value
    info = {k: v for k, v in info.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return BenchmarkEntry(name=name, group=group, samples_s=list(gpu.samples_s), extra_info=info)


def _row(samples: LatencySamples, host: LatencySamples, batch: int, ref_p50: float | None) -> dict[str, Any]:
    p50 = samples.percentile(50)
    row: dict[str, Any] = {
        "batch": batch,
        "rounds": samples.rounds,
        "p50_ms": samples.p50_ms,
        "p90_ms": samples.p90_ms,
        "p99_ms": samples.p99_ms,
        "host_p50_ms": host.p50_ms,
    }
    if p50 > 0:
        row["per_sample_ms"] = p50 * 1e3 / batch
        row["fps"] = batch / p50
        row["speedup_vs_fp32_eager"] = _finite(ref_p50 / p50) if ref_p50 is not None else None
    return row


# -- stages -------------------------------------------------------------------------------------


def stage_sweep(bench: Bench, batches: tuple[int, ...], config: LatencyConfig) -> dict[int, dict[str, Any]]:
    run = bench.run
    sweep: dict[int, dict[str, Any]] = {}
    run.summary["batch_sweep"] = {"configs": [c.key for c in SWEEP_CONFIGS], "batches": list(batches), "rows": {}}
    for batch in batches:
        runners: dict[str, Any] = {}
        try:
            for cfg in SWEEP_CONFIGS:
                r = bench.runner(cfg, batch, f"sweep_b{batch}_{cfg.key}")
                if r is not None:
                    runners[cfg.key] = r
            if not runners:
                continue
            result = bench.measure(runners, batch, config, f"batch {batch}")
            ref_p50 = result[REFERENCE_KEY].percentile(50) if REFERENCE_KEY in result else None
            rows: dict[str, Any] = {}
            for cfg in SWEEP_CONFIGS:
                if cfg.key not in result:
                    continue
                name = f"sweep_b{batch}_{cfg.key}"
                rows[cfg.key] = _row(result[cfg.key], result.host[cfg.key], batch, ref_p50)
                run.entries[name] = _entry(
                    bench,
                    name=name,
                    group="torch-batch-sweep",
                    cfg=cfg,
                    batch=batch,
                    gpu=result[cfg.key],
                    host=result.host[cfg.key],
                    runner=runners[cfg.key],
                    role="candidate",
                    reference_p50_s=ref_p50,
                    extra={"reference": f"sweep_b{batch}_{REFERENCE_KEY}"},
                )
            sweep[batch] = rows
            run.summary["batch_sweep"]["rows"][str(batch)] = rows
            line = " | ".join(
                f"{k} {v['p50_ms']:.3f} ms ({v.get('per_sample_ms', float('nan')):.3f} ms/sample, "
                f"{v.get('fps', float('nan')):.0f} FPS, x{v.get('speedup_vs_fp32_eager') or float('nan'):.2f})"
                for k, v in rows.items()
            )
            run.log(f"  batch {batch:2d}: {line}")
        finally:
            bench.release(runners.values())
        run.write()
    if sweep:
        plot_sweep(bench, sweep, run.out / "batch_sweep.png")
        run.log(f"  wrote {run.out / 'batch_sweep.png'}")
    return sweep


def stage_overhead(bench: Bench, rounds: int, repeats: int) -> None:
    run = bench.run
    # GPU-bound on purpose: eager FP16 at batch 1 is launch-bound, so its GPU interval measures the
    # host's launch speed (and a GC pause in either loop) rather than the timing harness.
    # (CUDA graphs exist on CUDA only: the --quick CPU smoke run checks the loop with plain FP16.)
    cfg = (
        Config("fp16_cl_graph", "fp16", channels_last=True, cuda_graph=True)
        if bench.is_cuda
        else Config("fp16", "fp16")
    )
    runner = bench.runner(cfg, 1, f"overhead_{cfg.key}")
    if runner is None:
        run.summary["overhead"] = {"status": f"not measured: the {cfg.key} runner did not start"}
        return
    try:
        x = bench.input(1)

        fn = _device_call(runner, x)

        harness: list[float] = []
        bare: list[float] = []
        config = LatencyConfig(warmup=10, min_rounds=rounds, max_rounds=rounds, min_time_s=0.0, max_time_s=120.0)
        for rep in range(repeats):  # alternate, so drift lands on both
            harness += measure_cuda_interleaved({"fp16": fn}, config, timer=bench.timer)["fp16"].samples_s
            bare += bare_cuda_event_loop(fn, rounds, warmup=10, timer=bench.timer)
            run.log(f"  overhead repeat {rep + 1}/{repeats}: {len(harness)} + {len(bare)} samples")
    finally:
        bench.release([runner])
    h50 = float(np.median(harness))
    b50 = float(np.median(bare))
    ratio = h50 / b50 if b50 > 0 else float("nan")
    ok = math.isfinite(ratio) and abs(ratio - 1.0) <= TARGET_OVERHEAD
    run.summary["overhead"] = {
        "callable": "TorchRunner(fp16 eager, batch 1).infer_device(x)",
        "timer": bench.timer.name,
        "rounds_each": rounds * repeats,
        "harness_p50_ms": h50 * 1e3,
        "bare_loop_p50_ms": b50 * 1e3,
        "ratio": _finite(ratio),
        "target": f"|ratio - 1| <= {TARGET_OVERHEAD:.0%}",
        "status": "PASS" if ok else "FAIL",
    }
    run.log(
        f"  harness overhead: p50 harness {h50 * 1e3:.4f} ms vs bare CUDA-event loop {b50 * 1e3:.4f} ms "
        f"-> ratio {ratio:.4f} (target within {TARGET_OVERHEAD:.0%}: {'PASS' if ok else 'FAIL'})"
    )


def _rel_diff(got: tuple[Any, ...], ref: tuple[Any, ...]) -> float:
    worst = 0.0
    for g, r in zip(got, ref, strict=True):
        r32 = r.float()
        scale = float(r32.abs().max())
        worst = max(worst, float((g.float() - r32).abs().max()) / (scale or 1.0))
    return worst


def stage_batch1(bench: Bench, config: LatencyConfig, compile_modes: list[str], compile_deadline_s: float) -> None:
    run = bench.run
    runners: dict[str, Any] = {}
    cfgs: dict[str, Config] = {}
    run.summary["compile"] = {}
    try:
        for cfg in BATCH1_CONFIGS:
            r = bench.runner(cfg, 1, f"b1_{cfg.key}")
            if r is not None:
                runners[cfg.key], cfgs[cfg.key] = r, cfg
        for mode, cfg in COMPILE_CONFIGS.items():
            name = f"b1_{cfg.key}"
            if mode not in compile_modes:
                run.skip(name, f"not run: --compile-modes {','.join(compile_modes) or 'none'} leaves it out")
                run.summary["compile"][mode] = {"status": "not run (--compile-modes)"}
                continue
            if run.elapsed() > compile_deadline_s:
                reason = (
                    f"not started: {run.elapsed():.0f} s elapsed > --compile-deadline-s {compile_deadline_s:.0f} "
                    "(keeps the whole run inside its time budget)"
                )
                run.skip(name, reason)
                run.summary["compile"][mode] = {"status": reason}
                continue
            run.log(f"  compiling {name} (torch.compile mode={mode!r}; autotuning can take minutes) ...")
            r = bench.runner(cfg, 1, name)
            if r is None:
                run.summary["compile"][mode] = {"status": "failed", "error": run.summary["skipped"][name]}
                continue
            runners[cfg.key], cfgs[cfg.key] = r, cfg
            run.summary["compile"][mode] = {"status": "compiled", "compile_s": r.facts().get("compile_s")}
        if not runners:
            raise RuntimeError("no batch-1 configuration could be started (see 'skipped')")

        # outputs vs FP32 eager, once, outside the timing (a sanity check of each configuration)
        x = bench.input(1)
        rel: dict[str, float] = {}
        if REFERENCE_KEY in runners:
            ref = tuple(t.float().clone() for t in runners[REFERENCE_KEY].infer_device(x))
            for key, r in runners.items():
                rel[key] = _rel_diff(r.infer_device(x), ref)
            run.log("  max |out - fp32| / max|fp32|: " + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))

        result = bench.measure(runners, 1, config, "batch-1 configurations")
        ref_p50 = result[REFERENCE_KEY].percentile(50) if REFERENCE_KEY in result else None
        rows: dict[str, Any] = {}
        for key, cfg in cfgs.items():
            name = f"b1_{key}"
            extra: dict[str, float | int | str] = {"label": cfg.label}
            if key in rel and math.isfinite(rel[key]):
                extra["max_rel_diff_vs_fp32"] = rel[key]
            rows[key] = _row(result[key], result.host[key], 1, ref_p50)
            rows[key]["label"] = cfg.label
            if key in rel:
                rows[key]["max_rel_diff_vs_fp32"] = _finite(rel[key])
            run.entries[name] = _entry(
                bench,
                name=name,
                group="torch-batch1",
                cfg=cfg,
                batch=1,
                gpu=result[key],
                host=result.host[key],
                runner=runners[key],
                role="reference" if key == REFERENCE_KEY else "candidate",
                reference_p50_s=ref_p50,
                extra=extra,
            )
        run.summary["batch1"] = rows
        run.log(f"  {'config':30s} {'p50 ms':>9s} {'p90 ms':>9s} {'host p50':>9s} {'vs fp32':>8s}")
        for key, row in sorted(rows.items(), key=lambda kv: kv[1]["p50_ms"]):
            speed = row.get("speedup_vs_fp32_eager")
            run.log(
                f"  {key:30s} {row['p50_ms']:9.4f} {row['p90_ms']:9.4f} {row['host_p50_ms']:9.4f} "
                f"{f'x{speed:.2f}' if speed else '-':>8s}"
            )
        plot_configs(bench, rows, run.out / "configs.png")
        run.log(f"  wrote {run.out / 'configs.png'}")
    finally:
        bench.release(runners.values())


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or stubbed-out package
        return False


def stage_int8(run: Run) -> None:
    """Looks for GPU INT8 runtimes. Measures nothing: an INT8 engine build is the x86_gpu cell's job."""
    found: list[str] = []
    info: dict[str, Any] = {}
    if _importable("onnxruntime"):
        try:
            ort = importlib.import_module("onnxruntime")
            providers = list(ort.get_available_providers())
            info["onnxruntime"] = str(ort.__version__)
            info["onnxruntime_providers"] = providers
            found += [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
        except Exception as exc:
            info["onnxruntime"] = f"import failed: {type(exc).__name__}: {exc}"
    else:
        info["onnxruntime"] = "absent"
    if _importable("tensorrt"):
        try:
            trt = importlib.import_module("tensorrt")
            info["tensorrt"] = str(trt.__version__)
            found.append(f"tensorrt {trt.__version__}")
        except Exception as exc:
            info["tensorrt"] = f"import failed: {type(exc).__name__}: {exc}"
    else:
        info["tensorrt"] = "absent"
    if found:
        status = (
            f"not measured: {', '.join(found)} present, but building and calibrating an INT8 engine is "
            "not part of this script (the x86_gpu cell does it)"
        )
    else:
        status = INT8_NOT_MEASURED
    info["status"] = status
    run.summary["int8"] = info
    run.log(f"  int8: {status}")


def evaluate_targets(run: Run) -> None:
    targets: dict[str, Any] = {}
    rows8 = run.summary.get("batch_sweep", {}).get("rows", {}).get("8", {})
    if REFERENCE_KEY in rows8 and GRAPH_KEY in rows8:
        ratio = rows8[REFERENCE_KEY]["per_sample_ms"] / rows8[GRAPH_KEY]["per_sample_ms"]
        targets["fp16_graph_b8_vs_fp32_b8"] = {
            "what": "FP32 eager per-sample p50 / FP16+CUDA graph+channels_last per-sample p50, batch 8, same run",
            "ratio": _finite(ratio),
            "target": f">= {TARGET_GRAPH_B8}",
            "status": "PASS" if ratio >= TARGET_GRAPH_B8 else "FAIL",
        }
    else:
        missing = [k for k in (REFERENCE_KEY, GRAPH_KEY) if k not in rows8]
        targets["fp16_graph_b8_vs_fp32_b8"] = {
            "status": f"not measured: batch 8 has no {' / '.join(missing)} result (see 'skipped')"
        }

    batch1 = run.summary.get("batch1", {})
    mat_key = COMPILE_CONFIGS["max-autotune"].key
    plain = {k: v for k, v in batch1.items() if not k.startswith("fp16_cl_compile")}
    if mat_key in batch1 and plain:
        best_key = min(plain, key=lambda k: plain[k]["p50_ms"])
        ratio = plain[best_key]["p50_ms"] / batch1[mat_key]["p50_ms"]
        targets["best_batch1_vs_max_autotune"] = {
            "what": "best batch-1 p50 without torch.compile / torch.compile max-autotune p50, same run",
            "best_config": best_key,
            "best_p50_ms": plain[best_key]["p50_ms"],
            "max_autotune_p50_ms": batch1[mat_key]["p50_ms"],
            "ratio": _finite(ratio),
            "target": f"<= {TARGET_VS_MAX_AUTOTUNE}",
            "status": "PASS" if ratio <= TARGET_VS_MAX_AUTOTUNE else "FAIL",
        }
    else:
        why = run.summary["skipped"].get(f"b1_{mat_key}", "no batch-1 result")
        targets["best_batch1_vs_max_autotune"] = {"status": f"not measured: max-autotune: {why}"}
    overhead = run.summary.get("overhead", {})
    targets["harness_overhead"] = {
        "ratio": overhead.get("ratio"),
        "target": f"|ratio - 1| <= {TARGET_OVERHEAD:.0%}",
        "status": overhead.get("status", "not measured"),
    }
    run.summary["targets"] = targets
    run.log("targets (same-run ratios):")
    for name, t in targets.items():
        ratio = t.get("ratio")
        shown = f"{ratio:.3f}x " if isinstance(ratio, float) else ""
        run.log(f"  {name:32s} {shown}{t.get('target', '')}  {t['status']}")


# -- plots --------------------------------------------------------------------------------------


def _figure(width: float, height: float, cols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot state
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def _save_png(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def plot_sweep(bench: Bench, sweep: Mapping[int, Mapping[str, Any]], path: Path) -> None:
    fig, (ax_lat, ax_fps, ax_acc) = _figure(15, 4.6, cols=3)
    batches = sorted(sweep)
    for cfg in SWEEP_CONFIGS:
        pts = [(b, sweep[b][cfg.key]) for b in batches if cfg.key in sweep[b] and "fps" in sweep[b][cfg.key]]
        if not pts:
            continue
        bs = [b for b, _ in pts]
        ax_lat.plot(bs, [r["per_sample_ms"] for _, r in pts], marker="o", label=cfg.label)
        ax_fps.plot(bs, [r["fps"] for _, r in pts], marker="o", label=cfg.label)
        acc = [(b, r.get("speedup_vs_fp32_eager")) for b, r in pts if r.get("speedup_vs_fp32_eager")]
        if acc:
            ax_acc.plot([b for b, _ in acc], [a for _, a in acc], marker="o", label=cfg.label)
    for ax, ylabel in (
        (ax_lat, "p50 latency per sample (ms)"),
        (ax_fps, "throughput (samples/s, from p50)"),
        (ax_acc, "acceleration vs FP32 eager (x, same batch)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.axhline(TARGET_GRAPH_B8, color="grey", linestyle="--", linewidth=0.8)
    fig.suptitle(
        f"{bench.model_desc} on {bench.device_name} (torch {bench.torch.__version__}, "
        f"{bench.timer.name} timer, random weights)",
        fontsize=10,
    )
    _save_png(fig, path)


def plot_configs(bench: Bench, rows: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = sorted(rows, key=lambda k: rows[k]["p50_ms"], reverse=True)
    skipped = {k: v for k, v in bench.run.summary["skipped"].items() if k.startswith("b1_")}
    bars_h, text_h = 0.45 * len(order) + 1.4, 0.2 * len(skipped) + 0.3 if skipped else 0.0
    fig = Figure(figsize=(11, bars_h + text_h), layout="constrained")
    FigureCanvasAgg(fig)
    if skipped:
        ax, ax_text = fig.subplots(2, 1, height_ratios=[bars_h, text_h])
    else:
        ax, ax_text = fig.subplots(1, 1), None
    p50 = [rows[k]["p50_ms"] for k in order]
    p90 = [rows[k]["p90_ms"] for k in order]
    colors = ["tab:grey" if k == REFERENCE_KEY else "tab:blue" for k in order]
    ax.barh(order, p50, color=colors, xerr=[[0] * len(order), [b - a for a, b in zip(p50, p90, strict=True)]])
    for i, k in enumerate(order):
        speed = rows[k].get("speedup_vs_fp32_eager")
        ax.text(p90[i], i, f"  {p50[i]:.3f} ms" + (f"  x{speed:.2f}" if speed else ""), va="center", fontsize=8)
    ax.set_xlabel("p50 latency, batch 1 (ms; whisker to p90); x = speedup vs FP32 eager (grey), same run")
    ax.set_xlim(0, max(p90) * 1.4 if p90 else 1)
    ax.set_title(
        f"{bench.model_desc} on {bench.device_name}, batch 1 ({bench.timer.name} timer, random weights)", fontsize=10
    )
    if ax_text is not None:
        ax_text.axis("off")
        lines = [f"skipped {k}: {_RUNNER_PREFIX.sub('', v).split('. ')[0][:140]}" for k, v in skipped.items()]
        ax_text.text(0.0, 1.0, "\n".join(lines), fontsize=7, va="top", ha="left", transform=ax_text.transAxes)
    _save_png(fig, path)


# -- main ---------------------------------------------------------------------------------------


def run_cells(run: Run, cells: list[str], results: Path) -> dict[str, dict[str, object]]:
    """The matrix's GPU cells, each a full `edgematrix run` (train, export, accuracy, CUDA-event latency, gates).

    Exit 0 = gates passed, 1 = a gate failed, 2 = the cell could not run (e.g. x86_gpu_int8 without a
    GPU INT8 runtime: it says so and reports no number).
    """
    import subprocess

    outcome: dict[str, dict[str, object]] = {}
    for cell in cells:
        run.log(f"  cell {cell}: edgematrix run {cell}")
        proc = subprocess.run(
            [sys.executable, "-m", "edgematrix.cli", "run", cell, "--no-progress", "--results", str(results)],
            capture_output=True,
            text=True,
            check=False,
        )
        last = [line for line in (proc.stderr or "").splitlines() if line.strip()][-1:] or [""]
        outcome[cell] = {"exit_code": proc.returncode, "last_line": last[0][:400]}
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{cell}.log").write_text(proc.stderr + proc.stdout)
        run.log(f"  cell {cell}: exit {proc.returncode}: {last[0][:200]}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else ./gpu-results)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (smoke runs)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model and few rounds: a smoke run, not a measurement"
    )
    parser.add_argument(
        "--compile-modes",
        default="default,max-autotune",
        help="torch.compile modes to measure at batch 1 (comma list of default,max-autotune; 'none' for none)",
    )
    parser.add_argument(
        "--compile-deadline-s",
        type=float,
        default=300.0,
        help="do not start a torch.compile after this many seconds of the run (recorded as skipped)",
    )
    parser.add_argument(
        "--cells",
        default="",
        help="comma list of matrix cells to run afterwards with `edgematrix run` (e.g. x86_gpu_fp32,x86_gpu_fp16,"
        "x86_gpu_int8); their results/<cell>/ go under OUT/cells/ and their exit codes into summary.json",
    )
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or "gpu-results")
    compile_modes = [m for m in args.compile_modes.split(",") if m and m != "none"]
    unknown = [m for m in compile_modes if m not in COMPILE_CONFIGS]
    if unknown:
        parser.error(f"unknown --compile-modes {unknown}; choose from {', '.join(COMPILE_CONFIGS)} or none")

    run = Run(out, args.quick, args.device)
    run.log(f"edgematrix gpu_cells: device {args.device}, out {out}, quick={args.quick}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        run.log(
            f"ERROR: --device {args.device} but torch {torch.__version__} (CUDA build "
            f"{torch.version.cuda or 'none'}) sees no CUDA device; nothing measured. Use --device cpu for a smoke run."
        )
        return 2
    if not args.device.startswith(("cuda", "cpu")):
        parser.error(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    if args.device == "cpu":
        # A smoke run: one intra-op thread, so a busy host cannot turn OpenMP's barriers into
        # second-long stalls (seen with 2 threads next to another busy process).
        torch.set_num_threads(1)
        run.log("cpu smoke run: torch.set_num_threads(1); host-clock numbers, not GPU measurements")

    facts_start = gpu_facts(torch.device(args.device).index if args.device.startswith("cuda") else None)
    run.machine_extra.update(facts_start)
    run.machine_extra["torch_version"] = str(torch.__version__)
    run.summary["torch_version"] = str(torch.__version__)
    run.summary["gpu_facts_start"] = facts_start
    run.log("gpu facts: " + ", ".join(f"{k}={v}" for k, v in facts_start.items() if k != "clocks_locked_rule"))

    bench = Bench(run, args)
    run.summary["device_name"] = bench.device_name
    run.summary["model"] = bench.model_desc
    run.summary["timer"] = bench.timer.name
    run.machine_extra["timer"] = bench.timer.name
    run.log(f"model: {bench.model_desc}; weights: RANDOM initialisation (latency only, no accuracy claimed)")
    run.log(f"device: {bench.device_name}; timer: {bench.timer.name}")

    if args.quick:
        sweep_cfg = batch1_cfg = LatencyConfig(warmup=2, min_rounds=5, max_rounds=8, min_time_s=0.0, max_time_s=3.0)
        overhead_rounds, overhead_repeats = 10, 2
        batches: tuple[int, ...] = QUICK_SWEEP_BATCHES
    else:
        sweep_cfg = LatencyConfig(warmup=10, min_rounds=100, max_rounds=2000, min_time_s=2.0, max_time_s=12.0)
        batch1_cfg = LatencyConfig(warmup=20, min_rounds=300, max_rounds=5000, min_time_s=4.0, max_time_s=20.0)
        overhead_rounds, overhead_repeats = 300, 3
        batches = SWEEP_BATCHES
    run.latency_config = batch1_cfg
    run.summary["latency_config"] = {"sweep": vars_of(sweep_cfg), "batch1": vars_of(batch1_cfg)}

    with run.stage("batch_sweep"):
        stage_sweep(bench, batches, sweep_cfg)
    with run.stage("harness_overhead"):
        stage_overhead(bench, overhead_rounds, overhead_repeats)
    with run.stage("batch1_configs"):
        stage_batch1(bench, batch1_cfg, compile_modes, args.compile_deadline_s)
    with run.stage("int8"):
        stage_int8(run)
    with run.stage("targets"):
        evaluate_targets(run)

    cells = [c for c in args.cells.split(",") if c]
    if cells:
        with run.stage("cells"):
            run.summary["cells"] = run_cells(run, cells, out / "cells")

    facts_end = gpu_facts(torch.device(args.device).index if args.device.startswith("cuda") else None)
    run.summary["gpu_facts_end"] = facts_end
    run.machine_extra["gpu_facts_end"] = facts_end
    run.summary["complete"] = True
    run.write()
    run.log(
        f"done in {run.elapsed():.1f} s; wrote {', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))}"
    )
    if run.summary["errors"]:
        run.log(f"stages with errors: {', '.join(run.summary['errors'])}")
        return 1
    return 0


def vars_of(config: LatencyConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in ("warmup", "min_rounds", "max_rounds", "min_time_s", "max_time_s")}


if __name__ == "__main__":
    sys.exit(main())

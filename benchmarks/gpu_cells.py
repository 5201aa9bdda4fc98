"""x86 GPU target on a real GPU: UFLD-v2 (ResNet-18, 288×800) with PyTorch and ONNX Runtime's CUDA execution
provider, CUDA-event timing.

    PYTHONPATH=src python benchmarks/gpu_cells.py [--out DIR] [--device cuda] [--quick]
        [--compile-modes default,max-autotune] [--compile-deadline-s 300]
        [--stages sweep,overhead,batch1,ort,int8] [--cells x86_gpu_fp32,x86_gpu_fp16,x86_gpu_int8]

One invocation, in this order (the files are rewritten after every stage, so an interrupted run
still leaves what it measured):

0. **cells** (``--cells``): each a full ``edgematrix run`` in a subprocess (train, export, FP16 / INT8 build,
   accuracy and CUDA-event latency of every backend in the same rounds, gates, backend selection); their
   figures are summarized in ``summary.json`` (``cells_summary``): accuracy per backend, the selected
   backend and its same-run ratio to the other, FP32 agreement of the two backends;
1. **batch sweep** 1, 2, 4, 8, 16, 32 for torch FP32 eager, FP16 eager (autocast), FP16 + CUDA graph
   + channels_last, and ONNX Runtime's CUDA EP with the FP32 export and its FP16 conversion (the
   x86_gpu target's provider options, I/O binding on torch's stream), all measured interleaved at each
   batch: per-sample latency, FPS, and acceleration vs torch FP32 eager at the same batch
   (``batch_sweep.png``, one plot for both backends);
2. **harness overhead**: p50 of :func:`edgematrix.measure.gpu.measure_cuda_interleaved` vs the bare
   CUDA-event loop for the same callable (FP16 eager, batch 1), three alternations (target: the
   ratio within 3% of 1);
3. **batch-1 configurations**, all measured interleaved in the same rounds: FP32, TF32, FP16 and
   BF16 autocast, each with and without channels_last, FP16 + CUDA graph with and without
   channels_last, and ``torch.compile`` default / max-autotune (FP16, channels_last), compile time
   recorded; a configuration that fails is skipped with its error recorded (``configs.png``);
4. **ort**: ONNX Runtime against torch on the same random weights: FP32 outputs with ``use_tf32=0`` vs
   torch FP32 (TF32 off), target 1e-4 relative (and ``use_tf32=1`` beside it, to show what TF32 does);
   then that ONNX Runtime really computes on the stream the CUDA events are recorded on
   (``user_compute_stream`` as the session reports it, outputs of the asynchronous run equal to
   ``infer``'s, CUDA-event p50 vs a host-synchronized wall-clock loop of the same call);
5. **INT8**: asks whether ONNX Runtime's TensorRT execution provider can create a session (the only GPU
   INT8 runtime of the x86_gpu target). This script never builds an INT8 engine and never reports a
   CPU number for INT8; the x86_gpu_int8 cell says what is missing.

Targets printed as same-run ratios: FP16 + CUDA graph at batch 8 vs FP32 eager at batch 8 (≥ 2×),
the best batch-1 configuration vs torch.compile max-autotune (within 10%), harness overhead (within
3%). The model has random weights (latency does not depend on them); outputs say so.

Writes to ``--out`` (default ``$OUT``, else ``./gpu-results``): ``benchmark-gpu.json``
(pytest-benchmark JSON, per-round GPU times in seconds, ``machine_info`` with the GPU facts),
``summary.json``, ``batch_sweep.png``, ``configs.png`` and, with ``--cells``, ``cells/<cell>/``.
ONNX files (the random model's export, its re-batched and FP16 versions) go to ``--work`` (default: a
temporary folder).

What is timed: ``runner.infer_device(x)`` on a fixed NCHW float32 tensor already on the GPU (no
host transfer, no sync; for ONNX Runtime inputs and outputs bound to GPU memory and the end-of-run
synchronization off), GPU time from CUDA events around each call with one synchronize per round;
the host time of the same calls is recorded beside it (``host_p50_ms``). One CUDA stream is current
for the whole run; the ONNX Runtime sessions compute on it. See
:mod:`edgematrix.measure.gpu` for exactly what each number includes.

Time budget: under 8 minutes on one H200. The stages before torch.compile take about two minutes
(estimate: cuDNN autotuning and graph capture per runner, a few seconds of rounds per stage);
``torch.compile`` max-autotune dominates (Triton autotuning). A compile is not started after
``--compile-deadline-s`` (default 300 s) of the run; it is then recorded as skipped, with the reason.

``--quick --device cpu`` is a smoke run of the whole script on a tiny model (64×160) with the host
clock instead of CUDA events: CUDA graphs, torch.compile and TF32 are then refused by the runner and
recorded as skipped, and ONNX Runtime runs on its CPU provider (I/O binding to host memory). Its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
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

INT8_NOT_MEASURED = "not measured: no GPU INT8 runtime on this host"
STAGES = ("sweep", "overhead", "batch1", "ort", "int8")
TARGET_ORT_FP32_REL = 1e-4  # ONNX Runtime CUDA FP32 (use_tf32=0) vs torch FP32 (TF32 off), relative
TARGET_FP32_ACCURACY_POINTS = 0.1  # the two backends' FP32 accuracy in the x86_gpu_fp32 cell
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
    backend: str = "torch"  # or "onnxruntime": the export (fp32) or its FP16 conversion (fp16)
    use_tf32: bool = False  # onnxruntime: the CUDA EP's use_tf32 (the target's options say 0)

    @property
    def label(self) -> str:
        if self.backend == "onnxruntime":
            return f"ORT {self.mode}" + (" use_tf32=1" if self.use_tf32 else "")
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
ORT_FP32 = Config("ort_fp32", "fp32", backend="onnxruntime")
ORT_FP16 = Config("ort_fp16", "fp16", backend="onnxruntime")
SWEEP_CONFIGS = (
    Config("fp32", "fp32"),
    Config("fp16", "fp16"),
    Config("fp16_cl_graph", "fp16", channels_last=True, cuda_graph=True),
    ORT_FP32,
    ORT_FP16,
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
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_cells-"))
        self.onnx_files: dict[tuple[int, str], Path] = {}
        self.export_facts: dict[str, Any] = {}

    def onnx(self, batch: int, precision: str) -> Path:
        """The random model as ONNX at ``batch``: exported at batch 1 (numeric check against torch), re-batched
        (verified), and for ``fp16`` converted as the fp16 recipe step does (float32 inputs and outputs)."""
        key = (batch, precision)
        if key in self.onnx_files:
            return self.onnx_files[key]
        if precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            src = self.onnx(batch, "fp32")
            out = src.with_name(f"{src.stem}.fp16.onnx")
            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(out))
        elif batch == 1:
            from edgematrix.export.onnx_export import export_onnx

            self.work.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            cpu_model = copy.deepcopy(self.model).cpu().eval()
            res = export_onnx(cpu_model, (1, 3, *self.size), self.work / "ufld_b1.onnx", output_names=self.output_names)
            out = res.path
            self.export_facts = {
                "exporter": res.exporter, "opset": res.opset, "simplified": res.simplified,
                "max_abs_diff_onnx_vs_torch_cpu": res.max_abs_diff, "seconds": round(time.perf_counter() - t, 1),
            }  # fmt: skip
            self.run.log(f"  exported {out.name}: {self.export_facts}")
        else:
            from edgematrix.export.rebatch import rebatch_onnx

            rb = rebatch_onnx(self.onnx(1, "fp32"), batch, out_dir=self.work)
            out = rb.path
            self.run.log(f"  re-batched to {batch}: {out.name} (max rel diff vs batch 1: {rb.max_rel_diff:.1e})")
        self.onnx_files[key] = out
        return out

    def ort_options(self, cfg: Config) -> dict[str, Any]:
        """The runner options the x86_gpu target gives this role (CPU provider, one thread, in a CPU smoke run)."""
        from edgematrix.backends.onnxruntime.runner import OnnxrtRunner

        if not self.is_cuda:
            target: dict[str, Any] = {"providers": ["CPUExecutionProvider"], "threads": 1}
        else:
            from edgematrix.matrix.loader import load_matrix

            target = load_matrix().targets["x86_gpu"].model_dump()
        role = "reference" if cfg.mode == "fp32" else "candidate"
        options = OnnxrtRunner.options_for(target, role=role, precision=cfg.mode)
        if cfg.use_tf32:
            if not self.is_cuda:
                raise RuntimeError("use_tf32 is an option of the CUDA execution provider; this run has the CPU one")
            options["providers"] = tuple(
                (p[0], {**p[1], "use_tf32": True}) if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider" else p
                for p in options["providers"]
            )
        return options

    def input(self, batch: int) -> Any:
        """A fixed NCHW float32 batch on the device (what a preprocessing step hands over)."""
        if batch not in self.inputs:
            gen = self.torch.Generator().manual_seed(batch)
            x = self.torch.randn((batch, 3, *self.size), generator=gen, dtype=self.torch.float32)
            self.inputs[batch] = x.to(self.device)
        return self.inputs[batch]

    def runner(self, cfg: Config, batch: int, name: str) -> Any | None:
        """An active runner, or None with the reason recorded (never skipped silently)."""
        from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
        from edgematrix.backends.torch.runner import TorchRunner

        t = time.perf_counter()
        runner: Any
        try:
            if cfg.backend == "onnxruntime":
                runner = OnnxrtRunner(self.onnx(batch, cfg.mode), name=name, **self.ort_options(cfg))
                runner.activate()
                runner.infer_device(self.input(batch))  # the first run per shape: cuDNN's algorithm search
                self.run.log(f"  ready {name} ({cfg.label}) in {time.perf_counter() - t:.1f} s")
                return runner
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
        "backend": cfg.backend,
        "backend_version": str(facts.get("version", "")),
        "config": cfg.key,
        "recipe": cfg.key if cfg.backend != "torch" else f"torch_{cfg.key}",
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
    for key in (
        "compile_s", "activation_s", "cudnn_benchmark", "cuda_runtime_version", "cudnn_version", "provider",
        "provider_options", "use_tf32", "io_binding", "compute_stream", "end_of_run_sync", "model_bytes",
    ):  # fmt: skip
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
        "callable": f"TorchRunner({cfg.label}, batch 1).infer_device(x)",
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


def _rel_per_output(got: list[tuple[Any, ...]], ref: list[tuple[Any, ...]], names: tuple[str, ...]) -> dict[str, float]:
    """Worst |got - ref| over the inputs / largest |ref|, per output (edgematrix.core.compare's definition)."""
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        worst = max(float((g[i].double() - r[i].double()).abs().max()) for g, r in zip(got, ref, strict=True))
        scale = max(float(r[i].double().abs().max()) for r in ref)
        out[name] = worst / scale if scale > 0 else (0.0 if worst == 0 else math.inf)
    return out


def stage_ort(bench: Bench, inputs: int, config: LatencyConfig) -> None:
    """ONNX Runtime vs torch on the same weights (FP32 to 1e-4), and ONNX Runtime on the events' stream."""
    run = bench.run
    cfgs = [Config("fp32", "fp32"), ORT_FP32, ORT_FP16, Config("fp16_cl_graph", "fp16", True, True)]
    if bench.is_cuda:
        cfgs.insert(2, Config("ort_fp32_tf32", "fp32", backend="onnxruntime", use_tf32=True))
    else:
        run.skip("ort_fp32_tf32", "use_tf32 is an option of the CUDA execution provider (CPU run)")
    runners: dict[str, Any] = {}
    try:
        for cfg in cfgs:
            r = bench.runner(cfg, 1, f"parity_{cfg.key}")
            if r is not None:
                runners[cfg.key] = r
        if "fp32" not in runners or "ort_fp32" not in runners:
            raise RuntimeError("the torch FP32 or the ONNX Runtime FP32 runner did not start (see 'skipped')")
        torch = bench.torch
        xs = []
        for i in range(inputs):
            gen = torch.Generator().manual_seed(1000 + i)
            xs.append(torch.randn((1, 3, *bench.size), generator=gen, dtype=torch.float32).to(bench.device))
        outs: dict[str, list[tuple[Any, ...]]] = {k: [] for k in runners}
        for x in xs:
            for key, r in runners.items():
                outs[key].append(tuple(t.float().clone() for t in r.infer_device(x)))
        bench.timer.synchronize()
        ref = outs["fp32"]
        parity: dict[str, Any] = {"inputs": inputs, "what": "max over inputs of |out - torch fp32| / max |torch fp32|"}
        for key in runners:
            if key == "fp32":
                continue
            per = _rel_per_output(outs[key], ref, tuple(bench.output_names))
            parity[key] = {"max_rel": _finite(max(per.values())), "per_output": {k: _finite(v) for k, v in per.items()}}
        rel = parity["ort_fp32"]["max_rel"]
        ok = rel is not None and rel <= TARGET_ORT_FP32_REL
        parity["ort_fp32_vs_torch_fp32"] = {
            "max_rel": rel,
            "target": f"<= {TARGET_ORT_FP32_REL:g}",
            "status": "PASS" if ok else "FAIL",
            "ort_options": runners["ort_fp32"].facts().get("provider_options", "CPUExecutionProvider"),
            "torch": "fp32 eager, TF32 off (cuBLAS and cuDNN)",
        }
        run.summary["ort_parity"] = parity
        run.log(
            "  outputs vs torch FP32 (max rel): "
            + ", ".join(
                f"{k} {v['max_rel']:.2e}" for k, v in parity.items() if isinstance(v, dict) and "per_output" in v
            )
            + f"; ORT FP32 target <= {TARGET_ORT_FP32_REL:g}: {'PASS' if ok else 'FAIL'}"
        )
        _stream_check(bench, runners["ort_fp32"], xs[0], config)
    finally:
        bench.release(runners.values())


def _stream_check(bench: Bench, runner: Any, x: Any, config: LatencyConfig) -> None:
    """ONNX Runtime computes on the stream the events are recorded on: the session's user_compute_stream is
    torch's current stream; the asynchronous run's outputs (read after one synchronize) equal ``infer``'s;
    the CUDA-event p50 of the call matches a loop that synchronizes the host after every call."""
    run, torch = bench.run, bench.torch
    facts = runner.facts()
    check: dict[str, Any] = {
        "compute_stream": facts.get("compute_stream", "none"),
        "io_binding": facts.get("io_binding"),
    }
    if bench.is_cuda:
        reported = runner.session.get_provider_options().get("CUDAExecutionProvider", {})
        current = int(torch.cuda.current_stream().cuda_stream)
        check["session_user_compute_stream"] = str(reported.get("user_compute_stream", ""))
        check["torch_current_stream"] = str(current)
        check["same_stream"] = int(str(reported.get("user_compute_stream", "")) == str(current))
    got = tuple(t.float().clone() for t in runner.infer_device(x))
    bench.timer.synchronize()
    want = runner.infer({next(iter(runner.input_metadata())): x.cpu().numpy()})
    check["async_vs_infer_max_abs_diff"] = max(
        float((g.cpu() - torch.from_numpy(w)).abs().max()) for g, w in zip(got, want.values(), strict=True)
    )

    def call() -> Any:
        return runner.infer_device(x)

    events = measure_cuda_interleaved({"ort": call}, config, timer=bench.timer)
    bare = bare_cuda_event_loop(call, max(config.min_rounds, 20), warmup=10, timer=bench.timer)
    wall: list[float] = []
    for _ in range(max(config.min_rounds, 20)):
        t0 = time.perf_counter_ns()
        call()
        bench.timer.synchronize()
        wall.append((time.perf_counter_ns() - t0) * 1e-9)
    e50, b50, w50 = events["ort"].percentile(50), float(np.median(bare)), float(np.median(wall))
    check.update(
        harness_event_p50_ms=e50 * 1e3,
        bare_event_loop_p50_ms=b50 * 1e3,
        host_synchronized_wall_p50_ms=w50 * 1e3,
        host_enqueue_p50_ms=events.host["ort"].p50_ms,
        event_over_wall=_finite(e50 / w50) if w50 > 0 else None,
        timer=bench.timer.name,
        note="the wall loop adds the synchronize's own latency; an event interval on another stream than ORT's "
        "would read about the host enqueue time instead",
    )
    run.summary["ort_stream"] = check
    run.log("  ORT stream check: " + ", ".join(f"{k}={v}" for k, v in check.items() if k != "note"))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or stubbed-out package
        return False


def stage_int8(run: Run) -> None:
    """Whether the x86_gpu target's GPU INT8 runtime (ONNX Runtime's TensorRT EP) can create a session here.
    Measures nothing: building and measuring the INT8 model is the x86_gpu_int8 cell's job."""
    from edgematrix.backends.onnxruntime.loader import tensorrt_ep_unavailable

    info: dict[str, Any] = {}
    if _importable("onnxruntime"):
        ort = importlib.import_module("onnxruntime")
        info["onnxruntime"] = str(ort.__version__)
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    else:
        info["onnxruntime"] = "absent"
    info["tensorrt_python"] = "present" if _importable("tensorrt") else "absent"
    why = tensorrt_ep_unavailable()
    info["tensorrt_ep"] = why or "a session was created"
    if why:
        status = f"{INT8_NOT_MEASURED}: {why}"
    else:
        status = "not measured here: the TensorRT EP is present; the x86_gpu_int8 cell measures INT8 (--cells)"
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
    parity = run.summary.get("ort_parity", {}).get("ort_fp32_vs_torch_fp32")
    if parity:
        targets["ort_fp32_vs_torch_fp32"] = {
            "what": "ONNX Runtime CUDA EP FP32 (use_tf32=0) outputs vs torch FP32 (TF32 off), random weights",
            "ratio": parity["max_rel"],
            "target": parity["target"],
            "status": parity["status"],
        }
    fp32_cell = run.summary.get("cells_summary", {}).get("x86_gpu_fp32", {})
    if "fp32_accuracy_difference_points" in fp32_cell:
        diff = fp32_cell["fp32_accuracy_difference_points"]
        targets["fp32_cell_accuracy_both_backends"] = {
            "what": "x86_gpu_fp32: |accuracy on torch - accuracy on onnxruntime| (points, 150 test images)",
            "ratio": diff,
            "target": f"<= {TARGET_FP32_ACCURACY_POINTS}",
            "status": "PASS" if diff is not None and diff <= TARGET_FP32_ACCURACY_POINTS else "FAIL",
        }
    if "fp32_outputs_max_rel_ort_vs_torch" in fp32_cell:
        rel = float(fp32_cell["fp32_outputs_max_rel_ort_vs_torch"])
        targets["fp32_cell_outputs_ort_vs_torch"] = {
            "what": "x86_gpu_fp32: ONNX Runtime FP32 vs torch FP32 outputs, trained model, 150 test images",
            "ratio": rel,
            "target": f"<= {TARGET_ORT_FP32_REL:g}",
            "status": "PASS" if rel <= TARGET_ORT_FP32_REL else "FAIL",
        }
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
        shown = f"{ratio:.4g} " if isinstance(ratio, float) else ""
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
        label = f"torch {cfg.label}" if cfg.backend == "torch" else cfg.label
        style = {"marker": "o", "label": label, "linestyle": "-" if cfg.backend == "torch" else "--"}
        ax_lat.plot(bs, [r["per_sample_ms"] for _, r in pts], **style)
        ax_fps.plot(bs, [r["fps"] for _, r in pts], **style)
        acc = [(b, r.get("speedup_vs_fp32_eager")) for b, r in pts if r.get("speedup_vs_fp32_eager")]
        if acc:
            ax_acc.plot([b for b, _ in acc], [a for _, a in acc], **style)
    for ax, ylabel in (
        (ax_lat, "p50 latency per sample (ms)"),
        (ax_fps, "throughput (samples/s, from p50)"),
        (ax_acc, "acceleration vs torch FP32 eager (x, same batch)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.axhline(TARGET_GRAPH_B8, color="grey", linestyle="--", linewidth=0.8)
    ort = bench.run.summary.get("onnxruntime_version", "absent")
    fig.suptitle(
        f"{bench.model_desc} on {bench.device_name} (torch {bench.torch.__version__}, onnxruntime {ort} "
        f"{'CUDA EP, I/O binding' if bench.is_cuda else 'CPU EP'}; {bench.timer.name} timer, random weights)",
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


def summarize_cells(results: Path, cells: list[str]) -> dict[str, Any]:
    """Each cell's figures from its results folder: per (backend, role) accuracy, p50, host p50, provider options;
    the selected backend and its same-run ratio to the other backend's candidate (per-round, paired); for two
    backends, the difference of their FP32 accuracy and the FP32 outputs' agreement."""
    from edgematrix.core.results import read_results

    out: dict[str, Any] = {}
    for cell in cells:
        folder = results / cell
        if not (folder / "benchmark.json").is_file():
            out[cell] = {"status": "no results (the cell did not run to the end: see its log)"}
            continue
        res = read_results(folder, require_data=True)
        rows: dict[str, Any] = {}
        for b in res.benchmarks:
            info = b.info
            extras = info.extras()
            rows[f"{info.role}@{info.backend}"] = {
                "precision": info.precision,
                "accuracy": info.accuracy,
                "p50_ms": info.p50_ms,
                "p90_ms": info.p90_ms,
                "host_p50_ms": extras.get("host_p50_ms"),
                "max_rel_diff_vs_reference": info.max_rel_diff_vs_reference,
                "provider_options": extras.get("provider_options", ""),
                "mode": extras.get("mode", ""),
                "cuda_graph": extras.get("cuda_graph", ""),
            }
        backends = sorted({b.info.backend for b in res.benchmarks})
        selected = next((b.info.selected_backend for b in res.benchmarks if b.info.selected_backend), "")
        summary: dict[str, Any] = {"backends": backends, "selected_backend": selected, "rows": rows}
        summary["device"] = str(res.machine_info.get("gpu", ""))
        if len(backends) == 2:
            cands = {bk: res.of("candidate", bk) for bk in backends}
            refs = {bk: res.of("reference", bk) for bk in backends}
            if selected and all(cands.values()):
                other = next(bk for bk in backends if bk != selected)
                sel, oth = cands[selected], cands[other]
                assert sel is not None and oth is not None
                pairs = [o / s_ for o, s_ in zip(oth.samples_s, sel.samples_s, strict=True) if s_ > 0]
                summary["selected_vs_other"] = {
                    "other": other,
                    "p50_ratio": _finite((oth.info.p50_ms or 0) / (sel.info.p50_ms or 1)),
                    "paired_median_ratio": _finite(float(np.median(pairs))) if pairs else None,
                    "rounds": len(pairs),
                    "what": f"{other} candidate time / {selected} candidate time, same interleaved rounds",
                }
            if all(refs.values()):
                a = [float(r.info.accuracy) for r in refs.values() if r is not None and r.info.accuracy is not None]
                if len(a) == 2:
                    summary["fp32_accuracy_difference_points"] = _finite(abs(a[0] - a[1]))
                ort_ref = refs.get("onnxruntime")
                if ort_ref is not None and "torch" in backends:  # torch is the primary: ORT's FP32 vs torch's
                    summary["fp32_outputs_max_rel_ort_vs_torch"] = ort_ref.info.max_rel_diff_vs_reference
        junit = folder / "junit.xml"
        if junit.is_file():
            text = junit.read_text()
            summary["gates_failed"] = text.count("<failure")
        out[cell] = summary
    return out


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
        help="comma list of matrix cells to run first with `edgematrix run` (e.g. x86_gpu_fp32,x86_gpu_fp16,"
        "x86_gpu_int8); their results/<cell>/ go under OUT/cells/, their exit codes and figures into summary.json",
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma list of the in-process stages to run (of {', '.join(STAGES)}; 'none' for none)",
    )
    parser.add_argument(
        "--work", default="", help="folder for the ONNX files of the random model (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    stages = [x for x in args.stages.split(",") if x and x != "none"]
    if [x for x in stages if x not in STAGES]:
        parser.error(f"unknown --stages {[x for x in stages if x not in STAGES]}; choose from {', '.join(STAGES)}")
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
    if _importable("onnxruntime"):
        ort = importlib.import_module("onnxruntime")
        run.machine_extra["onnxruntime_version"] = run.summary["onnxruntime_version"] = str(ort.__version__)
        run.machine_extra["onnxruntime_providers"] = ",".join(ort.get_available_providers())
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

    cells = [c for c in args.cells.split(",") if c]
    if cells:  # first: they are subprocesses of their own, and the figures of record
        with run.stage("cells"):
            run.summary["cells"] = run_cells(run, cells, out / "cells")
            run.summary["cells_summary"] = summarize_cells(out / "cells", cells)
            for cell, figs in run.summary["cells_summary"].items():
                run.log(f"  {cell}: {json.dumps({k: v for k, v in figs.items() if k != 'rows'})}")

    # One stream current for every in-process stage: ONNX Runtime's sessions take it as their compute stream.
    stream = torch.cuda.stream(torch.cuda.Stream()) if bench.is_cuda else contextlib.nullcontext()
    with stream:
        if "sweep" in stages:
            with run.stage("batch_sweep"):
                stage_sweep(bench, batches, sweep_cfg)
        if "overhead" in stages:
            with run.stage("harness_overhead"):
                stage_overhead(bench, overhead_rounds, overhead_repeats)
        if "batch1" in stages:
            with run.stage("batch1_configs"):
                stage_batch1(bench, batch1_cfg, compile_modes, args.compile_deadline_s)
        if "ort" in stages:
            with run.stage("ort"):
                stage_ort(bench, 2 if args.quick else 8, sweep_cfg)
    if "int8" in stages:
        with run.stage("int8"):
            stage_int8(run)
    with run.stage("targets"):
        evaluate_targets(run)

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

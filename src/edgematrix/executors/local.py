"""The local executor: every model in this process, on this host's backends (CPU, or CUDA for ``torch`` and the
GPU execution providers of ``onnxruntime``)."""

from __future__ import annotations

import os
import platform
from contextlib import ExitStack
from typing import Any

from edgematrix.executors.base import Evaluation, EvaluationPlan, Executor, ModelRun, RunResult


def create_run_runner(run: ModelRun, target: Any = None) -> Any:
    """The runner of one (backend, role): an ONNX file, a split model's manifest or a torch module."""
    from edgematrix.backends.base import create_runner

    art = run.artifact
    if art.kind == "module":
        return create_runner("torch", module=art.module, name=f"{run.backend}:{run.role}", **run.options)
    if art.kind == "split":  # encoder + heads, each on the backend, batch-1 sequential
        return create_runner("split", path=art.path, inner_backend=run.backend, name=f"{run.backend}:{run.role}",
                             **run.options)  # fmt: skip
    return create_runner(run.backend, path=art.path, name=f"{run.backend}:{run.role}", **run.options)


def runs_on_gpu(run: ModelRun) -> bool:
    """Whether a run computes on an NVIDIA GPU: a torch module on CUDA, or ONNX Runtime with a GPU provider."""
    from edgematrix.backends.onnxruntime.loader import GPU_PROVIDERS

    if run.artifact.kind == "module":
        return str(run.options.get("device", "cuda")).startswith("cuda")
    if run.artifact.kind != "onnx":
        return False
    providers = run.options.get("providers") or ()
    return any((p if isinstance(p, str) else p[0]) in GPU_PROVIDERS for p in providers)


class LocalExecutor(Executor):
    """Runs the plan here. On a GPU every model is timed on the device: one CUDA stream is current for the whole
    evaluation (ONNX Runtime's sessions compute on it, the torch modules run on it), each round calls every
    model's ``infer_device`` on the same device tensor, and CUDA events on that stream bracket each call
    (:func:`~edgematrix.measure.gpu.measure_cuda_interleaved`); the host time of the same calls goes into the
    run's facts (``host_p50_ms``). Without a GPU model the host harness times ``infer`` as on any CPU target."""

    name = "local"

    def backends(self, target: Any) -> list[str]:
        return list(target.all_backends)

    def evaluate(self, plan: EvaluationPlan) -> Evaluation:
        from edgematrix.core.toolchain import current_environment
        from edgematrix.errors import BackendError
        from edgematrix.measure.environment import capture_environment
        from edgematrix.measure.harness import measure_interleaved

        on_gpu = [runs_on_gpu(run) for run in plan.runs]
        gpu = any(on_gpu)
        if gpu and not all(on_gpu):
            host = [f"{r.backend}:{r.role}" for r, g in zip(plan.runs, on_gpu, strict=True) if not g]
            raise BackendError(
                f"{plan.cell}: {', '.join(host)} would run on the host while the others run on the GPU; models "
                "measured in the same rounds must share one clock (CUDA events on the GPU, the host clock "
                "otherwise): give every backend of the target the GPU (providers = ['CUDAExecutionProvider'])"
            )
        host_facts: dict[tuple[str, str], dict[str, Any]] = {}
        with ExitStack() as stack:  # every runner entered is released, whichever one fails
            torch: Any = None
            if gpu:
                from edgematrix.measure.gpu import require_cuda

                torch = require_cuda(f"{plan.cell} (models on the GPU)")
                stack.enter_context(torch.cuda.stream(torch.cuda.Stream()))  # before any runner: sessions bind it
            runners = {run.key: stack.enter_context(create_run_runner(run)) for run in plan.runs}
            outputs = {key: [runner.infer(feed) for feed in plan.feeds] for key, runner in runners.items()}
            samples: Any
            if gpu:
                # GPU: CUDA-event timing of the device-side run; host overhead is kept separately
                from edgematrix.measure.gpu import measure_cuda_interleaved

                feed = {k: torch.from_numpy(v).to("cuda") for k, v in plan.latency_feed.items()}
                x = next(iter(feed.values())) if len(feed) == 1 else feed
                fns = {f"{b}:{r}": (lambda runner=runner: runner.infer_device(x)) for (b, r), runner in runners.items()}
                samples = measure_cuda_interleaved(fns, plan.latency)
                host_facts = {key: samples.host_facts(f"{key[0]}:{key[1]}") for key in runners}
            else:
                samples = measure_interleaved(
                    {f"{b}:{r}": runner for (b, r), runner in runners.items()}, plan.latency_feed, plan.latency
                )
            facts = {key: {**runner.facts(), **host_facts.get(key, {})} for key, runner in runners.items()}
        machine = capture_environment({"edgematrix_runner": "local"})
        device = str(machine.get("cpu_model") or platform.processor())
        if gpu:  # GPU facts (name, driver, CUDA, clocks, temperature, locked clocks) via NVML
            from edgematrix.measure.gpu import gpu_facts

            machine.update(gpu_facts())
            device = str(machine.get("gpu") or device)
            ort_versions = sorted({str(f.get("version", "")) for (b, _), f in facts.items() if b == "onnxruntime"})
            if ort_versions:
                import onnxruntime as ort

                machine["onnxruntime_version"] = ",".join(ort_versions)
                machine["onnxruntime_providers"] = ",".join(ort.get_available_providers())
        results = {key: RunResult(outputs[key], samples[f"{key[0]}:{key[1]}"], facts[key]) for key in runners}
        return Evaluation(
            results, device, current_environment(), os.environ.get("EDGEMATRIX_POWER_MODE", ""), machine,
            where="this host",
        )  # fmt: skip

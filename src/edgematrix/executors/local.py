"""The local executor: every model in this process, on this host's backends (CPU, or CUDA for ``torch``)."""

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


class LocalExecutor(Executor):
    name = "local"

    def backends(self, target: Any) -> list[str]:
        return list(target.all_backends)

    def evaluate(self, plan: EvaluationPlan) -> Evaluation:
        from edgematrix.core.toolchain import current_environment
        from edgematrix.measure.environment import capture_environment
        from edgematrix.measure.harness import measure_interleaved

        gpu = any(r.artifact.kind == "module" for r in plan.runs)
        with ExitStack() as stack:  # every runner entered is released, whichever one fails
            runners = {run.key: stack.enter_context(create_run_runner(run)) for run in plan.runs}
            outputs = {key: [runner.infer(feed) for feed in plan.feeds] for key, runner in runners.items()}
            samples: Any
            if gpu:
                # GPU: CUDA-event timing of the device-side forward; host overhead is kept separately
                import torch

                from edgematrix.measure.gpu import measure_cuda_interleaved

                x = torch.from_numpy(next(iter(plan.latency_feed.values()))).to("cuda")
                fns = {f"{b}:{r}": (lambda run=run: run.infer_device(x)) for (b, r), run in runners.items()}
                samples = measure_cuda_interleaved(fns, plan.latency)
            else:
                samples = measure_interleaved(
                    {f"{b}:{r}": runner for (b, r), runner in runners.items()}, plan.latency_feed, plan.latency
                )
            facts = {key: runner.facts() for key, runner in runners.items()}
        machine = capture_environment({"edgematrix_runner": "local"})
        device = str(machine.get("cpu_model") or platform.processor())
        if gpu:  # GPU facts (name, driver, CUDA, clocks, temperature, locked clocks) via NVML
            from edgematrix.measure.gpu import gpu_facts

            machine.update(gpu_facts())
            device = str(machine.get("gpu") or device)
        results = {key: RunResult(outputs[key], samples[f"{key[0]}:{key[1]}"], facts[key]) for key in runners}
        return Evaluation(
            results, device, current_environment(), os.environ.get("EDGEMATRIX_POWER_MODE", ""), machine,
            where="this host",
        )  # fmt: skip

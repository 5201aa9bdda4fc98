"""The remote executor: a board's ``edgematrix serve`` runs the evaluation bundle and measures the models.

The host builds the artifacts; the board gets every model and the test bundle (npz, never pickle),
runs them through its backend of record, and returns the outputs (scored on the host like any other
executor's) and the latency samples measured there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError
from edgematrix.executors.base import Evaluation, EvaluationPlan, Executor, RunResult


class RemoteExecutor(Executor):
    name = "remote"

    def __init__(self, url: str, target: Any) -> None:
        self.url, self.target = url, target

    def backends(self, target: Any) -> list[str]:
        return [str(target.backend)]

    def evaluate(self, plan: EvaluationPlan) -> Evaluation:
        from edgematrix.measure.harness import LatencySamples
        from edgematrix.server.bundle import EvalBundle
        from edgematrix.server.client import RemoteMeter

        backend = str(self.target.backend)
        outputs_meter = RemoteMeter(self.url, backend="onnxruntime")
        latency_meter = RemoteMeter(self.url, backend=backend)
        device = dict(outputs_meter.device_facts())
        names = list(plan.feeds[0])
        bundle = EvalBundle({n: np.stack([f[n] for f in plan.feeds]) for n in names})
        results = {}
        for run in plan.runs:
            if run.artifact.kind != "onnx":
                raise EdgeMatrixError(f"the remote device runs ONNX files; {run.role} is a {run.artifact.kind} model")
            stacked = outputs_meter.run_bundle(run.artifact.path, bundle)
            n = len(next(iter(stacked.values())))
            outputs = [{k: v[i] for k, v in stacked.items()} for i in range(n)]
            opts = {"precision": run.artifact.precision} if backend == "tensorrt" else {}
            report = latency_meter.measure(run.artifact.path, options=opts)
            samples = LatencySamples(f"{run.backend}:{run.role}", [t / 1e3 for t in report.samples_ms])
            results[run.key] = RunResult(outputs, samples, {**device, **report.facts}, "device", "device")
        name = str(device.get("device") or device.get("model") or self.target.device or self.url)
        return Evaluation(
            results, name, {}, str(device.get("power_mode", "")), {"device_facts": device}, latency_gated=False,
            where=f"the device at {self.url}",
        )  # fmt: skip

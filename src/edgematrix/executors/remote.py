"""The remote executor: a board's ``edgematrix serve`` evaluates and measures the cell's models.

The host builds the artifacts; the board gets every model and the test bundle (npz, never pickle) in
one ``POST /v1/evaluate`` (split into several when the bundle exceeds the server's limits), runs every
sample through every model on its backend of record — the TensorRT engine that is timed is the engine
that is scored — and measures all models interleaved, with the contention record of its own rounds.
The outputs are scored on this host like any executor's; the latency samples are the device's, so the
device latency is gated against the baseline of that device, power mode and environment.
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
        return [str(target.backend)]  # the device's backend of record

    def evaluate(self, plan: EvaluationPlan) -> Evaluation:
        from edgematrix.measure.contention import Contention
        from edgematrix.measure.harness import LatencySamples
        from edgematrix.server.bundle import EvalBundle
        from edgematrix.server.client import RemoteSession

        backend = str(self.target.backend)
        models: dict[str, tuple[Any, str]] = {}
        for run in plan.runs:
            if run.artifact.kind != "onnx":
                raise EdgeMatrixError(
                    f"the remote device runs ONNX files; {run.role} is a {run.artifact.kind} model (run this cell "
                    "with --runner local on the device, or give the recipe a single-file candidate)"
                )
            models[run.role] = (run.artifact.path, run.artifact.precision)
        names = list(plan.feeds[0])
        bundle = EvalBundle({n: np.stack([f[n] for f in plan.feeds]) for n in names})
        target = {"providers": list(self.target.providers), "threads": int(self.target.threads)}
        plan.say(f"{len(models)} model(s) and {bundle.samples} samples to {self.url} ({backend})")
        ev = RemoteSession(self.url).evaluate(models, bundle, backend, latency=plan.latency, target=target)
        contention = Contention.from_dict(ev.contention) if ev.contention else None
        results = {}
        for run in plan.runs:
            stacked = ev.outputs[run.role]
            outputs = [{k: v[i] for k, v in stacked.items()} for i in range(ev.samples)]
            samples = LatencySamples(f"{run.backend}:{run.role}", list(ev.samples_s[run.role]), contention)
            results[run.key] = RunResult(outputs, samples, dict(ev.facts[run.role]), "device", "device")
        device = str(ev.device.get("device_model") or self.target.device or self.url)
        machine = {"device_facts": dict(ev.device), "remote": self.url, "requests": ev.requests}
        return Evaluation(
            results, device, dict(ev.environment), ev.power_mode, machine, latency_gated=True,
            where=f"the device at {self.url}",
        )  # fmt: skip

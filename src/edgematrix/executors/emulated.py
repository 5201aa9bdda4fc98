"""The emulated executor: what the device would compute, in the target's own (offline) image.

The evaluation bundle and the models go into the target's image, built on the debootstrap base
(:func:`edgematrix.executors.docker.target_image`), where :mod:`edgematrix.executors.on_device` runs
them with ONNX Runtime, the stand-in runtime of every emulation:

- **arm64 targets** (Jetson): the arm64 image under qemu-user. qemu's TCG emulates float SIMD in
  software (measured: 115 s per 288×800 ResNet-18 image in FP32, 9 s in INT8), so float models run the
  first :data:`EMULATED_FLOAT_IMAGES` samples only: their outputs are compared with this host's, and
  the accuracy of record is this host's on every sample (said so in ``accuracy_source``). Quantized
  models run every sample on the emulated device.
- **TI (fx8)**: TDA4's fixed point is emulated by the model itself (power-of-two QDQ scales), run in
  the ti image (x86-64, where TI's own PC tools run) on every sample.

Either way the latency is the emulator's, never the device's: it is reported and never gated
(``latency_gated = False``). Every model also runs on this host (the local executor), so each
emulated output set is checked against the host's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError
from edgematrix.executors.base import Evaluation, EvaluationPlan, Executor, RunResult
from edgematrix.executors.local import LocalExecutor

#: float models under qemu-user run on this many samples only (see the module docstring)
EMULATED_FLOAT_IMAGES = 3


class EmulatedExecutor(Executor):
    name = "emulated"

    def __init__(self, target_name: str, target: Any, *, cache_dir: Path, log: Any = print) -> None:
        self.target_name, self.target = target_name, target
        self.cache_dir, self.log = Path(cache_dir), log

    @property
    def under_qemu(self) -> bool:
        """The image is arm64 (run under qemu-user): float models then run a few samples only."""
        return str(self.target.image_arch or self.target.arch) == "aarch64"

    def backends(self, target: Any) -> list[str]:
        return ["onnxruntime"]  # the stand-in runtime of every emulation

    def evaluate(self, plan: EvaluationPlan) -> Evaluation:
        host = LocalExecutor().evaluate(plan)
        device = f"{self.target.device or self.target_name} (emulated)"
        emulated, image = self._in_image(plan)
        kind = "emulated-qemu-aarch64" if self.under_qemu else "emulated-container"
        results = {}
        for key, res in host.results.items():
            outputs, times_ms, facts = emulated[key]
            n = len(outputs)
            full = n == len(plan.feeds)
            results[key] = RunResult(
                outputs=outputs if full else res.outputs,
                samples=_samples(f"{key[0]}:{key[1]}", times_ms),
                facts={**res.facts, **facts},
                latency_kind=kind,
                accuracy_source="device" if full else f"host (the emulated device ran {n} of {len(plan.feeds)})",
                device_outputs=outputs,
                host_outputs=res.outputs,
            )
        where = f"the {self.target_name} image ({image.describe()})"
        return Evaluation(
            results, device, host.environment, "", host.machine, latency_gated=False, where=where
        )  # fmt: skip

    def _in_image(
        self, plan: EvaluationPlan
    ) -> tuple[dict[tuple[str, str], tuple[list[dict[str, np.ndarray]], list[float], dict[str, Any]]], Any]:
        from edgematrix.executors.docker import Mount, run_in_image, target_image
        from edgematrix.server.bundle import EvalBundle
        from edgematrix.server.wire import npz_to_arrays

        image = target_image(self.target_name, self.target, cache_dir=self.cache_dir, log=self.log)
        self.log(f"image {image.tag} ({image.describe()})")
        names = list(plan.feeds[0])
        bundle = EvalBundle({n: np.stack([f[n] for f in plan.feeds]) for n in names})
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="edgematrix-emulated-", dir=self.cache_dir) as tmp:
            bundle_dir, models_dir, out_dir = Path(tmp) / "bundle", Path(tmp) / "models", Path(tmp) / "out"
            bundle.save(bundle_dir)
            models_dir.mkdir()
            out_dir.mkdir()
            out_dir.chmod(0o777)  # the container runs as the host uid; keep it writable either way
            args, stems = [], {}
            for i, run in enumerate(plan.runs):
                if run.artifact.kind != "onnx":
                    raise EdgeMatrixError(
                        f"the emulated device runs ONNX files; {run.role} is a {run.artifact.kind} model"
                    )
                stem = f"m{i}-{run.role}"
                stems[run.key] = stem
                shutil.copy2(run.artifact.path, models_dir / f"{stem}.onnx")
                few = self.under_qemu and run.artifact.precision in ("fp32", "fp16")
                args.append(f"/models/{stem}.onnx" + (f"@{EMULATED_FLOAT_IMAGES}" if few else ""))
            command = ["python3", "-m", "edgematrix.executors.on_device", "--bundle", "/bundle", "--out", "/out", *args]
            mounts = [Mount(bundle_dir, "/bundle"), Mount(models_dir, "/models"), Mount(out_dir, "/out", writable=True)]
            code = run_in_image(image, command, mounts=mounts, labels={"org.edgematrix.cell": plan.cell})
            if code != 0:
                raise EdgeMatrixError(
                    f"the emulated device run exited with {code} (image {image.tag}); its output is above"
                )
            found = {}
            for key, stem in stems.items():
                stacked = npz_to_arrays((out_dir / f"{stem}.npz").read_bytes())
                n = len(next(iter(stacked.values())))
                outputs = [{k: v[i] for k, v in stacked.items()} for i in range(n)]
                doc = json.loads((out_dir / f"{stem}.json").read_text())
                found[key] = (outputs, list(doc["samples_ms"]), {**doc["facts"], "image": image.tag})
        return found, image


def _samples(name: str, times_ms: list[float]) -> Any:
    from edgematrix.measure.harness import LatencySamples

    return LatencySamples(name, [t / 1e3 for t in times_ms])

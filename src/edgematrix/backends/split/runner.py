"""The ``split`` backend: a split model (encoder + heads, from a manifest) as one drop-in runner.

``create_runner("split", path="deployed/manifest.json")`` opens one inner runner per subgraph
(ONNX Runtime by default) and ``infer(feed)`` runs the encoder, then each head on the encoder's
features, and returns the model's outputs under their original names: the same inputs and
outputs as the whole model, so a cell's accuracy evaluation takes it unchanged.

Threads: each subgraph's ``threads`` from the manifest, where 0 means the runner's
``intra_op_threads`` (itself 0 = the physical cores this process may use); ``threads=`` overrides
them (one number for all, or per subgraph name) without rewriting the manifest, which is how the
pipeline benchmark gives each stage one thread. Devices: on ``run_on="placement"`` a ``gpu`` /
``dlaN`` subgraph runs through ONNX Runtime's TensorRT execution provider (needs
onnxruntime-gpu: the error says so on a CPU-only host); ``run_on="cpu"`` runs every subgraph on
the CPU and reports the placements as recorded, not as run.

:meth:`SplitRunner.run_encoder` / :meth:`SplitRunner.run_heads` are the two pipeline stages
(:mod:`edgematrix.measure.pipeline` runs them in two threads).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.backends.split.manifest import SplitManifest, SubgraphEntry, load_manifest
from edgematrix.errors import BackendError

INNER_BACKENDS = ("onnxruntime", "openvino")
RUN_ON = ("placement", "cpu")


@backends.register("split")
class SplitRunner(Runner):
    """Encoder then heads, each an inner runner; outputs by the whole model's output names."""

    backend_name = "split"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        inner_backend: str = "onnxruntime",
        intra_op_threads: int = 0,
        threads: int | Mapping[str, int] | None = None,
        allow_spinning: bool = False,
        run_on: str = "placement",
        verify: bool = True,
    ) -> None:
        super().__init__(name)
        if inner_backend not in INNER_BACKENDS:
            raise BackendError(f"inner_backend {inner_backend!r} is not one of {', '.join(INNER_BACKENDS)}")
        if run_on not in RUN_ON:
            raise BackendError(f"run_on {run_on!r} is not one of {', '.join(RUN_ON)}")
        if intra_op_threads < 0:
            raise BackendError(f"intra_op_threads must be >= 0 (0 = physical cores), got {intra_op_threads}")
        self.path = Path(path)
        self.inner_backend = inner_backend
        self.intra_op_threads = intra_op_threads
        self.threads_override = threads
        self.allow_spinning = allow_spinning
        self.run_on = run_on
        self.verify = verify
        self.manifest: SplitManifest | None = None
        self._runners: dict[str, Runner] = {}
        self._stack: ExitStack | None = None

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """The target's thread count for the runner and as the override of every subgraph's
        (``inner_backend`` is the caller's: the backend whose artifacts the manifest deploys)."""
        threads = int(target.get("threads", 0))
        return {"intra_op_threads": threads, "threads": threads}

    # -- lifecycle ---------------------------------------------------------------------------

    def threads_of(self, entry: SubgraphEntry) -> int:
        """Intra-op threads a subgraph's runner gets (0 = physical cores)."""
        override = self.threads_override
        if isinstance(override, int):
            return override
        if override is not None and entry.name in override:
            return int(override[entry.name])
        return entry.threads or self.intra_op_threads

    def _check_overrides(self, manifest: SplitManifest) -> None:
        override = self.threads_override
        if override is None:
            return
        values = [override] if isinstance(override, int) else list(override.values())
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise BackendError(f"threads must be integers >= 0 (0 = physical cores), got {override!r}")
        if not isinstance(override, int):
            unknown = sorted(set(override) - set(manifest.names()))
            if unknown:
                raise BackendError(f"threads for unknown subgraph(s) {unknown}; subgraphs: {manifest.names()}")

    def _inner_kwargs(self, entry: SubgraphEntry) -> dict[str, Any]:
        threads = self.threads_of(entry)
        on_cpu = self.run_on == "cpu" or entry.device == "cpu"
        if self.inner_backend == "openvino":
            if not on_cpu:
                raise BackendError(
                    f"subgraph {entry.name!r} is placed on {entry.device}; the openvino inner backend runs CPU "
                    "placements only. Use run_on='cpu' or inner_backend='onnxruntime'"
                )
            return {"intra_op_threads": threads}
        kwargs: dict[str, Any] = {
            "intra_op_threads": threads,
            "allow_spinning": self.allow_spinning,
            "precision": entry.precision,
        }
        if not on_cpu:
            from edgematrix.backends.onnxruntime.loader import tensorrt_providers

            dla = int(entry.device[3:]) if entry.device.startswith("dla") else None
            kwargs["providers"] = tensorrt_providers(
                fp16=entry.precision in ("fp16", "int8"), int8=entry.precision == "int8", dla_core=dla
            )
        return kwargs

    def activate_impl(self) -> None:
        from edgematrix.backends.base import create_runner

        manifest = load_manifest(self.path, verify=self.verify)
        self._check_overrides(manifest)
        self._stack = ExitStack()
        for entry in manifest.subgraphs:
            runner = create_runner(
                self.inner_backend,
                path=manifest.folder / entry.file,
                name=f"{self.name}/{entry.name}",
                **self._inner_kwargs(entry),
            )
            self._stack.enter_context(runner)
            self._runners[entry.name] = runner
        self.manifest = manifest

    def release_impl(self) -> None:
        stack, self._stack = self._stack, None
        self._runners = {}
        self.manifest = None
        if stack is not None:
            stack.close()

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        assert self.manifest is not None
        return self._runners[self.manifest.encoder.name].input_metadata()

    # -- inference ---------------------------------------------------------------------------

    def run_encoder(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stage 1: the encoder's feature tensors for one feed of the model's inputs."""
        self._require_active("run_encoder")
        assert self.manifest is not None
        return self._runners[self.manifest.encoder.name].infer(feed)

    def run_heads(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stage 2: every head on the encoder's features; the model's outputs in manifest order."""
        self._require_active("run_heads")
        assert self.manifest is not None
        produced: dict[str, np.ndarray] = {}
        for head in self.manifest.heads:
            missing = [n for n in head.inputs if n not in features]
            if missing:
                raise BackendError(f"runner {self.name!r}: head {head.name!r} needs features {missing}")
            produced.update(self._runners[head.name].infer({n: features[n] for n in head.inputs}))
        return {name: produced[name] for name in self.manifest.outputs}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_heads(self.run_encoder(feed))

    def facts_impl(self) -> Mapping[str, Fact]:
        facts: dict[str, Fact] = {
            "manifest": str(self.path),
            "inner_backend": self.inner_backend,
            "run_on": self.run_on,
        }
        manifest = self.manifest
        if manifest is None:
            return facts
        precisions = [s.precision for s in manifest.subgraphs]
        facts["precision"] = next(p for p in ("int8", "fp16", "fp32") if p in precisions)
        facts["subgraphs"] = ",".join(manifest.names())
        facts["features"] = ",".join(f"{f.name}{list(f.shape)}" for f in manifest.features)
        facts["model_bytes"] = manifest.model_bytes()
        facts["artifact_sha256"] = manifest.artifact_sha256()
        for entry in manifest.subgraphs:
            inner = self._runners[entry.name].facts()
            prefix = f"subgraph.{entry.name}."
            facts[prefix + "file"] = entry.file
            facts[prefix + "precision"] = entry.precision
            facts[prefix + "device"] = entry.device
            facts[prefix + "threads"] = int(inner.get("intra_op_threads", self.threads_of(entry)))
            if "provider" in inner:
                facts[prefix + "provider"] = inner["provider"]
            if entry.trtexec_flags:
                facts[prefix + "trtexec_flags"] = " ".join(entry.trtexec_flags)
            if entry.notes:
                facts[prefix + "notes"] = " | ".join(entry.notes)
        version = self._runners[manifest.encoder.name].facts().get("version")
        if version is not None:
            facts["version"] = version
        return facts

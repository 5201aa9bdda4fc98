"""On-device accuracy validation: an evaluation set as a safe bundle, run on a device, scored on the host.

A bundle is a folder with two files:

- ``inputs.npz`` — one array per model input; ``inputs[name][i]`` is sample ``i``'s value for that
  input, exactly as fed (so a batch-1 image model stores ``(N, 1, 3, H, W)``). Written with
  ``numpy.savez`` and read with ``allow_pickle=False``: no pickle anywhere.
- ``manifest.json`` — ``{"format": "edgematrix-eval-bundle", "version": 1, "samples": N, "ids": [...],
  "inputs": {name: {"dtype": ..., "sample_shape": [...]}}, "npz_sha256": ..., "meta": {...}}``.

Running a bundle (:func:`run_bundle_local` here, :func:`edgematrix.server.client.run_bundle_remote` on a
device) feeds every sample once and returns ``{output name: array}`` with ``outputs[name][i]`` the
output for sample ``i``. The format is task-agnostic: the task metric is a callable on those outputs
(:func:`validate_on_device` compares its value on the device with the host's).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import create_runner
from edgematrix.errors import WireFormatError
from edgematrix.fileio import atomic_write_bytes, atomic_write_text
from edgematrix.server.wire import arrays_to_npz, npz_to_arrays

BUNDLE_FORMAT = "edgematrix-eval-bundle"
BUNDLE_VERSION = 1
INPUTS_FILE = "inputs.npz"
MANIFEST_FILE = "manifest.json"
#: a metric: outputs of every sample → one number (e.g. TuSimple accuracy in percent)
Metric = Callable[[dict[str, np.ndarray]], float]


@dataclass(frozen=True)
class EvalBundle:
    """Named input arrays whose first axis is the sample; ``ids`` name the samples (file names ...)."""

    inputs: dict[str, np.ndarray]
    ids: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise WireFormatError("an evaluation bundle needs at least one input array")
        counts = {name: (np.asarray(a).shape[:1] or (0,))[0] for name, a in self.inputs.items()}
        if len(set(counts.values())) != 1:
            raise WireFormatError(f"bundle inputs disagree on the number of samples (first axis): {counts}")
        for name, arr in self.inputs.items():
            if np.asarray(arr).ndim == 0 or np.asarray(arr).dtype.hasobject:
                raise WireFormatError(f"bundle input {name!r} must be a numeric array with a sample axis")
        n = self.samples
        if not self.ids:
            object.__setattr__(self, "ids", tuple(str(i) for i in range(n)))
        elif len(self.ids) != n:
            raise WireFormatError(f"bundle has {n} samples but {len(self.ids)} ids")
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise WireFormatError(f"bundle meta must be plain JSON values: {exc}") from exc

    @classmethod
    def from_batch(
        cls,
        batch: Mapping[str, np.ndarray],
        ids: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> EvalBundle:
        """From ``(N, ...)`` arrays of a batch-1 model: sample ``i`` is fed as ``batch[name][i:i+1]``."""
        return cls({k: np.asarray(v)[:, None] for k, v in batch.items()}, tuple(ids), dict(meta or {}))

    @property
    def samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def feed(self, index: int) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(arr[index]) for name, arr in self.inputs.items()}

    def manifest(self, npz_sha256: str) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "samples": self.samples,
            "ids": list(self.ids),
            "inputs": {
                n: {"dtype": np.asarray(a).dtype.str, "sample_shape": list(np.asarray(a).shape[1:])}
                for n, a in self.inputs.items()
            },
            "npz": INPUTS_FILE,
            "npz_sha256": npz_sha256,
            "meta": self.meta,
        }

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``inputs.npz`` + ``manifest.json`` into ``folder``; returns the folder."""
        folder = Path(folder)
        data = arrays_to_npz(self.inputs)
        atomic_write_bytes(folder / INPUTS_FILE, data)
        manifest = self.manifest(hashlib.sha256(data).hexdigest())
        atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> EvalBundle:
        """Read and check a bundle folder (format, checksum, dtypes and shapes against the manifest)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
            data = (folder / INPUTS_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise WireFormatError(
                f"{folder} is not an evaluation bundle: {exc.filename} is missing; write one with EvalBundle.save"
            ) from None
        except json.JSONDecodeError as exc:
            raise WireFormatError(f"{folder / MANIFEST_FILE} is not JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise WireFormatError(f"{folder / MANIFEST_FILE} is not a {BUNDLE_FORMAT} manifest")
        if manifest.get("version") != BUNDLE_VERSION:
            raise WireFormatError(f"bundle version {manifest.get('version')!r} is not supported ({BUNDLE_VERSION})")
        if hashlib.sha256(data).hexdigest() != manifest.get("npz_sha256"):
            raise WireFormatError(f"{folder / INPUTS_FILE} does not match the sha256 in its manifest")
        arrays = npz_to_arrays(data, what=str(folder / INPUTS_FILE))
        described = manifest.get("inputs", {})
        if set(described) != set(arrays):
            raise WireFormatError(f"bundle manifest lists inputs {sorted(described)}; the npz has {sorted(arrays)}")
        for name, arr in arrays.items():
            want = described[name]
            if arr.dtype.str != want.get("dtype") or list(arr.shape[1:]) != want.get("sample_shape"):
                raise WireFormatError(
                    f"bundle input {name!r} is {arr.dtype.str}{list(arr.shape)}; manifest says {want}"
                )
        bundle = cls(arrays, tuple(manifest.get("ids", ())), dict(manifest.get("meta", {})))
        if bundle.samples != manifest.get("samples"):
            raise WireFormatError(f"bundle has {bundle.samples} samples; manifest says {manifest.get('samples')}")
        return bundle


def stack_outputs(per_sample: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``[{name: out}, ...]`` → ``{name: stacked}``; every sample must give the same names and shapes."""
    if not per_sample:
        return {}
    names = list(per_sample[0])
    for i, outputs in enumerate(per_sample):
        if list(outputs) != names:
            raise WireFormatError(f"sample {i} gave outputs {list(outputs)}; sample 0 gave {names}")
    try:
        return {name: np.stack([np.asarray(o[name]) for o in per_sample]) for name in names}
    except ValueError as exc:
        raise WireFormatError(f"per-sample outputs differ in shape and cannot be stacked: {exc}") from exc


def run_bundle_local(
    model: str | os.PathLike[str],
    bundle: EvalBundle,
    *,
    backend: str = "onnxruntime",
    runner_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Run every sample of ``bundle`` through ``model`` on this host; ``outputs[name][i]`` is sample ``i``'s."""
    with create_runner(backend, path=Path(model), **dict(runner_options or {})) as runner:
        return stack_outputs([runner.infer(bundle.feed(i)) for i in range(bundle.samples)])


@dataclass(frozen=True)
class OutputDiff:
    """How far the device's outputs are from the host's, for one output."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "max_abs": self.max_abs, "mean_abs": self.mean_abs}


def compare_outputs(host: Mapping[str, np.ndarray], device: Mapping[str, np.ndarray]) -> dict[str, OutputDiff]:
    """Per-output absolute differences; names and shapes must match."""
    if set(host) != set(device):
        raise WireFormatError(f"host outputs {sorted(host)} and device outputs {sorted(device)} differ in names")
    diffs = {}
    for name in host:
        a, b = np.asarray(host[name]), np.asarray(device[name])
        if a.shape != b.shape:
            raise WireFormatError(f"output {name!r}: host shape {a.shape} vs device shape {b.shape}")
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        diffs[name] = OutputDiff(name, a.shape, float(d.max()) if d.size else 0.0, float(d.mean()) if d.size else 0.0)
    return diffs


@dataclass(frozen=True)
class DeviceValidation:
    """The task metric on the host and on the device for the same bundle, and the raw output differences."""

    samples: int
    host_metric: float
    device_metric: float
    outputs: dict[str, OutputDiff]

    @property
    def delta(self) -> float:
        """device − host, in the metric's unit."""
        return self.device_metric - self.host_metric

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "host_metric": self.host_metric,
            "device_metric": self.device_metric,
            "delta": self.delta,
            "outputs": {n: d.as_dict() for n, d in self.outputs.items()},
        }


def validate_outputs(
    bundle: EvalBundle,
    host_outputs: Mapping[str, np.ndarray],
    device_outputs: Mapping[str, np.ndarray],
    metric: Metric,
) -> DeviceValidation:
    """Score both output sets with ``metric`` on the host and compare them."""
    for label, outputs in (("host", host_outputs), ("device", device_outputs)):
        counts = {n: a.shape[0] for n, a in outputs.items()}
        if any(c != bundle.samples for c in counts.values()):
            raise WireFormatError(f"{label} outputs have {counts} samples; the bundle has {bundle.samples}")
    return DeviceValidation(
        samples=bundle.samples,
        host_metric=float(metric(dict(host_outputs))),
        device_metric=float(metric(dict(device_outputs))),
        outputs=compare_outputs(host_outputs, device_outputs),
    )

"""The manifest of a split model: which ONNX file computes which part, in which precision, where.

One JSON file next to the subgraph files (paths inside are relative to its folder)::

    {"format": "edgematrix-split/1",
     "source": "model.onnx", "source_sha256": "...",
     "inputs": ["input"], "outputs": ["seg", "depth"],
     "features": [{"name": "features", "source": "relu_1", "shape": [1, 16, 8, 8], "dtype": "float32"}],
     "max_abs_diff": 3.1e-07,
     "subgraphs": [
       {"name": "encoder", "role": "encoder", "file": "encoder.onnx", "inputs": ["input"],
        "outputs": ["features"], "precision": "fp32", "device": "cpu", "threads": 0, "sha256": "...",
        "notes": [], "trtexec_flags": []},
       {"name": "seg", "role": "head", "file": "seg.onnx", "inputs": ["features"], "outputs": ["seg"], ...}]}

Written by :func:`edgematrix.export.split.split_model` (the FP32 split) and
:func:`edgematrix.optimize.subgraph.deploy_split` (per-subgraph precision); read by the ``split``
backend. Loading checks the structure and, by default, every file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgematrix.errors import ModelError
from edgematrix.fileio import atomic_write_text

MANIFEST_FORMAT = "edgematrix-split/1"
PRECISIONS = ("fp32", "fp16", "int8")
DEVICE_PATTERN = re.compile(r"^(cpu|gpu|dla[0-9])$")
ROLES = ("encoder", "head")
ENCODER = "encoder"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FeatureTensor:
    """One tensor crossing the cut: the encoder's output and a head's input."""

    name: str  # the clean name in the subgraphs (``features``, ``features_1`` ...)
    source: str  # the tensor's name in the whole model
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name


@dataclass(frozen=True)
class SubgraphEntry:
    name: str
    role: str  # "encoder" | "head"
    file: str  # relative to the manifest's folder
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sha256: str
    precision: str = "fp32"
    device: str = "cpu"
    threads: int = 0  # intra-op threads on a CPU; 0 = the runner's setting
    notes: tuple[str, ...] = ()
    trtexec_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitManifest:
    source: str
    source_sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    features: tuple[FeatureTensor, ...]
    subgraphs: tuple[SubgraphEntry, ...]
    max_abs_diff: float | None = None
    folder: Path = field(default=Path("."), compare=False)  # where the manifest lives (not serialized)

    # -- views -------------------------------------------------------------------------------

    @property
    def encoder(self) -> SubgraphEntry:
        return next(s for s in self.subgraphs if s.role == ENCODER)

    @property
    def heads(self) -> tuple[SubgraphEntry, ...]:
        return tuple(s for s in self.subgraphs if s.role == "head")

    def entry(self, name: str) -> SubgraphEntry:
        for s in self.subgraphs:
            if s.name == name:
                return s
        raise ModelError(f"no subgraph {name!r} in the split manifest; subgraphs: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [s.name for s in self.subgraphs]

    def path_of(self, name: str) -> Path:
        return self.folder / self.entry(name).file

    def model_bytes(self) -> int:
        return sum((self.folder / s.file).stat().st_size for s in self.subgraphs)

    def artifact_sha256(self) -> str:
        """One hash of the deployed candidate: every subgraph's name, precision, device and file hash."""
        h = hashlib.sha256()
        for s in self.subgraphs:
            h.update(f"{s.name}\0{s.precision}\0{s.device}\0{s.threads}\0{s.sha256}\n".encode())
        return h.hexdigest()

    def with_subgraphs(self, subgraphs: tuple[SubgraphEntry, ...], folder: Path) -> SplitManifest:
        return replace(self, subgraphs=subgraphs, folder=folder)

    # -- (de)serialization -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "features": [
                {"name": f.name, "source": f.source, "shape": list(f.shape), "dtype": f.dtype} for f in self.features
            ],
            "max_abs_diff": self.max_abs_diff,
            "subgraphs": [
                {
                    "name": s.name,
                    "role": s.role,
                    "file": s.file,
                    "inputs": list(s.inputs),
                    "outputs": list(s.outputs),
                    "precision": s.precision,
                    "device": s.device,
                    "threads": s.threads,
                    "sha256": s.sha256,
                    "notes": list(s.notes),
                    "trtexec_flags": list(s.trtexec_flags),
                }
                for s in self.subgraphs
            ],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        self.validate()
        return atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    def validate(self) -> None:
        """Structure: one encoder, heads fed only by features, every model output produced once."""
        where = f"split manifest in {self.folder}"
        roles = [s.role for s in self.subgraphs]
        bad_roles = sorted({r for r in roles if r not in ROLES})
        if bad_roles:
            raise ModelError(f"{where}: unknown subgraph role(s) {bad_roles}; valid: {', '.join(ROLES)}")
        if roles.count(ENCODER) != 1 or self.subgraphs[0].role != ENCODER:
            raise ModelError(f"{where}: needs exactly one encoder subgraph, listed first; roles are {roles}")
        names = self.names()
        if len(set(names)) != len(names):
            raise ModelError(f"{where}: subgraph names repeat: {names}")
        feature_names = {f.name for f in self.features}
        if set(self.encoder.outputs) != feature_names:
            raise ModelError(
                f"{where}: the encoder outputs {list(self.encoder.outputs)} but the features are "
                f"{sorted(feature_names)}; they must be the same tensors"
            )
        if tuple(self.encoder.inputs) != tuple(self.inputs):
            raise ModelError(f"{where}: encoder inputs {list(self.encoder.inputs)} != model inputs {list(self.inputs)}")
        produced: list[str] = []
        for s in self.subgraphs:
            if s.precision not in PRECISIONS:
                raise ModelError(f"{where}: subgraph {s.name!r} precision {s.precision!r}; valid: {PRECISIONS}")
            if not DEVICE_PATTERN.match(s.device):
                raise ModelError(f"{where}: subgraph {s.name!r} device {s.device!r}; valid: cpu, gpu, dla0..dla9")
            if s.threads < 0:
                raise ModelError(f"{where}: subgraph {s.name!r} threads must be >= 0, got {s.threads}")
            if Path(s.file).is_absolute() or ".." in Path(s.file).parts:
                raise ModelError(f"{where}: subgraph {s.name!r} file {s.file!r} must be a plain relative path")
            if s.role == "head":
                stray = [i for i in s.inputs if i not in feature_names]
                if stray:
                    raise ModelError(
                        f"{where}: head {s.name!r} reads {stray}, which are not encoder features "
                        f"({sorted(feature_names)})"
                    )
                produced.extend(s.outputs)
        if sorted(produced) != sorted(self.outputs):
            raise ModelError(
                f"{where}: the heads produce {produced} but the model outputs are {list(self.outputs)}; "
                "each output must come from exactly one head"
            )

    @classmethod
    def from_json(cls, data: Any, folder: Path) -> SplitManifest:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ModelError(
                f"{folder}: not an edgematrix split manifest (format {found!r}, expected {MANIFEST_FORMAT!r}); "
                "write one with edgematrix.export.split.split_model"
            )
        try:
            features = tuple(
                FeatureTensor(
                    name=str(f["name"]),
                    source=str(f["source"]),
                    shape=tuple(int(d) for d in f["shape"]),
                    dtype=str(f["dtype"]),
                )
                for f in data["features"]
            )
            subgraphs = tuple(
                SubgraphEntry(
                    name=str(s["name"]),
                    role=str(s["role"]),
                    file=str(s["file"]),
                    inputs=tuple(str(i) for i in s["inputs"]),
                    outputs=tuple(str(o) for o in s["outputs"]),
                    sha256=str(s["sha256"]),
                    precision=str(s.get("precision", "fp32")),
                    device=str(s.get("device", "cpu")),
                    threads=int(s.get("threads", 0)),
                    notes=tuple(str(n) for n in s.get("notes", ())),
                    trtexec_flags=tuple(str(n) for n in s.get("trtexec_flags", ())),
                )
                for s in data["subgraphs"]
            )
            diff = data.get("max_abs_diff")
            manifest = cls(
                source=str(data["source"]),
                source_sha256=str(data["source_sha256"]),
                inputs=tuple(str(i) for i in data["inputs"]),
                outputs=tuple(str(o) for o in data["outputs"]),
                features=features,
                subgraphs=subgraphs,
                max_abs_diff=None if diff is None else float(diff),
                folder=folder,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"split manifest in {folder} is malformed ({type(exc).__name__}: {exc}); re-create it with "
                "split_model / deploy_split"
            ) from exc
        if not manifest.subgraphs:
            raise ModelError(f"split manifest in {folder} lists no subgraphs")
        manifest.validate()
        return manifest


def load_manifest(path: str | os.PathLike[str], *, verify: bool = True) -> SplitManifest:
    """Read and validate a split manifest; ``verify`` also checks each subgraph file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"split manifest {str(path)!r} does not exist; create it with edgematrix.export.split.split_model "
            "(and deploy_split for per-subgraph precision)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"split manifest {str(path)!r} is not readable JSON ({type(exc).__name__}: {exc})") from exc
    manifest = SplitManifest.from_json(data, path.parent)
    for s in manifest.subgraphs:
        file = path.parent / s.file
        if not file.is_file():
            raise ModelError(f"split manifest {str(path)!r}: subgraph {s.name!r} file {str(file)!r} does not exist")
        if verify:
            digest = file_sha256(file)
            if digest != s.sha256:
                raise ModelError(
                    f"split manifest {str(path)!r}: {str(file)!r} has sha256 {digest[:16]}…, the manifest records "
                    f"{s.sha256[:16]}…; the file changed after the manifest was written. Re-run the split / deploy."
                )
    return manifest

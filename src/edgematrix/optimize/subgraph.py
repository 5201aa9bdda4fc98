"""Per-subgraph precision and placement of a split model (encoder + heads), as NVIDIA's mtmi seed does.

Given the FP32 split (:func:`edgematrix.export.split.split_model`) and a placement per subgraph
(precision ``fp32`` | ``fp16`` | ``int8``, device ``cpu`` | ``gpu`` | ``dlaN``, intra-op threads),
:func:`deploy_split` writes each subgraph's deployed file and a new manifest:

- ``fp32``: the split file as is.
- ``fp16``: ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``) with
  ``keep_io_types`` (float32 in and out, so subgraphs of different precisions still join). On a
  ``cpu`` placement this is not a speed-up (ONNX Runtime's CPU provider is built for float32 and
  int8); it reproduces an FP16 GPU/DLA build's numerics, and the manifest notes say so.
- ``int8``: :func:`edgematrix.optimize.quantize.quantize_static_qdq`. The encoder is calibrated on
  the preprocessed calibration images. A head is calibrated on the *encoder's FP32 output
  features* of those images, computed once with ONNX Runtime and cached as ``.npy`` in a folder
  keyed by content (encoder sha256 + the images' bytes): a second deploy with the same encoder
  and images reads the cache (:class:`FeatureCache` ``computed=False``). A head reading several
  feature maps is calibrated through a single packed input, then unpacked again (each feature map
  keeps its own scale). ``cpu`` placements get the given :class:`QuantizeConfig` (U8S8, ORT's
  fast form by default); ``gpu`` / ``dlaN`` placements get TensorRT's explicit-quantization form
  (int8, zero points 0), which TensorRT and the DLA require.

``device`` is recorded in the manifest with the trtexec build flags it maps to
(:func:`trtexec_flags`); the CPU runner here runs every subgraph on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgematrix.backends.split.manifest import (
    DEVICE_PATTERN,
    ENCODER,
    PRECISIONS,
    SplitManifest,
    SubgraphEntry,
    file_sha256,
    load_manifest,
)
from edgematrix.core.cache import reuse_tree, seal_tree
from edgematrix.errors import EdgeMatrixError, ModelError
from edgematrix.optimize.quantize import QuantizeConfig, QuantizeResult, quantize_static_qdq

if TYPE_CHECKING:
    import onnx

    from edgematrix.backends.tensorrt.loader import TrtexecBuildOptions
    from edgematrix.export.split import SplitResult

FP16_CPU_NOTE = (
    "fp16 on a cpu placement: ONNX Runtime's CPU provider is not faster in float16 than in float32; the fp16 file "
    "reproduces the numerics of an FP16 GPU/DLA build, it is not a CPU speed-up"
)
TRT_INT8_NOTE = "int8 for TensorRT: symmetric int8 activations and weights (zero points 0, explicit quantization)"
_PACKED_INPUT = "edgematrix_packed_features"
_ORT_CPU_INT8 = QuantizeConfig()  # frozen: a safe shared default


@dataclass(frozen=True)
class Placement:
    """Precision, device and CPU threads of one subgraph (the matrix's ``SubgraphPlacement``)."""

    precision: str = "fp32"
    device: str = "cpu"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgeMatrixError(f"placement precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise EdgeMatrixError(f"placement device {self.device!r}: use cpu, gpu or dla0..dla9")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise EdgeMatrixError(f"placement threads must be an integer >= 0 (0 = inherit), got {self.threads!r}")
        if self.device.startswith("dla") and self.precision == "fp32":
            raise EdgeMatrixError(f"{self.device}: the DLA runs FP16 or INT8 only; place fp32 on cpu or gpu")

    @property
    def dla_core(self) -> int | None:
        return int(self.device[3:]) if self.device.startswith("dla") else None

    @classmethod
    def of(cls, value: Any) -> Placement:
        """From a Placement, a mapping, or any object with ``precision`` / ``device`` / ``threads``."""
        if isinstance(value, Placement):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"precision", "device", "threads"})
            if unknown:
                raise EdgeMatrixError(f"placement keys {unknown} unknown; valid: precision, device, threads")
            return cls(**dict(value))
        try:
            return cls(precision=value.precision, device=value.device, threads=value.threads)
        except AttributeError:
            raise EdgeMatrixError(
                f"a placement must be a Placement, a mapping or an object with precision/device/threads; got "
                f"{type(value).__name__}"
            ) from None


def trtexec_flags(placement: Any, *, fp16_fallback: bool = True, allow_gpu_fallback: bool = True) -> list[str]:
    """The trtexec build flags of a ``gpu`` / ``dlaN`` placement.

    ``fp16`` → ``--fp16``; ``int8`` → ``--int8`` (+ ``--fp16`` with ``fp16_fallback``, so layers
    left in float run in FP16, as :class:`~edgematrix.backends.tensorrt.loader.TrtexecBuildOptions`
    does); ``dlaN`` adds ``--useDLACore=N`` (+ ``--allowGPUFallback``: layers the DLA cannot run go
    to the GPU). NVIDIA's documented DLA build is ``trtexec --onnx=... --useDLACore=0 --fp16
    --allowGPUFallback`` (TensorRT developer guide, "Working with DLA"); these are TensorRT 8.x /
    10.x flags (TensorRT 11 drops the per-precision flags and the DLA). A ``cpu`` placement has no
    TensorRT build: that raises.
    """
    p = Placement.of(placement)
    if p.device == "cpu":
        raise EdgeMatrixError("a cpu placement is not built with TensorRT; trtexec flags exist for gpu / dlaN")
    flags: list[str] = []
    if p.precision == "int8":
        flags.append("--int8")
        if fp16_fallback:
            flags.append("--fp16")
    elif p.precision == "fp16":
        flags.append("--fp16")
    if p.dla_core is not None:
        flags.append(f"--useDLACore={p.dla_core}")
        if allow_gpu_fallback:
            flags.append("--allowGPUFallback")
    return flags


def trtexec_options(placement: Any, onnx_path: str | os.PathLike[str], **overrides: Any) -> TrtexecBuildOptions:
    """:class:`TrtexecBuildOptions` that build ``onnx_path`` for a ``gpu`` / ``dlaN`` placement."""
    from edgematrix.backends.tensorrt.loader import TrtexecBuildOptions

    p = Placement.of(placement)
    if p.device == "cpu":
        raise EdgeMatrixError("a cpu placement is not built with TensorRT; trtexec options exist for gpu / dlaN")
    return TrtexecBuildOptions(onnx=Path(onnx_path), precision=p.precision, dla_core=p.dla_core, **overrides)  # type: ignore[arg-type]


# -- head calibration features ---------------------------------------------------------------


@dataclass(frozen=True)
class FeatureCache:
    """The encoder's FP32 features of the calibration images: ``arrays[name]`` is ``[N, *shape]``."""

    folder: Path
    key: str
    arrays: dict[str, np.ndarray]
    computed: bool  # False when read back from the cache

    @property
    def images(self) -> int:
        return len(next(iter(self.arrays.values())))

    def feeds(self, names: Iterable[str]) -> list[dict[str, np.ndarray]]:
        names = list(names)
        return [{n: self.arrays[n][i] for n in names} for i in range(self.images)]


def _images_list(images: Iterable[np.ndarray], limit: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for index, item in enumerate(images):
        if len(out) >= limit:
            break
        arr = np.asarray(item)
        if not np.issubdtype(arr.dtype, np.floating):
            raise EdgeMatrixError(f"calibration image {index} has dtype {arr.dtype}; pass preprocessed float arrays")
        out.append(np.ascontiguousarray(arr, dtype=np.float32))
    if not out:
        raise EdgeMatrixError("no calibration images: the iterable yielded none; INT8 needs at least one")
    return out


def _feature_key(encoder_sha: str, images: list[np.ndarray]) -> str:
    h = hashlib.sha256(encoder_sha.encode())
    for arr in images:
        h.update(f"{arr.dtype.name}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:24]


def encoder_features(
    encoder: str | os.PathLike[str],
    images: Iterable[np.ndarray],
    cache_dir: str | os.PathLike[str],
    *,
    limit: int = 64,
) -> FeatureCache:
    """Run the (FP32) encoder on up to ``limit`` images once; cache the outputs as ``.npy`` by content."""
    import onnxruntime as ort

    encoder = Path(encoder)
    if limit < 1:
        raise EdgeMatrixError(f"limit must be >= 1, got {limit}")
    if not encoder.is_file():
        raise ModelError(f"encoder {str(encoder)!r} does not exist; split the model first (split_model)")
    batch = _images_list(images, limit)
    key = _feature_key(file_sha256(encoder), batch)
    folder = Path(cache_dir) / f"features-{key}"
    meta_path = folder / "meta.json"
    if reuse_tree(folder, "calibration features"):
        try:
            meta = json.loads(meta_path.read_text())
            arrays = {name: np.load(folder / f"{i}.npy", allow_pickle=False) for i, name in enumerate(meta["names"])}
            if all(len(a) == len(batch) for a in arrays.values()):
                return FeatureCache(folder=folder, key=key, arrays=arrays, computed=False)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # a damaged cache entry is recomputed below
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(encoder), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load the encoder {encoder} ({type(exc).__name__}: {exc})") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"the encoder {encoder} has {len(inputs)} inputs; calibration images feed one input")
    in_name, want = inputs[0].name, inputs[0].shape
    names = [o.name for o in session.get_outputs()]
    runs: list[list[np.ndarray]] = []
    for index, image in enumerate(batch):
        arr = image[None] if image.ndim == len(want) - 1 else image
        if arr.ndim != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, arr.shape, strict=True)):
            raise EdgeMatrixError(f"calibration image {index} has shape {image.shape}; the encoder takes {want}")
        runs.append(session.run(names, {in_name: arr}))
    arrays = {name: np.stack([r[i] for r in runs]) for i, name in enumerate(names)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for i, name in enumerate(names):
            np.save(staging / f"{i}.npy", arrays[name], allow_pickle=False)
        meta = {"encoder_sha256": file_sha256(encoder), "images": len(batch), "names": names}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        seal_tree(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return FeatureCache(folder=folder, key=key, arrays=arrays, computed=True)


# -- deploy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployedSplit:
    """What :func:`deploy_split` wrote: the manifest the ``split`` backend opens, and per-subgraph facts."""

    manifest: Path
    files: dict[str, Path]
    placements: dict[str, Placement]
    notes: dict[str, tuple[str, ...]]
    quantized: dict[str, QuantizeResult] = field(default_factory=dict)
    features: FeatureCache | None = None


def deploy_split(
    split: SplitResult | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    placements: Mapping[str, Any] | None = None,
    *,
    calibration: Iterable[np.ndarray] | None = None,
    calibration_images: int = 64,
    quantize_config: QuantizeConfig = _ORT_CPU_INT8,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DeployedSplit:
    """Write each subgraph of the FP32 ``split`` in its placement's precision, and ``out_dir/manifest.json``.

    ``split`` is a :class:`~edgematrix.export.split.SplitResult` or its manifest path;
    ``placements`` maps subgraph names (``encoder`` and the head output names, as
    ``SplitSection.placements(heads)`` gives) to placements; missing ones stay fp32 on the cpu.
    ``calibration`` (preprocessed images) is needed when any subgraph is ``int8``; head features are
    cached under ``cache_dir`` (default ``out_dir/feature-cache``).
    """
    manifest_path = Path(getattr(split, "manifest", split))  # type: ignore[arg-type]
    source = load_manifest(manifest_path)
    not_fp32 = [s.name for s in source.subgraphs if s.precision != "fp32"]
    if not_fp32:
        raise EdgeMatrixError(
            f"{manifest_path} is already deployed ({not_fp32} not fp32); deploy from the FP32 split of split_model"
        )
    placements = dict(placements or {})
    unknown = sorted(set(placements) - set(source.names()))
    if unknown:
        raise EdgeMatrixError(f"placements for unknown subgraph(s) {unknown}; subgraphs: {', '.join(source.names())}")
    resolved = {name: Placement.of(placements.get(name, Placement())) for name in source.names()}
    if calibration_images < 1:
        raise EdgeMatrixError(f"calibration_images must be >= 1, got {calibration_images}")
    needs_int8 = [n for n, p in resolved.items() if p.precision == "int8"]
    images: list[np.ndarray] = []
    if needs_int8:
        if calibration is None:
            raise EdgeMatrixError(
                f"subgraph(s) {needs_int8} are int8 but no calibration images were given; pass calibration=[...] "
                "(preprocessed float32 images of the model's input shape)"
            )
        images = _images_list(calibration, calibration_images)
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.folder.resolve():
        raise EdgeMatrixError(f"out_dir {out_dir} is the FP32 split's folder; deploy into another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return _deploy_impl(
        source, out_dir, resolved, images, quantize_config, Path(cache_dir or out_dir / "feature-cache")
    )


def _deploy_impl(
    source: SplitManifest,
    out_dir: Path,
    placements: dict[str, Placement],
    images: list[np.ndarray],
    config: QuantizeConfig,
    cache_dir: Path,
) -> DeployedSplit:
    features: FeatureCache | None = None
    heads_int8 = [s for s in source.heads if placements[s.name].precision == "int8"]
    if heads_int8:
        features = encoder_features(source.path_of(ENCODER), images, cache_dir, limit=len(images))
    entries: list[SubgraphEntry] = []
    files: dict[str, Path] = {}
    notes: dict[str, tuple[str, ...]] = {}
    quantized: dict[str, QuantizeResult] = {}
    for entry in source.subgraphs:
        p = placements[entry.name]
        fp32_path = source.path_of(entry.name)
        out = out_dir / f"{Path(entry.file).stem}.{p.precision}.onnx"
        these: list[str] = []
        if p.precision == "fp32":
            shutil.copyfile(fp32_path, out)
        elif p.precision == "fp16":
            _to_fp16(fp32_path, out)
            if p.device == "cpu":
                these.append(FP16_CPU_NOTE)
        else:
            cfg = replace(config, calibration_images=max(len(images), 1))
            if p.device != "cpu":
                cfg = replace(cfg, activation_type="int8", weight_type="int8", symmetric_activations=True)
                these.append(TRT_INT8_NOTE)
            if entry.role == ENCODER:
                if len(entry.inputs) != 1:
                    raise EdgeMatrixError(
                        f"the encoder has {len(entry.inputs)} inputs {list(entry.inputs)}; INT8 calibration from "
                        "images feeds one input. Keep the encoder fp32 / fp16"
                    )
                quantized[entry.name] = quantize_static_qdq(
                    fp32_path, out, images, input_name=entry.inputs[0], config=cfg
                )
            else:
                assert features is not None
                quantized[entry.name] = _quantize_head(fp32_path, out, entry.inputs, features, cfg)
                these.append(f"calibrated on the FP32 encoder's features of {features.images} image(s)")
        flags = tuple(trtexec_flags(p)) if p.device != "cpu" else ()
        files[entry.name] = out
        notes[entry.name] = tuple(these)
        entries.append(
            replace(
                entry,
                file=out.name,
                sha256=file_sha256(out),
                precision=p.precision,
                device=p.device,
                threads=p.threads,
                notes=tuple(these),
                trtexec_flags=flags,
            )
        )
    manifest = source.with_subgraphs(tuple(entries), out_dir)
    manifest_path = manifest.save(out_dir / "manifest.json")
    return DeployedSplit(
        manifest=manifest_path,
        files=files,
        placements=placements,
        notes=notes,
        quantized=quantized,
        features=features,
    )


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        _topological_sort(converted.graph)  # the converter appends the input Casts at the end
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ModelError(f"float16 conversion of {src} failed ({type(exc).__name__}: {exc})") from exc
    onnx.save_model(converted, str(dst))


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (stable otherwise)."""
    import onnx

    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 in progress, 2 done
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            index, expanded = stack.pop()
            if expanded:
                state[index] = 2
                order.append(index)
                continue
            if state[index]:
                continue
            state[index] = 1
            stack.append((index, True))
            for name in reversed(nodes[index].input):
                dep = producer.get(name)
                if dep is not None and state[dep] == 0:
                    stack.append((dep, False))
    sorted_nodes = [onnx.NodeProto.FromString(nodes[i].SerializeToString()) for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)


def _quantize_head(
    fp32_path: Path, out: Path, inputs: tuple[str, ...], features: FeatureCache, config: QuantizeConfig
) -> QuantizeResult:
    missing = [n for n in inputs if n not in features.arrays]
    if missing:
        raise ModelError(f"head {fp32_path.name} reads {missing}, which the encoder does not output")
    if len(inputs) == 1:
        name = inputs[0]
        return quantize_static_qdq(fp32_path, out, list(features.arrays[name]), input_name=name, config=config)
    return _quantize_packed(fp32_path, out, inputs, features, config)


def _quantize_packed(
    fp32_path: Path, out: Path, inputs: tuple[str, ...], features: FeatureCache, config: QuantizeConfig
) -> QuantizeResult:
    """Quantize a head with several inputs through one packed input, then restore its inputs.

    quantize_static_qdq calibrates single-input models. The head gets a float input holding every
    feature map flattened end to end, unpacked by Slice + Reshape nodes that are excluded from
    quantization, so each feature map is still calibrated and quantized with its own range where
    the head consumes it. The unpacking nodes are removed from the quantized model afterwards.
    """
    import onnx

    model = onnx.load(str(fp32_path))
    wrapped, unpack_nodes = _pack_inputs(model, list(inputs))
    packed = np.concatenate([features.arrays[n].reshape(features.images, -1) for n in inputs], axis=1)
    with tempfile.TemporaryDirectory(prefix="edgematrix-head-") as tmp:
        wrapped_path, staged = Path(tmp) / "packed.onnx", Path(tmp) / "packed.int8.onnx"
        onnx.save_model(wrapped, str(wrapped_path))
        cfg = replace(config, exclude_nodes=tuple(config.exclude_nodes) + tuple(unpack_nodes))
        result = quantize_static_qdq(
            wrapped_path, staged, [row[None] for row in packed], input_name=_PACKED_INPUT, config=cfg
        )
        quantized = onnx.load(str(staged))
    _unpack_inputs(quantized, model, list(inputs))
    try:
        onnx.checker.check_model(quantized)
    except Exception as exc:
        raise ModelError(f"unpacking the quantized head {fp32_path.name} failed onnx.checker: {exc}") from exc
    onnx.save_model(quantized, str(out))
    ops = [n.op_type for n in quantized.graph.node]
    return replace(result, path=out, qdq_pairs=ops.count("QuantizeLinear"))


def _pack_inputs(model: onnx.ModelProto, inputs: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    import onnx
    from onnx import helper, numpy_helper

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    by_name = {i.name: i for i in graph.input}
    nodes: list[onnx.NodeProto] = []
    names: list[str] = []
    offset = 0
    for k, name in enumerate(inputs):
        dims = [d.dim_value for d in by_name[name].type.tensor_type.shape.dim]
        if not dims or any(d <= 0 for d in dims):
            raise ModelError(f"head input {name!r} needs a static shape to be packed for calibration, got {dims}")
        size = int(np.prod(dims))
        prefix = f"edgematrix_unpack_{k}"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([0, offset], np.int64), f"{prefix}_starts"),
                numpy_helper.from_array(np.array([1, offset + size], np.int64), f"{prefix}_ends"),
                numpy_helper.from_array(np.array([0, 1], np.int64), f"{prefix}_axes"),
                numpy_helper.from_array(np.array(dims, np.int64), f"{prefix}_shape"),
            ]
        )
        nodes.append(
            helper.make_node(
                "Slice",
                [_PACKED_INPUT, f"{prefix}_starts", f"{prefix}_ends", f"{prefix}_axes"],
                [f"{prefix}_flat"],
                name=f"{prefix}_slice",
            )
        )
        nodes.append(
            helper.make_node("Reshape", [f"{prefix}_flat", f"{prefix}_shape"], [name], name=f"{prefix}_reshape")
        )
        names += [f"{prefix}_slice", f"{prefix}_reshape"]
        offset += size
    rest = [n for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes + rest)
    kept = [i for i in graph.input if i.name not in inputs]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(_PACKED_INPUT, onnx.TensorProto.FLOAT, [1, offset]), *kept])
    return wrapped, names


def _unpack_inputs(quantized: onnx.ModelProto, original: onnx.ModelProto, inputs: list[str]) -> None:
    graph = quantized.graph
    wanted = set(inputs)
    producer = {o: n for n in graph.node for o in n.output}
    doomed: set[int] = set()
    stack = [producer[name] for name in inputs if name in producer]
    if len(stack) != len(inputs):
        raise ModelError(f"the quantized head lost its unpacked inputs {inputs}; cannot restore them")
    while stack:  # everything upstream of the feature tensors is unpacking
        node = stack.pop()
        if id(node) in doomed:
            continue
        doomed.add(id(node))
        stack.extend(producer[i] for i in node.input if i in producer)
    removed_outputs = {o for n in graph.node if id(n) in doomed for o in n.output} - wanted
    kept = [n for n in graph.node if id(n) not in doomed]
    leaks = sorted({i for n in kept for i in n.input if i in removed_outputs or i == _PACKED_INPUT})
    if leaks:
        raise ModelError(f"the quantized head still reads unpacking tensors {leaks}; cannot restore its inputs")
    del graph.node[:]
    graph.node.extend(kept)
    originals = {i.name: i for i in original.graph.input}
    others = [i for i in graph.input if i.name != _PACKED_INPUT]
    del graph.input[:]
    graph.input.extend([originals[n] for n in inputs] + others)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    stale = [vi for vi in graph.value_info if vi.name in removed_outputs or vi.name in wanted]
    for vi in stale:
        graph.value_info.remove(vi)

"""Split a multi-head ONNX model into an encoder subgraph and one subgraph per head.

NVIDIA's multi-task pipeline (DL4AGX ``mtmi``: encoder in FP16 on the GPU, the depth and
segmentation heads in INT8 on DLA0 / DLA1, pipelined) starts from exactly this cut. The split is
generic: any ONNX model whose named outputs hang off a shared trunk.

**The cut rule** (used when ``encoder_outputs`` is not given). For every head output ``h`` let
``A(h)`` be the nodes ``h`` depends on. The *trunk* is ``S = ∩ A(h)``, the nodes every head depends
on. The cut tensors are the tensors that

1. are produced by a trunk node,
2. depend on a model input (constant sub-expressions, e.g. a shape constant shared by two heads,
   are copied into each subgraph instead of crossing the cut), and
3. are consumed by a node that some but not all heads depend on (``∪ A(h) \\ S``).

Nodes feeding model outputs that are not among ``heads`` play no part. The rule gives one cut;
it is refused (:class:`ModelError` naming the candidate tensors) when it is not a clean feature
cut: the heads share no node, a head is computed entirely by the trunk, a head also reads a model
input directly, or a cut tensor is not a float tensor (a shape computation crossing the cut: pass
``encoder_outputs`` explicitly, or simplify the model so shapes fold).

The subgraphs are cut with :class:`onnx.utils.Extractor` (after ONNX shape inference); the cut
tensors get clean names (``features``, or ``features_0``, ``features_1`` ... in graph order), the
model inputs and head outputs keep theirs. :func:`check_split` then runs encoder → heads and the
whole model through ONNX Runtime on seeded inputs and requires the same outputs within ``atol``
(FP32: 1e-4 by default). The manifest (:mod:`edgematrix.backends.split.manifest`) lists the files
with FP32 / CPU placements; :func:`edgematrix.optimize.subgraph.deploy_split` gives each subgraph
its own precision and device.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgematrix.backends.split.manifest import (
    ENCODER,
    FeatureTensor,
    SplitManifest,
    SubgraphEntry,
    file_sha256,
    load_manifest,
)
from edgematrix.errors import EdgeMatrixError, ModelError

if TYPE_CHECKING:
    import onnx

MANIFEST_NAME = "manifest.json"
DEFAULT_SEEDS = (0, 1, 2)
_FLOAT_TYPES = {"float32", "float16", "float64", "bfloat16"}


@dataclass(frozen=True)
class SplitResult:
    """What :func:`split_model` wrote."""

    source: Path
    out_dir: Path
    manifest: Path
    encoder: Path
    heads: dict[str, Path]  # head (model output name) -> file
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    features: tuple[FeatureTensor, ...]
    head_inputs: dict[str, tuple[str, ...]]  # head -> the feature names it reads
    max_abs_diff: float  # encoder → heads vs the whole model (FP32, ONNX Runtime, several seeds)
    auto_cut: bool  # True when the cut was found by the rule above


def split_model(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    heads: Sequence[str],
    encoder_outputs: Sequence[str] | None = None,
    atol: float = 1e-4,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> SplitResult:
    """Write ``encoder.onnx``, one ``<head>.onnx`` per head and ``manifest.json`` into ``out_dir``.

    ``heads`` are model output names; ``encoder_outputs`` are tensor names of the cut (found by the
    rule in the module docstring when ``None``). The joins are checked with :func:`check_split`.
    """
    from edgematrix.export.onnx_export import load_onnx

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    heads = list(heads)
    if not heads:
        raise EdgeMatrixError("heads is empty; name the model outputs to split off, e.g. heads=['seg', 'depth']")
    if len(set(heads)) != len(heads):
        raise EdgeMatrixError(f"heads repeat a name: {heads}")
    if atol < 0:
        raise EdgeMatrixError(f"atol must be >= 0, got {atol}")
    if not seeds:
        raise EdgeMatrixError("seeds is empty; check_split needs at least one seeded input")
    model = load_onnx(onnx_path)
    outputs = [o.name for o in model.graph.output]
    missing = [h for h in heads if h not in outputs]
    if missing:
        raise EdgeMatrixError(f"head(s) {missing} are not outputs of {onnx_path}; its outputs: {', '.join(outputs)}")
    if ENCODER in heads:
        raise EdgeMatrixError(
            f"{onnx_path} has an output named {ENCODER!r}, which clashes with the encoder subgraph; rename it"
        )
    inferred = _infer_shapes(model, onnx_path)
    graph = _Graph(inferred)
    auto = encoder_outputs is None
    cut = graph.find_cut(heads) if encoder_outputs is None else graph.check_cut(list(encoder_outputs), heads)
    return _split_impl(onnx_path, out_dir, inferred, graph, heads, cut, auto=auto, atol=atol, seeds=tuple(seeds))


def find_cut(model: onnx.ModelProto, heads: Sequence[str]) -> list[str]:
    """The cut tensors of ``model`` for ``heads`` by the rule in the module docstring (graph order)."""
    return _Graph(_infer_shapes(model, Path(model.graph.name or "model"))).find_cut(list(heads))


def _infer_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelError(
            f"ONNX shape inference failed on {path} ({type(exc).__name__}: {exc}); the split needs the shapes of "
            "the cut tensors. Simplify the model (onnxslim) or re-export it."
        ) from exc


class _Graph:
    """Producer / consumer maps and dependency sets of a graph's nodes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.nodes = list(graph.node)
        self.initializers = {t.name for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.producer[name] = index
            for name in _node_inputs(node):
                self.consumers.setdefault(name, []).append(index)
        self.value_types: dict[str, tuple[str, tuple[int | str | None, ...]]] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            if vi.type.HasField("tensor_type"):
                self.value_types[vi.name] = _type_of(vi)
        # does a node depend on a runtime input (as opposed to constants only)?
        live_tensors = set(self.inputs)
        self.live: list[bool] = []
        for node in self.nodes:
            is_live = any(name in live_tensors for name in _node_inputs(node))
            self.live.append(is_live)
            if is_live:
                live_tensors.update(o for o in node.output if o)
        self.live_tensors = live_tensors

    def ancestors(self, tensor: str, stop: set[str] | None = None) -> set[int]:
        """Indexes of the nodes ``tensor`` depends on (not crossing ``stop`` tensors)."""
        stop = stop or set()
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            if name in stop:
                continue
            index = self.producer.get(name)
            if index is None or index in seen:
                continue
            seen.add(index)
            stack.extend(_node_inputs(self.nodes[index]))
        return seen

    def reads(self, tensor: str, stop: set[str]) -> set[str]:
        """Runtime tensors (model inputs, ``stop`` tensors) that ``tensor`` depends on."""
        if tensor in stop or tensor in self.inputs:
            return {tensor}
        return {
            name
            for index in self.ancestors(tensor, stop)
            for name in _node_inputs(self.nodes[index])
            if name in stop or name in self.inputs
        }

    def find_cut(self, heads: list[str]) -> list[str]:
        if len(heads) == 1:
            raise EdgeMatrixError(
                f"one head ({heads[0]!r}) has no shared trunk to find; pass encoder_outputs=[...] to cut it by hand"
            )
        deps = {h: self.ancestors(h) for h in heads}
        trunk = set.intersection(*deps.values())
        union = set.union(*deps.values())
        branch = union - trunk
        live_trunk = [i for i in sorted(trunk) if self.live[i]]
        if not live_trunk:
            raise ModelError(
                f"heads {heads} share no node that depends on the model input: there is no trunk to split off. "
                "Check the head names, or pass encoder_outputs=[...]"
            )
        cut: list[str] = []
        for index in live_trunk:
            for name in self.nodes[index].output:
                if name and any(c in branch for c in self.consumers.get(name, [])):
                    cut.append(name)
        for h in heads:
            if self.producer.get(h) in trunk:
                raise ModelError(
                    f"head {h!r} is computed entirely by the trunk that all heads share (the cut would leave it "
                    f"empty); candidate cut tensors: {cut}. Split without it, or pass encoder_outputs=[...]"
                )
        if not cut:  # cannot happen when heads differ; kept as a guard with a useful message
            raise ModelError(f"no tensor crosses from the shared trunk to the heads {heads}; pass encoder_outputs")
        non_float = [t for t in cut if self.value_types.get(t, ("?",))[0] not in _FLOAT_TYPES]
        if non_float:
            raise ModelError(
                f"the cut between the trunk and heads {heads} is ambiguous: candidate tensors {cut}, of which "
                f"{non_float} are not float feature maps (types "
                f"{[self.value_types.get(t, ('unknown',))[0] for t in non_float]}), i.e. a shape computation crosses "
                "the cut. Simplify the model so shapes fold (onnxslim), or pass encoder_outputs=[...] naming the "
                "feature tensors"
            )
        self._check_heads(heads, cut)
        return cut

    def check_cut(self, cut: list[str], heads: list[str]) -> list[str]:
        if not cut:
            raise EdgeMatrixError("encoder_outputs is empty; name the feature tensors, or pass None to find them")
        if len(set(cut)) != len(cut):
            raise EdgeMatrixError(f"encoder_outputs repeat a name: {cut}")
        unknown = [t for t in cut if t not in self.producer]
        if unknown:
            raise ModelError(
                f"encoder_outputs {unknown} are not tensors computed by the model (model inputs and initializers "
                "cannot be cut); use node output names, e.g. from find_cut(onnx.load(path), heads)"
            )
        constant = [t for t in cut if t not in self.live_tensors]
        if constant:
            raise ModelError(f"encoder_outputs {constant} do not depend on the model input (constants); drop them")
        in_heads = [t for t in cut if t in heads]
        if in_heads:
            raise ModelError(f"encoder_outputs {in_heads} are head outputs themselves; cut before the heads")
        self._check_heads(heads, cut)
        stop = set(cut)
        used = set().union(*(self.reads(h, stop) for h in heads))
        unused = [t for t in cut if t not in used]
        if unused:
            raise ModelError(
                f"encoder_outputs {unused} are read by none of the heads {heads} once the cut is made; drop them"
            )
        order = {name: i for i, node in enumerate(self.nodes) for name in node.output}
        return sorted(cut, key=lambda t: order[t])

    def _check_heads(self, heads: list[str], cut: list[str]) -> None:
        stop = set(cut)
        for h in heads:
            direct = sorted(self.reads(h, stop) & set(self.inputs))
            if direct:
                raise ModelError(
                    f"head {h!r} reads model input(s) {direct} directly, not only through the cut tensors {cut}; "
                    "the heads must consume only the encoder's features. Pass encoder_outputs=[...] that separate "
                    "the heads from the input (a cut inside one head leaves the others reading the input)"
                )


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, including outer-scope names its subgraphs (If / Loop bodies) read."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for sub in subgraphs:
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                local.update(inner.output)
            for inner in sub.node:
                names.extend(n for n in _node_inputs(inner) if n not in local)
    return names


def _type_of(vi: onnx.ValueInfoProto) -> tuple[str, tuple[int | str | None, ...]]:
    import onnx

    tt = vi.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except Exception:
        dtype = "unknown"
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dtype, tuple(dims)


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "head"
    return f"head_{stem}" if stem in (ENCODER, "manifest") else stem


def _feature_names(cut: list[str], taken: set[str]) -> list[str]:
    base = ["features"] if len(cut) == 1 else [f"features_{i}" for i in range(len(cut))]
    names = []
    for name in base:
        candidate = name
        while candidate in taken:
            candidate = f"{candidate}_cut"
        names.append(candidate)
    return names


def _rename(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename tensors everywhere in ``graph`` (nodes, io, value_info, nested subgraphs)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename(attr.g, mapping)
            for sub in attr.graphs:
                _rename(sub, mapping)
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name in mapping:
            vi.name = mapping[vi.name]


def _extract(
    model: onnx.ModelProto, inputs: list[str], outputs: list[str], rename: Mapping[str, str], what: str
) -> onnx.ModelProto:
    import onnx
    from onnx.utils import Extractor

    try:
        sub = Extractor(model).extract_model(inputs, outputs)
    except ValueError as exc:
        raise ModelError(
            f"cannot cut the {what} ({exc}); ONNX shape inference did not type every cut tensor. Simplify the model "
            "(onnxslim) so the shapes are static, then split again"
        ) from exc
    _rename(sub.graph, rename)
    sub.graph.name = what
    try:
        onnx.checker.check_model(sub)
    except Exception as exc:
        raise ModelError(f"the {what} subgraph fails onnx.checker ({type(exc).__name__}: {exc})") from exc
    return sub


def _save(model: onnx.ModelProto, path: Path) -> None:
    import onnx

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _split_impl(
    source: Path,
    out_dir: Path,
    model: onnx.ModelProto,
    graph: _Graph,
    heads: list[str],
    cut: list[str],
    *,
    auto: bool,
    atol: float,
    seeds: tuple[int, ...],
) -> SplitResult:
    all_names = set(graph.producer) | set(graph.inputs) | graph.initializers | set(graph.consumers)
    clean = _feature_names(cut, all_names - set(cut))
    rename = dict(zip(cut, clean, strict=True))
    stop = set(cut)
    head_reads = {h: [t for t in cut if t in graph.reads(h, stop)] for h in heads}

    features = []
    for tensor, name in rename.items():
        dtype, dims = graph.value_types.get(tensor, ("unknown", ()))
        if dtype == "unknown" or not dims or not all(isinstance(d, int) for d in dims):
            raise ModelError(
                f"cut tensor {tensor!r} has no static shape after shape inference ({dtype}{list(dims)}); the "
                "split subgraphs need static feature shapes. Export with a fixed input shape and simplify the model"
            )
        features.append(FeatureTensor(name=name, source=tensor, shape=tuple(int(d) for d in dims), dtype=dtype))  # type: ignore[arg-type]

    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = _extract(model, list(graph.inputs), cut, rename, ENCODER)
    encoder_path = out_dir / "encoder.onnx"
    _save(encoder, encoder_path)
    entries = [
        SubgraphEntry(
            name=ENCODER,
            role=ENCODER,
            file=encoder_path.name,
            inputs=tuple(graph.inputs),
            outputs=tuple(clean),
            sha256=file_sha256(encoder_path),
        )
    ]
    head_paths: dict[str, Path] = {}
    stems: set[str] = set()
    for h in heads:
        stem = _safe_stem(h)
        while stem in stems:
            stem = f"{stem}_"
        stems.add(stem)
        sub = _extract(model, head_reads[h], [h], rename, h)
        path = out_dir / f"{stem}.onnx"
        _save(sub, path)
        head_paths[h] = path
        entries.append(
            SubgraphEntry(
                name=h,
                role="head",
                file=path.name,
                inputs=tuple(rename[t] for t in head_reads[h]),
                outputs=(h,),
                sha256=file_sha256(path),
            )
        )
    manifest = SplitManifest(
        source=source.name,
        source_sha256=file_sha256(source),
        inputs=tuple(graph.inputs),
        outputs=tuple(heads),
        features=tuple(features),
        subgraphs=tuple(entries),
        folder=out_dir,
    )
    manifest_path = out_dir / MANIFEST_NAME
    manifest.save(manifest_path)
    try:
        diff = check_split(source, manifest_path, atol=atol, seeds=seeds)
    except BaseException:
        manifest_path.unlink(missing_ok=True)  # no manifest for a split whose joins failed
        raise
    manifest = replace(manifest, max_abs_diff=diff)
    manifest.save(manifest_path)
    return SplitResult(
        source=source,
        out_dir=out_dir,
        manifest=manifest_path,
        encoder=encoder_path,
        heads=head_paths,
        input_names=tuple(graph.inputs),
        output_names=tuple(heads),
        features=tuple(features),
        head_inputs={h: tuple(rename[t] for t in head_reads[h]) for h in heads},
        max_abs_diff=diff,
        auto_cut=auto,
    )


def check_split(
    whole: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    *,
    atol: float = 1e-4,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> float:
    """Max |encoder → heads − whole model| over all head outputs and ``seeds`` (ONNX Runtime, CPU).

    Meant for the FP32 split: raises :class:`ModelError` with the figures (output, seed, max diff,
    worst element) when a difference exceeds ``atol``. Inputs are seeded standard-normal float
    arrays of each model input's static shape (``input_shapes`` for dynamic ones).
    """
    import onnxruntime as ort

    if atol < 0:
        raise EdgeMatrixError(f"atol must be >= 0, got {atol}")
    if not seeds:
        raise EdgeMatrixError("seeds is empty; give at least one")
    split = load_manifest(manifest)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def session(path: Path) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}: {exc})") from exc

    whole_s = session(Path(whole))
    encoder_s = session(split.path_of(ENCODER))
    head_s = {h.name: session(split.path_of(h.name)) for h in split.heads}
    specs = {i.name: i for i in whole_s.get_inputs()}
    missing = [n for n in split.inputs if n not in specs]
    if missing:
        raise ModelError(f"{whole} has no input(s) {missing} that the split's encoder reads; wrong model?")
    worst = 0.0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        feed: dict[str, np.ndarray] = {}
        for name in split.inputs:
            shape = (input_shapes or {}).get(name) or specs[name].shape
            if not all(isinstance(d, int) and d > 0 for d in shape):
                raise EdgeMatrixError(
                    f"input {name!r} has dynamic shape {shape}; pass input_shapes={{{name!r}: [...]}}"
                )
            if specs[name].type != "tensor(float)":
                raise EdgeMatrixError(f"check_split feeds float inputs; {name!r} is {specs[name].type}")
            feed[name] = rng.standard_normal(tuple(int(d) for d in shape), dtype=np.float32)
        want = dict(zip(split.outputs, whole_s.run(list(split.outputs), feed), strict=True))
        features = dict(zip(split.encoder.outputs, encoder_s.run(list(split.encoder.outputs), feed), strict=True))
        for f in split.features:
            got_shape = tuple(features[f.name].shape)
            if got_shape != f.shape:
                raise ModelError(f"encoder feature {f.name!r} has shape {got_shape}; the manifest records {f.shape}")
        for head in split.heads:
            outs = head_s[head.name].run(list(head.outputs), {n: features[n] for n in head.inputs})
            for name, got in zip(head.outputs, outs, strict=True):
                ref = want[name]
                if got.shape != ref.shape:
                    raise ModelError(
                        f"head {head.name!r} output {name!r} has shape {got.shape}, the whole model {ref.shape}"
                    )
                diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
                value = float(diff.max()) if diff.size else 0.0
                if not value <= atol:  # also catches NaN
                    at = int(np.nanargmax(diff)) if diff.size else 0
                    raise ModelError(
                        f"split check failed: output {name!r} through encoder → head {head.name!r} differs from the "
                        f"whole model by max |diff| = {value:.3g} > atol {atol:g} (seed {seed}; worst element {at}: "
                        f"split {got.reshape(-1)[at]:.6g} vs whole {ref.reshape(-1)[at]:.6g}). The subgraphs do not "
                        "compute what the model does: re-split, and check that the files are the FP32 split"
                    )
                worst = max(worst, value)
    return worst

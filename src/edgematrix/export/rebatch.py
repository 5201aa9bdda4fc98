"""Re-batch a batch-1 ONNX model: the same graph, weights and quantization with a static batch of N.

Models are exported with a static batch of 1 (edge engines are built for one shape). For a batch-size
sweep the same file is rewritten for batch N: the graph inputs' batch dimension is set to N, the
shape constants that hard-code batch 1 (``Reshape`` / ``Resize`` sizes) are set to N, the outputs'
batch dimension follows, stale ``value_info`` shapes are dropped, and operations that would mix or
drop samples along the batch axis (``Flatten(axis=0)``, a ``Gather`` / ``Concat`` / ``Split`` /
``Slice`` / ``Pad`` / reduction over it, a ``Reshape`` merging it into another dimension) are
refused with an error naming the node.

The batch axis of every tensor is followed through the graph (``Transpose``, ``Squeeze`` /
``Unsqueeze``, ``Flatten``, ``Reshape``); where it cannot be followed it is "unknown" and no rewrite
or check applies downstream. Whatever the static analysis concluded, the written file is verified:
ONNX Runtime runs it on N different samples and each sample's outputs must equal the batch-1
model's on that sample (relative to the output's largest magnitude: 1e-4 for float graphs, 2e-2
for quantized ones, whose requantization may round a value near a step boundary the other way).

Works on float and QDQ INT8 files alike (Q/DQ nodes are per-element or per-channel on weights,
never along the batch axis). Files are cached next to the source, keyed by its content.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgematrix.errors import EdgeMatrixError, ModelError

if TYPE_CHECKING:
    import onnx

REBATCH_VERSION = 1  # part of the cache key: bump when the rewrite changes
FLOAT_TOLERANCE = 1e-4
QUANTIZED_TOLERANCE = 2e-2
_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"})
_INT64_BIG = 2**31 - 1  # a Slice end at or above this means "to the end"
_REDUCE_OPS = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
     "ReduceSumSquare", "ReduceLogSum", "ArgMax", "ArgMin"}
)  # fmt: skip


class RebatchError(ModelError):
    """A batch-1 ONNX graph cannot be rewritten for another batch size (the message names the node)."""


@dataclass(frozen=True)
class RebatchResult:
    path: Path  # the batch-N file (the source itself for batch 1)
    source: Path
    batch: int
    patched: tuple[str, ...]  # nodes whose shape constants were rewritten
    max_rel_diff: float  # worst per-sample |out_N - out_1| / max |out_1| over outputs and samples
    tolerance: float
    quantized: bool
    cached: bool


def rebatch_onnx(
    source: str | os.PathLike[str], batch: int, *, out_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> RebatchResult:
    """The batch-``batch`` version of the batch-1 ONNX file ``source``, written (and verified) once.

    The file is ``<out_dir or source's folder>/<stem>.b<N>-<key>.onnx`` with a ``.json`` beside it
    holding the verification figures; ``key`` hashes the source's content, so a changed source gets
    a new file. Batch 1 returns the source itself.
    """
    src = Path(source)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EdgeMatrixError(f"batch must be a positive integer; got {batch!r}")
    if not src.is_file():
        raise ModelError(f"ONNX model {src} does not exist; run the cell that builds it first")
    if batch == 1:
        return RebatchResult(src, src, 1, (), 0.0, FLOAT_TOLERANCE, _is_quantized_file(src), cached=True)
    from edgematrix.core.cache import content_key, file_sha256, load_json_entry, reuse

    key = content_key(file_sha256(src), batch, REBATCH_VERSION)[:12]
    folder = Path(out_dir) if out_dir is not None else src.parent
    out = folder / f"{src.stem}.b{batch}-{key}.onnx"
    meta = out.with_suffix(".json")
    m = load_json_entry(meta, "re-batched model facts") if reuse(out, f"batch-{batch} model") else None
    if isinstance(m, dict):
        return RebatchResult(
            out,
            src,
            batch,
            tuple(m["patched"]),
            float(m["max_rel_diff"]),
            float(m["tolerance"]),
            bool(m["quantized"]),
            cached=True,
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeMatrixError(f"cannot write the batch-{batch} model next to {src}: {e.strerror or e}") from None
    return _rebatch_impl(src, batch, out, seed)


def _is_quantized_file(path: Path) -> bool:
    import onnx

    return any(n.op_type in _QUANT_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)


def _rebatch_impl(src: Path, batch: int, out: Path, seed: int) -> RebatchResult:
    import onnx

    from edgematrix.core.cache import seal, write_json_entry
    from edgematrix.export.onnx_export import load_onnx

    model = load_onnx(src)
    quantized = any(n.op_type in _QUANT_OPS for n in model.graph.node)
    patched, out_axes = rebatch_model(model, batch, name=str(src))
    tolerance = QUANTIZED_TOLERANCE if quantized else FLOAT_TOLERANCE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save(model, str(tmp))
        del model
        max_rel = verify_rebatched(src, tmp, batch, out_axes, seed=seed)
        if not max_rel <= tolerance:
            raise RebatchError(
                f"the batch-{batch} graph of {src} gives different outputs per sample than the batch-1 graph "
                f"(max relative diff {max_rel:.3g} > {tolerance:g}): the graph mixes samples somewhere the rewrite "
                f"did not see (rewritten nodes: {', '.join(patched) or 'none'}). Export the model with a dynamic "
                "batch dimension instead."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    info = {
        "source": str(src),
        "batch": batch,
        "patched": list(patched),
        "max_rel_diff": max_rel,
        "tolerance": tolerance,
        "quantized": quantized,
        "version": REBATCH_VERSION,
    }
    seal(out)
    write_json_entry(out.with_suffix(".json"), info)
    return RebatchResult(out, src, batch, patched, max_rel, tolerance, quantized, cached=False)


# ----------------------------------------------------------------------------------------------
# the graph rewrite


def rebatch_model(model: onnx.ModelProto, batch: int, *, name: str = "model") -> tuple[tuple[str, ...], dict[str, int]]:
    """Rewrite ``model`` (batch 1) in place for a static batch of ``batch``.

    Returns the names of the nodes whose shape constants were rewritten and the batch axis of each
    graph output (outputs whose batch axis could not be followed are left out: axis 0 is assumed).
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if not inputs:
        raise RebatchError(f"{name} has no runtime inputs: there is no batch to change")
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        if not dims:
            raise RebatchError(f"{name}: input {inp.name!r} has no shape; cannot tell its batch dimension")
        if dims[0].HasField("dim_value") and dims[0].dim_value != 1:
            raise RebatchError(
                f"{name}: input {inp.name!r} has batch {dims[0].dim_value}, not 1; re-batch from the batch-1 export"
            )
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # a graph ONNX itself cannot type is not ours to rewrite
        raise RebatchError(f"{name}: ONNX shape inference fails on the batch-1 graph ({e})") from None
    ranks: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)

    axis_of: dict[str, int | None] = {i.name: 0 for i in inputs}  # batch-carrying tensors -> batch axis (None: lost)
    patched: list[str] = []
    rewriter = _Rewriter(graph, consts, batch, patched)
    for node in graph.node:
        carried = [i for i in node.input if i in axis_of]
        if not carried:
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise RebatchError(f"{name}: node {node.name!r} ({node.op_type}) has a subgraph on the batch path")
        if node.op_type in ("Shape", "Size"):
            continue  # a shape value, not per-sample data: computed shapes follow the batch by themselves
        axis = axis_of[carried[0]]
        out_axis = axis if axis is None else _follow(node, axis, carried[0], ranks, rewriter, name)
        for o in node.output:
            if o:
                axis_of[o] = out_axis

    output_axes: dict[str, int] = {}
    for out in graph.output:
        if out.name not in axis_of:
            continue  # a constant output: no batch
        axis = axis_of[out.name]
        shape = out.type.tensor_type.shape
        if axis is None:
            for dim in shape.dim:  # rank kept, sizes unknown: ONNX Runtime infers them
                dim.Clear()
            continue
        output_axes[out.name] = axis
        if len(shape.dim) > axis:
            shape.dim[axis].Clear()
            shape.dim[axis].dim_value = batch
    for inp in inputs:
        dim = inp.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    del graph.value_info[:]
    _drop_unused(graph, rewriter.replaced)
    try:
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
        raise RebatchError(f"{name}: the batch-{batch} graph does not type-check: {e}") from None
    return tuple(patched), output_axes


class _Rewriter:
    """Replaces a node's constant input with a batch-N copy (a new initializer when the constant is shared)."""

    def __init__(self, graph: Any, consts: dict[str, np.ndarray], batch: int, patched: list[str]) -> None:
        self.graph, self.consts, self.batch, self.patched = graph, consts, batch, patched
        self.replaced: set[str] = set()

    def set_leading(self, node: Any, index: int, position: int) -> None:
        from onnx import numpy_helper

        old = node.input[index]
        value = self.consts[old].copy()
        value[position] = self.batch
        new = f"{old}__batch{self.batch}"
        if new not in self.consts:
            self.graph.initializer.append(numpy_helper.from_array(value, new))
            self.consts[new] = value
        node.input[index] = new
        self.replaced.add(old)
        self.patched.append(node.name or f"{node.op_type}#{len(self.patched)}")


def _drop_unused(graph: Any, names: set[str]) -> None:
    """Remove the replaced shape constants (initializers or Constant nodes) nothing reads any more."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = names - used
    keep = [t for t in graph.initializer if t.name not in dead]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in dead)]
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)


def _attr(node: Any, key: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == key:
            return helper.get_attribute_value(a)
    return default


def _axes(node: Any, consts: dict[str, np.ndarray], index: int) -> list[int] | None:
    """Axes of a node: from its input ``index`` (opset >= 13 style) or its ``axes`` attribute; None if unknown."""
    if len(node.input) > index and node.input[index]:
        value = consts.get(node.input[index])
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    attr = _attr(node, "axes", None)
    return None if attr is None else [int(v) for v in attr]


def _follow(node: Any, axis: int, data: str, ranks: dict[str, int], rw: _Rewriter, name: str) -> int | None:
    """The batch axis of ``node``'s outputs given the batch axis of its (first batch-carrying) input;
    rewrites shape constants that hard-code batch 1 and refuses operations along the batch axis."""
    op, consts = node.op_type, rw.consts
    rank = ranks.get(data)
    where = f"{name}: node {node.name!r} ({op})"

    def norm(a: int, r: int | None) -> int | None:
        return a + r if a < 0 and r is not None else (a if a >= 0 else None)

    if op == "Reshape":
        if node.input[0] != data or node.input[1] not in consts:
            return None
        shape = consts[node.input[1]]
        lead = int(shape[0]) if shape.size else None
        if axis != 0:
            return None
        if lead == 1:
            rw.set_leading(node, 1, 0)
            return 0
        if lead == -1 or (lead == 0 and not _attr(node, "allowzero", 0)):
            return 0
        raise RebatchError(
            f"{where} reshapes a batch-1 tensor to {shape.tolist()}: the batch dimension is merged into another "
            "dimension, so the batch-N graph cannot be derived. Export the model with a dynamic batch instead."
        )
    if op == "Resize":
        if len(node.input) > 3 and node.input[3] in consts and axis == 0:
            sizes = consts[node.input[3]]
            if sizes.size and int(sizes[0]) == 1:
                rw.set_leading(node, 3, 0)
        return axis
    if op == "Flatten":
        f_axis = norm(int(_attr(node, "axis", 1)), rank)
        if axis == 0 and f_axis == 0:
            raise RebatchError(f"{where} flattens the batch dimension into the features (axis=0)")
        return 0 if axis == 0 and f_axis == 1 else None
    if op == "Transpose":
        perm = _attr(node, "perm", None)
        if perm is None:
            return (rank - 1 - axis) if rank is not None else None
        return list(perm).index(axis)
    if op == "Squeeze":
        axes = _axes(node, consts, 1)
        if axes is None:
            if len(node.input) > 1 and node.input[1]:
                return None  # computed axes
            raise RebatchError(f"{where} squeezes every size-1 dimension, the batch-1 dimension included")
        axes_n: list[int | None] = [norm(a, rank) for a in axes]
        if axis in axes_n:
            raise RebatchError(f"{where} removes the batch dimension (axes {axes})")
        if any(a is None for a in axes_n):
            return None
        return axis - sum(1 for a in axes_n if a is not None and a < axis)
    if op == "Unsqueeze":
        axes = _axes(node, consts, 1)
        if axes is None or rank is None:
            return None
        out_rank = rank + len(axes)
        inserted = sorted(a + out_rank if a < 0 else a for a in axes)
        kept = [i for i in range(out_rank) if i not in inserted]
        return kept[axis]
    if op in ("Gather", "GatherElements", "Concat", "Split", "Softmax", "LogSoftmax", "Hardmax", "CumSum"):
        default = -1 if op in ("Softmax", "LogSoftmax", "Hardmax") else 0
        if op == "CumSum":
            return axis  # its axis is an input; a cumulative sum over the batch would be unusual enough
        op_axis = norm(int(_attr(node, "axis", default)), rank)
        if op == "Gather" and node.input[0] != data:
            return None  # batch-carrying indices
        if op_axis == axis:
            raise RebatchError(f"{where} works along the batch dimension (axis {op_axis}); samples would mix")
        if op == "Gather" and op_axis is not None and op_axis < axis:
            return None
        return axis
    if op == "Slice":
        axes = _axes(node, consts, 3)
        starts, ends = consts.get(node.input[1]), consts.get(node.input[2])
        steps = consts.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if starts is None or ends is None or (len(node.input) > 4 and node.input[4] and steps is None):
            return None
        if axes is None:
            axes = list(range(len(starts)))
        for i, a in enumerate(axes):
            if norm(a, rank) == axis:
                whole = int(starts[i]) == 0 and int(ends[i]) >= _INT64_BIG and (steps is None or int(steps[i]) == 1)
                if not whole:
                    raise RebatchError(
                        f"{where} slices the batch dimension [{int(starts[i])}:{int(ends[i])}]; at batch 1 that "
                        "selects sample 0, at batch N it would not select every sample"
                    )
        return axis
    if op == "Pad":
        pads = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if pads is None:
            pads_attr = _attr(node, "pads", None)
            pads = np.asarray(pads_attr) if pads_attr is not None else None
        if pads is None or rank is None:
            return axis
        pad_axes = _axes(node, consts, 3) if len(node.input) > 3 and node.input[3] else list(range(rank))
        if pad_axes is None:
            return axis
        n = len(pad_axes)
        for i, a in enumerate(pad_axes):
            if norm(a, rank) == axis and (int(pads[i]) != 0 or int(pads[i + n]) != 0):
                raise RebatchError(f"{where} pads the batch dimension ({pads.tolist()})")
        return axis
    if op in _REDUCE_OPS:
        if op in ("ArgMax", "ArgMin"):
            axes_n = [norm(int(_attr(node, "axis", 0)), rank)]
        else:
            raw = _axes(node, consts, 1)
            if raw is None:
                if len(node.input) > 1 and node.input[1]:
                    return None
                if _attr(node, "noop_with_empty_axes", 0):
                    return axis
                raise RebatchError(f"{where} reduces over every dimension, the batch dimension included")
            axes_n = [norm(a, rank) for a in raw]
        if axis in axes_n:
            raise RebatchError(f"{where} reduces over the batch dimension")
        if _attr(node, "keepdims", 1):
            return axis
        if any(a is None for a in axes_n):
            return None
        return axis - sum(1 for a in axes_n if a is not None and a < axis)
    if op == "Gemm":
        if node.input[0] == data and not _attr(node, "transA", 0) and axis == 0:
            return 0
        if node.input[0] == data:
            raise RebatchError(f"{where} takes the batch-carrying tensor transposed (transA=1)")
        raise RebatchError(f"{where} takes the batch-carrying tensor as its operand B or C")
    # element-wise, Conv, pooling, normalisation, Q/DQ, MatMul on a leading batch ...: the batch axis stays
    return axis


# ----------------------------------------------------------------------------------------------
# verification


def verify_rebatched(source: Path, rebatched: Path, batch: int, output_axes: dict[str, int], *, seed: int = 0) -> float:
    """Run ``rebatched`` on ``batch`` different samples and ``source`` on each one; the worst relative
    difference (max |out_N[i] - out_1(i)| / max |out_1(i)|) over outputs and samples."""
    import onnxruntime as ort

    def session(path: Path) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RebatchError(f"ONNX Runtime cannot load the batch-{batch} graph of {source}: {e}") from None

    one, many = session(source), session(rebatched)
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for inp in many.get_inputs():
        shape = [batch, *(d if isinstance(d, int) else 1 for d in inp.shape[1:])]
        feed[inp.name] = _random_input(rng, inp.type, shape, inp.name)
    names = [o.name for o in many.get_outputs()]
    try:
        outs_n = dict(zip(names, many.run(names, feed), strict=True))
    except Exception as e:
        raise RebatchError(f"ONNX Runtime cannot run the batch-{batch} graph of {source}: {e}") from None
    worst = 0.0
    for i in range(batch):
        outs_1 = dict(zip(names, one.run(names, {k: v[i : i + 1] for k, v in feed.items()}), strict=True))
        for key in names:
            ax = output_axes.get(key, 0)
            got, want = np.asarray(outs_n[key]), np.asarray(outs_1[key])
            if got.ndim != want.ndim or got.shape[ax] != batch * want.shape[ax]:
                raise RebatchError(
                    f"output {key!r} of the batch-{batch} graph of {source} has shape {list(got.shape)}; batch 1 "
                    f"gives {list(want.shape)}, so batch {batch} should be {batch}x along axis {ax}"
                )
            got_i = np.take(got, [i], axis=ax).astype(np.float64)
            want_i = want.astype(np.float64)
            scale = float(np.abs(want_i).max()) if want_i.size else 0.0
            diff = float(np.abs(got_i - want_i).max()) if want_i.size else 0.0
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _random_input(rng: np.random.Generator, ort_type: str, shape: list[int], name: str) -> np.ndarray:
    floats = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    ints = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
    if ort_type in floats:
        return rng.standard_normal(shape).astype(floats[ort_type])
    if ort_type in ints:
        return rng.integers(0, 2, size=shape).astype(ints[ort_type])
    if ort_type == "tensor(bool)":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    raise RebatchError(f"input {name!r} has type {ort_type}; the batch-N check feeds float, integer or bool inputs")

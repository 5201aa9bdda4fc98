"""The interface of an ONNX file (its runtime inputs and outputs, with their dims) and a copy of it with
its dynamic input dimensions fixed to declared shapes.

A model edgematrix did not export (``[models.X] onnx = "path"``) is validated with
:func:`read_interface` (a dynamic dimension without a declared shape is an error naming the input and
the dimension) and deployed as :func:`fix_input_shapes`' static copy: every backend, recipe and
measurement then sees the model at the declared input shapes (TensorRT and TIDL build for one shape;
ONNX Runtime and OpenVINO optimize better for one).

``onnx`` is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import ModelError

Dim = int | str | None  # a fixed size, a symbolic (named) dynamic size, or an unnamed dynamic size


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and dims."""

    name: str
    dims: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def dynamic(self) -> list[int]:
        """Indices of the dimensions that are not fixed sizes."""
        return [i for i, d in enumerate(self.dims) if not isinstance(d, int)]

    def describe(self) -> str:
        """``float32[batch, 3, height, width]`` (``?`` for an unnamed dynamic dimension)."""
        return f"{self.dtype.name}[{', '.join('?' if d is None else str(d) for d in self.dims)}]"

    def dim_name(self, index: int) -> str:
        """How the error messages name dimension ``index``: ``2 ('height')``, or ``2`` when unnamed."""
        d = self.dims[index]
        return f"{index} ({d!r})" if isinstance(d, str) else str(index)


@dataclass(frozen=True)
class OnnxInterface:
    """What a model takes and gives (inputs fed by a runtime: initializers excluded)."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    producer: str

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


def _dims(value_info: Any) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return tuple(dims)


def _spec(value_info: Any, path: Path) -> TensorSpec:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        raise ModelError(f"{path}: {value_info.name!r} is not a tensor (sequences and maps are not fed by edgematrix)")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        raise ModelError(
            f"{path}: tensor {value_info.name!r} has ONNX element type {tensor_type.elem_type}, which has no numpy "
            "dtype"
        ) from None
    return TensorSpec(value_info.name, _dims(value_info), dtype)


def read_interface(path: str | os.PathLike[str]) -> OnnxInterface:
    """The runtime inputs and the outputs of the ONNX file ``path`` (its weights are not loaded from
    external data files). A file that is not an ONNX model is a :class:`ModelError` naming it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX file {path} not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = tuple(_spec(v, path) for v in graph.input if v.name not in initializers)
    outputs = tuple(_spec(v, path) for v in graph.output)
    if not inputs or not outputs:
        raise ModelError(
            f"{path}: the graph has {len(inputs)} runtime input(s) and {len(outputs)} output(s); a model takes at "
            "least one of each"
        )
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInterface(path, inputs, outputs, int(opset), proto.producer_name or "")


def shape_problems(
    interface: OnnxInterface, shapes: Mapping[str, Sequence[int]], where: str = "input_shapes"
) -> list[str]:
    """Why ``shapes`` (input name → declared shape) cannot feed the model ([] when they can): an unknown
    input, a rank or fixed size that differs, a dimension that is not positive, a dynamic dimension left
    without a declared shape. Each problem names the input and the dimension."""
    problems = []
    known = interface.input_names
    for name, shape in shapes.items():
        if name not in known:
            problems.append(
                f"{where} names input {name!r}, which the model does not have (its inputs: {', '.join(known)})"
            )
            continue
        spec = interface.input(name)
        if len(shape) != len(spec.dims):
            problems.append(
                f"input {name!r} is {spec.describe()} ({len(spec.dims)} dims); {where} declares {list(shape)} "
                f"({len(shape)} dims)"
            )
            continue
        for i, (want, got) in enumerate(zip(spec.dims, shape, strict=True)):
            if int(got) < 1:
                problems.append(f"input {name!r} dim {spec.dim_name(i)}: {where} declares {got}; sizes are >= 1")
            elif isinstance(want, int) and want != int(got):
                problems.append(
                    f"input {name!r} dim {i} is fixed to {want} in the file ({spec.describe()}); {where} declares {got}"
                )
    for spec in interface.inputs:
        if spec.dynamic and spec.name not in shapes:
            dims = ", ".join(spec.dim_name(i) for i in spec.dynamic)
            example = "[" + ", ".join(str(d) if isinstance(d, int) else "N" for d in spec.dims) + "]"
            problems.append(
                f"input {spec.name!r} ({spec.describe()}) has dynamic dimension(s) {dims} and no declared shape; "
                f"declare it: {where} = {{ {spec.name} = {example} }} with N the size to build and measure at"
            )
    return problems


def concrete_shapes(interface: OnnxInterface, shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Every runtime input's shape: the declared one, else the file's (all fixed). Raises :class:`ModelError`
    listing :func:`shape_problems`."""
    problems = shape_problems(interface, shapes)
    if problems:
        raise ModelError(f"{interface.path}: " + "; ".join(problems))
    return {
        s.name: [int(d) for d in shapes[s.name]] if s.name in shapes else [int(d) for d in s.dims]  # type: ignore[arg-type]
        for s in interface.inputs
    }


def fix_input_shapes(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], shapes: Mapping[str, Sequence[int]]
) -> OnnxInterface:
    """Write ``src`` to ``dst`` with every runtime input fixed to ``shapes`` (all inputs; see
    :func:`concrete_shapes`) and the intermediate and output shapes inferred again; the graph is otherwise
    unchanged. Returns the copy's interface. Atomic: ``dst`` appears complete or not at all."""
    import tempfile

    import onnx

    src, dst = Path(src), Path(dst)
    interface = read_interface(src)
    full = concrete_shapes(interface, shapes)
    try:
        proto = onnx.load(str(src))  # with external data, if any
    except Exception as e:
        raise ModelError(f"{src}: cannot load its weights ({type(e).__name__}: {e})") from None
    for value in proto.graph.input:
        if value.name not in full:
            continue
        dims = value.type.tensor_type.shape.dim
        for d, size in zip(dims, full[value.name], strict=True):
            d.Clear()
            d.dim_value = int(size)
    # shapes derived from the old dynamic dims are stale: drop them and infer them again (an output keeps its
    # rank and fixed sizes; its named dims become unknown until inference sizes them)
    del proto.graph.value_info[:]
    for value in proto.graph.output:
        for d in value.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as e:  # inference is an optimization here: the runtimes infer shapes themselves
        raise ModelError(
            f"{src}: shape inference at the declared shapes {full} failed ({type(e).__name__}: {e})"
        ) from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        large = proto.ByteSize() > 1_800_000_000  # protobuf's 2 GiB limit: weights go beside the file
        onnx.save_model(
            proto, tmp, save_as_external_data=large, all_tensors_to_one_file=True, location=f"{dst.name}.data"
        )
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return read_interface(dst)

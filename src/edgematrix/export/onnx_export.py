"""PyTorch → ONNX export with simplification and a numeric check against torch.

Exporter choice (torch 2.13): ``torch.onnx.export(..., dynamo=True)``, the torch.export-based
exporter that is torch's default since 2.9. It runs offline, needs ``onnxscript`` (and
``onnx_ir``, which it pulls in) and gives a clean graph (no Constant/Identity clutter). It emits
opset 18 natively; a lower ``opset`` is reached through ONNX's version converter, and the opset
actually written is what :class:`ExportResult` reports. The legacy TorchScript exporter
(``dynamo=False``) still works in 2.13 but is deprecated and slated for removal; it is kept
reachable as ``exporter="torchscript"`` for models that ``torch.export`` cannot trace.

Batch size is static (the shape given); edge engines are built for one shape anyway.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgematrix.errors import EdgeMatrixError, ModelError

if TYPE_CHECKING:  # heavy imports stay lazy
    import onnx
    import torch

ExporterName = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
MIN_OPSET = 17
_PROTOBUF_LIMIT = 2**31  # a ModelProto above 2 GiB cannot be one self-contained file


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    simplified: bool
    max_abs_diff: float
    atol: float
    rtol: float
    input_name: str
    output_names: tuple[str, ...]
    exporter: str = "dynamo"


def export_onnx(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    path: str | os.PathLike[str],
    *,
    output_names: Sequence[str] = ("output",),
    input_name: str = "input",
    opset: int = 17,
    simplify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    exporter: ExporterName = "dynamo",
) -> ExportResult:
    """Export ``model`` (in eval mode) to a self-contained ONNX file at ``path``.

    The file is simplified with onnxslim (when ``simplify``; a failed simplification keeps the
    exported graph, warns and reports ``simplified=False``), then ONNX Runtime's outputs are
    compared with torch's on a seeded random input. The file appears at ``path`` only once it
    passed the check, written atomically; a failed check raises :class:`ModelError`.
    """
    if exporter not in EXPORTERS:
        raise EdgeMatrixError(f"unknown exporter {exporter!r}; available: {', '.join(EXPORTERS)}")
    if opset < MIN_OPSET:
        raise EdgeMatrixError(f"opset {opset} asked; edgematrix exports opset >= {MIN_OPSET}. Pass opset={MIN_OPSET}.")
    if not input_shape or any(int(d) <= 0 for d in input_shape):
        raise EdgeMatrixError(f"input_shape must be positive dimensions, e.g. (1, 3, 288, 800); got {input_shape!r}")
    if atol < 0 or rtol < 0:
        raise EdgeMatrixError(f"tolerances must be >= 0; got atol={atol}, rtol={rtol}")
    output_names = tuple(output_names)
    if len(set(output_names)) != len(output_names) or input_name in output_names:
        raise EdgeMatrixError(f"input/output names must be distinct; got {input_name!r} and {output_names}")
    was_training = model.training
    model.eval()
    try:
        return _export_onnx_impl(
            model,
            tuple(int(d) for d in input_shape),
            Path(path),
            output_names=output_names,
            input_name=input_name,
            opset=opset,
            simplify=simplify,
            atol=atol,
            rtol=rtol,
            seed=seed,
            exporter=exporter,
        )
    finally:
        model.train(was_training)  # the caller's mode is restored, whatever happened


def _export_onnx_impl(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    *,
    output_names: tuple[str, ...],
    input_name: str,
    opset: int,
    simplify: bool,
    atol: float,
    rtol: float,
    seed: int,
    exporter: str,
) -> ExportResult:
    import onnx
    import torch

    example = _seeded_input(input_shape, seed)
    with torch.no_grad():
        reference = _as_tuple(model(torch.from_numpy(example)))
    if len(reference) != len(output_names):
        raise EdgeMatrixError(
            f"the model returns {len(reference)} output(s) but {len(output_names)} output name(s) were given "
            f"({', '.join(output_names)}); pass one name per output."
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgematrix-export-") as tmp:
        raw = Path(tmp) / "exported.onnx"
        _torch_export(model, torch.from_numpy(example), raw, input_name, output_names, opset, exporter)
        proto = onnx.load(str(raw), load_external_data=True)

    simplified = False
    if simplify:
        try:
            proto = _simplify(proto)
            simplified = True
        except Exception as exc:  # onnxslim failing is not fatal: the exported graph is valid
            warnings.warn(
                f"onnxslim could not simplify the export of {type(model).__name__} ({type(exc).__name__}: {exc}); "
                "keeping the un-simplified graph (simplified=False).",
                RuntimeWarning,
                stacklevel=3,
            )

    if proto.ByteSize() >= _PROTOBUF_LIMIT:
        raise ModelError(
            f"the exported model is {proto.ByteSize() / 2**30:.2f} GiB; a self-contained ONNX file must stay "
            "under 2 GiB. Reduce the model or export it with external data by hand."
        )
    actual_opset = _default_opset(proto)

    # Write next to the destination, check, then move into place: readers never see a partial
    # or unchecked file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        onnx.save_model(proto, str(tmp_path))
        load_onnx(tmp_path)
        diff = _check_numerics_impl(tmp_path, reference, example, input_name, output_names, atol=atol, rtol=rtol)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)

    return ExportResult(
        path=path,
        opset=actual_opset,
        simplified=simplified,
        max_abs_diff=diff,
        atol=atol,
        rtol=rtol,
        input_name=input_name,
        output_names=output_names,
        exporter=exporter,
    )


def _torch_export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: tuple[str, ...],
    opset: int,
    exporter: str,
) -> None:
    import torch

    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise EdgeMatrixError(
                "torch's dynamo ONNX exporter needs the 'onnxscript' package, which is not installed. "
                "Install it (pip install onnxscript) or pass exporter='torchscript'."
            ) from exc
    # The exporters log progress and version-conversion notes on stdout/stderr and warn about
    # their own internals; keep them quiet unless the export fails.
    log = io.StringIO()
    onnx_logger = logging.getLogger("torch.onnx")  # its handlers write to the real stderr
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    input_names=[input_name],
                    output_names=list(output_names),
                    opset_version=opset,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                    optimize=True,
                )
            else:
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    input_names=[input_name],
                    output_names=list(output_names),
                    opset_version=opset,
                    dynamo=False,
                    do_constant_folding=True,
                )
    except Exception as exc:
        tail = log.getvalue()[-2000:]
        raise ModelError(
            f"torch.onnx.export ({exporter}) failed for {type(model).__name__} with input shape "
            f"{tuple(example.shape)}: {type(exc).__name__}: {exc}\n{tail}\n"
            + (
                "If torch.export cannot trace the model, try exporter='torchscript'."
                if exporter == "dynamo"
                else "Check that the model's forward takes one tensor and returns tensors."
            )
        ) from exc
    finally:
        onnx_logger.setLevel(level)


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimmed = onnxslim.slim(proto)
    if slimmed is None:
        raise RuntimeError("onnxslim returned no model")
    return slimmed


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelError("the exported model declares no default-domain opset; this is an exporter bug, report it.")


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load and check an ONNX file; a missing or corrupt file raises :class:`ModelError`."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist (or is not a file). Export it first (export_onnx).")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ModelError(
            f"ONNX model {path} cannot be parsed ({type(exc).__name__}: {exc}); the file is corrupt or not ONNX. "
            "Re-export it."
        ) from exc
    try:
        # check the file itself: works for models above 2 GiB and with external data
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelError(f"ONNX model {path} fails onnx.checker ({type(exc).__name__}: {exc}). Re-export it.") from exc
    if not proto.graph.node:
        raise ModelError(f"ONNX model {path} has an empty graph; the file is truncated or not a model. Re-export it.")
    return proto


def check_numerics(
    onnx_path: str | os.PathLike[str],
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    *,
    atol: float,
    rtol: float,
    seed: int = 0,
) -> float:
    """Max |ORT - torch| over all outputs on a seeded random input.

    Raises :class:`ModelError` naming the first output outside ``|ort - torch| <= atol + rtol*|torch|``.
    """
    import torch

    if atol < 0 or rtol < 0:
        raise EdgeMatrixError(f"tolerances must be >= 0; got atol={atol}, rtol={rtol}")
    proto = load_onnx(onnx_path)
    if len(proto.graph.input) != 1:
        raise ModelError(f"{onnx_path} has {len(proto.graph.input)} inputs; check_numerics handles one input.")
    input_name = proto.graph.input[0].name
    output_names = tuple(o.name for o in proto.graph.output)
    example = _seeded_input(tuple(int(d) for d in input_shape), seed)
    was_training = model.training
    try:
        with torch.no_grad():
            reference = _as_tuple(model.eval()(torch.from_numpy(example)))
    finally:
        model.train(was_training)
    if len(reference) != len(output_names):
        raise ModelError(
            f"{onnx_path} has {len(output_names)} outputs but the torch model returns {len(reference)}; "
            "they are not the same model. Re-export it."
        )
    return _check_numerics_impl(Path(onnx_path), reference, example, input_name, output_names, atol=atol, rtol=rtol)


def _check_numerics_impl(
    onnx_path: Path,
    reference: tuple[torch.Tensor, ...],
    example: np.ndarray,
    input_name: str,
    output_names: tuple[str, ...],
    *,
    atol: float,
    rtol: float,
) -> float:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(list(output_names), {input_name: example})
    except Exception as exc:
        raise ModelError(
            f"ONNX Runtime could not run {onnx_path} ({type(exc).__name__}: {exc}). "
            "The export produced a graph ORT rejects; try another opset or exporter."
        ) from exc

    max_diff = 0.0
    for name, ort_out, torch_out in zip(output_names, got, reference, strict=True):
        want = torch_out.detach().cpu().numpy()
        if ort_out.shape != want.shape:
            raise ModelError(
                f"output {name!r} of {onnx_path} has shape {ort_out.shape}, torch gives {want.shape}. Re-export it."
            )
        diff = np.abs(ort_out.astype(np.float64) - want.astype(np.float64))
        bound = atol + rtol * np.abs(want.astype(np.float64))
        worst = float(diff.max()) if diff.size else 0.0
        if not np.all(diff <= bound):  # also catches NaN
            excess = int(np.argmax(diff - bound)) if diff.size else 0
            raise ModelError(
                f"output {name!r} of {onnx_path} differs from torch: max |ort - torch| = {worst:.3g}, "
                f"outside atol={atol:g} + rtol={rtol:g}*|torch| (worst element {excess}: ort "
                f"{ort_out.reshape(-1)[excess]:.6g} vs torch {want.reshape(-1)[excess]:.6g}). "
                "The ONNX graph does not compute what the model does: check the export, or loosen the tolerance."
            )
        max_diff = max(max_diff, worst)
    return max_diff


def _seeded_input(input_shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(input_shape, dtype=np.float32)


def _as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, list | tuple) and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(out)
    raise EdgeMatrixError(f"the model returns {type(out).__name__}; export_onnx needs a tensor or a tuple of tensors.")

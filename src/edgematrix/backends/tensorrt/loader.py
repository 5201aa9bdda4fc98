"""trtexec command lines from typed options (Polygraphy style: the loader says *what* to build).

Nothing here imports TensorRT: the command is data, built and checked on any host, run by
:mod:`edgematrix.backends.tensorrt.runner` where ``trtexec`` exists (every JetPack / TensorRT image).

Flag names are trtexec's own (``trtexec --help`` of TensorRT 8.6 and 10.x). Differences handled:

- workspace: ``--memPoolSize=workspace:<MiB>`` from TensorRT 8.4 on; ``--workspace=<MiB>`` before
  (TensorRT 10 removed ``--workspace``).
- build only: ``--skipInference`` from 8.6 on; ``--buildOnly`` before.
- ``--exportLayerInfo`` / ``--profilingVerbosity=detailed`` need TensorRT 8.4 or later.
- ``--explicitBatch`` is never passed (ONNX networks are explicit-batch since TensorRT 8; TensorRT
  10 rejects the flag).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgematrix.errors import BackendError, ModelError

BuildPrecision = Literal["fp32", "fp16", "int8"]
Version = tuple[int, int, int]

#: assumed when the version cannot be read (flags valid for TensorRT 8.6 and 10.x alike)
DEFAULT_VERSION: Version = (10, 0, 0)

_Q_DQ = {"QuantizeLinear", "DequantizeLinear"}


def parse_trtexec_version(text: str) -> Version | None:
    """``&&&& RUNNING TensorRT.trtexec [TensorRT v100600] ...`` → (10, 6, 0); ``v8601`` → (8, 6, 1)."""
    match = re.search(r"TensorRT v(\d{4,6})\b", text)
    if not match:
        return None
    n = int(match.group(1))
    if n >= 100000:  # TensorRT 10+: MMmmpp
        return n // 10000, (n // 100) % 100, n % 100
    return n // 1000, (n // 100) % 10, n % 100  # TensorRT 7/8: Mmpp


def onnx_has_qdq(path: str | os.PathLike[str]) -> bool:
    """True when the ONNX graph carries QuantizeLinear/DequantizeLinear (explicit quantization)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    return any(node.op_type in _Q_DQ for node in model.graph.node)


@dataclass(frozen=True)
class TrtexecBuildOptions:
    """What to build (and, unless ``build_only``, time) with trtexec.

    - ``precision``: ``fp16`` → ``--fp16``. ``int8`` → ``--int8`` (plus ``--fp16`` when
      ``fp16_fallback``, so layers outside Q/DQ run in FP16 rather than FP32). INT8 needs either a
      QDQ ONNX (explicit quantization, detected from the graph) or ``calibration_cache`` (``--calib``,
      implicit quantization of an FP32 ONNX); without either trtexec would calibrate with random
      scales, so that is refused.
    - ``dla_core`` → ``--useDLACore=N`` (+ ``--allowGPUFallback`` when ``allow_gpu_fallback``).
      The DLA runs FP16 / INT8 only.
    - ``timing_cache`` → ``--timingCacheFile`` (reused and updated across builds).
    - ``workspace_mib`` → ``--memPoolSize=workspace:N`` (``--workspace=N`` before TensorRT 8.4).
    - ``layer_info`` / ``profile`` / ``times``: ``--exportLayerInfo`` (with
      ``--profilingVerbosity=detailed``), ``--exportProfile`` (with ``--separateProfileRun`` so the
      per-layer profiling does not slow the timed run) and ``--exportTimes``.
    - timing: ``iterations`` (``--iterations``), ``warmup_ms`` (``--warmUp``), ``duration_s``
      (``--duration``), ``avg_runs`` (``--avgRuns``); ``use_spin_wait`` (``--useSpinWait``, stabler
      timing), ``use_cuda_graph`` (``--useCudaGraph``), ``no_data_transfers``
      (``--noDataTransfers``: GPU-only latency).
    - ``shapes``: input name → shape for ``--shapes`` (models with dynamic dimensions).
    - ``load_inputs`` / ``export_output``: ``--loadInputs`` (input name → raw C-order bytes of the
      input, as trtexec reads them) and ``--exportOutput`` (the output tensors as JSON): one
      inference on given data, whose outputs :func:`~edgematrix.backends.tensorrt.outputs.parse_export_output` reads.
    - ``extra_args``: passed through verbatim, after the generated flags.
    """

    onnx: Path | None = None
    engine: Path | None = None  # --loadEngine: time a prebuilt engine instead of building one
    precision: BuildPrecision = "fp16"
    fp16_fallback: bool = True
    calibration_cache: Path | None = None
    dla_core: int | None = None
    allow_gpu_fallback: bool = True
    timing_cache: Path | None = None
    workspace_mib: int | None = None
    save_engine: Path | None = None
    build_only: bool = False
    layer_info: Path | None = None
    profile: Path | None = None
    times: Path | None = None
    profiling_verbosity: Literal["detailed", "layer_names_only", "none"] = "detailed"
    separate_profile_run: bool = True
    iterations: int | None = None
    warmup_ms: int | None = None
    duration_s: float | None = None
    avg_runs: int | None = None
    use_spin_wait: bool = True
    use_cuda_graph: bool = False
    no_data_transfers: bool = False
    shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    load_inputs: Mapping[str, Path] = field(default_factory=dict)
    export_output: Path | None = None
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.onnx is None) == (self.engine is None):
            raise BackendError("give exactly one of onnx= (build an engine) or engine= (time a prebuilt engine)")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise BackendError(f"precision {self.precision!r} is not one of fp32, fp16, int8")
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise BackendError(f"dla_core must be >= 0 (Orin has DLA cores 0 and 1), got {self.dla_core}")
            if self.precision == "fp32":
                raise BackendError("the DLA runs FP16 or INT8 only; build with precision='fp16' or 'int8' for dla_core")
        for name in ("workspace_mib", "iterations", "warmup_ms", "avg_runs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise BackendError(f"{name} must be >= 0, got {value}")
        if self.duration_s is not None and self.duration_s < 0:
            raise BackendError(f"duration_s must be >= 0, got {self.duration_s}")
        if self.build_only and (self.times or self.profile or self.export_output):
            raise BackendError(
                "build_only builds without running inference: times / profile / export_output would stay empty"
            )
        for input_name, shape in self.shapes.items():
            if not shape or any(int(d) < 1 for d in shape):
                raise BackendError(f"shape of input {input_name!r} must be positive sizes, got {list(shape)}")


def build_command(
    options: TrtexecBuildOptions,
    *,
    executable: str | os.PathLike[str] = "trtexec",
    version: Version | None = None,
    explicit_quantization: bool | None = None,
) -> list[str]:
    """The trtexec argv for ``options`` on TensorRT ``version`` (default: 10.x flags).

    ``explicit_quantization``: whether the ONNX has Q/DQ nodes; read from the file when ``None``.
    """
    version = version or DEFAULT_VERSION
    o = options
    argv = [str(executable)]
    if o.onnx is not None:
        argv.append(f"--onnx={o.onnx}")
    else:
        argv.append(f"--loadEngine={o.engine}")

    if o.onnx is not None:  # build flags (ignored by trtexec for a loaded engine, so not passed)
        if o.precision == "int8":
            qdq = onnx_has_qdq(o.onnx) if explicit_quantization is None else explicit_quantization
            if qdq and o.calibration_cache is not None:
                raise BackendError(
                    f"{o.onnx} is a QDQ model (explicit quantization): TensorRT ignores a calibration cache for it. "
                    "Drop calibration_cache, or pass the FP32 ONNX with the cache"
                )
            if not qdq and o.calibration_cache is None:
                raise BackendError(
                    f"INT8 from {o.onnx} needs scales: it has no QuantizeLinear/DequantizeLinear nodes and no "
                    "calibration_cache was given (trtexec would use random dummy scales, which gives wrong outputs). "
                    "Quantize it first (edgematrix.optimize.quantize, QuantizeConfig.tensorrt()) or pass a "
                    "calibration cache written by TensorRT's calibrator"
                )
            argv.append("--int8")
            if o.fp16_fallback:
                argv.append("--fp16")
            if o.calibration_cache is not None:
                argv.append(f"--calib={o.calibration_cache}")
        elif o.precision == "fp16":
            argv.append("--fp16")
        if o.workspace_mib is not None:
            if version >= (8, 4, 0):
                argv.append(f"--memPoolSize=workspace:{o.workspace_mib}")
            else:
                argv.append(f"--workspace={o.workspace_mib}")
        if o.timing_cache is not None:
            argv.append(f"--timingCacheFile={o.timing_cache}")
        if o.save_engine is not None:
            argv.append(f"--saveEngine={o.save_engine}")
        if o.shapes:
            spec = ",".join(f"{n}:{'x'.join(str(int(d)) for d in s)}" for n, s in o.shapes.items())
            argv.append(f"--shapes={spec}")
        if o.layer_info is not None or o.profile is not None:
            if version < (8, 4, 0) and o.layer_info is not None:
                raise BackendError(
                    f"--exportLayerInfo needs TensorRT 8.4 or later; this trtexec is {'.'.join(map(str, version))}. "
                    "Without it the realized precision cannot be checked"
                )
            argv.append(f"--profilingVerbosity={o.profiling_verbosity}")
    elif o.shapes:
        spec = ",".join(f"{n}:{'x'.join(str(int(d)) for d in s)}" for n, s in o.shapes.items())
        argv.append(f"--shapes={spec}")

    if o.dla_core is not None:  # also needed at load time: the engine runs on that core
        argv.append(f"--useDLACore={o.dla_core}")
        if o.allow_gpu_fallback and o.onnx is not None:
            argv.append("--allowGPUFallback")

    if o.layer_info is not None:
        argv.append(f"--exportLayerInfo={o.layer_info}")
    if o.build_only:
        argv.append("--skipInference" if version >= (8, 6, 0) else "--buildOnly")
    else:
        if o.times is not None:
            argv.append(f"--exportTimes={o.times}")
        if o.profile is not None:
            argv.append(f"--exportProfile={o.profile}")
            if o.separate_profile_run:
                argv.append("--separateProfileRun")
        for flag, value in (
            ("--iterations", o.iterations),
            ("--warmUp", o.warmup_ms),
            ("--duration", o.duration_s),
            ("--avgRuns", o.avg_runs),
        ):
            if value is not None:
                argv.append(f"{flag}={value:g}" if isinstance(value, float) else f"{flag}={value}")
        if o.load_inputs:
            spec = ",".join(f"{_quoted(n)}:{p}" for n, p in o.load_inputs.items())
            argv.append(f"--loadInputs={spec}")
        if o.export_output is not None:
            argv.append(f"--exportOutput={o.export_output}")
        if o.use_spin_wait:
            argv.append("--useSpinWait")
        if o.use_cuda_graph:
            argv.append("--useCudaGraph")
        if o.no_data_transfers:
            argv.append("--noDataTransfers")
    argv.extend(o.extra_args)
    return argv


def _quoted(name: str) -> str:
    """An input name for ``--loadInputs``: wrapped in single quotes when it holds ``:`` or ``,`` (trtexec's rule)."""
    return f"'{name}'" if ":" in name or "," in name else name


def with_outputs(options: TrtexecBuildOptions, workdir: Path, stem: str = "trtexec") -> TrtexecBuildOptions:
    """``options`` with the export files placed in ``workdir`` (those not set already)."""
    changes: dict[str, Any] = {}
    if options.layer_info is None and options.onnx is not None:
        changes["layer_info"] = workdir / f"{stem}.layers.json"
    if not options.build_only:
        if options.times is None:
            changes["times"] = workdir / f"{stem}.times.json"
        if options.profile is None:
            changes["profile"] = workdir / f"{stem}.profile.json"
    if options.onnx is not None and options.save_engine is None:
        changes["save_engine"] = workdir / f"{stem}.engine"
    return replace(options, **changes)

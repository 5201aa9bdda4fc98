"""OpenVINO runner: ONNX files (FP32 or QDQ INT8) read and compiled by OpenVINO, for x86 CPUs.

Precision: OpenVINO's CPU plugin computes float layers in bf16 by default wherever the CPU has
native bf16 (AVX512_BF16 or AMX). On the 2-core AMD EPYC (AVX-512 BF16) OpenVINO 2026.4 compiles
an FP32 ResNet-18 with INFERENCE_PRECISION_HINT=bf16 and runs all 21 Convolutions and 2
FullyConnected layers in bf16. ``exact_fp32=True`` sets the hint to f32 so an FP32 reference really
is FP32. A QDQ INT8 model runs its quantized Convolutions / FullyConnected layers in u8 either way;
the hint then only applies to the layers left in float. ``facts()`` reports the precision that
was actually compiled (read back from the compiled model), never the one asked for.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.backends.onnxruntime.runner import graph_precision
from edgematrix.errors import BackendError, ModelError
from edgematrix.extras import require_runtime
from edgematrix.measure.environment import usable_physical_cores

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")

#: OpenVINO type names → the names ``facts()["inference_precision"]`` uses (OpenVINO's own short names)
_PRECISION_NAMES = {"f32": "f32", "bf16": "bf16", "f16": "f16", "undefined": "undefined", "dynamic": "undefined"}

#: runtime layer types counted in ``facts()["runtime_precisions"]`` (where the compute is)
_COMPUTE_LAYERS = {"Convolution", "Deconvolution", "FullyConnected", "MatMul", "GroupConvolution"}

_INSTALL_HINT = "pip install edgematrix[openvino] (or pip install openvino)"


def require_openvino() -> None:
    """Raise :class:`~edgematrix.extras.MissingExtraError` unless ``openvino`` is installed (cheap: no import)."""
    require_runtime("openvino", needed_for="the openvino backend")


def _import_openvino() -> Any:
    require_openvino()
    try:
        import openvino
    except ImportError as exc:
        raise BackendError(
            f"openvino is installed but cannot be imported ({exc}); reinstall it: {_INSTALL_HINT}"
        ) from exc
    return openvino


def _ov_message(exc: BaseException) -> str:
    """OpenVINO's exception text without its ``Exception from src/...`` source-location lines."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(("Exception from src/", "Check '"))]
    return " ".join(kept) or " ".join(ln for ln in lines if ln)


def _precision_name(ov_type: Any) -> str:
    name = ov_type.get_type_name() if hasattr(ov_type, "get_type_name") else str(ov_type)
    return _PRECISION_NAMES.get(name, name)


def _plain(value: Any) -> str:
    """An OpenVINO property value as a plain string (``PerformanceMode.LATENCY`` → ``LATENCY``)."""
    name = getattr(value, "name", None)
    return str(name if isinstance(name, str) else value).rsplit(".", 1)[-1]


class CompiledModelFromOnnx:
    """Callable that reads an ONNX file with ``openvino.Core().read_model`` and compiles it.

    ``intra_op_threads=0`` means "physical cores this process may use" (INFERENCE_NUM_THREADS);
    the number asked is in :attr:`threads_used` after the call. ``exact_fp32`` sets
    INFERENCE_PRECISION_HINT=f32; without it OpenVINO picks (bf16 on CPUs with native bf16).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "CPU",
        intra_op_threads: int = 0,
        exact_fp32: bool = False,
        performance_hint: str = "LATENCY",
    ) -> None:
        if intra_op_threads < 0:
            raise BackendError(f"intra_op_threads must be >= 0 (0 = physical cores), got {intra_op_threads}")
        if performance_hint not in PERFORMANCE_HINTS:
            raise BackendError(
                f"unknown performance_hint {performance_hint!r}; choose one of {', '.join(PERFORMANCE_HINTS)}"
            )
        if not device:
            raise BackendError("device is empty; give an OpenVINO device such as 'CPU'")
        self.path = Path(path)
        self.output_names: set[str] = set()  # the read model's output names (filled when called)
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.exact_fp32 = exact_fp32
        self.performance_hint = performance_hint
        self.threads_used: int | None = None

    def config(self, supported: Mapping[str, Any]) -> dict[str, Any]:
        """Compile properties for a device whose SUPPORTED_PROPERTIES are ``supported``."""
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.performance_hint}
        if "INFERENCE_NUM_THREADS" in supported:
            self.threads_used = self.intra_op_threads or usable_physical_cores()
            config["INFERENCE_NUM_THREADS"] = self.threads_used
        elif self.intra_op_threads:
            raise BackendError(
                f"OpenVINO device {self.device!r} has no INFERENCE_NUM_THREADS property; leave intra_op_threads at 0"
            )
        if self.exact_fp32:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        return config

    def __call__(self) -> Any:
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "does not exist"
            raise ModelError(
                f"ONNX model {str(self.path)!r} {what}; export the model first "
                "(edgematrix export / the cell's export stage) or fix the path"
            )
        ov = _import_openvino()
        core = ov.Core()
        self._check_device(core)
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:
            size = self.path.stat().st_size
            raise ModelError(
                f"OpenVINO {ov.get_version()} cannot read {str(self.path)!r} ({size} bytes): {_ov_message(exc)}. "
                "The file is corrupt, truncated or not an ONNX model (re-export it, or check it with "
                "onnx.checker.check_model), or it uses an op this OpenVINO cannot convert"
            ) from exc
        # the graph's own output names: compiling may add names of fused tensors to an output port (an ONNX
        # output "scores" computed by Sigmoid of "cls.t" came back as "cls.t" from get_any_name())
        self.output_names = {name for port in model.outputs for name in port.get_names()}
        try:
            supported = core.get_property(self.device, "SUPPORTED_PROPERTIES")
            return core.compile_model(model, self.device, self.config(supported))
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"OpenVINO failed to compile {str(self.path)!r} for {self.device}: {_ov_message(exc)}"
            ) from exc

    def _check_device(self, core: Any) -> None:
        physical = self.device.split(".", 1)[0]
        if ":" in physical or physical in ("AUTO", "MULTI", "HETERO", "BATCH"):
            return  # virtual devices resolve their targets themselves
        available = core.available_devices
        if self.device not in available and physical not in available:
            raise BackendError(
                f"OpenVINO device {self.device!r} is not available here; available: {', '.join(available) or '(none)'}. "
                "GPU needs an Intel GPU with its OpenCL driver (libOpenCL.so.1), NPU an Intel NPU driver"
            )


@backends.register("openvino")
class OpenvinoRunner(Runner):
    """Runs an ONNX model (FP32 or QDQ INT8) with OpenVINO, by default on the CPU.

    ``path`` is an ONNX file (the loader options below then apply) or a ready loader such as
    :class:`CompiledModelFromOnnx` (any callable returning an ``openvino.CompiledModel``). One
    ``InferRequest`` is created at activation and reused by every ``infer`` (lowest latency); it is
    released on deactivation. ``exact_fp32=True`` keeps float layers in f32 (see the module doc).
    """

    backend_name = "openvino"
    runtime_modules = ("openvino",)

    def __init__(
        self,
        path: str | os.PathLike[str] | Callable[[], Any],
        *,
        name: str | None = None,
        device: str = "CPU",
        intra_op_threads: int = 0,
        exact_fp32: bool = False,
        performance_hint: str = "LATENCY",
    ) -> None:
        require_openvino()
        super().__init__(name)
        if callable(path):
            self.loader = path
        else:
            self.loader = CompiledModelFromOnnx(
                path,
                device=device,
                intra_op_threads=intra_op_threads,
                exact_fp32=exact_fp32,
                performance_hint=performance_hint,
            )
        self.compiled_model: Any = None
        self.request: Any = None
        self._output_names: list[str] = []
        self._compiled_facts: dict[str, Fact] = {}
        self._precision: str | None = None

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """The target's thread count and exact FP32 for every role.

        OpenVINO would otherwise run the float layers in bf16 on CPUs that have it, and the FP32
        reference would not be what it says. For an INT8 QDQ model the quantized layers run in u8
        either way; with the rest in f32 it was also faster here (ORT/OV INT8 p50 1.16x exact vs
        1.12x default, benchmarks/openvino_vs_ort.py).
        """
        return {"intra_op_threads": int(target.get("threads", 0)), "exact_fp32": True}

    def activate_impl(self) -> None:
        self.compiled_model = self.loader()
        graph_names: set[str] = getattr(self.loader, "output_names", set())
        self._output_names = [
            min(set(o.get_names()) & graph_names or {o.get_any_name()}) for o in self.compiled_model.outputs
        ]
        self._compiled_facts = self._read_compiled_facts()
        self.request = self.compiled_model.create_infer_request()

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        meta = {}
        for port in self.compiled_model.inputs:
            input_name = port.get_any_name()
            ov_type = port.get_element_type()
            try:
                dtype = np.dtype(ov_type.to_dtype())
            except Exception:
                raise BackendError(
                    f"input {input_name!r} has OpenVINO type {ov_type.get_type_name()}, which has no numpy dtype"
                ) from None
            dims = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            meta[input_name] = TensorMeta(dtype, dims)
        return meta

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            # share_inputs: no copy of the (validated) feed; share_outputs=False: results are copies,
            # so they survive the next infer on the reused request.
            results = self.request.infer(feed, share_inputs=True, share_outputs=False)
        except Exception as exc:
            raise BackendError(
                f"runner {self.name!r}: OpenVINO failed to run: {type(exc).__name__}: {_ov_message(exc)}"
            ) from exc
        return dict(zip(self._output_names, results.to_tuple(), strict=True))

    def release_impl(self) -> None:
        self.request = None
        self.compiled_model = None
        self._output_names = []

    def _read_compiled_facts(self) -> dict[str, Fact]:
        """What the compiled model actually uses, read back from its properties and runtime graph."""
        import openvino as ov

        cm = self.compiled_model
        facts: dict[str, Fact] = {"build": ov.get_version()}
        supported = cm.get_property("SUPPORTED_PROPERTIES")
        for key, fact in (("INFERENCE_NUM_THREADS", "intra_op_threads"), ("NUM_STREAMS", "num_streams")):
            if key in supported:
                facts[fact] = int(cm.get_property(key))
        if "INFERENCE_PRECISION_HINT" in supported:
            facts["inference_precision"] = _precision_name(cm.get_property("INFERENCE_PRECISION_HINT"))
        if "PERFORMANCE_HINT" in supported:
            facts["performance_hint"] = _plain(cm.get_property("PERFORMANCE_HINT"))
        if "ENABLE_CPU_PINNING" in supported:
            facts["cpu_pinning"] = int(bool(cm.get_property("ENABLE_CPU_PINNING")))
        if "EXECUTION_DEVICES" in supported:
            facts["execution_devices"] = ",".join(cm.get_property("EXECUTION_DEVICES"))
        facts["runtime_precisions"] = self._runtime_precisions()
        return facts

    def _runtime_precisions(self) -> str:
        """Compute layers per runtime precision, e.g. ``bf16:23`` or ``u8:23`` (from the runtime model)."""
        counts: Counter[str] = Counter()
        try:
            for op in self.compiled_model.get_runtime_model().get_ordered_ops():
                info = op.get_rt_info()
                if "layerType" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS:
                    counts[info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"] += 1
        except Exception:  # not every device exposes a runtime model
            return "unknown"
        return ",".join(f"{p}:{n}" for p, n in counts.most_common()) or "none"

    def facts_impl(self) -> Mapping[str, Fact]:
        try:
            version = importlib.metadata.version("openvino")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        facts: dict[str, Fact] = {"version": version}
        model_path = getattr(self.loader, "path", None)
        if model_path is not None:
            facts["model"] = str(model_path)
            if Path(model_path).is_file():
                facts["model_bytes"] = Path(model_path).stat().st_size
        if self._precision is None:
            self._precision = graph_precision(model_path) if model_path is not None else "unknown"
        facts["precision"] = self._precision
        for attr, fact in (("device", "device"), ("performance_hint", "performance_hint")):
            if hasattr(self.loader, attr):
                facts[fact] = str(getattr(self.loader, attr))
        if hasattr(self.loader, "exact_fp32"):
            facts["exact_fp32"] = int(bool(self.loader.exact_fp32))
        threads = getattr(self.loader, "threads_used", None)
        if threads is not None:
            facts["intra_op_threads"] = int(threads)
        facts.update(self._compiled_facts)  # read back from the compiled model: what was really used
        return facts

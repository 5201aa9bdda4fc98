"""A serialized TensorRT engine run in-process through Polygraphy's TensorRT runner.

Polygraphy (NVIDIA/TensorRT ``tools/Polygraphy``, pure Python, the ``[tensorrt]`` extra) loads the
engine bytes with ``EngineFromBytes`` (``trt.Runtime.deserialize_cuda_engine``) and runs numpy
feeds with ``TrtRunner``: inputs copied to the device, shapes set, ``execute_async_v3`` on its own
CUDA stream, outputs through an output allocator, copied back. It imports ``tensorrt`` lazily and
talks to the CUDA runtime through ``ctypes`` (``libcudart``), so this host needs both: JetPack /
DriveOS / NVIDIA's TensorRT images have them.

The engine bytes are those trtexec wrote (``--saveEngine``) and times (``--loadEngine``): the
engine that is scored is the engine that is timed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import TensorMeta
from edgematrix.errors import BackendError, RunnerUnavailableError, ToolNotFoundError


def _installed(module: str) -> bool:
    """A regular module or package (a namespace package, e.g. a folder named ``tensorrt``, is not TensorRT)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def require_inprocess() -> None:
    """Raise naming what is missing unless Polygraphy and TensorRT's Python module can be imported."""
    if not _installed("polygraphy"):
        raise RunnerUnavailableError(
            "running a TensorRT engine on numpy feeds in-process uses Polygraphy, which is not installed: "
            "pip install 'edgematrix[tensorrt]' (or pip install polygraphy), or use inference='trtexec' "
            "(trtexec --loadInputs/--exportOutput, one process per feed)"
        )
    if not _installed("tensorrt"):
        raise ToolNotFoundError(
            "the tensorrt Python module is not installed here, so Polygraphy cannot load a TensorRT engine. "
            "On a Jetson it comes with JetPack (python3-libnvinfer; run the session with system site packages), "
            "in NVIDIA's TensorRT containers it is preinstalled, elsewhere pip install tensorrt on a host with an "
            "NVIDIA GPU; or use inference='trtexec', or --runner remote against the board"
        )


def _polygraphy_error(what: str, exc: Exception) -> BackendError:
    return BackendError(f"{what} failed in Polygraphy/TensorRT: {type(exc).__name__}: {exc}")


class PolygraphyEngine:
    """One engine (its serialized bytes) loaded with Polygraphy; ``with`` it, then :meth:`infer`."""

    def __init__(self, engine: bytes | Path, *, name: str = "tensorrt") -> None:
        self.engine = engine
        self.name = name
        self._runner: Any = None

    def __enter__(self) -> PolygraphyEngine:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        require_inprocess()
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        data = self.engine.read_bytes() if isinstance(self.engine, Path) else self.engine
        runner = TrtRunner(EngineFromBytes(data), name=self.name)
        try:
            runner.activate()
        except Exception as exc:
            raise _polygraphy_error("loading the engine", exc) from exc
        self._runner = runner

    def deactivate(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None or not runner.is_active:
            return
        # TrtRunner.deactivate frees its input buffers and stream but only drops its output
        # allocator, whose device buffers have no finalizer: free them here, after the engine is gone.
        allocator = getattr(runner, "output_allocator", None)
        outputs = list(getattr(allocator, "buffers", {}).values())
        try:
            runner.deactivate()
            for buffer in outputs:
                if hasattr(buffer, "free"):
                    buffer.free()
        except Exception as exc:
            raise _polygraphy_error("releasing the engine", exc) from exc

    @property
    def runner(self) -> Any:
        if self._runner is None:
            raise BackendError(f"engine {self.name!r} is not loaded; activate it first")
        return self._runner

    def input_metadata(self) -> dict[str, TensorMeta]:
        """Input name → dtype and shape (a dynamic dimension, -1 in TensorRT, as None)."""
        from polygraphy.datatype import DataType

        meta: dict[str, TensorMeta] = {}
        for input_name, (dtype, shape) in self.runner.get_input_metadata(use_numpy_dtypes=False).items():
            np_dtype = DataType.to_dtype(DataType.from_dtype(dtype), "numpy")
            if np_dtype is None:
                raise BackendError(f"engine input {input_name!r} has type {dtype}, which has no numpy dtype")
            dims = tuple(None if not isinstance(d, int) or d < 0 else int(d) for d in shape)
            meta[input_name] = TensorMeta(np.dtype(np_dtype), dims)
        return meta

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of one run, as numpy arrays the next run does not overwrite (Polygraphy reuses its buffers)."""
        try:
            outputs = self.runner.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        except Exception as exc:
            raise _polygraphy_error("inference", exc) from exc
        return {k: np.array(v, copy=True) for k, v in outputs.items()}

"""TI TIDL through TI's onnxruntime build (onnxruntime-tidl): compile, then run on the C7x/MMA.

Compilation (x86 host with TI's tidl_tools, ``$TIDL_TOOLS_PATH``) runs ONNX Runtime with
``TIDLCompilationProvider``: the calibration frames go through ``session.run`` and TIDL writes its
network and IO binaries into ``artifacts_folder``. Inference uses ``TIDLExecutionProvider`` with
the same folder, on the board or (x86) in TIDL's host emulation. This is TI's documented flow
(edgeai-tidl-tools ``examples/osrt_python/ort/onnxrt_ep.py``).

:class:`TidlRunner` owns the whole flow: without an ``artifacts_folder`` it compiles the model with
its calibration feeds into a content-keyed folder (:func:`artifacts_key`: the model's bytes, the
compile options, the calibration frames and the TI runtime's version), reuses that folder when it
exists, and infers with those artifacts, so accuracy is computed on the outputs of the compiled
network that ships to the board.

Both providers exist only in TI's onnxruntime wheel; with any other onnxruntime this backend raises
:class:`~edgematrix.errors.ToolNotFoundError` naming the providers the installed build has. Not run
on TI hardware or tools here (docs/ti.md); the FX8 emulation (:mod:`edgematrix.optimize.fx8`) is
what runs on this host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.backends.tidl.options import TIDL_TOOLS_ENV, TidlCompileOptions
from edgematrix.errors import BackendError, ModelError, ToolNotFoundError

COMPILE_PROVIDER = "TIDLCompilationProvider"
RUN_PROVIDER = "TIDLExecutionProvider"


def require_tidl_provider(provider: str) -> None:
    """Raise a clear :class:`ToolNotFoundError` unless this onnxruntime has TI's ``provider``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ToolNotFoundError(
            f"{provider} needs TI's onnxruntime build and no onnxruntime is installed: install the onnxruntime_tidl "
            "wheel that edgeai-tidl-tools' setup.sh downloads, or run on a TDA4 board image (--runner remote)"
        ) from None

    available = ort.get_available_providers()
    if provider not in available:
        raise ToolNotFoundError(
            f"{provider} is not in this onnxruntime ({ort.__version__}; available: {', '.join(available)}). "
            "TIDL needs TI's onnxruntime build: install the onnxruntime_tidl wheel that edgeai-tidl-tools' setup.sh "
            "downloads (x86 host, with TIDL_TOOLS_PATH) or run on a TDA4 board image (--runner remote / device runner). "
            "To estimate TDA4 accuracy on this host, use the FX8 emulation (edgematrix.optimize.fx8.fx8_from_qdq)"
        )


def has_artifacts(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a compiled TIDL network (``*_tidl_net.bin`` and ``*_tidl_io_*.bin``)."""
    path = Path(folder)
    return path.is_dir() and any(path.glob("*tidl_net.bin")) and any(path.glob("*tidl_io_*.bin"))


#: where content-keyed artifacts folders go when the runner is not given one
DEFAULT_ARTIFACTS_ROOT = Path(".cache/edgematrix/tidl")
_KEY_EXCLUDED = ("tidl_tools_path", "artifacts_folder")  # where things are, not what is compiled


def calibration_frames(calibration: Iterable[Mapping[str, np.ndarray]], count: int) -> list[dict[str, np.ndarray]]:
    """The first ``count`` feeds of ``calibration`` as contiguous arrays (what compilation runs)."""
    frames: list[dict[str, np.ndarray]] = []
    for feed in calibration:
        if len(frames) >= count:
            break
        frames.append({k: np.ascontiguousarray(v) for k, v in feed.items()})
    return frames


def artifacts_key(
    model: Path, options: TidlCompileOptions, frames: Sequence[Mapping[str, np.ndarray]], runtime: str
) -> str:
    """SHA-256 (24 hex digits) of what a TIDL compilation depends on: the model file's bytes, the compile
    options (not the folders), every calibration frame (names, dtypes, shapes, bytes) and the TI
    runtime's version."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(Path(model).read_bytes()).digest())
    opts = {k: v for k, v in options.provider_options(tools_path=Path("-")).items() if k not in _KEY_EXCLUDED}
    digest.update(json.dumps({"options": opts, "runtime": runtime}, sort_keys=True, default=str).encode())
    for frame in frames:
        for input_name in sorted(frame):
            array = frame[input_name]
            digest.update(json.dumps([input_name, array.dtype.str, list(array.shape)]).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:24]


def _session_options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # as TI's example: TIDL logs its own progress
    return options


def compile_model(
    model: str | os.PathLike[str],
    options: TidlCompileOptions,
    calibration: Iterable[Mapping[str, np.ndarray]],
) -> Path:
    """Compile ``model`` for TIDL into ``options.artifacts_folder``; returns the folder.

    ``calibration`` yields feeds ({input name: array}); the first ``options.calibration_frames`` run
    through the compilation session (TIDL calibrates on them).
    """
    import onnxruntime as ort

    model = Path(model)
    if not model.is_file():
        raise ModelError(f"ONNX model {str(model)!r} does not exist; export the model first")
    feeds: list[dict[str, np.ndarray]] = []
    for feed in calibration:
        if len(feeds) >= options.calibration_frames:
            break
        feeds.append({k: np.ascontiguousarray(v) for k, v in feed.items()})
    if not feeds:
        raise BackendError(
            f"TIDL compilation of {model} got no calibration frames; pass at least one feed "
            f"(up to calibration_frames={options.calibration_frames}) of the model's preprocessed inputs"
        )
    require_tidl_provider(COMPILE_PROVIDER)
    tools = options.tools_path()
    Path(options.artifacts_folder).mkdir(parents=True, exist_ok=True)
    session = ort.InferenceSession(
        str(model),
        providers=[COMPILE_PROVIDER, "CPUExecutionProvider"],
        provider_options=[options.provider_options(tools_path=tools), {}],
        sess_options=_session_options(),
    )
    for feed in feeds:
        session.run(None, feed)
    del session  # TIDL writes the artifacts when the compilation session ends
    if not has_artifacts(options.artifacts_folder):
        raise BackendError(
            f"TIDL compilation of {model} finished but {options.artifacts_folder} has no *_tidl_net.bin / "
            "*_tidl_io_*.bin; rerun with debug_level=2 and check TIDL's log (unsupported layers are listed there)"
        )
    return Path(options.artifacts_folder)


@backends.register("tidl")
class TidlRunner(Runner):
    """An ONNX model on TI's TIDL (``TIDLExecutionProvider``), compiled by the runner when needed.

    Without ``artifacts_folder`` (the default) the runner compiles into
    ``<artifacts_root>/<artifacts_key>/`` on ``calibration`` feeds (the first
    ``calibration_frames``), reusing that folder when it already holds a compiled network; the
    compilation happens in a temporary folder renamed into place on success, so a failed one leaves
    nothing behind. With an explicit ``artifacts_folder`` it uses the artifacts there, compiling
    into it only when ``compile=True``.
    """

    backend_name = "tidl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        artifacts_folder: str | os.PathLike[str] | None = None,
        artifacts_root: str | os.PathLike[str] | None = None,
        name: str | None = None,
        compile: bool | None = None,
        calibration: Iterable[Mapping[str, np.ndarray]] = (),
        tidl_tools_path: str | os.PathLike[str] | None = None,
        precision: str = "int8",
        **compile_options: Any,
    ) -> None:
        super().__init__(name)
        self.path = Path(path)
        self.keyed = artifacts_folder is None
        self.compile = self.keyed if compile is None else compile
        if self.keyed and not self.compile:
            raise BackendError("compile=False needs artifacts_folder= (a folder of compiled TIDL artifacts)")
        self.artifacts_root = Path(artifacts_root) if artifacts_root is not None else DEFAULT_ARTIFACTS_ROOT
        self.precision = precision
        self.options = TidlCompileOptions(
            artifacts_folder=Path(artifacts_folder) if artifacts_folder is not None else self.artifacts_root,
            tidl_tools_path=Path(tidl_tools_path) if tidl_tools_path is not None else None,
            **compile_options,
        )
        # materialized once: the same frames are hashed into the key and compiled on
        self.calibration = calibration_frames(calibration, self.options.calibration_frames)
        self.session: Any = None
        self.compiled = False
        self.artifacts_key: str | None = None
        self._output_names: list[str] = []

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """TIDL for TDA4: 8-bit tensors with power-of-two scales (quantization_scale_type 1) taken from
        the QDQ model (prequantized_model) for every deploying role; the FP32 reference runs TIDL's
        32-bit float mode (tensor_bits 32, TI's host emulation). The caller adds ``calibration=``."""
        if role == "reference":
            return {"precision": "fp32", "tensor_bits": 32}
        if precision not in ("int8", "fx8"):
            raise BackendError(
                f"TIDL deploys 8-bit fixed point on TDA4: precision int8 or fx8, not {precision!r} (role {role!r})"
            )
        return {"precision": precision, "tensor_bits": 8, "quantization_scale_type": 1, "prequantized_model": True}

    def _compile_keyed(self) -> None:
        """Compile into the content-keyed folder unless it already holds a compiled network."""
        import onnxruntime as ort

        self.artifacts_key = artifacts_key(self.path, self.options, self.calibration, ort.__version__)
        folder = self.artifacts_root / self.artifacts_key
        self.options = dataclasses.replace(self.options, artifacts_folder=folder)
        if has_artifacts(folder):
            return
        self.artifacts_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{self.artifacts_key}-", dir=self.artifacts_root))
        try:
            compile_model(self.path, dataclasses.replace(self.options, artifacts_folder=work), self.calibration)
            if folder.exists():  # a half-written folder of an older edgematrix: replace it
                shutil.rmtree(folder)
            work.rename(folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self.compiled = True

    def activate_impl(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelError(f"ONNX model {str(self.path)!r} does not exist; export the model first")
        require_tidl_provider(RUN_PROVIDER)
        if self.keyed:
            self._compile_keyed()
        elif not has_artifacts(self.options.artifacts_folder):
            if not self.compile:
                raise BackendError(
                    f"no TIDL artifacts in {self.options.artifacts_folder} (no *_tidl_net.bin); compile first "
                    "(compile=True with calibration feeds, on an x86 host with TIDL_TOOLS_PATH) or copy the "
                    "artifacts folder of a previous compilation"
                )
            compile_model(self.path, self.options, self.calibration)
            self.compiled = True
        # an x86 host runs TIDL's emulation and needs the tools; a TDA4 board has no tidl_tools folder
        has_tools = self.options.tidl_tools_path is not None or os.environ.get(TIDL_TOOLS_ENV)
        tools = self.options.tools_path() if has_tools else None
        self.session = ort.InferenceSession(
            str(self.path),
            providers=[RUN_PROVIDER, "CPUExecutionProvider"],
            provider_options=[self.options.inference_options(tools_path=tools), {}],
            sess_options=_session_options(),
        )
        self._output_names = [o.name for o in self.session.get_outputs()]

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        from edgematrix.backends.onnxruntime.runner import _np_dtype

        return {i.name: TensorMeta(_np_dtype(i.type, i.name), tuple(i.shape)) for i in self.session.get_inputs()}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self._output_names, feed)
        except Exception as exc:
            raise BackendError(f"runner {self.name!r}: TIDL run failed: {type(exc).__name__}: {exc}") from exc
        return dict(zip(self._output_names, outputs, strict=True))

    def release_impl(self) -> None:
        self.session = None
        self._output_names = []

    def facts_impl(self) -> Mapping[str, Fact]:
        facts: dict[str, Fact] = {
            "precision": self.precision,
            "model": str(self.path),
            "tensor_bits": self.options.tensor_bits,
            "artifacts_folder": str(self.options.artifacts_folder),
            "quantization_scale_type": self.options.quantization_scale_type,
            "compiled_now": int(self.compiled),
        }
        if self.artifacts_key is not None:
            facts["artifacts_key"] = self.artifacts_key
        if self.session is not None:
            facts["providers"] = ",".join(self.session.get_providers())
        return facts

"""Optional runtimes and the pyproject extra that installs each.

The package imports on any host; a runtime it needs only for some work (ONNX Runtime, OpenVINO, the
optimizers, the Docker SDK, ffmpeg) is imported when that work starts. When it is missing, the user
gets one line naming the extra to install (:class:`MissingExtraError`, exit 2 from the CLI), never a
``ModuleNotFoundError`` traceback: the backend registry checks a backend's runtime before creating a
runner (:func:`require_runtime`), and the CLI maps any other ``ModuleNotFoundError`` of a module listed
here (:func:`missing_extra`). ``tests/test_extras.py`` checks this table against pyproject.toml.

Stdlib only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from edgematrix.errors import BackendError


@dataclass(frozen=True)
class OptionalRuntime:
    """An importable module, the distribution that provides it and the extras that install it."""

    what: str  # the human name
    distribution: str  # pip's name
    extras: tuple[str, ...]  # pyproject extras that install it, the usual one first


#: top-level module name → what installs it
OPTIONAL_RUNTIMES: dict[str, OptionalRuntime] = {
    "onnxruntime": OptionalRuntime("ONNX Runtime", "onnxruntime", ("cpu", "gpu")),
    "openvino": OptionalRuntime("OpenVINO", "openvino", ("openvino",)),
    "tensorrt": OptionalRuntime("TensorRT's Python bindings", "tensorrt", ("tensorrt",)),
    "torch_pruning": OptionalRuntime("torch-pruning", "torch-pruning", ("optimize",)),
    "modelopt": OptionalRuntime("NVIDIA ModelOpt", "nvidia-modelopt", ("optimize",)),
    "requests": OptionalRuntime("requests (imported by ModelOpt)", "requests", ("optimize",)),
    "huggingface_hub": OptionalRuntime("huggingface_hub (imported by ModelOpt)", "huggingface_hub", ("optimize",)),
    "docker": OptionalRuntime("the Docker SDK for Python", "docker", ("docker",)),
    "imageio_ffmpeg": OptionalRuntime("imageio-ffmpeg (MP4 output)", "imageio-ffmpeg", ("demo",)),
}


class MissingExtraError(BackendError):
    """An optional runtime is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, needed_for: str) -> None:
        rt = OPTIONAL_RUNTIMES[module]
        first, *others = rt.extras
        alt = "".join(f" (or edgematrix[{e}])" for e in others)
        super().__init__(
            f"{needed_for} needs {rt.what} (module {module}), which is not installed here: "
            f"pip install 'edgematrix[{first}]'{alt}, or run it through its Nox session, which installs "
            "the target's extras"
        )
        self.module = module
        self.extra = first


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module set to None in sys.modules
        return False


def require_runtime(*modules: str, needed_for: str) -> None:
    """Raise :class:`MissingExtraError` for the first of ``modules`` that is not installed (no import)."""
    for module in modules:
        if module not in OPTIONAL_RUNTIMES:
            raise KeyError(f"{module!r} is not an optional runtime; known: {', '.join(sorted(OPTIONAL_RUNTIMES))}")
        if not _installed(module):
            raise MissingExtraError(module, needed_for)


def missing_extra(exc: ModuleNotFoundError, needed_for: str = "this command") -> MissingExtraError | None:
    """The :class:`MissingExtraError` for an import of an optional runtime that failed; None for any other."""
    top = (exc.name or "").split(".", 1)[0]
    if top not in OPTIONAL_RUNTIMES or _installed(top):  # installed: a broken install, not a missing extra
        return None
    return MissingExtraError(top, needed_for)

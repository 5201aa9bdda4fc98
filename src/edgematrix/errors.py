"""Errors raised by edgematrix.

Every error a user can cause derives from :class:`EdgeMatrixError`; its message says what was
asked, what was found and what to do. A bug in edgematrix itself raises something else
(``AssertionError``, ``TypeError`` ...), never an ``EdgeMatrixError``.
"""

from __future__ import annotations


class EdgeMatrixError(Exception):
    """Base class of all user-facing errors."""


class UnknownNameError(EdgeMatrixError, KeyError):
    """A registry lookup named something that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class MatrixError(EdgeMatrixError):
    """The matrix TOML is malformed or inconsistent."""


class DataError(EdgeMatrixError):
    """A dataset is missing, incomplete or malformed."""


class ModelError(EdgeMatrixError):
    """A model file or checkpoint is missing, corrupt or does not match its config."""


class QuantizationFormatError(ModelError):
    """A quantized model is not in the form asked for (no Q/DQ nodes, asymmetric, non power-of-two scales)."""


class BackendError(EdgeMatrixError):
    """A runtime backend failed to load or run a model."""


class PrecisionMismatchError(BackendError):
    """An engine did not compute in the precision it was built for (e.g. silent FP32 fallback)."""


class RunnerUnavailableError(EdgeMatrixError):
    """The cell cannot run on this host with the requested runner."""


class ToolNotFoundError(RunnerUnavailableError):
    """A vendor tool (trtexec, TI's TIDL tools / onnxruntime build) is not installed on this host."""


class GateFailure(EdgeMatrixError):
    """One or more regression gates failed (the verdicts are in the message)."""


class RemoteError(EdgeMatrixError):
    """A latency server (edgematrix or ENOT protocol) refused or failed a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status the server answered with; None when there was no answer


class DeviceUnreachableError(RemoteError):
    """The latency server could not be reached after every retry."""


class WireFormatError(EdgeMatrixError):
    """A request or response body, or an evaluation bundle, is not in the expected safe format."""

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


class BackendError(EdgeMatrixError):
    """A runtime backend failed to load or run a model."""


class RunnerUnavailableError(EdgeMatrixError):
    """The cell cannot run on this host with the requested runner."""


class GateFailure(EdgeMatrixError):
    """One or more regression gates failed (the verdicts are in the message)."""

"""The runner interface every backend implements, and the backend registry.

A :class:`Runner` wraps one loaded model on one runtime. It is a context manager (Polygraphy's
``with runner: runner.infer(feed)``): ``__enter__`` activates it (loads the session / engine),
``__exit__`` deactivates it and always releases what activation acquired, even when deactivation
itself fails. Public methods validate and the ``*_impl`` methods do the work, so a backend only
writes ``activate_impl`` / ``infer_impl`` / ``deactivate_impl`` / ``input_metadata_impl``.

Heavy runtimes are imported inside the backend's functions, never at module level, so
``import edgematrix.backends`` works on a host without any of them installed.
"""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from edgematrix.core.registries import backends
from edgematrix.errors import BackendError
from edgematrix.extras import require_runtime

Fact = str | int | float
Dim = int | str | None  # a fixed size, or a symbolic / unknown (dynamic) size


@dataclass(frozen=True)
class TensorMeta:
    """Expected dtype and shape of one input. A ``str`` or ``None`` dim accepts any size."""

    dtype: np.dtype
    shape: tuple[Dim, ...]

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(not isinstance(want, int) or want == got for want, got in zip(self.shape, shape, strict=True))

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


class Runner(ABC):
    """One model loaded on one runtime. Use as a context manager; ``infer`` only while active."""

    #: registry name of the backend; subclasses set it (also used for default runner names)
    backend_name: ClassVar[str] = "runner"
    #: optional runtimes (modules of :data:`edgematrix.extras.OPTIONAL_RUNTIMES`) the backend imports;
    #: :meth:`activate` checks them first, so a missing one is one line naming the extra to install
    runtime_modules: ClassVar[tuple[str, ...]] = ()
    _counter: ClassVar[itertools.count] = itertools.count()

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{self.backend_name}-{next(Runner._counter)}"
        self.is_active = False
        self._input_metadata: dict[str, TensorMeta] | None = None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """Constructor keyword arguments of this backend's runner for one cell role (default: none).

        ``target`` is the target's config as a mapping (``Target.model_dump()``: ``providers``,
        ``threads`` ...); ``role`` is ``"reference"`` (the FP32 model) or the name of a role that runs
        the deployed artifact (``"candidate"``, ``"base"`` ...); ``precision`` is the precision that
        artifact deploys in (the recipe's); ``model`` is what a backend may need to know of the model
        (a mapping or object with ``input_shape`` / ``output_names``). The caller adds what is not
        config: the artifact (``path=`` / ``module=``) and data (``calibration=``).
        """
        return {}

    # -- lifecycle ---------------------------------------------------------------------------

    def activate(self) -> None:
        if self.is_active:
            raise BackendError(f"runner {self.name!r} is already active; a runner is entered once at a time")
        # the runtime is imported on activation (never at import or construction): a missing one is
        # a MissingExtraError naming the extra, not a ModuleNotFoundError from deep inside the backend
        require_runtime(*self.runtime_modules, needed_for=f"the {self.backend_name} backend")
        try:
            self.activate_impl()
        except BaseException:
            # A half-activated runner still releases what it got.
            self._release_quietly()
            raise
        self.is_active = True

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False
            self._input_metadata = None
            self.release_impl()

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    def _release_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the activation error is the one worth reporting
            self.release_impl()

    # -- inference ---------------------------------------------------------------------------

    def input_metadata(self) -> dict[str, TensorMeta]:
        """Input name → expected dtype and shape (dynamic dims as ``str`` / ``None``)."""
        self._require_active("input_metadata")
        if self._input_metadata is None:
            self._input_metadata = dict(self.input_metadata_impl())
        return self._input_metadata

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. Validates input names, dtypes and shapes, then calls ``infer_impl``."""
        self._require_active("infer")
        self._validate_feed(feed)
        return self.infer_impl(dict(feed))

    def facts(self) -> dict[str, Fact]:
        """What this runner actually used: backend, version, provider, threads, precision ...

        Values are plain ``str`` / ``int`` / ``float`` so they can go into ``extra_info``.
        """
        facts: dict[str, Fact] = {"backend": self.backend_name, "runner": self.name}
        facts.update(self.facts_impl())
        return facts

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise BackendError(
                f"runner {self.name!r} is not active, so {what}() cannot run; use it as `with runner: ...`"
            )

    def _validate_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        meta = self.input_metadata()
        missing = [n for n in meta if n not in feed]
        extra = [n for n in feed if n not in meta]
        if missing or extra:
            expected = ", ".join(f"{n}: {m.describe()}" for n, m in meta.items())
            raise BackendError(
                f"runner {self.name!r}: feed has inputs {sorted(feed)!r}; expected {{{expected}}}"
                + (f"; missing {missing!r}" if missing else "")
                + (f"; unexpected {extra!r}" if extra else "")
            )
        for input_name, want in meta.items():
            got = feed[input_name]
            if not isinstance(got, np.ndarray):
                raise BackendError(
                    f"runner {self.name!r}: input {input_name!r} must be a numpy.ndarray, got {type(got).__name__}"
                )
            if got.dtype != want.dtype:
                raise BackendError(
                    f"runner {self.name!r}: input {input_name!r} has dtype {got.dtype.name}; expected "
                    f"{want.dtype.name} (shape {want.describe()}); convert with .astype(np.{want.dtype.name})"
                )
            if not want.accepts_shape(got.shape):
                raise BackendError(
                    f"runner {self.name!r}: input {input_name!r} has shape {list(got.shape)}; "
                    f"expected {want.describe()} ('?' or a name accepts any size)"
                )

    # -- what a backend implements -------------------------------------------------------------

    @abstractmethod
    def activate_impl(self) -> None:
        """Load the model / create the session."""

    @abstractmethod
    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        """Input metadata of the active session."""

    @abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on an already validated feed."""

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Undo activation steps that can fail (flush, sync). Release happens in ``release_impl``."""

    @abstractmethod
    def release_impl(self) -> None:
        """Drop the session / engine. Called after every deactivation and after a failed activation."""

    def facts_impl(self) -> Mapping[str, Fact]:
        return {}

    def __repr__(self) -> str:
        state = "active" if self.is_active else "inactive"
        return f"<{type(self).__name__} {self.name!r} ({state})>"


def load_builtin_backends() -> None:
    """Import the built-in backend modules (cheap: no runtime import), e.g. to list their options."""
    for name in ("onnxruntime", "openvino", "torch", "tensorrt", "tidl", "trt_cpp", "split"):
        backends.get(name)


def create_runner(name: str, /, **kwargs: Any) -> Runner:
    """Factory: ``create_runner("onnxruntime", path="m.onnx", name="candidate")``.

    ``name`` (positional) is the backend; keyword arguments go to the runner class, so the
    runner's own ``name=`` can be passed too.
    """
    cls: type[Runner] = backends.get(name)
    return cls(**kwargs)

"""Device-side latency server and its client (``edgematrix serve`` / ``edgematrix measure --remote``).

Library API:

- :class:`RemoteMeter` — a :class:`~edgematrix.measure.meter.LatencyMeter` measuring on a device
  (``protocol="native"`` for ``edgematrix serve``, ``"enot"`` for ENOT latency servers).
- :class:`RemoteSession` — a set of models on an evaluation bundle through a device's backend:
  outputs per model, then the models measured interleaved (:class:`RemoteEvaluation`).
- :class:`EvalBundle`, :func:`run_bundle_local`, :func:`run_bundle_remote`, :func:`validate_outputs` —
  on-device accuracy validation with a pickle-free evaluation bundle.
- :class:`DeviceServer`, :class:`ServerConfig`, :func:`serve_in_thread` — the server itself.

Heavy modules are imported on first use so ``import edgematrix.server`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RemoteMeter": "edgematrix.server.client",
    "RemoteSession": "edgematrix.server.client",
    "RemoteEvaluation": "edgematrix.server.client",
    "Transport": "edgematrix.server.client",
    "run_bundle_remote": "edgematrix.server.client",
    "EvalBundle": "edgematrix.server.bundle",
    "DeviceValidation": "edgematrix.server.bundle",
    "run_bundle_local": "edgematrix.server.bundle",
    "compare_outputs": "edgematrix.server.bundle",
    "validate_outputs": "edgematrix.server.bundle",
    "DeviceServer": "edgematrix.server.app",
    "ServerConfig": "edgematrix.server.app",
    "serve_in_thread": "edgematrix.server.app",
    "load_token": "edgematrix.server.token",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgematrix.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

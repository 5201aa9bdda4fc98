"""The request format of ENOT's latency servers (PyPI ``enot-latency-server`` 1.2.1), client side only.

ENOT's ``measure_latency_remote`` POSTs ``pickle.dumps({"model": model_bytes, **kwargs})`` to
``http://HOST:PORT/measure_latency`` (``Content-Type: application/octet-stream``, default port 5450);
``LatencyServer`` unpickles the body, calls ``measure_latency(model=..., **kwargs)`` in a worker thread
and answers its dict as JSON, ``{"latency": milliseconds, ...}``. There is no authentication.

That body must be a pickle because the server calls ``pickle.loads`` on it. This module writes it
from plain values only (bytes, str, int, float, bool, None, and lists / dicts of them) and checks the
opcodes it produced: no ``GLOBAL`` / ``STACK_GLOBAL`` / ``REDUCE`` / ``INST`` / ``OBJ`` / ``NEWOBJ``
/ ``BUILD``, i.e. nothing that imports or calls anything when loaded. The client never unpickles:
answers are JSON. The ENOT *server* does unpickle whatever reaches it, so anyone who can reach its
port can run code on the board; run it only on a trusted network (docs/latency-server.md).
"""

from __future__ import annotations

import pickle
import pickletools
from typing import Any

from edgematrix.errors import EdgeMatrixError

ENOT_DEFAULT_ENDPOINT = "measure_latency"
ENOT_DEFAULT_PORT = 5450
_PLAIN = (bytes, str, int, float, bool, type(None))
_CODE_OPCODES = {
    "GLOBAL",
    "STACK_GLOBAL",
    "REDUCE",
    "INST",
    "OBJ",
    "NEWOBJ",
    "NEWOBJ_EX",
    "BUILD",
    "EXT1",
    "EXT2",
    "EXT4",
}


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EdgeMatrixError(f"ENOT option {where} has a non-string key {key!r}")
            _check_plain(item, f"{where}.{key}")
        return
    raise EdgeMatrixError(
        f"ENOT option {where} is a {type(value).__name__}; only bytes, str, numbers, bool, None and lists / "
        "dicts of them are sent (nothing that needs code to rebuild)"
    )


def enot_request_body(model: bytes, options: dict[str, Any] | None = None) -> bytes:
    """The body ENOT's ``LatencyServer`` expects: ``{"model": model, **options}`` as a code-free pickle."""
    options = dict(options or {})
    if "model" in options:
        raise EdgeMatrixError("ENOT option 'model' is reserved for the model bytes")
    for key, value in options.items():
        _check_plain(value, key)
    body = pickle.dumps({"model": bytes(model), **options}, protocol=4)
    used = {op.name for op, _, _ in pickletools.genops(body)}
    if used & _CODE_OPCODES:  # cannot happen for plain values; a guard against future edits
        raise EdgeMatrixError(f"refusing to send a pickle with code opcodes {sorted(used & _CODE_OPCODES)}")
    return body

"""The latency server's wire format: a JSON header plus raw byte blobs, and numpy arrays as ``.npz``.

Nothing on the wire is pickled. A *frame* is::

    b"EMXF"  | version (1 byte, = 1) | header length (4 bytes, big-endian) | header (UTF-8 JSON object) | blobs

The header is ``{"meta": {...}, "blobs": [{"name": str, "size": int, "sha256": hex}, ...]}``; the blobs
follow in that order, back to back, and their sizes add up to the rest of the body exactly. Arrays
travel as ``.npz`` blobs (``numpy.savez``) read with ``allow_pickle=False``, so an object array is
refused instead of unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgematrix.errors import WireFormatError

MAGIC = b"EMXF"
VERSION = 1
CONTENT_TYPE = "application/vnd.edgematrix.frame"
_PREFIX = struct.Struct(">4sBI")
MAX_HEADER_BYTES = 1 << 20
_BLOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def encode_frame(meta: Mapping[str, Any], blobs: Mapping[str, bytes] | None = None) -> bytes:
    """One frame: ``meta`` (JSON values only) plus named byte blobs."""
    blobs = dict(blobs or {})
    for name in blobs:
        if not _BLOB_NAME.match(name):
            raise WireFormatError(f"blob name {name!r} is not allowed; use letters, digits, '_', '.', '-' (1-64)")
    header = {
        "meta": dict(meta),
        "blobs": [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in blobs.items()],
    }
    try:
        head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise WireFormatError(f"frame metadata must be plain JSON values (no NaN): {exc}") from exc
    if len(head) > MAX_HEADER_BYTES:
        raise WireFormatError(f"frame header is {len(head)} bytes; the limit is {MAX_HEADER_BYTES}")
    return b"".join([_PREFIX.pack(MAGIC, VERSION, len(head)), head, *blobs.values()])


def decode_frame(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(meta, blobs)`` of a frame; raises :class:`WireFormatError` saying what is wrong with it."""
    if len(data) < _PREFIX.size:
        raise WireFormatError(f"body is {len(data)} bytes, shorter than a frame prefix ({_PREFIX.size} bytes)")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError(
            f"body does not start with {MAGIC!r} (got {magic!r}); send an edgematrix frame "
            f"(Content-Type: {CONTENT_TYPE}), e.g. with edgematrix.server.RemoteMeter"
        )
    if version != VERSION:
        raise WireFormatError(f"frame version {version} is not supported; this side speaks version {VERSION}")
    if head_len > MAX_HEADER_BYTES or _PREFIX.size + head_len > len(data):
        raise WireFormatError(f"frame header length {head_len} does not fit the {len(data)}-byte body")
    try:
        header = json.loads(data[_PREFIX.size : _PREFIX.size + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireFormatError(f"frame header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
        raise WireFormatError("frame header must be a JSON object with an object 'meta'")
    entries = header.get("blobs", [])
    if not isinstance(entries, list):
        raise WireFormatError("frame header 'blobs' must be a list")
    blobs: dict[str, bytes] = {}
    offset = _PREFIX.size + head_len
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise WireFormatError(f"frame blob entry {entry!r} needs a string 'name'")
        name, size, digest = entry["name"], entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise WireFormatError(f"frame blob {name!r} has size {size!r}; expected an integer >= 0")
        if name in blobs:
            raise WireFormatError(f"frame blob {name!r} appears twice")
        blob = data[offset : offset + size]
        if len(blob) != size:
            raise WireFormatError(f"frame blob {name!r} is truncated: {len(blob)} of {size} bytes present")
        if digest != hashlib.sha256(blob).hexdigest():
            raise WireFormatError(f"frame blob {name!r} does not match its sha256; the body was altered in transit")
        blobs[name] = blob
        offset += size
    if offset != len(data):
        raise WireFormatError(f"frame has {len(data) - offset} bytes after its last blob")
    return header["meta"], blobs


def arrays_to_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``.npz`` bytes of named arrays (uncompressed); object arrays are refused (they would need pickle)."""
    checked: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise WireFormatError(f"array {name!r} has dtype {arr.dtype}; only numeric/bool/fixed-width arrays travel")
        checked[name] = arr
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **checked)
    return buf.getvalue()


def npz_to_arrays(data: bytes, *, max_bytes: int | None = None, what: str = "npz") -> dict[str, np.ndarray]:
    """Named arrays of ``.npz`` bytes, read with ``allow_pickle=False``.

    ``max_bytes`` bounds the *uncompressed* size (a compressed npz could otherwise expand without limit).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise WireFormatError(f"{what} is not a valid .npz (zip) file: {exc}") from exc
    if max_bytes is not None and total > max_bytes:
        raise WireFormatError(f"{what} expands to {total} bytes; the limit is {max_bytes}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as exc:  # object arrays: "Object arrays cannot be loaded when allow_pickle=False"
        raise WireFormatError(
            f"{what} holds an array numpy can only read with pickle, which is refused: {exc}"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise WireFormatError(f"{what} could not be read: {type(exc).__name__}: {exc}") from exc
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # numpy hands back the raw bytes of a member that is no .npy
            raise WireFormatError(f"{what} could not be read: member {name!r} is not an .npy array")
    return arrays

"""The latency server's wire format: a JSON header plus raw byte blobs, and numpy arrays as ``.npz``.

Nothing on the wire is pickled. A *frame* is::

    b"EMXF"  | version (1 byte, = 1) | header length (4 bytes, big-endian) | header (UTF-8 JSON object) | blobs

The header is ``{"meta": {...}, "blobs": [{"name": str, "size": int, "sha256": hex}, ...]}``; the blobs
follow in that order, back to back, and their sizes add up to the rest of the body exactly. Arrays
travel as ``.npz`` blobs (``numpy.savez``) read with ``allow_pickle=False``, so an object array is
refused instead of unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from edgematrix.errors import WireFormatError

MAGIC = b"EMXF"
VERSION = 1
CONTENT_TYPE = "application/vnd.edgematrix.frame"
_PREFIX = struct.Struct(">4sBI")
MAX_HEADER_BYTES = 1 << 20
#: nesting of a frame header's JSON (objects and lists); deeper is refused, not parsed recursively
MAX_JSON_DEPTH = 16
_BLOB_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class BlobEntry:
    """One blob as a frame's header declares it."""

    name: str
    size: int
    sha256: str


def encode_frame(meta: Mapping[str, Any], blobs: Mapping[str, bytes] | None = None) -> bytes:
    """One frame: ``meta`` (JSON values only) plus named byte blobs."""
    blobs = dict(blobs or {})
    entries = [BlobEntry(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in blobs.items()]
    return b"".join([frame_head(meta, entries), *blobs.values()])


def frame_head(meta: Mapping[str, Any], entries: Sequence[BlobEntry]) -> bytes:
    """A frame's prefix and header: what precedes blobs of these sizes and sha256s (written by the caller)."""
    for entry in entries:
        if not _BLOB_NAME.match(entry.name):
            raise WireFormatError(f"blob name {entry.name!r} is not allowed; use letters, digits, '_', '.', '-' (1-64)")
    header = {"meta": dict(meta), "blobs": [dataclasses.asdict(e) for e in entries]}
    try:
        head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise WireFormatError(f"frame metadata must be plain JSON values (no NaN): {exc}") from exc
    if len(head) > MAX_HEADER_BYTES:
        raise WireFormatError(f"frame header is {len(head)} bytes; the limit is {MAX_HEADER_BYTES}")
    return _PREFIX.pack(MAGIC, VERSION, len(head)) + head


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists / dicts (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _header_length(prefix: bytes, body_bytes: int) -> int:
    """The header length of a frame of ``body_bytes`` from its prefix, which is checked."""
    if len(prefix) < _PREFIX.size:
        raise WireFormatError(f"body is {body_bytes} bytes, shorter than a frame prefix ({_PREFIX.size} bytes)")
    magic, version, head_len = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise WireFormatError(
            f"body does not start with {MAGIC!r} (got {magic!r}); send an edgematrix frame "
            f"(Content-Type: {CONTENT_TYPE}), e.g. with edgematrix.server.RemoteMeter"
        )
    if version != VERSION:
        raise WireFormatError(f"frame version {version} is not supported; this side speaks version {VERSION}")
    if head_len > MAX_HEADER_BYTES or _PREFIX.size + head_len > body_bytes:
        raise WireFormatError(f"frame header length {head_len} does not fit the {body_bytes}-byte body")
    return int(head_len)


def _parse_header(raw: bytes, max_depth: int) -> tuple[dict[str, Any], list[BlobEntry]]:
    too_deep = f"frame header nests objects / lists deeper than {max_depth} levels; send flat options"
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:  # the decoder's own guard, far deeper than max_depth
        raise WireFormatError(too_deep) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireFormatError(f"frame header is not UTF-8 JSON: {exc}") from None
    if json_depth(header) > max_depth:
        raise WireFormatError(too_deep)
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
        raise WireFormatError("frame header must be a JSON object with an object 'meta'")
    raw_entries = header.get("blobs", [])
    if not isinstance(raw_entries, list):
        raise WireFormatError("frame header 'blobs' must be a list")
    entries: list[BlobEntry] = []
    for entry in raw_entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise WireFormatError(f"frame blob entry {entry!r} needs a string 'name'")
        name, size, digest = entry["name"], entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise WireFormatError(f"frame blob {name!r} has size {size!r}; expected an integer >= 0")
        if any(e.name == name for e in entries):
            raise WireFormatError(f"frame blob {name!r} appears twice")
        entries.append(BlobEntry(name, size, digest if isinstance(digest, str) else ""))
    return header["meta"], entries


def _altered(name: str) -> WireFormatError:
    return WireFormatError(f"frame blob {name!r} does not match its sha256; the body was altered in transit")


def decode_frame(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(meta, blobs)`` of a frame; raises :class:`WireFormatError` saying what is wrong with it."""
    head_len = _header_length(data[: _PREFIX.size], len(data))
    meta, entries = _parse_header(data[_PREFIX.size : _PREFIX.size + head_len], max_depth)
    blobs: dict[str, bytes] = {}
    offset = _PREFIX.size + head_len
    for entry in entries:
        blob = data[offset : offset + entry.size]
        if len(blob) != entry.size:
            raise WireFormatError(f"frame blob {entry.name!r} is truncated: {len(blob)} of {entry.size} bytes present")
        if entry.sha256 != hashlib.sha256(blob).hexdigest():
            raise _altered(entry.name)
        blobs[entry.name] = blob
        offset += entry.size
    if offset != len(data):
        raise WireFormatError(f"frame has {len(data) - offset} bytes after its last blob")
    return meta, blobs


def read_frame_head(
    read: Callable[[int], bytes], body_bytes: int, *, max_depth: int = MAX_JSON_DEPTH
) -> tuple[dict[str, Any], list[BlobEntry]]:
    """``(meta, blob entries)`` of a frame of ``body_bytes`` read from a stream (``read(n)`` returns n bytes),
    which is left at its first blob; the declared sizes must add up to the rest of the body exactly.
    Reads the prefix and the header only (at most :data:`MAX_HEADER_BYTES`): :func:`copy_blob` moves each
    blob on, so a large body never has to be held in memory."""
    head_len = _header_length(read(_PREFIX.size) if body_bytes >= _PREFIX.size else b"", body_bytes)
    meta, entries = _parse_header(read(head_len), max_depth)
    rest = body_bytes - _PREFIX.size - head_len
    for entry in entries:
        if entry.size > rest:
            raise WireFormatError(f"frame blob {entry.name!r} is truncated: {rest} of {entry.size} bytes present")
        rest -= entry.size
    if rest:
        raise WireFormatError(f"frame has {rest} bytes after its last blob")
    return meta, entries


def copy_blob(read: Callable[[int], bytes], entry: BlobEntry, path: str | os.PathLike[str]) -> None:
    """Move the next blob of a stream into a new file at ``path`` (1 MiB at a time), checking its sha256."""
    digest = hashlib.sha256()
    remaining = entry.size
    with open(path, "xb") as fh:
        while remaining:
            chunk = read(min(_CHUNK, remaining))
            if not chunk:
                raise WireFormatError(f"frame blob {entry.name!r} is truncated: the body ended {remaining} bytes early")
            digest.update(chunk)
            fh.write(chunk)
            remaining -= len(chunk)
    if entry.sha256 != digest.hexdigest():
        raise _altered(entry.name)


def file_entry(name: str, path: str | os.PathLike[str]) -> BlobEntry:
    """The entry of a blob that is the file at ``path`` (its size and sha256, read 1 MiB at a time)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return BlobEntry(name, size, digest.hexdigest())


def arrays_to_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``.npz`` bytes of named arrays (uncompressed); object arrays are refused (they would need pickle)."""
    buf = io.BytesIO()
    write_npz(buf, arrays)
    return buf.getvalue()


def write_npz(target: str | os.PathLike[str] | IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays as an uncompressed ``.npz`` (what ``numpy.savez`` writes) to a file or path,
    one array at a time with no copy of the whole; object arrays are refused (they would need pickle)."""
    from numpy.lib import format as npy

    checked: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise WireFormatError(f"array {name!r} has dtype {arr.dtype}; only numeric/bool/fixed-width arrays travel")
        checked[name] = arr
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in checked.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fp:
                npy.write_array(fp, arr, allow_pickle=False)


#: numpy dtype kinds an array on the wire may have: bool, signed / unsigned integers, floats
ARRAY_KINDS = "biuf"
_EOCD = b"PK\x05\x06"
_CHUNK = 1 << 20


#: an ``.npz`` in memory, or the path of one (read from the file: no copy of it in memory)
NpzSource = bytes | os.PathLike[str]


def _npz_tail(data: NpzSource) -> bytes:
    """The end of the zip, where its end-of-central-directory record is."""
    size = 22 + 0xFFFF
    if isinstance(data, bytes):
        return data[-size:]
    with open(data, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - size))
        return fh.read()


def _npz_entry_count(data: NpzSource) -> int | None:
    """Entries the zip's end-of-central-directory record declares (read before zipfile parses them)."""
    tail = _npz_tail(data)
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        return None
    return int(struct.unpack_from("<H", tail, at + 10)[0])


def _npy_header(fp: Any, what: str, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(fp)
        else:
            raise ValueError(f"npy format version {version} is not accepted (1.0 or 2.0)")
    except (ValueError, TypeError, SyntaxError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise WireFormatError(f"{what}: member {member!r} is not a readable .npy array: {exc}") from None
    return tuple(shape), bool(fortran), np.dtype(dtype)


@dataclass(frozen=True)
class NpyMember:
    """One array of an ``.npz`` as its header declares it (checked against the member's size)."""

    name: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    header_bytes: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open_npz(data: NpzSource, what: str, max_arrays: int) -> zipfile.ZipFile:
    try:
        count = _npz_entry_count(data)
    except OSError as exc:
        raise WireFormatError(f"{what} cannot be read: {exc.strerror or exc}") from None
    if count is not None and count > max_arrays:
        raise WireFormatError(f"{what} has {count} members; the limit is {max_arrays} arrays")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise WireFormatError(f"{what} is not a valid .npz (zip) file: {exc}") from None
    if len(zf.infolist()) > max_arrays:
        zf.close()
        raise WireFormatError(f"{what} has {len(zf.infolist())} members; the limit is {max_arrays} arrays")
    return zf


def _members(zf: zipfile.ZipFile, what: str, max_bytes: int | None, max_ndim: int) -> list[NpyMember]:
    members: list[NpyMember] = []
    total = 0
    for info in zf.infolist():
        member = info.filename
        key = member[:-4] if member.endswith(".npy") else ""
        if not key or info.is_dir() or any(m.name == key for m in members):
            raise WireFormatError(f"{what}: member {member!r} is not a uniquely named .npy array")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise WireFormatError(f"{what}: member {member!r} uses zip compression {info.compress_type}")
        try:
            with zf.open(info) as fp:
                shape, fortran, dtype = _npy_header(fp, what, member)
                header = fp.tell()
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as exc:
            raise WireFormatError(f"{what}: member {member!r} cannot be read: {exc}") from None
        if dtype.kind not in ARRAY_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype:
            raise WireFormatError(
                f"{what}: array {key!r} has dtype {dtype}; only bool, integer and float arrays travel "
                "(object arrays would need pickle, which is refused)"
            )
        if len(shape) > max_ndim or any(not isinstance(d, int) or d < 0 for d in shape):
            raise WireFormatError(f"{what}: array {key!r} has shape {shape}; at most {max_ndim} sizes >= 0")
        m = NpyMember(key, info, shape, fortran, dtype, header)
        if m.nbytes != info.file_size - header:
            raise WireFormatError(
                f"{what}: array {key!r} declares {dtype}{list(shape)} ({m.nbytes} bytes) but its member holds "
                f"{info.file_size - header} bytes of data"
            )
        total += m.nbytes
        if max_bytes is not None and total > max_bytes:
            raise WireFormatError(
                f"{what} declares {total} bytes of arrays (array {key!r}: {dtype}{list(shape)}); "
                f"the limit is {max_bytes} bytes"
            )
        members.append(m)
    return members


def npz_members(
    data: NpzSource, *, max_bytes: int | None = None, what: str = "npz", max_arrays: int = 256, max_ndim: int = 32
) -> list[NpyMember]:
    """The arrays of ``.npz`` bytes as their headers declare them, checked, without reading any data."""
    with _open_npz(data, what, max_arrays) as zf:
        return _members(zf, what, max_bytes, max_ndim)


def npz_to_arrays(
    data: NpzSource,
    *,
    max_bytes: int | None = None,
    what: str = "npz",
    max_arrays: int = 256,
    max_ndim: int = 32,
) -> dict[str, np.ndarray]:
    """Named arrays of ``.npz`` bytes (or of the ``.npz`` file at a path), checked before anything is
    allocated; no pickle anywhere.

    Every member's ``.npy`` header is read first (:func:`npz_members`): its dtype must be bool /
    integer / float (no object, string or structured dtype), its shape at most ``max_ndim``
    non-negative sizes, and the bytes the shape declares must be the bytes the member holds.
    ``max_bytes`` bounds the sum of the arrays (the uncompressed size: a compressed npz cannot expand
    past it) and ``max_arrays`` the number of members; only then is each array read, into a buffer
    of exactly its declared size.
    """
    arrays = {}
    with _open_npz(data, what, max_arrays) as zf:
        for m in _members(zf, what, max_bytes, max_ndim):
            arrays[m.name] = _read_member(zf, m, what)
    return arrays


def map_npz(
    path: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    what: str = "npz",
    max_arrays: int = 256,
    max_ndim: int = 32,
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file at ``path``, checked as by :func:`npz_to_arrays`, without reading them:
    an uncompressed member (what :func:`write_npz` and ``numpy.savez`` write) is a read-only memory map of
    the file, so only the samples used are paged in; a compressed one is read into memory. For a file
    whose integrity is known (a frame blob checked against its sha256): the members' CRCs are not read."""
    arrays = {}
    size = os.path.getsize(path)
    with _open_npz(Path(path), what, max_arrays) as zf, open(path, "rb") as fh:
        for m in _members(zf, what, max_bytes, max_ndim):
            if m.info.compress_type != zipfile.ZIP_STORED:
                arrays[m.name] = _read_member(zf, m, what)
                continue
            if m.info.compress_size != m.info.file_size:
                raise WireFormatError(f"{what}: stored array {m.name!r} declares a compressed size of its own")
            fh.seek(m.info.header_offset)
            local = fh.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise WireFormatError(f"{what}: array {m.name!r} has no local zip header where the directory says")
            name_len, extra_len = struct.unpack_from("<HH", local, 26)
            offset = m.info.header_offset + 30 + name_len + extra_len + m.header_bytes
            if offset + m.nbytes > size:
                raise WireFormatError(f"{what}: array {m.name!r} runs past the end of the file")
            order: Literal["C", "F"] = "F" if m.fortran else "C"
            if m.nbytes == 0:
                arrays[m.name] = np.zeros(m.shape, m.dtype, order=order)
            else:
                arrays[m.name] = np.memmap(path, m.dtype, mode="r", offset=offset, shape=m.shape, order=order)
    return arrays


def _read_member(zf: zipfile.ZipFile, m: NpyMember, what: str) -> np.ndarray:
    """One member's array, read into a buffer of exactly its declared size (its CRC checked)."""
    buf = bytearray(m.nbytes)
    view = memoryview(buf)
    pos = 0
    try:
        with zf.open(m.info) as fp:
            fp.read(m.header_bytes)
            while pos < m.nbytes:
                chunk = fp.read(min(_CHUNK, m.nbytes - pos))
                if not chunk:
                    break
                view[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
            trailing = fp.read(1)  # reading to the end checks the member's CRC
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise WireFormatError(f"{what}: array {m.name!r} cannot be read: {exc}") from None
    if pos != m.nbytes or trailing:
        raise WireFormatError(f"{what}: array {m.name!r} holds {pos} of its {m.nbytes} declared bytes")
    return np.frombuffer(buf, dtype=m.dtype).reshape(m.shape, order="F" if m.fortran else "C")

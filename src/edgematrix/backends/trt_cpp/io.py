"""The I/O protocol of ``trt_runner --serve`` (``edgematrix.trt_runner.io/1``): numpy feeds in, outputs out.

The C++ side is ``docker/driveos/trt_runner/src/io.h`` (which documents the layout); change both or
neither. Every value is little-endian. A frame is ``b"EMIO" | u32 kind | u64 payload_bytes |
payload``; the payload of SPEC / INPUTS / OUTPUTS is a tensor list ``u32 count | count x (u16
name_bytes | name | u8 dtype | u8 is_input | u8 ndim | u8 0 | ndim x i64 dim | u64 data_bytes |
data)``, data in C order. The runner writes SPEC once (its inputs then outputs, no data), answers
each INPUTS with OUTPUTS or ERROR (UTF-8 message) and stops at END or end of input.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import IO

import numpy as np

from edgematrix.errors import BackendError

IO_SCHEMA = "edgematrix.trt_runner.io/1"
MAGIC = b"EMIO"
_HEADER = struct.Struct("<4sIQ")
_TENSOR_HEAD = struct.Struct("<BBBB")
MAX_PAYLOAD = 1 << 34  # as the runner: a larger length is a corrupt frame


class FrameKind(IntEnum):
    SPEC = 1
    INPUTS = 2
    OUTPUTS = 3
    ERROR = 4
    END = 5


#: protocol dtype code -> numpy dtype (bfloat16 = 8 and fp8 e4m3 = 9 have none: refused when read)
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
    3: np.dtype("i1"),
    4: np.dtype("<i4"),
    5: np.dtype("?"),
    6: np.dtype("u1"),
    7: np.dtype("<i8"),
}
_NO_NUMPY = {8: "bfloat16", 9: "fp8e4m3"}
_CODES = {dtype: code for code, dtype in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor of a served engine."""

    name: str
    dtype: np.dtype
    is_input: bool
    shape: tuple[int, ...]


def _fail(msg: str) -> BackendError:
    return BackendError(f"trt_runner {IO_SCHEMA}: {msg}")


def dtype_code(dtype: np.dtype) -> int:
    try:
        return _CODES[np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)]
    except KeyError:
        known = ", ".join(d.name for d in DTYPES.values())
        raise _fail(f"dtype {np.dtype(dtype).name} cannot be sent (the protocol carries {known})") from None


def encode_tensors(tensors: Mapping[str, np.ndarray], *, is_input: bool = True) -> bytes:
    """A tensor list of ``tensors`` (C order, little-endian)."""
    parts = [struct.pack("<I", len(tensors))]
    for name, array in tensors.items():
        array = np.asarray(array)
        code = dtype_code(array.dtype)
        data = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
        raw = name.encode()
        if len(raw) > 0xFFFF or array.ndim > 255:
            raise _fail(f"tensor {name!r}: name longer than 65535 bytes or rank above 255")
        parts.append(struct.pack("<H", len(raw)) + raw)
        parts.append(_TENSOR_HEAD.pack(code, int(is_input), array.ndim, 0))
        parts.append(struct.pack(f"<{array.ndim}q", *array.shape))
        parts.append(struct.pack("<Q", len(data)) + data)
    return b"".join(parts)


def decode_tensors(payload: bytes) -> list[tuple[TensorSpec, np.ndarray | None]]:
    """The tensors of a tensor list: their spec and, when data was sent, the array (a copy)."""
    view = memoryview(payload)
    pos = 0

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if len(view) - pos < n:
            raise _fail(f"malformed tensor list: it ends inside {what}")
        chunk = view[pos : pos + n]
        pos += n
        return chunk

    (count,) = struct.unpack("<I", take(4, "the tensor count"))
    out: list[tuple[TensorSpec, np.ndarray | None]] = []
    for _ in range(count):
        (name_len,) = struct.unpack("<H", take(2, "a name length"))
        name = bytes(take(name_len, "a name")).decode()
        code, is_input, ndim, _pad = _TENSOR_HEAD.unpack(take(4, "a tensor header"))
        shape = struct.unpack(f"<{ndim}q", take(8 * ndim, "the dimensions"))
        (nbytes,) = struct.unpack("<Q", take(8, "a data length"))
        data = take(nbytes, f"the data of {name!r}")
        if code in _NO_NUMPY:
            raise _fail(f"tensor {name!r} is {_NO_NUMPY[code]}, which has no numpy dtype")
        if code not in DTYPES:
            raise _fail(f"tensor {name!r} has unknown dtype code {code}")
        dtype = DTYPES[code]
        spec = TensorSpec(name, dtype.newbyteorder("="), bool(is_input), tuple(int(d) for d in shape))
        array = None
        if nbytes:
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise _fail(f"tensor {name!r} {list(shape)} has {nbytes} data bytes, expected {expected}")
            array = np.frombuffer(data, dtype=dtype).reshape(shape).astype(spec.dtype, copy=True)
        out.append((spec, array))
    if pos != len(view):
        raise _fail(f"malformed tensor list: {len(view) - pos} bytes after the last tensor")
    return out


def write_frame(stream: IO[bytes], kind: FrameKind, payload: bytes = b"") -> None:
    stream.write(_HEADER.pack(MAGIC, int(kind), len(payload)))
    if payload:
        stream.write(payload)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise _fail(f"the runner's output ended inside {what} ({got} of {n} bytes); see its error output")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes]) -> tuple[FrameKind, bytes] | None:
    """The next frame, or None at a clean end of the stream."""
    first = stream.read(1)
    if not first:
        return None
    magic, kind, size = _HEADER.unpack(first + _read_exact(stream, _HEADER.size - 1, "a frame header"))
    if magic != MAGIC:
        raise _fail(f"not a frame (magic {magic!r}); is the binary a trt_runner with --serve?")
    if kind not in FrameKind._value2member_map_:
        raise _fail(f"unknown frame kind {kind}")
    if size > MAX_PAYLOAD:
        raise _fail(f"frame payload of {size} bytes")
    return FrameKind(kind), _read_exact(stream, size, "a frame payload")


def spec_from_payload(payload: bytes) -> list[TensorSpec]:
    return [spec for spec, _ in decode_tensors(payload)]


def outputs_from_payload(payload: bytes, spec: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The OUTPUTS frame's arrays by name; checks them against the engine's output spec."""
    got = decode_tensors(payload)
    wanted = {s.name: s for s in spec if not s.is_input}
    outputs: dict[str, np.ndarray] = {}
    for s, array in got:
        want = wanted.get(s.name)
        if want is None or array is None or s.shape != want.shape or s.dtype != want.dtype:
            raise _fail(f"output {s.name!r} {s.dtype.name}{list(s.shape)} does not match the engine's output spec")
        outputs[s.name] = array
    if set(outputs) != set(wanted):
        raise _fail(f"outputs {sorted(outputs)} differ from the engine's {sorted(wanted)}")
    return outputs

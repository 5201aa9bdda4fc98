"""The frame format and npz helpers: round trips and every way a body can be wrong."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest

from edgematrix.errors import WireFormatError
from edgematrix.server.wire import arrays_to_npz, decode_frame, encode_frame, npz_to_arrays


def test_frame_round_trip() -> None:
    meta = {"op": "measure", "config": {"warmup": 1}, "name": "ü"}
    blobs = {"model": b"\x00\x01\r\n\xff" * 100, "bundle": b""}
    got_meta, got_blobs = decode_frame(encode_frame(meta, blobs))
    assert got_meta == meta and got_blobs == blobs


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda b: b[:5], "shorter than a frame prefix"),
        (lambda b: b"XXXX" + b[4:], "does not start with b'EMXF'"),
        (lambda b: b[:4] + b"\x02" + b[5:], "frame version 2 is not supported"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"x", "1 bytes after its last blob"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "does not match its sha256"),
        (lambda b: b[:5] + struct.pack(">I", 10**6) + b[9:], "does not fit"),
    ],
)
def test_corrupt_frames_are_refused_with_the_reason(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    body = encode_frame({"a": 1}, {"model": b"abcdef"})
    with pytest.raises(WireFormatError, match=needle):
        decode_frame(mutate(body))


def test_meta_must_be_plain_json() -> None:
    with pytest.raises(WireFormatError, match="plain JSON"):
        encode_frame({"x": float("nan")})
    with pytest.raises(WireFormatError, match="not allowed"):
        encode_frame({}, {"../model": b""})


def test_npz_round_trip_and_limits() -> None:
    arrays = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.ones((2,), np.float16)}
    back = npz_to_arrays(arrays_to_npz(arrays))
    assert back.keys() == arrays.keys()
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
        assert back[k].dtype == arrays[k].dtype
    with pytest.raises(WireFormatError, match="only numeric"):
        arrays_to_npz({"o": np.array(["x", 1], dtype=object)})
    buf = io.BytesIO()  # a small compressed npz that expands beyond the limit
    np.savez_compressed(buf, z=np.zeros(1_000_000, np.uint8))
    assert len(buf.getvalue()) < 10_000
    with pytest.raises(WireFormatError, match=r"declares 1000000 bytes of arrays .* the limit is"):
        npz_to_arrays(buf.getvalue(), max_bytes=100_000)
    with pytest.raises(WireFormatError, match=r"not a valid \.npz"):
        npz_to_arrays(b"garbage")
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as zf:
        zf.writestr("x.npy", b"not an npy")
    with pytest.raises(WireFormatError, match=r"is not a readable \.npy array"):
        npz_to_arrays(raw.getvalue())

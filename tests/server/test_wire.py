"""The frame format and npz helpers: round trips and every way a body can be wrong."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgematrix.errors import WireFormatError
from edgematrix.server.wire import (
    arrays_to_npz,
    copy_blob,
    decode_frame,
    encode_frame,
    file_entry,
    frame_head,
    map_npz,
    npz_to_arrays,
    read_frame_head,
    write_npz,
)


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


def test_npz_written_to_a_file_reads_back_from_its_path_like_numpy_savez(tmp_path: Path) -> None:
    # names numpy.savez would take as its own keyword arguments travel like any other
    arrays = {"file": np.arange(4, dtype=np.float32), "allow_pickle": np.ones((2, 2), bool), "a/b": np.zeros(3)}
    path = tmp_path / "outputs.npz"
    write_npz(path, arrays)
    assert path.read_bytes() == arrays_to_npz(arrays)
    back = npz_to_arrays(path)
    assert list(back) == list(arrays)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back[name], arr)
        assert back[name].dtype == arr.dtype
    with np.load(path, allow_pickle=False) as loaded:  # numpy reads what write_npz wrote
        np.testing.assert_array_equal(loaded["file"], arrays["file"])
    with pytest.raises(WireFormatError, match=r"declares 16 bytes of arrays .* the limit is 10"):
        npz_to_arrays(path, max_bytes=10)
    with pytest.raises(WireFormatError, match="cannot be read: No such file"):
        npz_to_arrays(tmp_path / "missing.npz")
    with pytest.raises(WireFormatError, match=r"has dtype object; only numeric"):
        write_npz(tmp_path / "o.npz", {"o": np.array(["x", 1], dtype=object)})


def test_a_frame_read_from_a_stream_blob_by_blob_into_files(tmp_path: Path) -> None:
    meta, blobs = {"op": "evaluate"}, {"model.a": b"\x01" * 3_000_000, "bundle": b"npz"}
    body = encode_frame(meta, blobs)
    stream = io.BytesIO(body)
    got_meta, entries = read_frame_head(stream.read, len(body))
    assert got_meta == meta and [(e.name, e.size) for e in entries] == [("model.a", 3_000_000), ("bundle", 3)]
    assert stream.tell() < 1000  # the header only: the blobs are still in the stream
    for entry in entries:
        copy_blob(stream.read, entry, tmp_path / entry.name)
        assert (tmp_path / entry.name).read_bytes() == blobs[entry.name]
        assert file_entry(entry.name, tmp_path / entry.name) == entry
    assert frame_head(meta, entries) == body[: len(body) - 3_000_003]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda b: b[:5], "shorter than a frame prefix"),
        (lambda b: b[:-1], "frame blob 'bundle' is truncated: 2 of 3 bytes present"),
        (lambda b: b + b"x", "1 bytes after its last blob"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "frame blob 'bundle' does not match its sha256"),
        (lambda b: b[:5] + struct.pack(">I", 10**6) + b[9:], "does not fit"),
    ],
)
def test_a_corrupt_stream_is_refused_like_a_corrupt_frame(tmp_path: Path, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    body = mutate(encode_frame({"a": 1}, {"model": b"abcdef", "bundle": b"npz"}))
    stream = io.BytesIO(body)
    with pytest.raises(WireFormatError, match=needle):
        _, entries = read_frame_head(stream.read, len(body))
        for entry in entries:
            copy_blob(stream.read, entry, tmp_path / entry.name)


def test_a_bundle_file_is_memory_mapped_not_read(tmp_path: Path) -> None:
    arrays = {"x": np.arange(24, dtype=np.float32).reshape(4, 1, 6), "f": np.asfortranarray(np.ones((3, 2), np.int16))}
    path = tmp_path / "bundle.npz"
    write_npz(path, arrays)
    mapped = map_npz(path, max_bytes=1000, max_arrays=4)
    assert all(isinstance(arr, np.memmap) and not arr.flags.writeable for arr in mapped.values())
    for name, arr in arrays.items():
        np.testing.assert_array_equal(mapped[name], arr)
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **arrays)  # deflated members are read, not mapped
    read = map_npz(compressed)
    assert not isinstance(read["x"], np.memmap)
    np.testing.assert_array_equal(read["x"], arrays["x"])
    with pytest.raises(WireFormatError, match=r"declares 108 bytes of arrays .* the limit is 100"):
        map_npz(path, max_bytes=100)
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x03\x04", 1)  # the second member's local header, overwritten
    data[at : at + 4] = b"XXXX"
    broken = tmp_path / "broken.npz"
    broken.write_bytes(bytes(data))
    with pytest.raises(WireFormatError, match=r"member 'f\.npy' cannot be read: Bad magic number"):
        map_npz(broken)

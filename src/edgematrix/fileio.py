"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Write to a temporary file in the destination's folder, fsync it, then ``os.replace`` it over the
destination (a rename within one file system is atomic). The temporary file is removed on failure.
:func:`staged_folder` does the same for a whole folder (a cell's results).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Replace ``path`` with ``data``; ``mode`` defaults to the file's current mode, else 0o666 & ~umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike, *, publish_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Build the new contents of folder ``final`` in a staging folder beside it, then swap it into place.

    The previous ``final`` is untouched until the body completes: when the body raises (bad input, an
    interrupt), the staging folder is removed and the old results stay as they were. On success, or on
    an exception of a ``publish_on`` type (a failed gate still publishes its artifacts), the staging
    folder replaces ``final``; at every moment either the old folder or the new one is in place (the
    old one under a hidden name during the swap).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
    except publish_on:
        _swap_into_place(staging, final)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_into_place(staging, final)


def _swap_into_place(staging: Path, final: Path) -> None:
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; results are shared like any folder
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

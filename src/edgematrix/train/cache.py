"""Content-addressed cache keys: config + data + code, so a change in any of them retrains."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import edgematrix

PACKAGE_DIR = Path(edgematrix.__file__).parent


def code_hash(subpackages: Iterable[str]) -> str:
    """Hash of the package sources that influence a stage (e.g. ``models``, ``train``, ``data``)."""
    h = hashlib.sha256()
    for sub in sorted(subpackages):
        base = PACKAGE_DIR / sub
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        for f in files:
            h.update(str(f.relative_to(PACKAGE_DIR)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def content_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""The cache: content-addressed keys, and entries that are verified before they are reused.

Keys (:func:`content_key`, :func:`code_hash`) name an entry by everything it is built from (config,
data, code), so a change in any of them builds a new entry instead of reusing a stale one.

An entry is trusted by its *seal*, never by its existence: whoever writes a cached file calls
:func:`seal` once the file is complete, which records its SHA-256 and size beside it
(``<name>.sha256``, written atomically). :func:`reuse` verifies the seal before an entry is used; a
file without a seal (an interrupted writer, a cache of an older edgematrix), a size or hash that
differs (truncation, bit rot, another process rewriting it) or an entry that fails the caller's
parse check is deleted, with its seal, and reported in one line; the caller then rebuilds it.
Folders (a dataset, a split model) are sealed as a whole by :func:`seal_tree` / :func:`reuse_tree`:
a manifest of every file's hash.

Seals protect against accidents, not against a hostile writer of the cache folder: whoever can
write an entry can write its seal too. Keep the cache private to the runs you trust (a container
gets its own writable cache mount).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import edgematrix

PACKAGE_DIR = Path(edgematrix.__file__).parent


def _python_files(base: Path) -> list[Path]:
    return sorted(base.rglob("*.py")) if base.is_dir() else [base]


def code_files(part: str) -> list[tuple[str, Path]]:
    """The source files a ``code_hash`` part names, each with the label it is hashed under:

    - a path inside edgematrix, without ``.py`` (``"train/lane"``, ``"models"``: a subpackage's files);
    - an importable module or package of any distribution (``"mypkg.train"``, ``"mypkg"``): its files,
      labelled relative to the folder holding its top-level package, so a user task's training code keys
      the cache by its own sources wherever it is installed;
    - an absolute path to a ``.py`` file or a folder of them.

    Anything else is an :class:`~edgematrix.errors.EdgeMatrixError` naming the part and these forms.
    """
    import importlib.util

    from edgematrix.errors import EdgeMatrixError

    inside = PACKAGE_DIR / part
    candidates = [inside] if inside.is_dir() else [inside.with_suffix(".py")]
    for base in candidates:
        if base.exists() and not Path(part).is_absolute():
            return [(str(f.relative_to(PACKAGE_DIR)), f) for f in _python_files(base)]
    if Path(part).is_absolute():
        base = Path(part)
        if base.is_dir() or (base.suffix == ".py" and base.is_file()):
            root = base if base.is_dir() else base.parent
            return [(str(f.relative_to(root)), f) for f in _python_files(base)]
    elif "/" not in part and part.replace(".", "").replace("_", "").isalnum():
        try:
            spec = importlib.util.find_spec(part)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            # a/b/c (package folder) or a/b/c.py: the labels start at the folder holding a/
            bases = [Path(loc) for loc in spec.submodule_search_locations or []]
            if not bases and spec.origin and spec.origin.endswith(".py"):
                bases = [Path(spec.origin)]
            found = [(str(f.relative_to(b.parents[part.count(".")])), f) for b in bases for f in _python_files(b)]
            if found:
                return found
    raise EdgeMatrixError(
        f"code to hash {part!r} is neither a module of edgematrix (src/edgematrix/{part}.py or a folder), an "
        "importable module with Python sources ('mypkg.train') nor an absolute path to .py sources; a task's "
        "train_code names edgematrix's ('train/lane') or its own modules ('mypkg.train')"
    )


def code_hash(parts: Iterable[str]) -> str:
    """Hash of the sources that influence a stage: edgematrix's (``"models"``, ``"train/lane"``) and a
    user's own modules (``"mypkg.train"``), see :func:`code_files`."""
    h = hashlib.sha256()
    for part in sorted(parts):
        for label, f in code_files(part):
            h.update(label.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def object_code_hash(obj: Any) -> str:
    """Hash of the code behind ``obj`` (a factory function, a task class, a module name): for code outside
    edgematrix, every source file of its top-level package (a model's architecture or a task's training may
    live in any of its modules); for edgematrix's own, the defining module."""
    module = obj if isinstance(obj, str) else getattr(obj, "__module__", "")
    if not module:
        return ""
    if module == "edgematrix" or module.startswith("edgematrix."):
        return code_hash([module.removeprefix("edgematrix.").replace(".", "/") or "__init__"])
    return code_hash([module.split(".")[0]])


def content_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SEAL_SUFFIX = ".sha256"
TREE_MANIFEST = ".edgematrix-manifest.json"


def _seal_path(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)


def _say(message: str) -> None:
    print(f"edgematrix: cache: {message}", file=sys.stderr, flush=True)


def seal(path: Path) -> str:
    """Record ``path``'s SHA-256 and size beside it (``<name>.sha256``); call once the file is complete."""
    from edgematrix.fileio import atomic_write_text

    digest = file_sha256(path)
    atomic_write_text(_seal_path(path), json.dumps({"sha256": digest, "bytes": path.stat().st_size}) + "\n")
    return digest


def sealed_sha256(path: Path) -> str | None:
    """The digest recorded in ``path``'s seal (no verification); None without a readable seal."""
    try:
        return str(json.loads(_seal_path(path).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discard(path: Path) -> None:
    """Delete a cache entry (file or folder) and its seal."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    _seal_path(path).unlink(missing_ok=True)


def _seal_problem(path: Path) -> str:
    """Why ``path`` does not match its seal ("" when it does)."""
    seal_file = _seal_path(path)
    try:
        recorded = json.loads(seal_file.read_text())
        digest, size = str(recorded["sha256"]), int(recorded["bytes"])
    except FileNotFoundError:
        return "no seal (an interrupted write, or a cache of an older edgematrix)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable seal {seal_file.name} ({type(e).__name__})"
    actual = path.stat().st_size
    if actual != size:
        return f"{actual} bytes, sealed with {size}"
    if file_sha256(path) != digest:
        return "content differs from its seal (sha256 mismatch)"
    return ""


def reuse(path: Path, what: str, check: Callable[[Path], object] | None = None) -> bool:
    """True when ``path`` is a cache entry that may be reused: it exists, matches its seal and passes
    ``check`` (e.g. a parse; an exception means it fails). Otherwise a present entry is deleted with
    its seal, one line says why, and False tells the caller to rebuild it."""
    if not path.is_file():
        if _seal_path(path).is_file():
            _seal_path(path).unlink(missing_ok=True)
        return False
    problem = _seal_problem(path)
    if not problem and check is not None:
        try:
            check(path)
        except Exception as e:  # any parse failure: the entry is not usable
            problem = (
                f"does not load ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})"
            )
    if problem:
        _say(f"{what} {path}: {problem}; deleted, rebuilding")
        discard(path)
        return False
    return True


def _tree_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != TREE_MANIFEST)


def seal_tree(folder: Path) -> None:
    """Seal every file of ``folder`` in one manifest (``.edgematrix-manifest.json``)."""
    from edgematrix.fileio import atomic_write_text

    files = {str(p.relative_to(folder)): [file_sha256(p), p.stat().st_size] for p in _tree_files(folder)}
    atomic_write_text(folder / TREE_MANIFEST, json.dumps(files, indent=0, sort_keys=True) + "\n")


def _tree_problem(folder: Path) -> str:
    try:
        recorded = json.loads((folder / TREE_MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (an interrupted write, or a cache of an older edgematrix)"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({type(e).__name__})"
    present = {str(p.relative_to(folder)) for p in _tree_files(folder)}
    missing = sorted(set(recorded) - present)
    if missing:
        return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    extra = sorted(present - set(recorded))
    if extra:
        return f"{len(extra)} file(s) not in its manifest, e.g. {extra[0]}"
    for rel, (digest, size) in sorted(recorded.items()):
        p = folder / rel
        if p.stat().st_size != size or file_sha256(p) != digest:
            return f"{rel} differs from the manifest"
    return ""


def reuse_tree(folder: Path, what: str) -> bool:
    """True when ``folder`` exists and every file matches its manifest; otherwise the folder is deleted
    (one line says why) and the caller rebuilds it."""
    if not folder.is_dir():
        return False
    problem = _tree_problem(folder)
    if problem:
        _say(f"{what} {folder}: {problem}; deleted, rebuilding")
        shutil.rmtree(folder, ignore_errors=True)
        return False
    return True


def load_json_entry(path: Path, what: str) -> object | None:
    """The JSON document of a sealed cache entry, or None (entry deleted) when it fails verification."""
    if not reuse(path, what, check=lambda p: json.loads(p.read_text())):
        return None
    return json.loads(path.read_text())


def write_json_entry(path: Path, doc: object) -> None:
    """Write ``doc`` as a sealed JSON cache entry (atomically)."""
    from edgematrix.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2))
    seal(path)


STAMP = "synthetic.json"


def reuse_generated(root: Path, key: str, what: str) -> bool:
    """True when the generated folder ``root`` (a synthetic dataset) is complete for ``key``: its stamp
    names that key and every file matches the manifest. A damaged folder is deleted (one line says why)."""
    try:
        stamped = json.loads((root / STAMP).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        stamped = False
    return stamped and reuse_tree(root, what)


def seal_generated(root: Path, stamp: dict[str, Any]) -> None:
    """Mark the generated folder ``root`` complete: its stamp (``stamp["key"]``), then the manifest of every file."""
    from edgematrix.fileio import atomic_write_text

    atomic_write_text(root / STAMP, json.dumps(stamp))
    seal_tree(root)

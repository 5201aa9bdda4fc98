"""Cache keys by code: edgematrix's own sources, and a user's package wherever it is installed (a user task's
training code outside edgematrix's folder used to fail with a raw FileNotFoundError)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgematrix.core.cache import PACKAGE_DIR, code_files, code_hash, object_code_hash
from edgematrix.errors import EdgeMatrixError


@pytest.fixture
def user_pkg(tmp_path: Path) -> Iterator[Path]:
    """``usercode_pkg`` (``train.py``, ``model/net.py``) importable from a folder outside edgematrix."""
    root = tmp_path / "site"
    pkg = root / "usercode_pkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("EPOCHS = 3\n\ndef train():\n    return EPOCHS\n")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "net.py").write_text("def build():\n    return 'net'\n")
    sys.path.insert(0, str(root))
    try:
        yield pkg
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "usercode_pkg" or m.startswith("usercode_pkg.")]:
            del sys.modules[name]


def test_edgematrix_parts_keep_their_labels_and_hash() -> None:
    files = code_files("train/lane")
    assert files == [("train/lane.py", PACKAGE_DIR / "train" / "lane.py")]
    # the same bytes as before user code was supported: cached checkpoints keep their keys
    h = hashlib.sha256()
    for f in sorted((PACKAGE_DIR / "models").rglob("*.py")):
        h.update(str(f.relative_to(PACKAGE_DIR)).encode())
        h.update(f.read_bytes())
    assert code_hash(["models"]) == h.hexdigest()[:16]


def test_a_user_module_is_hashed_by_its_own_sources(user_pkg: Path) -> None:
    assert [label for label, _ in code_files("usercode_pkg.train")] == ["usercode_pkg/train.py"]
    assert sorted(label for label, _ in code_files("usercode_pkg")) == [
        "usercode_pkg/__init__.py", "usercode_pkg/model/__init__.py", "usercode_pkg/model/net.py",
        "usercode_pkg/train.py",
    ]  # fmt: skip
    before, whole = code_hash(["usercode_pkg.train", "train/lane"]), object_code_hash("usercode_pkg.model.net")
    assert whole == code_hash(["usercode_pkg"])  # a factory's key: its whole top-level package
    (user_pkg / "train.py").write_text("EPOCHS = 4\n\ndef train():\n    return EPOCHS\n")
    assert code_hash(["usercode_pkg.train", "train/lane"]) != before
    assert object_code_hash("usercode_pkg.model.net") != whole
    # an absolute path to sources works too, labelled relative to itself
    assert [label for label, _ in code_files(str(user_pkg / "model"))] == ["__init__.py", "net.py"]


def test_edgematrix_objects_are_keyed_by_their_module() -> None:
    from edgematrix.tasks.steering import SteeringTask

    assert object_code_hash(SteeringTask) == code_hash(["tasks/steering"])


def test_an_unknown_part_names_the_forms_it_can_take() -> None:
    with pytest.raises(
        EdgeMatrixError,
        match=r"code to hash 'mypkg/train' is neither a module of edgematrix \(src/edgematrix/mypkg/train\.py or a "
        r"folder\), an importable module with Python sources \('mypkg\.train'\) nor an absolute path",
    ):
        code_hash(["mypkg/train"])
    with pytest.raises(EdgeMatrixError, match=r"code to hash 'no_such_module_xyz\.train' is neither"):
        code_hash(["no_such_module_xyz.train"])

"""Where a model's dataset is: the real one a user points at, or a synthetic one in the cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from edgematrix.errors import DataError


def resolve_data_root(
    configured: str | None, *, layout: str, synthetic: str, generate: Callable[[], Path]
) -> tuple[Path, bool]:
    """The dataset folder and whether it is synthetic.

    ``EDGEMATRIX_DATA_ROOT`` wins over the configured ``data_root``; a path that is not a folder is a
    :class:`DataError` naming it and the expected ``layout``. Both empty: ``generate()`` writes (or
    reuses, verified) the ``synthetic`` dataset in the cache and returns its folder.
    """
    root = os.environ.get("EDGEMATRIX_DATA_ROOT") or configured
    if root:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(
                f"data_root {path} does not exist; point it at a {layout} or leave data_root empty to use the "
                f"{synthetic}"
            )
        return path, False
    return generate(), True

"""The shared secret of the latency server and its clients: ``--token-file`` or ``EDGEMATRIX_TOKEN``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgematrix.errors import EdgeMatrixError

TOKEN_ENV = "EDGEMATRIX_TOKEN"


def load_token(token_file: str | os.PathLike[str] | None = None, *, required: bool = True) -> str | None:
    """The token from ``token_file`` (first line; the file must not be readable by group/others), else
    from ``$EDGEMATRIX_TOKEN``. Raises when ``required`` and there is none."""
    if token_file is not None:
        path = Path(token_file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise EdgeMatrixError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EdgeMatrixError(
                f"token file {path} is accessible by group/others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
            )
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise EdgeMatrixError(f"token file {path} is empty; write the shared token on its first line")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if required:
        raise EdgeMatrixError(
            f"no token: set {TOKEN_ENV} or pass --token-file (the same secret on the device and the client; "
            "make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return None

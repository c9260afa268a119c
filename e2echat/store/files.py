"""Private files: written atomically, readable by the owner alone."""

from __future__ import annotations

import os
from pathlib import Path

from e2echat.errors import KeyFileError


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by the owner alone."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.unlink(missing_ok=True)
        # O_EXCL + 0600 at creation: the secret is never readable by others, not even
        # for the moment between open() and a chmod().
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise KeyFileError(path=path, detail=exc.strerror or str(exc)) from None

"""Private files: written atomically, readable by the owner alone."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import nacl.utils

from e2echat.errors import KeyFileError


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by the owner alone.

    Safe with several writers at once (clients on one machine share ``last_profile``):
    each write goes through a temporary file of its own, so the file is always one
    writer's whole version, the last to finish.
    """
    # A name no other writer uses: a fixed ".tmp" let one process unlink or replace
    # another's half-written file, and O_EXCL then failed for the loser.
    temporary = path.with_name(f".{path.name}.{nacl.utils.random(8).hex()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL + 0600 at creation: the secret is never readable by others, not even
        # for the moment between open() and a chmod().
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
    except OSError as exc:
        raise KeyFileError(path=path, detail=exc.strerror or str(exc)) from None

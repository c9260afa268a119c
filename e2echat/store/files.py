"""Private files, written atomically and readable by the owner alone; the profile lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import nacl.utils

from e2echat.errors import KeyFileError, ProfileInUse

LOCK_FILE = "lock"


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the profile in ``directory`` for this process alone, or raise ProfileInUse.

    Two clients on one profile would write the same key, pin and settings files and
    register the same nick; the second is refused before it touches anything. The lock
    is the kernel's (``flock``), so it goes with the process, however that ends.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise KeyFileError(path=directory, detail=exc.strerror or str(exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProfileInUse(path=directory) from None
        yield
    finally:
        os.close(fd)  # and with it the lock


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

"""Private files under concurrent writers: several clients on one machine share
``last_profile``, and two processes may write one profile's files at once."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from e2echat.errors import KeyFileError, ProfileInUse
from e2echat.store.files import LOCK_FILE, exclusive, write_private_file

WRITERS = 6
WRITES = 60


def _write_many(path: str, tag: int) -> str:
    """One process's writes; returns the first error's text, or "" (the parent checks)."""
    try:
        for i in range(WRITES):
            write_private_file(Path(path), f"writer {tag} write {i}\n".encode())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def test_concurrent_writers_never_fail_and_leave_one_whole_version(tmp_path: Path) -> None:
    target = tmp_path / "last_profile"
    context = multiprocessing.get_context("fork")
    with context.Pool(WRITERS) as pool:
        errors = pool.starmap(_write_many, [(str(target), tag) for tag in range(WRITERS)], chunksize=1)
    assert errors == [""] * WRITERS
    text = target.read_text()
    assert text.startswith("writer ") and text.endswith("\n") and text.count("\n") == 1
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_profile"]  # no temporary left


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()  # os.replace of a file over a directory fails
    with pytest.raises(KeyFileError):
        write_private_file(tmp_path / "target", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_a_profile_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    with exclusive(tmp_path):
        with pytest.raises(ProfileInUse), exclusive(tmp_path):
            pass
    with exclusive(tmp_path):  # released with the first holder
        pass
    assert stat.S_IMODE(os.stat(tmp_path / LOCK_FILE).st_mode) == 0o600

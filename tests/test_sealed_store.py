"""The sealed store (store/sealed.py): rows that open only under their own name and key,
owner-only files, one transaction per write, crashes, failing disks, and the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import nacl.utils
import pytest

from e2echat.errors import KeyFileError, LocalProtocolError
from e2echat.store.sealed import SealedStore

from support import REPO, WAIT

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NAMES = ["alice", "prekeys", "élodie", "名前", "", "two\nlines", "nul\x00inside"]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "profile" / "sessions.sqlite"


def saved(path: Path, key: bytes = KEY) -> dict[str, bytes]:
    """What a fresh open of ``path`` finds."""
    store = SealedStore.open(path, key)
    try:
        return store.load()
    finally:
        store.close()


def save(path: Path, rows: dict[str, bytes], key: bytes = KEY) -> None:
    store = SealedStore.open(path, key)
    for name, value in rows.items():
        store.put(name, value)
    store.write_now()
    store.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """The file under SQLite alone, as someone with access to the disk sees it."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


class GatedStore(SealedStore):
    """A real store that records each write's batch and holds it until ``gate`` opens."""

    def __init__(self, path: Path, key: bytes) -> None:
        super().__init__(path, key)
        self.batches: list[dict[str, bytes | None]] = []
        self.writing = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def _commit(self, batch: dict[str, bytes | None]) -> None:
        self.batches.append(dict(batch))
        self.writing.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        super()._commit(batch)


def gated(path: Path) -> GatedStore:
    store = GatedStore.open(path, KEY)
    assert isinstance(store, GatedStore)
    return store


# -- what goes in comes out ----------------------------------------------------------------


def test_rows_survive_a_reopen(path: Path) -> None:
    rows = {name: f"value of {name!r}".encode() for name in NAMES} | {"empty": b""}
    store = SealedStore.open(path, KEY)
    assert store.load() == {}
    for name, value in rows.items():
        store.put(name, value)
    assert store.load() == rows  # buffered changes count before they are written
    store.write_now()
    store.close()
    assert saved(path) == rows


def test_delete_removes_a_row_and_ignores_a_missing_one(path: Path) -> None:
    save(path, {"alice": b"a", "bob": b"b"})
    store = SealedStore.open(path, KEY)
    store.delete("alice")
    store.delete("nobody")
    assert store.load() == {"bob": b"b"}
    store.write_now()
    store.close()
    assert saved(path) == {"bob": b"b"}


def test_a_name_that_is_not_utf8_text_is_refused_at_put(path: Path) -> None:
    store = SealedStore.open(path, KEY)
    with pytest.raises(LocalProtocolError):
        store.put("lone \ud800 surrogate", b"x")
    store.close()


def test_a_key_of_the_wrong_size_is_refused(path: Path) -> None:
    with pytest.raises(LocalProtocolError):
        SealedStore.open(path, KEY[:31])


# -- rows open only under their own name and key -------------------------------------------


def test_a_row_swapped_to_another_name_is_refused(path: Path) -> None:
    save(path, {"alice": b"alice's session", "bob": b"bob's session"})
    saved(path)  # the positive control: as written, it opens
    with raw(path) as connection:
        rows = dict(connection.execute("SELECT name, sealed FROM sealed_rows"))
        connection.execute("UPDATE sealed_rows SET sealed = ? WHERE name = 'alice'", (rows["bob"],))
        connection.execute("UPDATE sealed_rows SET sealed = ? WHERE name = 'bob'", (rows["alice"],))
    with pytest.raises(KeyFileError, match="damaged or sealed with another key; move it away"):
        saved(path)


def test_a_row_renamed_is_refused(path: Path) -> None:
    save(path, {"alice": b"alice's session"})
    with raw(path) as connection:
        connection.execute("UPDATE sealed_rows SET name = 'mallory'")
    with pytest.raises(KeyFileError, match="damaged or sealed with another key"):
        saved(path)


def test_a_row_from_another_profile_is_refused(tmp_path: Path, path: Path) -> None:
    theirs = tmp_path / "theirs.sqlite"
    save(path, {"alice": b"ours"})
    save(theirs, {"bob": b"theirs"}, key=OTHER_KEY)
    with raw(path) as connection:
        connection.execute("ATTACH DATABASE ? AS theirs", (str(theirs),))
        connection.execute("INSERT INTO sealed_rows SELECT * FROM theirs.sealed_rows")
    with pytest.raises(KeyFileError, match="damaged or sealed with another key"):
        saved(path)


def test_the_wrong_key_is_refused(path: Path) -> None:
    save(path, {"alice": b"a"})
    assert saved(path) == {"alice": b"a"}
    with pytest.raises(KeyFileError, match="damaged or sealed with another key"):
        saved(path, key=OTHER_KEY)


@pytest.mark.parametrize("where", [0, 23, 24, 40, -1])  # nonce, tag, ciphertext
def test_a_flipped_byte_is_refused(path: Path, where: int) -> None:
    save(path, {"alice": b"alice's session"})
    with raw(path) as connection:
        (sealed,) = connection.execute("SELECT sealed FROM sealed_rows").fetchone()
        flipped = bytearray(sealed)
        flipped[where] ^= 1
        connection.execute("UPDATE sealed_rows SET sealed = ?", (bytes(flipped),))
    with pytest.raises(KeyFileError, match="damaged"):
        saved(path)


def test_a_file_that_is_not_a_store_is_refused(path: Path) -> None:
    path.parent.mkdir()
    path.write_bytes(b"not a database at all, not even close" * 200)
    with pytest.raises(KeyFileError, match="damaged"):
        saved(path)


def test_a_store_from_a_newer_version_is_refused(path: Path) -> None:
    save(path, {})
    with raw(path) as connection:
        connection.execute("PRAGMA user_version = 2")
    with pytest.raises(KeyFileError, match="newer e2echat"):
        saved(path)


# -- owner-only files ------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def permissive_umask(request: pytest.FixtureRequest) -> Iterator[None]:
    previous = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_the_file_and_its_journal_are_the_owners_alone(path: Path) -> None:
    store = SealedStore.open(path, KEY)
    store.put("alice", b"a" * 10_000)  # several pages: the journal has work to do
    store.write_now()
    store.put("alice", b"b" * 10_000)
    store.write_now()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["sessions.sqlite", "sessions.sqlite-journal"]  # the journal is checked too
    modes = {name: stat.S_IMODE(os.stat(path.parent / name).st_mode) for name in files}
    assert modes == dict.fromkeys(files, 0o600)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    store.close()


def test_an_existing_file_open_to_others_is_closed_to_them(path: Path) -> None:
    save(path, {"alice": b"a"})
    os.chmod(path, 0o644)
    assert saved(path) == {"alice": b"a"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_replaced_or_deleted_row_leaves_no_copy_in_the_files(path: Path) -> None:
    """Old sealed rows are old session keys: forward secrecy wants them gone from the disk
    (as far as a file system lets a program make sure of that)."""
    store = SealedStore.open(path, KEY)
    store.put("alice", b"first" * 2000)  # overflow pages, freed on the way out
    store.put("bob", b"first")
    store.put("carol", b"first")
    store.write_now()
    with raw(path) as connection:
        old = [
            sealed for (sealed,) in connection.execute("SELECT sealed FROM sealed_rows WHERE name != 'carol'")
        ]
    store.put("alice", b"second")
    store.delete("bob")
    store.write_now()
    on_disk = b"".join(p.read_bytes() for p in path.parent.iterdir())
    # Pieces: a long row is split over pages, each with a header of its own.
    pieces = [sealed[start : start + 32] for sealed in old for start in range(0, len(sealed) - 32, 500)]
    assert len(old) == 2 and not [piece for piece in pieces if piece in on_disk]
    store.close()


# -- writes: one transaction, off the loop, latest wins --------------------------------------


async def test_save_soon_writes_in_the_background_while_the_loop_runs(path: Path) -> None:
    store = gated(path)
    store.gate.clear()
    store.put("alice", b"a")
    store.save_soon()
    # Were the write on the loop, save_soon would not return until the gate opened.
    assert await asyncio.to_thread(store.writing.wait, WAIT)
    other_work = asyncio.Event()
    asyncio.get_running_loop().call_soon(other_work.set)
    await asyncio.wait_for(other_work.wait(), WAIT)  # the loop runs while the write is held
    with raw(path) as connection:  # and the write is really still to come
        assert connection.execute("SELECT count(*) FROM sealed_rows").fetchone() == (0,)
    store.gate.set()
    await asyncio.wait_for(store.flush(), WAIT)
    store.close()
    assert saved(path) == {"alice": b"a"}


async def test_changes_made_during_a_write_go_in_the_next_one_latest_wins(path: Path) -> None:
    store = gated(path)
    store.gate.clear()
    store.put("alice", b"1")
    store.save_soon()
    assert await asyncio.to_thread(store.writing.wait, WAIT)
    for value in (b"2", b"3", b"4"):  # while the first write is held
        store.put("alice", value)
        store.put("bob", value)
        store.save_soon()
    store.delete("bob")
    store.save_soon()
    store.gate.set()
    await asyncio.wait_for(store.flush(), WAIT)
    assert store.batches == [{"alice": b"1"}, {"alice": b"4", "bob": None}]
    store.close()
    assert saved(path) == {"alice": b"4"}


async def test_save_soon_with_nothing_buffered_writes_nothing(path: Path) -> None:
    store = gated(path)
    store.save_soon()
    await asyncio.wait_for(store.flush(), WAIT)
    store.put("alice", b"a")
    await asyncio.wait_for(store.flush(), WAIT)
    store.save_soon()
    await asyncio.wait_for(store.flush(), WAIT)
    assert store.batches == [{"alice": b"a"}]
    store.close()


# -- crashes -----------------------------------------------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from e2echat.store.sealed import SealedStore

store = SealedStore.open(Path(sys.argv[1]), bytes.fromhex(sys.argv[2]))
if sys.argv[3] == "crash-before-flush":
    store.put("alice", b"flushed")
    store.put("bob", b"flushed")
    store.write_now()
    store.put("alice", b"never flushed")
    store.delete("bob")
    store.put("carol", b"never flushed")
else:  # "write-until-killed": 50 rows of one generation per transaction
    generation = 0
    while True:
        for row in range(50):
            store.put(f"row {row}", generation.to_bytes(4, "big") + bytes(2048))
        store.write_now()
        print(generation, flush=True)
        generation += 1
os.kill(os.getpid(), signal.SIGKILL)
"""


async def _child(path: Path, mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), KEY.hex(), mode, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )


async def test_a_crash_before_flush_loses_only_the_unflushed_changes(path: Path) -> None:
    child = await _child(path, "crash-before-flush")
    assert await asyncio.wait_for(child.wait(), WAIT) == -signal.SIGKILL
    assert saved(path) == {"alice": b"flushed", "bob": b"flushed"}


# A transaction takes about a millisecond: the delays put the crash at different points in
# the next generation's puts, sealing and transaction (a sleep to pick a moment, not to
# wait for something).
@pytest.mark.parametrize("delay", [0, 0.0003, 0.001, 0.002, 0.004, 0.008])
async def test_a_crash_during_a_write_leaves_one_whole_transaction(path: Path, delay: float) -> None:
    child = await _child(path, "write-until-killed")
    assert child.stdout is not None
    try:
        for _ in range(2):
            last = int(await asyncio.wait_for(child.stdout.readline(), WAIT))
        await asyncio.sleep(delay)
    finally:
        child.kill()
        await asyncio.wait_for(child.wait(), WAIT)
    rows = saved(path)
    assert sorted(rows) == sorted(f"row {row}" for row in range(50))
    found = {int.from_bytes(value[:4], "big") for value in rows.values()}
    assert len(found) == 1, f"rows from generations {sorted(found)}: a transaction was cut in half"
    assert found.pop() >= last  # what was reported written is there, or a later one


# -- a disk that fails -------------------------------------------------------------------------


async def test_a_failed_write_is_reported_kept_and_retried(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = nacl.utils.random(16).hex().encode()
    store = SealedStore.open(path, KEY)
    store.put("alice", b"before")
    await asyncio.wait_for(store.flush(), WAIT)

    # The file is moved away and a directory takes its name, as by hand or a restore
    # gone wrong: SQLite refuses to write to a file that is no longer at its path.
    path.rename(path.with_name("moved"))
    path.mkdir()
    store.put("alice", secret)
    store.put("bob", secret)
    with caplog.at_level(logging.WARNING, logger="e2echat.store.sealed"):
        store.save_soon()
        for _ in range(2):
            with pytest.raises(KeyFileError, match="moved or replaced while in use"):
                await asyncio.wait_for(store.flush(), WAIT)
        store.put("carol", secret)  # made while failing: kept with the others
        with pytest.raises(KeyFileError):
            await asyncio.wait_for(store.flush(), WAIT)
    warnings = [record for record in caplog.records if record.name == "e2echat.store.sealed"]
    assert len(warnings) == 1  # one per failure, not one per retry
    assert secret.decode() not in caplog.text and "alice" not in caplog.text

    path.rmdir()
    path.with_name("moved").rename(path)
    await asyncio.wait_for(store.flush(), WAIT)  # the next write clears the error
    await asyncio.wait_for(store.flush(), WAIT)
    store.close()
    assert saved(path) == {"alice": secret, "bob": secret, "carol": secret}


async def test_a_change_made_during_a_failing_write_outlives_it(path: Path) -> None:
    store = gated(path)
    store.gate.clear()
    store.put("alice", b"old")
    store.save_soon()
    assert await asyncio.to_thread(store.writing.wait, WAIT)
    path.rename(path.with_name("moved"))  # the held write will fail
    store.put("alice", b"new")
    store.gate.set()
    with pytest.raises(KeyFileError):
        await asyncio.wait_for(store.flush(), WAIT)
    path.with_name("moved").rename(path)
    await asyncio.wait_for(store.flush(), WAIT)
    store.close()
    assert saved(path) == {"alice": b"new"}  # the failed batch came back under the newer change


def test_write_now_raises_as_flush_does(path: Path) -> None:
    store = SealedStore.open(path, KEY)
    store.put("alice", b"a")
    store.write_now()
    path.rename(path.with_name("moved"))
    store.put("alice", b"b")
    with pytest.raises(KeyFileError):
        store.write_now()
    path.with_name("moved").rename(path)
    store.write_now()
    store.close()
    assert saved(path) == {"alice": b"b"}


def test_close_says_how_many_changes_it_drops(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SealedStore.open(path, KEY)
    store.put("alice", b"a")
    store.put("bob", b"b")
    with caplog.at_level(logging.WARNING, logger="e2echat.store.sealed"):
        store.close()
    assert "2 changes were never written" in caplog.text
    with pytest.raises(LocalProtocolError):
        store.put("alice", b"a")
    assert saved(path) == {}

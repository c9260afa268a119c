"""Named byte strings in one SQLite file, each row sealed: the client's sessions on disk.

Each row is ``name TEXT PRIMARY KEY, sealed BLOB``, the blob a SecretBox (XSalsa20-Poly1305,
random nonce) of ``len(name) || name || value`` under a 32-byte key the caller derives from
the identity key. The name inside the seal ties each row to its name: a row moved to another
name, or brought from another profile (another key), does not open, and ``load`` refuses the
whole file rather than start from part of it. The seal gives confidentiality and integrity
per row, not freshness: a row deleted, or the whole file put back to an older copy, opens
as it was.

The event loop only buffers: ``put`` and ``delete`` record the latest change per name, and
``save_soon`` hands what is buffered to a worker thread that seals it and writes it in one
transaction. SQLite connections belong to one thread, so the connection is made, used and
closed in that one thread; the synchronous calls (``open``, ``load``, ``write_now``,
``close``) wait for it. Writes run one at a time in order; changes made while one runs wait
for the next, which takes all of them. A failed write puts its changes back under any newer
ones, so nothing is lost while the process lives, and ``flush`` reports the failure.

The profile lock (store/files.py ``exclusive``) keeps other processes out of the file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path

import nacl.exceptions
from nacl.secret import SecretBox

from e2echat.errors import KeyFileError, LocalProtocolError

log = logging.getLogger("e2echat.store.sealed")

_SCHEMA_VERSION = 1  # PRAGMA user_version: 0 is a new, empty file
_NAME_LENGTH_SIZE = 4  # big-endian length of the name inside each seal
_DAMAGED = "it is damaged or sealed with another key; move it away to start afresh"
# SQLite's own words for a file that is not (or no longer) a database.
_DAMAGED_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def named_payload(name: str, value: bytes) -> bytes:
    """``value`` with ``name`` before it, to be sealed: the seal then names where it is kept."""
    encoded = name.encode("utf-8")
    return len(encoded).to_bytes(_NAME_LENGTH_SIZE, "big") + encoded + value


def unpack_named(name: str, payload: bytes) -> bytes | None:
    """The value sealed for ``name``; None if the seal names another row (or place)."""
    length = int.from_bytes(payload[:_NAME_LENGTH_SIZE], "big")
    end = _NAME_LENGTH_SIZE + length
    if len(payload) < end or payload[_NAME_LENGTH_SIZE:end] != name.encode("utf-8"):
        return None
    return payload[end:]


def database_problem(path: Path, exc: sqlite3.Error | OSError) -> KeyFileError:
    """What went wrong with the SQLite file ``path``, in the user's words."""
    if isinstance(exc, sqlite3.Error) and exc.sqlite_errorname in _DAMAGED_CODES:
        return KeyFileError(path=path, detail=_DAMAGED)
    if isinstance(exc, sqlite3.Error) and exc.sqlite_errorname == "SQLITE_READONLY_DBMOVED":
        # SQLite's own text, "attempt to write a readonly database", misleads here.
        return KeyFileError(path=path, detail="it was moved or replaced while in use")
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return KeyFileError(path=path, detail=detail)


def open_private_database(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file ``path``, made (mode 0600, in a directory of mode
    0700) if missing, journalled so that a crash rolls back to the last commit and a
    commit survives one. Raises ``KeyFileError``."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made 0600 here, before SQLite sees it: SQLite would make it 0644 under the
        # usual umask, and gives its journal the database file's mode.
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                os.fchmod(fd, 0o600)  # made or copied by hand: close it to others
        os.close(fd)
        connection = sqlite3.connect(path, isolation_level=None)  # we BEGIN and COMMIT
    except (OSError, sqlite3.Error) as exc:
        raise database_problem(path, exc) from None
    try:
        # A rollback journal, kept between transactions and truncated at each commit,
        # with synchronous=FULL: the journal (the old pages) is on disk before the file
        # changes, so a crash at any point rolls back to the last commit when the file
        # is next opened, never to half of one; and the commit, the journal's
        # truncation, is fsynced before COMMIT returns, so a finished flush survives a
        # crash or power loss. Truncating rather than deleting the journal makes the
        # commit one fsync of a file, not of the directory (DELETE needs EXTRA for
        # that). Not WAL: its log keeps old versions of rows (sealed session keys, which
        # forward secrecy wants gone) for up to 1000 pages after they are replaced, adds
        # a -shm file, and lets writes go on into a file moved away while open, where a
        # rollback journal refuses them (SQLITE_READONLY_DBMOVED). 50 rows of 2 KiB
        # commit in about a millisecond here either way.
        (mode,) = connection.execute("PRAGMA journal_mode=TRUNCATE").fetchone()
        if mode != "truncate":
            raise KeyFileError(path=path, detail=f"SQLite kept journal mode {mode}, not truncate")
        connection.execute("PRAGMA synchronous=FULL")
        # Freed pages (a row replaced or deleted) are zeroed, not left holding old keys.
        connection.execute("PRAGMA secure_delete=ON")
    except (KeyFileError, sqlite3.Error) as exc:
        connection.close()
        if isinstance(exc, KeyFileError):
            raise
        raise database_problem(path, exc) from None
    return connection


class SealedStore:
    """Named byte strings in one SQLite file, each row sealed (XSalsa20-Poly1305) under ``key``.

    Made by ``open``. ``load`` is for start-up; ``put``, ``delete`` and ``save_soon`` for the
    event loop; ``flush`` (on the loop) or ``write_now`` (off it) before ``close``.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) != SecretBox.KEY_SIZE:
            raise LocalProtocolError(
                detail=f"a sealed store's key has {SecretBox.KEY_SIZE} bytes, not {len(key)}"
            )
        self.path = path
        self._box = SecretBox(key)
        # One thread: the connection's (sqlite3 refuses use from another), and one write
        # at a time, in the order they were asked for.
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealed-store")
        self._connection: sqlite3.Connection | None = None  # the worker's alone
        # Shared by the loop (put, delete, save_soon) and the worker (which takes a batch).
        self._lock = threading.Lock()
        self._pending: dict[str, bytes | None] = {}  # latest change per name; None deletes
        self._queued = False  # a write is waiting to start: it will take what is pending
        self._error: KeyFileError | None = None  # the last write failed (the worker's)
        self._closed = False

    @classmethod
    def open(cls, path: Path, key: bytes) -> SealedStore:
        """The store in ``path``, made (mode 0600, in a directory of mode 0700) if missing.
        Raises ``KeyFileError``."""
        store = cls(path, key)
        try:
            store._worker.submit(store._connect).result()
        except BaseException:
            store._worker.shutdown()
            raise
        return store

    def load(self) -> dict[str, bytes]:
        """Everything in the store, opened (with what is buffered and not written yet).
        Raises ``KeyFileError`` if any row does not open."""
        self._check_open()
        return self._worker.submit(self._read_all).result()

    def put(self, name: str, value: bytes) -> None:
        """Set ``name`` to ``value`` in memory; ``save_soon`` or ``flush`` writes it."""
        self._check_name(name)
        with self._lock:
            self._pending[name] = value

    def delete(self, name: str) -> None:
        """Remove ``name`` (if it is there) in memory; ``save_soon`` or ``flush`` writes it."""
        self._check_name(name)
        with self._lock:
            self._pending[name] = None

    def save_soon(self) -> None:
        """Write what is buffered in a worker thread, in one transaction. Cheap when nothing
        is buffered or a write is already waiting to start (that one takes it all)."""
        if not self._pending:  # a glance without the lock: the common case costs nothing
            return
        self._check_open()
        with self._lock:
            if self._queued or not self._pending:
                return
            self._queued = True
        # The future is dropped: a failure is logged, kept in _error, and raised by flush.
        self._worker.submit(self._write_pending)

    async def flush(self) -> None:
        """Return once everything buffered is on disk. Raises ``KeyFileError`` if the write
        failed: the changes stay buffered, and the next write tries them again."""
        self._check_open()
        # Cancelling the caller does not cut a write short: a write that has started
        # finishes in the worker, and one that has not leaves the changes buffered.
        await asyncio.get_running_loop().run_in_executor(self._worker, self._write_pending)

    def write_now(self) -> None:
        """``flush`` for code outside the event loop: blocks until written. Raises
        ``KeyFileError``."""
        self._check_open()
        self._worker.submit(self._write_pending).result()

    def close(self) -> None:
        """Finish the writes already asked for and close the file. What is still buffered is
        dropped (the log says how much): ``flush`` or ``write_now`` first."""
        if self._closed:
            return
        self._closed = True
        try:
            self._worker.submit(self._disconnect).result()
        finally:
            self._worker.shutdown()
        if self._pending:
            log.warning("%s: %d changes were never written", self.path, len(self._pending))

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError(detail=f"the sealed store {self.path} is closed")

    def _check_name(self, name: str) -> None:
        # Here, not in the worker: a name that cannot be stored is the caller's bug, and in
        # a batch it would fail every write after it.
        self._check_open()
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError(
                detail=f"a sealed store's row name must be UTF-8 text: {name!r}"
            ) from None

    # -- in the worker thread -------------------------------------------------------------

    def _connect(self) -> None:
        connection = open_private_database(self.path)
        try:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version == 0:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("CREATE TABLE sealed_rows (name TEXT PRIMARY KEY, sealed BLOB NOT NULL)")
                connection.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                connection.execute("COMMIT")
            elif version != _SCHEMA_VERSION:
                raise KeyFileError(path=self.path, detail="it was made by a newer e2echat")
        except (KeyFileError, sqlite3.Error) as exc:
            connection.close()
            if isinstance(exc, KeyFileError):
                raise
            raise database_problem(self.path, exc) from None
        self._connection = connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _read_all(self) -> dict[str, bytes]:
        assert self._connection is not None
        try:
            rows = self._connection.execute("SELECT name, sealed FROM sealed_rows").fetchall()
        except sqlite3.Error as exc:
            raise database_problem(self.path, exc) from None
        opened: dict[str, bytes] = {}
        for name, sealed in rows:
            value = None
            if isinstance(name, str) and isinstance(sealed, bytes):
                try:
                    value = unpack_named(name, self._box.decrypt(sealed))
                except (nacl.exceptions.CryptoError, ValueError):
                    value = None  # too short to hold a nonce, or it does not authenticate
            if value is None:
                raise KeyFileError(path=self.path, detail=_DAMAGED)
            opened[name] = value
        with self._lock:  # no write runs now (this is the worker), but puts may
            for name, change in self._pending.items():
                if change is None:
                    opened.pop(name, None)
                else:
                    opened[name] = change
        return opened

    def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
            self._queued = False
        if not batch:
            return  # a failed write puts its batch back, so nothing pending means no error
        try:
            self._commit(batch)
        except BaseException as exc:
            with self._lock:
                self._pending = {**batch, **self._pending}  # changes made since win
            if isinstance(exc, KeyFileError):
                if self._error is None:  # one warning per failure, not one per retry
                    log.warning("%s (%d changes kept in memory, to try again)", exc, len(batch))
                self._error = exc
            raise
        self._error = None

    def _commit(self, batch: dict[str, bytes | None]) -> None:
        """Seal ``batch`` and write it in one transaction. Raises ``KeyFileError``."""
        connection = self._connection
        assert connection is not None
        sealed = [
            (name, bytes(self._box.encrypt(named_payload(name, value))))
            for name, value in batch.items()
            if value is not None
        ]
        gone = [(name,) for name, value in batch.items() if value is None]
        try:
            if connection.in_transaction:  # one a failed ROLLBACK left open
                connection.execute("ROLLBACK")
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    "INSERT INTO sealed_rows (name, sealed) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed",
                    sealed,
                )
                connection.executemany("DELETE FROM sealed_rows WHERE name = ?", gone)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:  # SQLite ends some failed transactions itself
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise database_problem(self.path, exc) from None

"""The relay's store in one SQLite file: ``e2echat relay --store FILE``.

It holds what relay/store.py lists: identities (nick, identity key, last seen), prekey
bundles, room memberships and mailboxes (ciphertext the relay cannot open, with sender,
message id and time queued): public keys, ciphertext and metadata, no secret of anyone's.
The file, its ``-wal`` and ``-shm`` companions and the ``-lock`` file are made 0600 all
the same: the metadata (who writes to whom, when, how much) is nobody else's business.

Durability: a WAL journal with ``synchronous=NORMAL``. A commit appends to the WAL and
returns without an fsync; the pages are in the kernel's cache, so a ``kill -9`` of the
relay loses nothing ``apply`` returned for (tests/test_relay_store.py kills a writer to
check). Only a power loss or kernel crash can lose the last transactions before the next
checkpoint, never leave half of one. FULL (an fsync per commit) measured 3x slower at one
op a transaction and 1.4x at 10 to 100 (benchmarks/store.py) on a machine whose fsync
takes 0.1 ms; where it takes a millisecond or more, as on many disks, FULL would hold a
quiet relay, one op a transaction, to about a thousand messages a second.

Threads: the connection is made in ``__init__`` (so a second relay on the file, or a file
that is not a store, fails at start-up, in the caller's thread) with
``check_same_thread=False``: ``apply`` runs in the shell's worker thread. A lock makes the
calls take turns; the shell calls ``apply`` from one thread at a time anyway.

One relay per file: ``flock`` on ``FILE-lock`` beside it, held until ``close``. Not on the
database file itself: SQLite's own locks are POSIX locks, which a process loses on closing
*any* descriptor of that file, such as the one a refused second store would open.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nacl.utils

from e2echat.errors import LocalProtocolError, StoreError, StoreInUse
from e2echat.relay.store import (
    Dequeue,
    Enqueue,
    ForgetIdentity,
    ForgetMember,
    Identity,
    MailItem,
    Member,
    Op,
    SaveBundle,
    SaveIdentity,
    SaveMember,
    Snapshot,
    StoredBundle,
)
from e2echat.wire.grammar import RELAY_ID_SIZE

log = logging.getLogger("e2echat.relay.sqlite_store")

FORMAT = "e2echat relay store"  # the version row's first column: this file is one of ours
VERSION = 3  # 2: about.next_seq, identities.registered; 3: about.relay_id
LOCK_SUFFIX = "-lock"  # beside SQLite's own -wal and -shm
# STRICT tables (a core that hands over a str for bytes fails its batch, not the next load).
_MIN_SQLITE = (3, 37, 0)
# SQLite's own words for a file that is not (or no longer) a database.
_DAMAGED_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_NOT_A_STORE = "it is not an e2echat relay store (or it is damaged)"
# The WAL is cut back to this after a checkpoint: a burst of mail does not leave a file of
# its size behind.
_WAL_LIMIT = 64 * 2**20

_SCHEMA = (
    "CREATE TABLE about (format TEXT NOT NULL, version INTEGER NOT NULL,"
    " next_seq INTEGER NOT NULL DEFAULT 0, relay_id BLOB NOT NULL DEFAULT x'') STRICT",
    "CREATE TABLE identities (nick TEXT PRIMARY KEY, identity_key BLOB NOT NULL,"
    " last_seen REAL NOT NULL, registered INTEGER NOT NULL DEFAULT 0) STRICT",
    "CREATE TABLE bundles (nick TEXT PRIMARY KEY, signed BLOB NOT NULL, one_time BLOB NOT NULL) STRICT",
    "CREATE TABLE members (room TEXT NOT NULL, nick TEXT NOT NULL, last_seen REAL NOT NULL,"
    " PRIMARY KEY (room, nick)) STRICT",
    # One mailbox item a row; (recipient, seq) is unique, so an item enqueued twice fails
    # its batch rather than be delivered twice.
    "CREATE TABLE mail (recipient TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,"
    " sender TEXT NOT NULL, message_id INTEGER NOT NULL, queued_at REAL NOT NULL,"
    " body BLOB NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (recipient, seq)) STRICT",
)
# Format -> what brings it to the next one.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE about ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 0",
        # 0 for all: the order they last registered in is lost; last seen stands in for it.
        "ALTER TABLE identities ADD COLUMN registered INTEGER NOT NULL DEFAULT 0",
    ),
    # Empty: drawn at the next open (the store's mailboxes are the ones it always had).
    2: ("ALTER TABLE about ADD COLUMN relay_id BLOB NOT NULL DEFAULT x''",),
}
# Made at every open, not only with the tables: a store made before it existed gets it too.
# Forgetting a nick deletes its memberships by nick alone, which the primary key (room
# first) cannot find without a scan of every membership.
_INDEXES = ("CREATE INDEX IF NOT EXISTS members_by_nick ON members (nick)",)


class SqliteStore:
    """A ``RelayStore`` in the SQLite file ``path``, made (mode 0600) if missing.

    Raises ``StoreInUse`` if another store has the file open, ``StoreError`` if it cannot
    be used (not a store, made by a newer e2echat, unreadable). ``apply`` raises
    ``StoreError`` with nothing of the batch kept.
    """

    durable = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # load, apply and close take turns
        self._lock_fd = self._take_lock()
        try:
            self._connection: sqlite3.Connection | None = self._connect()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def load(self) -> Snapshot:
        with self._lock:
            connection = self._open_connection()
            try:
                return Snapshot(
                    identities=[
                        Identity(*row)
                        for row in connection.execute(
                            "SELECT nick, identity_key, last_seen, registered FROM identities ORDER BY nick"
                        )
                    ],
                    bundles=[
                        StoredBundle(nick, signed, one_time)
                        for nick, signed, one_time in connection.execute(
                            "SELECT nick, signed, one_time FROM bundles ORDER BY nick"
                        )
                    ],
                    members=[
                        Member(room, nick, last_seen)
                        for room, nick, last_seen in connection.execute(
                            "SELECT room, nick, last_seen FROM members ORDER BY room, nick"
                        )
                    ],
                    # BINARY collation orders UTF-8 bytes, which is Python's order of str.
                    mail=[
                        MailItem(*row)
                        for row in connection.execute(
                            "SELECT recipient, seq, kind, sender, message_id, queued_at, body, reason"
                            " FROM mail ORDER BY recipient, seq"
                        )
                    ],
                    next_seq=connection.execute("SELECT next_seq FROM about").fetchone()[0],
                    relay_id=connection.execute("SELECT relay_id FROM about").fetchone()[0],
                )
            except sqlite3.Error as exc:
                raise self._problem(exc) from None

    def apply(self, ops: Sequence[Op]) -> None:
        if not ops:
            return
        with self._lock:
            connection = self._open_connection()
            try:
                if connection.in_transaction:  # one a failed ROLLBACK left open
                    connection.execute("ROLLBACK")
                connection.execute("BEGIN IMMEDIATE")
                try:
                    # Runs of one kind of op, each in one executemany; runs stay in order.
                    for kind, run in itertools.groupby(ops, type):
                        _WRITERS[kind](connection, list(run))
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:  # SQLite ends some failed transactions itself
                        with contextlib.suppress(sqlite3.Error):
                            connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._problem(exc) from None

    def close(self) -> None:
        """Close the file and let another relay have it. Safe to call twice."""
        with self._lock:
            if self._connection is None:
                return
            try:
                self._connection.close()
            finally:
                self._connection = None
                os.close(self._lock_fd)  # and with it the lock: after SQLite let go of the file

    # -- opening ----------------------------------------------------------------------------------

    def _take_lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(path=self.path, detail=exc.strerror or str(exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise StoreInUse(path=self.path) from None
            raise StoreError(path=self.path, detail=exc.strerror or str(exc)) from None
        return fd

    def _connect(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            wanted = ".".join(map(str, _MIN_SQLITE))
            raise StoreError(
                path=self.path, detail=f"it needs SQLite {wanted} or newer, not {sqlite3.sqlite_version}"
            )
        try:
            # Made 0600 here, before SQLite sees it: SQLite would make it 0644 under the
            # usual umask, and gives its -wal and -shm files the database file's mode.
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                    os.fchmod(fd, 0o600)  # made or copied by hand: close it to others
            os.close(fd)  # before SQLite opens it: its POSIX locks would go with this close
            # We BEGIN and COMMIT; apply runs in the shell's worker thread (module docstring).
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise self._problem(exc) from None
        try:
            self._check_or_create(connection)
        except (StoreError, sqlite3.Error) as exc:
            connection.close()
            if isinstance(exc, StoreError):
                raise
            raise self._problem(exc) from None
        return connection

    def _check_or_create(self, connection: sqlite3.Connection) -> None:
        # Read before anything is written: a file of another program is left as it was.
        tables = {
            name for (name,) in connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        }
        found = VERSION
        if tables:
            if "about" not in tables:
                raise StoreError(path=self.path, detail=_NOT_A_STORE)
            row = connection.execute("SELECT format, version FROM about").fetchone()
            if row is None or row[0] != FORMAT or not isinstance(row[1], int):
                raise StoreError(path=self.path, detail=_NOT_A_STORE)
            if row[1] > VERSION:
                raise StoreError(path=self.path, detail=f"it was made by a newer e2echat (format {row[1]})")
            if row[1] not in _MIGRATIONS and row[1] != VERSION:
                raise StoreError(path=self.path, detail=f"its format {row[1]} is not one this e2echat reads")
            found = row[1]
        (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode != "wal":
            raise StoreError(path=self.path, detail=f"SQLite kept journal mode {mode}, not wal")
        connection.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        connection.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        if not tables:
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute("INSERT INTO about (format, version) VALUES (?, ?)", (FORMAT, VERSION))
            connection.execute("COMMIT")
        elif found != VERSION:
            self._migrate(connection, found)
        for statement in _INDEXES:
            connection.execute(statement)
        (relay_id,) = connection.execute("SELECT relay_id FROM about").fetchone()
        if not relay_id:
            connection.execute("UPDATE about SET relay_id = ?", (nacl.utils.random(RELAY_ID_SIZE),))

    @staticmethod
    def _migrate(connection: sqlite3.Connection, version: int) -> None:
        """Bring a store of an earlier format up to ``VERSION``, in one transaction."""
        connection.execute("BEGIN IMMEDIATE")
        for step in range(version, VERSION):
            for statement in _MIGRATIONS[step]:
                connection.execute(statement)
        connection.execute("UPDATE about SET version = ?", (VERSION,))
        connection.execute("COMMIT")

    # -- errors -----------------------------------------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise LocalProtocolError(detail=f"the relay store {self.path} is closed")
        return self._connection

    def _problem(self, exc: sqlite3.Error | OSError) -> StoreError:
        if isinstance(exc, sqlite3.Error) and exc.sqlite_errorname in _DAMAGED_CODES:
            return StoreError(path=self.path, detail=_NOT_A_STORE)
        if isinstance(exc, sqlite3.Error) and exc.sqlite_errorname == "SQLITE_READONLY_DBMOVED":
            # SQLite's own text, "attempt to write a readonly database", misleads here.
            return StoreError(path=self.path, detail="it was moved or replaced while in use")
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return StoreError(path=self.path, detail=detail)


# -- one executemany per run of ops of one kind -----------------------------------------------------


def _save_identities(connection: sqlite3.Connection, ops: list[SaveIdentity]) -> None:
    connection.executemany(
        "INSERT INTO identities (nick, identity_key, last_seen, registered) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (nick) DO UPDATE SET identity_key = excluded.identity_key,"
        " last_seen = excluded.last_seen, registered = excluded.registered",
        [(i.nick, i.identity_key, i.last_seen, i.registered) for i in (op.identity for op in ops)],
    )


def _forget_identities(connection: sqlite3.Connection, ops: list[ForgetIdentity]) -> None:
    nicks = [(op.nick,) for op in ops]
    connection.executemany("DELETE FROM identities WHERE nick = ?", nicks)
    connection.executemany("DELETE FROM bundles WHERE nick = ?", nicks)
    connection.executemany("DELETE FROM members WHERE nick = ?", nicks)
    connection.executemany("DELETE FROM mail WHERE recipient = ?", nicks)


def _save_bundles(connection: sqlite3.Connection, ops: list[SaveBundle]) -> None:
    connection.executemany(
        "INSERT INTO bundles (nick, signed, one_time) VALUES (?, ?, ?) ON CONFLICT (nick)"
        " DO UPDATE SET signed = excluded.signed, one_time = excluded.one_time",
        [(op.bundle.nick, op.bundle.signed, op.bundle.one_time) for op in ops],
    )


def _save_members(connection: sqlite3.Connection, ops: list[SaveMember]) -> None:
    connection.executemany(
        "INSERT INTO members (room, nick, last_seen) VALUES (?, ?, ?) ON CONFLICT (room, nick)"
        " DO UPDATE SET last_seen = excluded.last_seen",
        [(op.member.room, op.member.nick, op.member.last_seen) for op in ops],
    )


def _forget_members(connection: sqlite3.Connection, ops: list[ForgetMember]) -> None:
    connection.executemany(
        "DELETE FROM members WHERE room = ? AND nick = ?", [(op.room, op.nick) for op in ops]
    )


def _enqueue(connection: sqlite3.Connection, ops: list[Enqueue]) -> None:
    high = max(op.item.seq for op in ops) + 1
    connection.execute("UPDATE about SET next_seq = max(next_seq, ?)", (high,))
    connection.executemany(
        "INSERT INTO mail (recipient, seq, kind, sender, message_id, queued_at, body, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (i.to, i.seq, i.kind, i.sender, i.message_id, i.queued_at, i.body, i.reason)
            for i in (op.item for op in ops)
        ],
    )


def _dequeue(connection: sqlite3.Connection, ops: list[Dequeue]) -> None:
    connection.executemany(
        "DELETE FROM mail WHERE recipient = ? AND seq <= ?", [(op.to, op.upto) for op in ops if op.upto >= 0]
    )
    connection.executemany(
        "DELETE FROM mail WHERE recipient = ? AND seq = ?", [(op.to, seq) for op in ops for seq in op.seqs]
    )


_WRITERS: dict[type, Callable[[sqlite3.Connection, list[Any]], None]] = {
    SaveIdentity: _save_identities,
    ForgetIdentity: _forget_identities,
    SaveBundle: _save_bundles,
    SaveMember: _save_members,
    ForgetMember: _forget_members,
    Enqueue: _enqueue,
    Dequeue: _dequeue,
}

"""The history in the profile: every message shown, in one SQLite file, each row sealed.

Each row is sealed, and found by keyed hashes, as rows.py says: whoever can open the
identity key file (with its passphrase, if it has one) can read the history; nobody else.
The seal gives confidentiality and integrity per row, not freshness: a row deleted, or the
file put back to an older copy, is not noticed.

Writes leave the event loop as in sealed.py: ``add`` and ``change`` buffer, ``save_soon``
hands the buffer to a worker thread that seals it and commits it in one transaction. A
crash loses at most what was buffered since the last commit; ``flush`` (or ``write_now``)
before ``close``. Reads run in the same thread, after writing what is buffered, so they see
everything recorded. Over ``limit`` rows, the oldest are deleted as new ones come.

Without a path (``--no-log``) the database is SQLite's in memory: nothing touches the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nacl.public import PrivateKey

from e2echat.errors import KeyFileError, LocalProtocolError
from e2echat.store.rows import HistoryRows, writes_for
from e2echat.store.sealed import database_problem, open_private_database
from e2echat.ui.transcript import Change, Entry, StateChange, encode_entry

log = logging.getLogger("e2echat.store.history")

HISTORY_FILE = "history.db"
#: rows kept before the oldest go: a few years of a busy chat, about 30 MB on disk
DEFAULT_LIMIT = 100_000
_SCHEMA_VERSION = 1
_CHECK = b"e2echat history"  # sealed in the meta table: a wrong key is found at open
_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE history (number INTEGER PRIMARY KEY, conversation BLOB NOT NULL,"
    " message BLOB, sealed BLOB NOT NULL)",
    "CREATE INDEX history_by_conversation ON history (conversation, number)",
    "CREATE INDEX history_by_message ON history (message) WHERE message IS NOT NULL",
    # The newest row of each conversation: start-up reads the last lines of the most
    # recent conversations without scanning the history.
    "CREATE TABLE conversations (conversation BLOB PRIMARY KEY, last INTEGER NOT NULL)",
)
_ROW = "SELECT number, conversation, message, sealed FROM history"

T = TypeVar("T")


@dataclass
class Lines:
    """Entries read back, oldest first, and how many rows did not open (damaged, or
    sealed with another key): those are left out, never shown."""

    entries: list[Entry] = field(default_factory=list)
    damaged: int = 0


class HistoryStore:
    """One profile's history (or a session's, in memory). Made by ``open``."""

    def __init__(self, path: Path | None, identity: PrivateKey, limit: int, read_only: bool) -> None:
        if limit < 1:
            raise LocalProtocolError(detail=f"the history keeps at least one row, not {limit}")
        self.path = path
        self.limit = limit
        self._read_only = read_only
        self._rows = HistoryRows(identity)  # the worker's
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        self._connection: sqlite3.Connection | None = None  # the worker's alone
        self._lock = threading.Lock()  # over _pending and _queued: the loop adds, the worker takes
        self._pending: list[Change] = []
        self._queued = False
        self._next = 1  # the next row's number (the worker's)
        self._error: KeyFileError | None = None
        self._closed = False

    @classmethod
    def open(
        cls, path: Path | None, identity: PrivateKey, limit: int = DEFAULT_LIMIT, *, read_only: bool = False
    ) -> HistoryStore:
        """The history in ``path`` (made, mode 0600, if missing), or in memory if None.
        ``read_only`` opens an existing file without writing to it (export). Raises
        ``KeyFileError``, also when the file was sealed with another identity key."""
        store = cls(path, identity, limit, read_only)
        try:
            store._worker.submit(store._connect).result()
        except BaseException:
            store._worker.shutdown()
            raise
        return store

    @property
    def in_memory(self) -> bool:
        return self.path is None

    @property
    def name(self) -> str:
        return "the history in memory" if self.path is None else str(self.path)

    # -- the event loop's side ----------------------------------------------------------------

    def record(self, change: Change) -> None:
        """Keep a new entry, or change an own message's delivery state, in memory;
        ``save_soon`` or ``flush`` writes it."""
        if self._closed or self._read_only:
            raise LocalProtocolError(detail=f"{self.name} is closed or read-only")
        with self._lock:
            self._pending.append(change)

    def save_soon(self) -> None:
        """Write what is buffered in the worker thread, in one transaction. Cheap when
        nothing is, or a write is already waiting to start (that one takes it all)."""
        if not self._pending:
            return
        with self._lock:
            if self._queued or not self._pending or self._closed:
                return
            self._queued = True
        self._worker.submit(self._write_pending)  # a failure is logged and kept for flush

    async def flush(self) -> None:
        """Return once everything buffered is written. Raises ``KeyFileError``."""
        await asyncio.wrap_future(self._worker.submit(self._write_pending))

    def write_now(self) -> None:
        """``flush`` off the event loop. Raises ``KeyFileError``."""
        self._worker.submit(self._write_pending).result()

    def close(self) -> None:
        """Write what is buffered (a failure is logged) and close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._worker.submit(self._finish).result()
        finally:
            self._worker.shutdown()

    # -- reads: ``latest``, ``recent`` and ``search`` wait for the worker; ``*_async`` on the loop

    def latest(self, count: int, conversations: int) -> list[Lines]:
        """The last ``count`` lines of each of the ``conversations`` most recently active
        conversations, the least recent first: what start-up shows again."""
        return self._ask(self._latest, count, conversations)

    def recent(self, conversation: str | None, count: int) -> Lines:
        """The last ``count`` lines of ``conversation`` (None: of all of them)."""
        return self._ask(self._recent, conversation, count)

    def sent(self, count: int) -> Lines:
        """Our own last ``count`` messages, in every conversation."""
        return self._ask(self._sent, count)

    def search(self, needle: Callable[[Entry], bool], limit: int) -> Lines:
        """The newest ``limit`` entries ``needle`` accepts, oldest first; one more if
        there are more (the caller says so)."""
        return self._ask(self._search, needle, limit)

    async def recent_async(self, conversation: str | None, count: int) -> Lines:
        return await asyncio.wrap_future(self._worker.submit(self._recent, conversation, count))

    async def search_async(self, needle: Callable[[Entry], bool], limit: int) -> Lines:
        return await asyncio.wrap_future(self._worker.submit(self._search, needle, limit))

    def everything(self, chunk: int = 1000) -> Iterator[Lines]:
        """Every entry, oldest first, ``chunk`` rows at a time (export)."""
        after = 0
        while True:
            lines, after = self._ask(self._page, after, chunk)
            if after == 0:
                return
            yield lines

    def _ask(self, query: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise LocalProtocolError(detail=f"{self.name} is closed")
        return self._worker.submit(query, *args).result()

    # -- in the worker thread -----------------------------------------------------------------

    def _connect(self) -> None:
        if self.path is None:
            connection = sqlite3.connect(":memory:", isolation_level=None)
        elif self._read_only:
            if not self.path.exists():
                raise KeyFileError(path=self.path, detail="there is no history yet")
            try:
                connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            except sqlite3.Error as exc:
                raise database_problem(self.path, exc) from None
        else:
            connection = open_private_database(self.path)
        try:
            connection.execute("PRAGMA temp_store=MEMORY")  # sorting never spills to a file
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version == 0 and not self._read_only:
                connection.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    connection.execute(statement)
                check = self._rows.seal(_CHECK)
                connection.execute("INSERT INTO meta VALUES ('check', ?)", (check,))
                connection.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                connection.execute("COMMIT")
            elif version != _SCHEMA_VERSION:
                raise self._problem("it was made by a newer e2echat" if version else "it is not a history")
            (check,) = connection.execute("SELECT value FROM meta WHERE name = 'check'").fetchone()
            if self._rows.open(check) != _CHECK:
                raise self._problem("it is sealed with another identity key, or damaged")
            (last,) = connection.execute("SELECT MAX(number) FROM history").fetchone()
            self._next = (last or 0) + 1
        except (KeyFileError, sqlite3.Error, TypeError) as exc:
            connection.close()
            if isinstance(exc, KeyFileError):
                raise
            if isinstance(exc, TypeError):  # no check row
                raise self._problem("it is not a history, or damaged") from None
            raise self._database_problem(exc) from None
        self._connection = connection

    def _problem(self, detail: str) -> KeyFileError:
        return KeyFileError(path=self.path or Path(":memory:"), detail=detail)

    def _database_problem(self, exc: sqlite3.Error) -> KeyFileError:
        return database_problem(self.path or Path(":memory:"), exc)

    def _finish(self) -> None:
        try:
            if not self._read_only:
                self._write_pending()
        except KeyFileError:
            pass  # logged where it happened; what was lost is counted there
        finally:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            if self._pending:
                log.warning("%s: %d lines were never written", self.name, len(self._pending))

    def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._queued = False
        if not batch or self._read_only:
            return
        try:
            self._commit(batch)
        except BaseException as exc:
            with self._lock:
                self._pending = batch + self._pending
            if isinstance(exc, KeyFileError):
                if self._error is None:  # one warning per failure, not one per retry
                    log.warning("%s (%d lines kept in memory, to try again)", exc, len(batch))
                self._error = exc
            raise
        self._error = None

    def _commit(self, batch: list[Change]) -> None:
        connection = self._connection
        assert connection is not None
        writes = writes_for(batch, self._next)
        try:
            if connection.in_transaction:  # one a failed ROLLBACK left open
                connection.execute("ROLLBACK")
            connection.execute("BEGIN IMMEDIATE")
            try:
                new_rows = self._rows.rows(writes.rows)
                connection.executemany("INSERT INTO history VALUES (?, ?, ?, ?)", new_rows)
                for message_changes in writes.changes.values():
                    self._change(connection, message_changes)
                # The newest row of each conversation written: the last one wins.
                last = {conversation: row for row, conversation, _, _ in new_rows}
                connection.executemany(
                    "INSERT INTO conversations VALUES (?, ?)"
                    " ON CONFLICT (conversation) DO UPDATE SET last = excluded.last",
                    list(last.items()),
                )
                oldest = writes.next - self.limit  # rows below it go: the newest ``limit`` stay
                connection.execute("DELETE FROM history WHERE number < ?", (oldest,))
                connection.execute("DELETE FROM conversations WHERE last < ?", (oldest,))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._database_problem(exc) from None
        self._next = writes.next

    def _change(self, connection: sqlite3.Connection, changes: list[StateChange]) -> None:
        """Seal ``changes`` (of one message) into the newest row of our message with its
        id, if that opens."""
        tag = self._rows.message_tag(changes[0].message_id)
        found = connection.execute(
            f"{_ROW} WHERE message = ? ORDER BY number DESC LIMIT 1", (tag,)
        ).fetchone()
        entry = None if found is None else self._rows.entry(*found)
        if entry is None:
            return  # pruned, never recorded (--no-log before a restart), or damaged
        number = found[0]
        for change in changes:
            entry = change.apply(entry)
        sealed = self._rows.seal(encode_entry(number, entry))
        connection.execute("UPDATE history SET sealed = ? WHERE number = ?", (sealed, number))

    def _read(self, query: str, *args: object) -> Iterator[Entry | None]:
        self._write_buffered()
        connection = self._connection
        assert connection is not None
        try:
            for row in connection.execute(query, args):
                yield self._rows.entry(*row)
        except sqlite3.Error as exc:
            raise self._database_problem(exc) from None

    def _write_buffered(self) -> None:
        """Before a read: write what is buffered, so the read sees it; a failure is
        logged (by the write) and the read shows what is on disk."""
        with contextlib.suppress(KeyFileError):
            self._write_pending()

    def _lines(self, found: Iterator[Entry | None], newest_first: bool) -> Lines:
        lines = Lines()
        for entry in found:
            if entry is None:
                lines.damaged += 1
            else:
                lines.entries.append(entry)
        if newest_first:
            lines.entries.reverse()
        return lines

    def _recent(self, conversation: str | None, count: int) -> Lines:
        if conversation is None:
            return self._lines(self._read(f"{_ROW} ORDER BY number DESC LIMIT ?", count), True)
        tag = self._rows.conversation_tag(conversation)
        query = f"{_ROW} WHERE conversation = ? ORDER BY number DESC LIMIT ?"
        return self._lines(self._read(query, tag, count), True)

    def _sent(self, count: int) -> Lines:
        query = f"{_ROW} WHERE message IS NOT NULL ORDER BY number DESC LIMIT ?"
        return self._lines(self._read(query, count), True)

    def _latest(self, count: int, conversations: int) -> list[Lines]:
        self._write_buffered()
        assert self._connection is not None
        try:
            tags = self._connection.execute(
                "SELECT conversation FROM conversations ORDER BY last DESC LIMIT ?", (conversations,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._database_problem(exc) from None
        query = f"{_ROW} WHERE conversation = ? ORDER BY number DESC LIMIT ?"
        found = [self._lines(self._read(query, tag, count), True) for (tag,) in reversed(tags)]
        return [lines for lines in found if lines.entries or lines.damaged]

    def _search(self, needle: Callable[[Entry], bool], limit: int) -> Lines:
        lines = Lines()
        for entry in self._read(f"{_ROW} ORDER BY number DESC"):
            if entry is None:
                lines.damaged += 1
            elif needle(entry):
                lines.entries.append(entry)
                if len(lines.entries) > limit:
                    break
        lines.entries.reverse()
        return lines

    def _page(self, after: int, count: int) -> tuple[Lines, int]:
        """Up to ``count`` rows numbered above ``after``, and the last one's number (0:
        there were none)."""
        self._write_buffered()
        assert self._connection is not None
        try:
            rows = self._connection.execute(
                f"{_ROW} WHERE number > ? ORDER BY number LIMIT ?", (after, count)
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._database_problem(exc) from None
        if not rows:
            return Lines(), 0
        return self._lines(iter([self._rows.entry(*row) for row in rows]), False), rows[-1][0]

"""The relay's stores (relay/store.py, relay/sqlite_store.py): the interface both keep,
every change back after a reopen, all-or-none batches, owner-only files, one relay per
file, files that are not stores, and ``kill -9`` in the middle of writing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2echat.errors import LocalProtocolError, StoreError, StoreInUse
from e2echat.relay.sqlite_store import LOCK_SUFFIX, VERSION, SqliteStore
from e2echat.relay.store import (
    EXPIRED,
    MAIL,
    Dequeue,
    Enqueue,
    ForgetIdentity,
    ForgetMember,
    Identity,
    MailItem,
    Member,
    MemoryStore,
    Op,
    RelayStore,
    SaveBundle,
    SaveIdentity,
    SaveMember,
    Snapshot,
    StoredBundle,
)
from e2echat.wire.grammar import RELAY_ID_SIZE

from support import REPO, WAIT

LOBBY = "#lobby"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "relay" / "store.sqlite"


@contextlib.contextmanager
def opened(path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(path)
    try:
        yield store
    finally:
        store.close()


def reopened(path: Path) -> Snapshot:
    """What a relay starting on ``path`` finds."""
    with opened(path) as store:
        return store.load()


def mail(to: str, seq: int, sender: str = "alice", body: bytes = b"ciphertext") -> MailItem:
    return MailItem(to, seq, MAIL, sender, 100 + seq, 1_700_000_000.5 + seq, body)


def identity(nick: str, key: int = 1, last_seen: float = 1_700_000_000.25, registered: int = 0) -> Identity:
    return Identity(nick, bytes([key]) * 32, last_seen, registered)


# -- the interface, for every store ------------------------------------------------------------

STORES: dict[str, Callable[[Path], RelayStore]] = {
    "memory": lambda path: MemoryStore(),
    "sqlite": SqliteStore,
}
EVERY_KIND: list[Op] = [
    SaveIdentity(identity("bob")),
    SaveBundle(StoredBundle("bob", b"signed", b"one-time")),
    SaveMember(Member(LOBBY, "bob", 5.0)),
    Enqueue(mail("bob", 0)),
    Dequeue("bob", upto=0),
    ForgetMember(LOBBY, "bob"),
    ForgetIdentity("bob"),
]


@pytest.mark.parametrize("kind", sorted(STORES))
def test_every_store_keeps_the_interface(path: Path, kind: str) -> None:
    store = STORES[kind](path)
    assert isinstance(store.durable, bool)
    assert store.load() == Snapshot()  # a new store holds nothing
    store.apply([])
    for op in EVERY_KIND:  # every kind of op, each on its own ...
        store.apply([op])
    store.apply(EVERY_KIND)  # ... and all in one batch
    # Each batch undid what it did; a durable store remembers the seqs it has seen.
    assert store.load() == Snapshot(next_seq=1 if store.durable else 0)
    store.close()
    store.close()  # twice is harmless


def test_only_the_sqlite_store_is_durable(path: Path) -> None:
    # The shell waits for apply (before it says "queued") only when the store is durable.
    assert MemoryStore().durable is False
    with opened(path) as store:
        assert store.durable is True


# -- every change, back after a reopen ---------------------------------------------------------


def test_every_op_is_back_after_a_reopen(path: Path) -> None:
    with opened(path) as store:
        store.apply(
            [
                SaveIdentity(identity("alice")),
                SaveIdentity(identity("bob", key=2)),
                SaveIdentity(identity("élodie", key=3)),
                SaveIdentity(identity("gone", key=4)),
                SaveBundle(StoredBundle("bob", b"signed 1", b"one-time 1")),
                SaveBundle(StoredBundle("gone", b"signed", b"")),
                SaveMember(Member(LOBBY, "alice", 10.0)),
                SaveMember(Member(LOBBY, "bob", 10.0)),
                SaveMember(Member(LOBBY, "gone", 10.0)),
                SaveMember(Member("#other", "alice", 10.0)),
            ]
        )
        # Mail comes in any order; load gives it in mailbox, then seq order.
        store.apply([Enqueue(mail("bob", seq)) for seq in (3, 1, 2, 0, 4, 5)])
        store.apply(
            [
                Enqueue(mail("élodie", 7, sender="bob", body=bytes(range(256)))),
                Enqueue(MailItem("alice", 1, EXPIRED, "bob", 41, 1_700_000_001.0, reason="expired")),
                Enqueue(mail("gone", 0)),
                Enqueue(mail("alice", 0, sender="gone", body=b"")),
            ]
        )
    with opened(path) as store:  # changes to what a reopened store holds
        store.apply(
            [
                SaveIdentity(identity("bob", key=9, last_seen=20.5, registered=5)),  # another key, seen later
                SaveBundle(StoredBundle("bob", b"signed 2", b"one-time 2")),  # replaces the whole
                SaveMember(Member(LOBBY, "bob", 20.5)),
                ForgetMember("#other", "alice"),
                Dequeue("bob", upto=1),  # acknowledged 0 and 1
                Dequeue("bob", seqs=(3, 5)),  # expired
                # Its identity, bundle, memberships and mailbox; not what it sent to others.
                ForgetIdentity("gone"),
            ]
        )
    assert reopened(path) == Snapshot(
        next_seq=8,
        identities=[
            identity("alice"),
            identity("bob", key=9, last_seen=20.5, registered=5),
            identity("élodie", key=3),
        ],
        bundles=[StoredBundle("bob", b"signed 2", b"one-time 2")],
        members=[Member(LOBBY, "alice", 10.0), Member(LOBBY, "bob", 20.5)],
        mail=[
            mail("alice", 0, sender="gone", body=b""),
            MailItem("alice", 1, EXPIRED, "bob", 41, 1_700_000_001.0, reason="expired"),
            mail("bob", 2),
            mail("bob", 4),
            mail("élodie", 7, sender="bob", body=bytes(range(256))),
        ],
    )


def test_apply_runs_in_a_thread_other_than_the_one_that_opened_the_store(path: Path) -> None:
    with opened(path) as store, concurrent.futures.ThreadPoolExecutor(1) as worker:
        worker.submit(store.apply, [SaveIdentity(identity("alice"))]).result(WAIT)
        assert worker.submit(store.load).result(WAIT).identities == [identity("alice")]


def test_a_closed_store_is_not_used(path: Path) -> None:
    store = SqliteStore(path)
    store.close()
    with pytest.raises(LocalProtocolError, match="closed"):
        store.apply([SaveIdentity(identity("alice"))])


# -- a batch is one transaction ----------------------------------------------------------------

FAILING_BATCHES: dict[str, list[Op]] = {
    # The same mailbox item twice (the second run of enqueues fails, after other runs).
    "duplicate item": [
        SaveIdentity(identity("carol")),
        Enqueue(mail("bob", 10)),
        SaveMember(Member(LOBBY, "carol", 1.0)),
        Dequeue("bob", upto=0),
        Enqueue(mail("bob", 10)),
    ],
    # A body that is text, not bytes: the tables are STRICT.
    "wrong type": [
        SaveIdentity(identity("carol")),
        Dequeue("bob", upto=0),
        Enqueue(MailItem("bob", 11, MAIL, "alice", 1, 1.0, "text")),  # type: ignore[arg-type]
    ],
}


@pytest.mark.parametrize("failure", sorted(FAILING_BATCHES))
def test_a_batch_that_fails_leaves_nothing_of_itself(path: Path, failure: str) -> None:
    before: list[Op] = [SaveIdentity(identity("bob")), Enqueue(mail("bob", 0))]
    with opened(path) as store:
        store.apply(before)
        with pytest.raises(StoreError):
            store.apply(FAILING_BATCHES[failure])
        # Nothing of it, seen through the same connection and after a reopen; and the
        # store takes the next batch.
        assert store.load() == Snapshot(identities=[identity("bob")], mail=[mail("bob", 0)], next_seq=1)
        store.apply([Enqueue(mail("bob", 1))])
    kept = Snapshot(identities=[identity("bob")], mail=[mail("bob", 0), mail("bob", 1)], next_seq=2)
    assert reopened(path) == kept


# -- files ---------------------------------------------------------------------------------------


def test_the_files_are_the_owners_alone(path: Path) -> None:
    previous = os.umask(0o022)  # the usual one: SQLite alone would make 0644 files
    try:
        with opened(path) as store:
            store.apply([SaveIdentity(identity("alice"))])
            files = [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", LOCK_SUFFIX))]
            modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in files}
    finally:
        os.umask(previous)
    assert modes == dict.fromkeys(modes, 0o600)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_store_made_readable_by_others_is_closed_to_them(path: Path) -> None:
    with opened(path):
        pass
    path.chmod(0o644)  # copied or restored by hand
    with opened(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_one_relay_per_store_file(path: Path) -> None:
    with opened(path) as store:
        store.apply([SaveIdentity(identity("alice"))])
        with pytest.raises(StoreInUse) as refused:
            SqliteStore(path)
        assert str(refused.value) == (
            f"the relay store {path} is in use by another relay: stop that one first "
            "(or give this one its own --store)"
        )
        assert refused.value.exit_code == 2
        # The refusal took nothing from the first: it still writes, and keeps what it wrote.
        store.apply([SaveIdentity(identity("bob"))])
    assert [i.nick for i in reopened(path).identities] == ["alice", "bob"]  # closed: free again


def _sqlite_file_of_another_program(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute("CREATE TABLE notes (text TEXT)")
        other.execute("INSERT INTO notes VALUES ('mine')")
        other.commit()


def _store_of_format(format_name: str, version: int) -> Callable[[Path], object]:
    def make(path: Path) -> None:
        with opened(path):
            pass
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute("UPDATE about SET format = ?, version = ?", (format_name, version))
            raw.commit()

    return make


NOT_STORES: dict[str, tuple[Callable[[Path], object], str]] = {
    "random bytes": (lambda path: path.write_bytes(os.urandom(8192)), "not an e2echat relay store"),
    "text": (lambda path: path.write_text("relay notes\n" * 100), "not an e2echat relay store"),
    "another program's database": (_sqlite_file_of_another_program, "not an e2echat relay store"),
    "another format": (_store_of_format("some other store", VERSION), "not an e2echat relay store"),
    "a newer store": (_store_of_format("e2echat relay store", VERSION + 1), "made by a newer e2echat"),
    "a directory": (lambda path: path.mkdir(), "Is a directory"),
}


@pytest.mark.parametrize("kind", sorted(NOT_STORES))
def test_a_file_that_is_not_a_store_is_refused_and_left_alone(path: Path, kind: str) -> None:
    make, words = NOT_STORES[kind]
    path.parent.mkdir(mode=0o700)
    make(path)
    before = path.read_bytes() if path.is_file() else b""
    for _ in range(2):  # a refusal lets go of the file: the second try is refused alike
        with pytest.raises(StoreError, match=words) as refused:
            SqliteStore(path)
        assert not isinstance(refused.value, StoreInUse)
        assert str(refused.value).startswith(f"cannot use the relay store {path}: ")
    if path.is_file():
        assert path.read_bytes() == before  # not even switched to WAL


def test_an_empty_file_becomes_a_store(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.touch()
    with opened(path) as store:
        store.apply([SaveIdentity(identity("alice"))])
    assert reopened(path).identities == [identity("alice")]


# -- kill -9 -----------------------------------------------------------------------------------

BATCH = 20  # items in each batch the child writes
CHILD = """
import sys
from pathlib import Path
from e2echat.relay.sqlite_store import SqliteStore
from e2echat.relay.store import MAIL, Enqueue, MailItem, Member, SaveMember

store = SqliteStore(Path(sys.argv[1]))
size = int(sys.argv[2])
batch = 0
while True:
    seqs = range(batch * size, (batch + 1) * size)
    items = [Enqueue(MailItem("bob", seq, MAIL, "alice", batch, 0.0, bytes(300))) for seq in seqs]
    store.apply([*items, SaveMember(Member("#lobby", f"m{batch}", float(batch)))])
    print(batch, flush=True)
    batch += 1
"""


# The delays put the kill at different points of the next batches (a sleep to pick a
# moment, not to wait for something).
@pytest.mark.parametrize("delay", [0, 0.0005, 0.002, 0.01])
async def test_kill_9_loses_no_batch_apply_returned_for(path: Path, delay: float) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), str(BATCH), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        for _ in range(20):
            last = int(await asyncio.wait_for(child.stdout.readline(), WAIT))
        with pytest.raises(StoreInUse):  # another process has it
            SqliteStore(path)
        await asyncio.sleep(delay)
    finally:
        child.kill()
        await asyncio.wait_for(child.wait(), WAIT)
    assert child.returncode == -signal.SIGKILL
    found = reopened(path)
    batches = {item.message_id for item in found.mail}
    assert batches >= set(range(last + 1))  # every batch reported written is there
    assert batches == set(range(len(batches)))  # and nothing after a gap
    # Each batch whole: all its items and its member, or none of it.
    assert [item.seq for item in found.mail] == list(range(BATCH * len(batches)))
    assert {member.nick for member in found.members} == {f"m{batch}" for batch in batches}


# -- indexes -------------------------------------------------------------------------------------


def _plan(path: Path, statement: str) -> str:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        return " ".join(str(row[-1]) for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", ("bob",)))


def test_forgetting_a_nick_finds_its_memberships_by_index_even_in_an_older_store(path: Path) -> None:
    with opened(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("DROP INDEX members_by_nick")  # as a store made before the index was
        raw.commit()
    assert "members_by_nick" not in _plan(path, "DELETE FROM members WHERE nick = ?")
    with opened(path):
        pass
    assert "USING INDEX members_by_nick" in _plan(path, "DELETE FROM members WHERE nick = ?")


# -- seqs, and earlier formats -------------------------------------------------------------------


def test_the_seqs_seen_are_remembered_once_every_item_is_gone(path: Path) -> None:
    with opened(path) as store:
        store.apply([Enqueue(mail("bob", 41)), Enqueue(mail("bob", 40))])
        store.apply([Dequeue("bob", upto=41)])
        store.apply([Enqueue(mail("carol", 7))])  # lower: the mark stays
    assert reopened(path) == Snapshot(mail=[mail("carol", 7)], next_seq=42)


def test_a_store_of_the_first_format_is_brought_up_to_date(path: Path) -> None:
    with opened(path) as store:
        store.apply([SaveIdentity(identity("bob")), Enqueue(mail("bob", 3))])
    with contextlib.closing(sqlite3.connect(path)) as raw:  # as the first format made it
        raw.execute("ALTER TABLE about DROP COLUMN next_seq")
        raw.execute("ALTER TABLE about DROP COLUMN relay_id")
        raw.execute("ALTER TABLE identities DROP COLUMN registered")
        raw.execute("UPDATE about SET version = 1")
        raw.commit()
    assert reopened(path) == Snapshot(identities=[identity("bob")], mail=[mail("bob", 3)])
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT version FROM about").fetchone() == (VERSION,)
    assert len(reopened(path).relay_id) == RELAY_ID_SIZE  # drawn once, for the mailboxes it had


def test_a_store_keeps_the_id_of_its_mailboxes_and_another_store_has_another(path: Path) -> None:
    first = reopened(path).relay_id
    assert len(first) == RELAY_ID_SIZE
    assert reopened(path).relay_id == first
    assert reopened(path.with_name("other.db")).relay_id != first
    assert not MemoryStore().load().relay_id  # the relay draws one at each start

"""The history store (store/history.py) and what it keeps (ui/transcript.py): entries that
round-trip, rows that open only in their own place and under their own key, the index by
keyed hashes, state changes by message id, pruning, memory only, and the event loop."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from e2echat.client.events import KeyChanged, MessageQueued, MessageReceived, NotSent, Queued
from e2echat.client.receipts import DeliveryReport
from e2echat.errors import KeyFileError
from e2echat.store.history import HistoryStore
from e2echat.ui import transcript
from e2echat.ui.transcript import Entry, Kind, State, StateChange, decode_entry, encode_entry
from e2echat.wire.grammar import DEFAULT_ROOM

IDENTITY = PrivateKey(bytes(range(32)))
OTHER = PrivateKey(bytes(range(1, 33)))
NOW = 1_700_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "profile" / "history.db"


@contextlib.contextmanager
def opened(path: Path | None, identity: PrivateKey = IDENTITY, limit: int = 1000) -> Iterator[HistoryStore]:
    store = HistoryStore.open(path, identity, limit)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """The file under SQLite alone, as someone with access to the disk sees it."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


def line(text: str, conversation: str = DEFAULT_ROOM, sender: str = "bob", at: float = NOW) -> Entry:
    return Entry(conversation, True, sender, text, at, at - 5)


def write(path: Path | None, *changes: transcript.Change, limit: int = 1000) -> None:
    assert path is not None
    with opened(path, limit=limit) as store:
        for change in changes:
            store.record(change)
        store.write_now()


SAMPLES = [
    line("hello"),
    line("two\nlines, émoji 🎉, nul \x00 and \x1b[2J", "bob"),
    Entry("carol", False, "alice", "psst", NOW, NOW, 7, State.FAILED, "NOT delivered to carol (offline)"),
    Entry("bob", False, "bob", "bob's identity key changed", NOW, kind=Kind.NOTICE),
]


@pytest.mark.parametrize("entry", SAMPLES)
def test_an_entry_round_trips_through_its_encoding(entry: Entry) -> None:
    assert decode_entry(12, encode_entry(12, entry)) == entry
    assert len(encode_entry(12, entry)) % 64 == 0


def test_an_entry_does_not_decode_as_another_rows() -> None:
    with pytest.raises(ValueError):
        decode_entry(13, encode_entry(12, SAMPLES[0]))
    encoded = encode_entry(12, SAMPLES[0])
    other_formats = [encoded.replace(b"[2,", b"[3,", 1), encoded.replace(b"[2,", b"[1,", 1)]
    for junk in (b"", b"[]", b"{}", b"\xff", b"[1,12]", *other_formats):
        with pytest.raises(ValueError):
            decode_entry(12, junk)


def test_rows_round_trip_through_the_file(path: Path) -> None:
    write(path, *SAMPLES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with opened(path) as store:
        found = store.recent(None, 10)
        assert found.entries == SAMPLES and found.damaged == 0
        assert store.recent("bob", 10).entries == [SAMPLES[1], SAMPLES[3]]
        assert store.recent("nobody", 10).entries == []
        assert store.recent(DEFAULT_ROOM, 10).entries == [SAMPLES[0]]


def test_nothing_readable_is_in_the_file(path: Path) -> None:
    write(path, line("a secret text", "bob"), line("another words", DEFAULT_ROOM, "carol"))
    data = path.read_bytes()
    for word in (b"secret", b"another", b"bob", b"carol", b"lobby"):
        assert word not in data


def test_a_tampered_row_is_refused_not_shown(path: Path) -> None:
    write(path, line("first"), line("second"), line("third"))
    with raw(path) as connection:
        (sealed,) = connection.execute("SELECT sealed FROM history WHERE number = 2").fetchone()
        flipped = sealed[:30] + bytes([sealed[30] ^ 1]) + sealed[31:]
        connection.execute("UPDATE history SET sealed = ? WHERE number = 2", (flipped,))
    with opened(path) as store:
        found = store.recent(None, 10)
        assert [entry.text for entry in found.entries] == ["first", "third"]
        assert found.damaged == 1


def test_a_row_moved_elsewhere_does_not_open_there(path: Path) -> None:
    """Seals moved between rows, or given another conversation's hash, do not open: a row
    cannot be shown in another place or another conversation."""
    write(path, line("in the room"), line("to bob", "bob"))
    with raw(path) as connection:
        query = "SELECT number, conversation, sealed FROM history ORDER BY number"
        (one, room, _), (two, _, second) = connection.execute(query).fetchall()
        connection.execute("UPDATE history SET sealed = ? WHERE number = ?", (second, one))
        connection.execute("UPDATE history SET conversation = ? WHERE number = ?", (room, two))
    with opened(path) as store:
        found = store.recent(None, 10)
        assert found.entries == [] and found.damaged == 2


def test_another_identity_opens_nothing(path: Path) -> None:
    write(path, line("hello"))
    with pytest.raises(KeyFileError, match="another identity key"):
        HistoryStore.open(path, OTHER)
    # Even with the check row put back as it was for the wrong key, no row opens.
    with opened(path.with_name("other.db"), OTHER):
        pass
    with raw(path.with_name("other.db")) as connection:
        (check,) = connection.execute("SELECT value FROM meta").fetchone()
    with raw(path) as connection:
        connection.execute("UPDATE meta SET value = ?", (check,))
    with opened(path, OTHER) as store:
        assert store.recent(None, 10).damaged == 1


def test_a_file_that_is_not_a_history_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(KeyFileError, match="damaged"):
        HistoryStore.open(path, IDENTITY)


def test_state_changes_find_their_message_by_id(path: Path) -> None:
    own = transcript.sent("alice", "lunch?", "bob", 41, NOW)
    same_batch = transcript.sent("alice", "at 12", "bob", 42, NOW)
    delivered = DeliveryReport(42, True, ("bob",), ())
    write(path, own, same_batch, transcript.record(delivered, NOW) or line("?"))
    failed = DeliveryReport(41, True, (), (("bob", "offline"),))
    write(path, StateChange(41, State.QUEUED), transcript.record(failed, NOW) or line("?"))
    write(path, StateChange(99, State.DELIVERED))  # nothing has that id: nothing changes
    with opened(path) as store:
        first, second = store.recent("bob", 10).entries
    assert (first.state, first.detail) == (State.FAILED, "NOT delivered to bob (offline)")
    assert (second.state, second.detail) == (State.DELIVERED, "delivered to bob")


def test_events_make_entries_and_changes() -> None:
    received = transcript.record(MessageReceived("bob", "hi", private=True, sent_at=NOW - 60), NOW)
    assert received == Entry("bob", True, "bob", "hi", NOW, NOW - 60)
    room = transcript.record(MessageReceived("bob", "all", private=False), NOW)
    assert isinstance(room, Entry) and room.conversation == DEFAULT_ROOM
    assert transcript.record(Queued("x", 5), NOW) == StateChange(5, State.QUEUED, "waiting for the relay")
    assert transcript.record(Queued("x"), NOW) is None
    never = StateChange(5, State.FAILED, "NOT sent: no connection to the relay")
    assert transcript.record(NotSent(("x",), 5), NOW) == never
    assert transcript.record(NotSent(("x",)), NOW) is None
    changed = transcript.record(KeyChanged("bob", "aaaa", "bbbb"), NOW)
    assert isinstance(changed, Entry) and changed.kind is Kind.NOTICE and changed.conversation == "bob"
    assert transcript.record(object(), NOW) is None
    many = transcript.record(DeliveryReport(3, False, ("a", "b", "c", "d"), ()), NOW)
    assert isinstance(many, StateChange)
    assert (many.message_id, many.state, many.detail) == (3, State.DELIVERED, "delivered to all 4")


def _state(path: Path, conversation: str = DEFAULT_ROOM) -> tuple[State, str]:
    with opened(path) as store:
        (entry,) = store.recent(conversation, 10).entries
    return entry.state, entry.detail


def test_a_room_messages_reports_merge_recipient_by_recipient(path: Path) -> None:
    """Each later report (one recipient's receipt, days later; a mailbox's expiry) adds to
    what the row knew, in a later write or in the same one, never overwrites it."""
    write(
        path,
        transcript.sent("alice", "lunch?", None, 5, NOW),
        *(
            transcript.record(event, NOW) or line("?")
            for event in (
                MessageQueued(5, False, ("carol", "dave")),
                DeliveryReport(5, False, ("bob",), (), queued=("carol", "dave")),
            )
        ),
    )
    assert _state(path) == (State.QUEUED, "waiting for carol, dave (queued); delivered to bob")
    write(path, transcript.record(DeliveryReport(5, False, ("carol",), ()), NOW) or line("?"))
    assert _state(path) == (State.QUEUED, "waiting for dave (queued); delivered to bob, carol")
    expired = DeliveryReport(5, False, (), (("dave", "expired"),))
    write(path, transcript.record(expired, NOW) or line("?"))
    assert _state(path) == (State.FAILED, "NOT delivered to dave (expired); delivered to bob, carol")
    with opened(path) as store:
        (entry,) = store.recent(DEFAULT_ROOM, 1).entries
    assert [(o.nick, o.state, o.reason) for o in entry.recipients] == [
        ("bob", State.DELIVERED, ""),
        ("carol", State.DELIVERED, ""),
        ("dave", State.FAILED, "expired"),
    ]
    assert transcript.export_text(entry).endswith(
        "<alice> (NOT delivered to dave (expired); delivered to bob, carol) lunch?"
    )
    exported = json.loads(transcript.export_json(entry))
    assert exported["state"] == "failed"
    assert exported["recipients"] == [
        {"nick": "bob", "state": "delivered", "reason": None},
        {"nick": "carol", "state": "delivered", "reason": None},
        {"nick": "dave", "state": "failed", "reason": "expired"},
    ]


def test_reports_that_come_in_one_write_all_count(path: Path) -> None:
    write(path, transcript.sent("alice", "lunch?", None, 5, NOW))
    reports = [
        MessageQueued(5, False, tuple(f"p{n}" for n in range(5))),
        DeliveryReport(5, False, ("bob",), (), queued=tuple(f"p{n}" for n in range(5))),
        *(DeliveryReport(5, False, (f"p{n}",), ()) for n in range(4)),
    ]
    write(path, *(transcript.record(report, NOW) or line("?") for report in reports))
    assert _state(path) == (State.QUEUED, "waiting for p4 (queued); delivered to 5 people")
    write(path, transcript.record(DeliveryReport(5, False, ("p4",), ()), NOW) or line("?"))
    assert _state(path) == (State.DELIVERED, "delivered to all 6")


def test_a_receipt_that_overtook_its_queued_report_stays_delivered(path: Path) -> None:
    """carol came back and confirmed before bob's receipt (and so the message's first
    report, which says carol's copy was queued) came in."""
    events = [
        MessageQueued(6, False, ("carol",)),
        DeliveryReport(6, False, ("carol",), ()),
        DeliveryReport(6, False, ("bob",), (), queued=("carol",)),
    ]
    write(
        path,
        transcript.sent("alice", "hi", None, 6, NOW),
        *(transcript.record(e, NOW) or line("?") for e in events),
    )
    assert _state(path) == (State.DELIVERED, "delivered to bob, carol")


def test_a_row_of_the_first_format_still_opens() -> None:
    """Rows written before recipients were kept (format 1: twelve items)."""
    entry = Entry("carol", False, "alice", "psst", NOW, NOW, 7, State.DELIVERED, "delivered to carol")
    items = [
        1,
        12,
        "carol",
        False,
        "alice",
        "psst",
        NOW,
        NOW,
        7,
        "delivered",
        "delivered to carol",
        "message",
    ]
    assert decode_entry(12, json.dumps(items).encode()) == entry
    with pytest.raises(ValueError):
        decode_entry(12, json.dumps([*items, []]).encode())


@pytest.mark.parametrize(
    "recipients",
    [
        [["bob", "sending", ""]],
        [["bob", "delivered"]],
        [[7, "delivered", ""]],
        ["bob"],
        [["bob", "queued", None]],
    ],
)
def test_a_recipient_that_is_not_an_outcome_does_not_open(recipients: list[object]) -> None:
    good = json.loads(encode_entry(12, SAMPLES[2]))
    assert decode_entry(12, json.dumps(good).encode()) == SAMPLES[2]
    with pytest.raises(ValueError):
        decode_entry(12, json.dumps([*good[:12], recipients]).encode())


def test_start_up_reads_the_last_lines_of_each_recent_conversation(path: Path) -> None:
    entries = [line(f"room {n}") for n in range(30)] + [line(f"bob {n}", "bob") for n in range(3)]
    write(path, *entries, line("room again"))
    with opened(path) as store:
        bob, room = store.latest(count=5, conversations=10)
        assert [entry.text for entry in bob.entries] == ["bob 0", "bob 1", "bob 2"]
        assert [entry.text for entry in room.entries] == [*(f"room {n}" for n in range(26, 30)), "room again"]
        (only,) = store.latest(count=2, conversations=1)
        assert [entry.text for entry in only.entries] == ["room 29", "room again"]


def test_search_finds_the_newest_matches_whatever_the_case(path: Path) -> None:
    write(path, *(line(f"Lunch {n}" if n % 2 else f"other {n}") for n in range(20)))
    with opened(path) as store:
        found = store.search(lambda entry: transcript.matches(entry, "lUNCH"), 3)
        assert [entry.text for entry in found.entries] == ["Lunch 13", "Lunch 15", "Lunch 17", "Lunch 19"]
        assert store.search(lambda entry: transcript.matches(entry, "nothing"), 3).entries == []


def test_the_oldest_rows_are_pruned_beyond_the_limit(path: Path) -> None:
    write(path, *(line(f"old {n}", "bob") for n in range(5)), limit=8)
    write(path, *(line(f"new {n}") for n in range(6)), limit=8)
    with opened(path, limit=8) as store:
        texts = [entry.text for entry in store.recent(None, 100).entries]
        assert texts == ["old 3", "old 4", *(f"new {n}" for n in range(6))]
    write(path, line("newest"), limit=3)  # a lower limit prunes at the next write
    with opened(path, limit=3) as store:
        assert [entry.text for entry in store.recent(None, 100).entries] == ["new 4", "new 5", "newest"]
        assert [lines.entries[-1].text for lines in store.latest(5, 10)] == ["newest"]  # bob's are gone
    with raw(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM history").fetchone() == (3,)


def test_in_memory_nothing_touches_the_disk(tmp_path: Path) -> None:
    before = set(tmp_path.rglob("*"))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with opened(None) as store:
            store.record(line("kept in memory"))
            assert [entry.text for entry in store.recent(None, 5).entries] == ["kept in memory"]
    finally:
        os.chdir(cwd)
    assert set(tmp_path.rglob("*")) == before


async def test_writes_leave_the_loop_and_flush_waits_for_them(path: Path) -> None:
    with opened(path) as store:
        for n in range(100):
            store.record(line(f"line {n}"))
            store.save_soon()
        await store.flush()
        with raw(path) as connection:
            assert connection.execute("SELECT COUNT(*) FROM history").fetchone() == (100,)
        found = await store.search_async(lambda entry: entry.text.endswith("99"), 5)
        assert [entry.text for entry in found.entries] == ["line 99"]
        assert len((await store.recent_async(DEFAULT_ROOM, 7)).entries) == 7


def test_what_is_buffered_is_written_on_close(path: Path) -> None:
    with opened(path) as store:
        store.record(line("at the very end"))
    with opened(path) as store:
        assert [entry.text for entry in store.recent(None, 5).entries] == ["at the very end"]


def test_export_reads_every_row_without_writing(path: Path) -> None:
    write(path, *(line(f"n{n}") for n in range(25)))
    before = path.read_bytes()
    store = HistoryStore.open(path, IDENTITY, read_only=True)
    try:
        pages = list(store.everything(chunk=10))
    finally:
        store.close()
    assert [len(page.entries) for page in pages] == [10, 10, 5]
    assert [entry.text for page in pages for entry in page.entries] == [f"n{n}" for n in range(25)]
    assert path.read_bytes() == before
    with pytest.raises(KeyFileError, match="no history yet"):
        HistoryStore.open(path.with_name("none.db"), IDENTITY, read_only=True)


def test_a_changed_entry_keeps_its_place(path: Path) -> None:
    own = transcript.sent("alice", "x", None, 1, NOW)
    write(path, line("before"), own, line("after"))
    write(path, StateChange(1, State.DELIVERED, "delivered to bob"))
    with opened(path) as store:
        entries = store.recent(None, 5).entries
    assert entries[1] == replace(own, state=State.DELIVERED, detail="delivered to bob")
    assert [entry.text for entry in entries] == ["before", "x", "after"]


def test_a_row_given_another_messages_hash_does_not_open(path: Path) -> None:
    """A delivery report for one message cannot be made to change another's row."""
    write(path, transcript.sent("alice", "one", None, 1, NOW), transcript.sent("alice", "two", None, 2, NOW))
    with raw(path) as connection:
        (tag,) = connection.execute("SELECT message FROM history WHERE number = 1").fetchone()
        connection.execute("UPDATE history SET message = ? WHERE number = 2", (tag,))
    with opened(path) as store:
        found = store.recent(None, 5)
    assert [entry.text for entry in found.entries] == ["one"] and found.damaged == 1


def test_rows_written_together_each_have_a_nonce_of_their_own(path: Path) -> None:
    """Sealed in one go (nonces drawn in one call), every row still has its own nonce:
    the same line twice is two unrelated seals."""
    write(path, *(line("the same line") for _ in range(50)))
    with raw(path) as connection:
        seals = [sealed for (sealed,) in connection.execute("SELECT sealed FROM history")]
    assert len({sealed[:24] for sealed in seals}) == len(seals) == 50
    assert len({sealed[24:] for sealed in seals}) == 50
    with opened(path) as store:
        assert [entry.text for entry in store.recent(None, 100).entries] == ["the same line"] * 50


def test_the_text_export_dates_a_line_received_by_when_it_was_sent() -> None:
    sent = NOW - 3 * 86400  # a mail that waited three days
    entry = Entry(DEFAULT_ROOM, True, "bob", "old news", NOW, sent)
    assert transcript.export_text(entry).startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sent)))
    ours = Entry(DEFAULT_ROOM, False, "alice", "mine", NOW, sent)  # ours: when it was shown here
    assert transcript.export_text(ours).startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW)))

"""Copies waiting in mailboxes, and message ids: kept as rows, never the same id twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nacl.public import PrivateKey

from e2echat.client.pending import (
    ID_BLOCK,
    NUMBERS_ROW,
    MessageIds,
    PendingCopy,
    PendingDeliveries,
)
from e2echat.store.sessions import SESSIONS_FILE, SessionFile


def _saved(pending: PendingDeliveries, rows: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The rows on disk after ``pending``'s changes are written over ``rows``."""
    rows = dict(rows or {})
    for name, value in pending.changes().items():
        if value is None:
            rows.pop(name, None)
        else:
            rows[name] = value
    return rows


def _copy(message_id: int, nick: str = "bob", counter: int = 0) -> PendingCopy:
    queued_at = 1_700_000_000.0 + message_id
    return PendingCopy(message_id, nick, counter, True, f"message {message_id}", queued_at, queued_at + 100.0)


def test_copies_come_back_from_their_rows_and_are_found_by_receipt_or_by_notice() -> None:
    pending = PendingDeliveries()
    pending.add(_copy(1, "bob", 7))
    pending.add(_copy(1, "carol", 3))
    pending.add(_copy(2, "bob", 8))
    rows = {**_saved(pending), "peer:bob": b"not ours"}
    again = PendingDeliveries.from_rows(rows)
    assert set(again) == set(pending)
    assert again.confirmed("bob", 8) == _copy(2, "bob", 8)
    assert again.confirmed("bob", 8) is None  # a receipt confirms once
    assert again.confirmed("carol", 7) is None  # bob's number, not carol's
    assert again.drop(1, "carol") == _copy(1, "carol", 3)
    assert [copy.message_id for copy in PendingDeliveries.from_rows(_saved(again, rows))] == [1]


def test_ids_never_repeat_across_restarts_even_after_a_crash() -> None:
    pending = PendingDeliveries()
    rows = _saved(pending)
    used = [next(pending.ids) for _ in range(3)]
    rows = _saved(pending, rows)  # the block is reserved before its first id is used
    assert used == [1, 2, 3]
    # A crash now: what was used of the block is skipped, never handed out again.
    after = PendingDeliveries.from_rows(rows)
    assert next(after.ids) == ID_BLOCK + 1
    assert after.changed and NUMBERS_ROW in after.changes()


def test_a_reservation_is_one_row_a_block() -> None:
    ids = MessageIds()
    changes = 0
    for _ in range(3 * ID_BLOCK):
        next(ids)
        changes += ids.changed
        ids.changed = False
    assert changes == 3


def test_the_oldest_copy_goes_beyond_the_limit() -> None:
    pending = PendingDeliveries(limit=2)
    forgotten = [pending.add(_copy(message_id, counter=message_id)) for message_id in (1, 2, 3)]
    assert forgotten == [[], [], [_copy(1, counter=1)]]  # handed back, for its sender to hear of
    assert [copy.message_id for copy in pending] == [2, 3]
    assert pending.confirmed("bob", 1) is None
    # The row of the one forgotten is deleted.
    assert set(PendingDeliveries.from_rows(_saved(pending))) == {_copy(2, counter=2), _copy(3, counter=3)}


def test_a_copy_under_a_number_already_kept_for_its_recipient_is_refused() -> None:
    pending = PendingDeliveries()
    assert pending.add(_copy(1, "bob", 7)) == []
    assert pending.add(_copy(2, "bob", 7)) == [_copy(2, "bob", 7)]
    assert pending.add(_copy(3, "bob", -1)) == [_copy(3, "bob", -1)]  # never numbered: never sent
    assert list(pending) == [_copy(1, "bob", 7)]
    assert pending.drop(2, "bob") is None
    assert pending.confirmed("bob", 7) == _copy(1, "bob", 7)


def test_rows_of_copies_sharing_a_number_can_each_be_dropped() -> None:
    """Saved by an older version, which kept such copies: both come back, the first
    answers the receipt, and each can still be dropped by the relay's notice."""
    pending = PendingDeliveries()
    pending.add(_copy(1, "bob", 7))
    rows = _saved(pending)
    rows["pending:2:bob"] = rows["pending:1:bob"]
    again = PendingDeliveries.from_rows(rows)
    assert again.drop(2, "bob") is not None
    assert again.confirmed("bob", 7) == _copy(1, "bob", 7)
    assert again.drop(1, "bob") is None and not again


def test_a_damaged_row_is_dropped_not_the_rest() -> None:
    pending = PendingDeliveries()
    pending.add(_copy(1))
    rows = _saved(pending)
    rows["pending:2:bob"] = b"\x00"
    rows["pending:x:bob"] = b"\x00" * 40
    again = PendingDeliveries.from_rows(rows)
    assert list(again) == [_copy(1)]
    assert {name for name, value in again.changes().items() if value is None} == {
        "pending:2:bob",
        "pending:x:bob",
    }


def test_the_sessions_file_keeps_them_beside_the_keyring(tmp_path: Path) -> None:
    identity = PrivateKey.generate()
    path = tmp_path / SESSIONS_FILE
    sessions = SessionFile.open(path, identity)
    keyring = sessions.load("alice", identity)
    pending = sessions.deliveries()
    first = next(pending.ids)
    pending.add(_copy(first))
    sessions.save_soon(keyring, pending)
    asyncio.run(sessions.flush(keyring, pending))
    sessions.close()
    again = SessionFile.open(path, identity)
    try:
        assert again.load("alice", identity).peers == {}
        kept = again.deliveries()
        assert list(kept) == [_copy(first)]
        assert next(kept.ids) > first
    finally:
        again.close()

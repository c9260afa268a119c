"""Our messages that wait in someone's mailbox, and the numbering of our messages: both
outlive the connection and the process. Pure.

A copy the relay answered ``queued`` for may be read days later, after any number of our
reconnects and restarts: its recipient's receipt (or the relay's ``expired`` notice) must
still find it, and say which message it was. ``PendingDeliveries`` keeps such copies, by
(recipient, counter) for receipts and by (message id, recipient) for the relay's notices,
with the start of the text so the late report can quote it. Message ids name a message
in those reports and notices, so they must not repeat across restarts either: the
numbering is kept too, reserved a block at a time (a crash skips the rest of a block; it
never hands out an id twice).

Saved as named rows of the profile's sealed sessions file beside the keyring's
(``changes`` hands out the rows changed since it was last called, a deleted row as None).
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

PENDING_ROW = "pending:"
NUMBERS_ROW = "message-ids"
# Ids reserved at a time: one row written per block, not per message.
ID_BLOCK = 1024
# Copies kept waiting, at most: the relay's default mailbox holds 1,000 messages, so this
# is a full mailbox each for a hundred people. Beyond it, the oldest is forgotten: ``add``
# hands it back, for its sender to hear that it is no longer followed.
MAX_PENDING = 100_000

# How long past the relay's mailbox time to live a copy may still be answered, at most:
# our clock and the relay's may differ. (A fraction of the time to live when it is short.)
LIFETIME_MARGIN = 24 * 3600.0

# counter, private, queued_at, expires_at (our clock), the relay's id, the id to report
# under, the length of the relay's address; then the address, and the preview in UTF-8
_COPY = struct.Struct(">Q?dd16sQB")
_NUMBERS = struct.Struct(">Q")

log = logging.getLogger("e2echat.client.pending")


def lifetime(mailbox_ttl: float) -> float:
    """How long a copy kept in a mailbox for ``mailbox_ttl`` seconds may wait for word of
    it: the relay drops it unread after ``mailbox_ttl``, and a receipt its recipient wrote
    just before then waits in our own mailbox as long again; then a margin. Past that,
    nothing more can come but the relay's notice, and that one may be lost (it expires
    too, and a relay that restarted forgets it)."""
    return 2 * mailbox_ttl + min(mailbox_ttl, LIFETIME_MARGIN)


@dataclass(frozen=True)
class PendingCopy:
    """One copy of our message ``message_id``, sent to ``nick`` under ``counter`` and kept
    in their mailbox since ``queued_at``; if no word of it comes by ``expires_at``, it
    is reported not delivered (Unix times, our clock), as it is if ``relay`` shows other
    mailboxes than the ones it was kept in."""

    message_id: int
    nick: str
    counter: int
    private: bool
    preview: str
    queued_at: float
    expires_at: float
    #: the relay that keeps it: its address, and the id of its mailboxes (its welcome's)
    relay: str = ""
    relay_id: bytes = b""
    #: the id its reports go under, if not ``message_id`` (0): a line typed in an outage
    #: is reported under the id it was typed with, not the one it was sent with
    report_as: int = 0

    @property
    def reported_as(self) -> int:
        return self.report_as or self.message_id


class MessageIds(Iterator[int]):
    """Our message ids, 1, 2, 3, ..., never the same twice across restarts (see the module)."""

    def __init__(self, first: int = 1) -> None:
        self._next = first
        #: ids below this may have been handed out (as saved)
        self.reserved = first
        self.changed = False

    def __next__(self) -> int:
        message_id = self._next
        self._next += 1
        if message_id >= self.reserved:
            self.reserved = message_id + ID_BLOCK
            self.changed = True
        return message_id


class PendingDeliveries:
    """Copies waiting in mailboxes, and the message ids (``ids``)."""

    def __init__(self, ids: MessageIds | None = None, *, limit: int = MAX_PENDING) -> None:
        self.ids = ids if ids is not None else MessageIds()
        self.limit = limit
        #: (message id, nick) -> copy, oldest first
        self._copies: OrderedDict[tuple[int, str], PendingCopy] = OrderedDict()
        self._by_counter: dict[tuple[str, int], PendingCopy] = {}
        self._dirty: set[tuple[int, str]] = set()
        self._deleted: set[str] = set()  # row names

    def __len__(self) -> int:
        return len(self._copies)

    def __iter__(self) -> Iterator[PendingCopy]:
        return iter(list(self._copies.values()))

    def add(self, copy: PendingCopy) -> list[PendingCopy]:
        """Keep ``copy``. Returns the copies not kept: the oldest, forgotten beyond the
        limit; or ``copy`` itself, refused, if another copy for its recipient is kept under
        its counter (a receipt for that number could not say which it confirms) or it has
        no counter at all (it was never sent)."""
        key = (copy.message_id, copy.nick)
        self.drop(copy.message_id, copy.nick)
        other = self._by_counter.get((copy.nick, copy.counter))
        if other is not None or copy.counter < 0:
            log.warning("not following message %d to %s: its number is not its own", *_name(copy))
            return [copy]
        self._copies[key] = copy
        self._by_counter[(copy.nick, copy.counter)] = copy
        self._dirty.add(key)
        self._deleted.discard(_row_name(*key))
        forgotten = []
        while len(self._copies) > self.limit:
            oldest = next(iter(self._copies.values()))
            log.warning("forgot message %d to %s, waiting since long: too many waiting", *_name(oldest))
            self.drop(oldest.message_id, oldest.nick)
            forgotten.append(oldest)
        return forgotten

    def outlived(self, now: float) -> list[PendingCopy]:
        """The copies whose ``expires_at`` has passed at ``now``, no longer kept."""
        old = [copy for copy in self._copies.values() if copy.expires_at <= now]
        for copy in old:
            self.drop(copy.message_id, copy.nick)
        return old

    def lost_with(self, relay: str, relay_id: bytes) -> list[PendingCopy]:
        """The copies kept by the relay at ``relay`` in mailboxes other than ``relay_id``,
        which it no longer has (it restarted without them): no longer kept."""
        lost = [
            copy
            for copy in self._copies.values()
            if copy.relay == relay and copy.relay_id and copy.relay_id != relay_id
        ]
        for copy in lost:
            self.drop(copy.message_id, copy.nick)
        return lost

    def confirmed(self, nick: str, counter: int) -> PendingCopy | None:
        """``nick``'s receipt for ``counter``: the copy it confirms (no longer kept), if any."""
        copy = self._by_counter.get((nick, counter))
        if copy is None:
            return None
        return self.drop(copy.message_id, nick)

    def drop(self, message_id: int, nick: str) -> PendingCopy | None:
        """Stop keeping the copy of ``message_id`` for ``nick`` (the relay dropped it); it, if
        it was kept."""
        key = (message_id, nick)
        copy = self._copies.pop(key, None)
        if copy is None:
            return None
        if self._by_counter.get((nick, copy.counter)) is copy:  # rows saved by older versions may share one
            del self._by_counter[(nick, copy.counter)]
        self._dirty.discard(key)
        self._deleted.add(_row_name(*key))
        return copy

    # -- persistence --------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return bool(self._dirty or self._deleted or self.ids.changed)

    def changes(self) -> dict[str, bytes | None]:
        """Rows changed since the last call: name -> value, or None for a row to delete."""
        rows: dict[str, bytes | None] = dict.fromkeys(self._deleted)
        for key in self._dirty:
            rows[_row_name(*key)] = _encode(self._copies[key])
        if self.ids.changed:
            rows[NUMBERS_ROW] = _NUMBERS.pack(self.ids.reserved)
            self.ids.changed = False
        self._dirty.clear()
        self._deleted.clear()
        return rows

    @classmethod
    def from_rows(cls, rows: dict[str, bytes]) -> PendingDeliveries:
        """What ``changes`` saved (rows of other names are not ours: ignored). A row that
        cannot be read is dropped, and logged: its receipt will not be reported."""
        numbers = rows.get(NUMBERS_ROW)
        first = _NUMBERS.unpack(numbers)[0] if numbers is not None and len(numbers) == _NUMBERS.size else 1
        pending = cls(MessageIds(max(first, 1)))
        copies = []
        for name, value in rows.items():
            if not name.startswith(PENDING_ROW):
                continue
            copy = _decode(name, value)
            if copy is None:
                log.warning("a waiting message's row %r is damaged; it was dropped", name)
                pending._deleted.add(name)
                continue
            copies.append(copy)
        for copy in sorted(copies, key=lambda c: (c.queued_at, c.message_id, c.nick)):
            key = (copy.message_id, copy.nick)
            pending._copies[key] = copy
            pending._by_counter.setdefault((copy.nick, copy.counter), copy)
        return pending


def _name(copy: PendingCopy) -> tuple[int, str]:
    return copy.message_id, copy.nick


def _row_name(message_id: int, nick: str) -> str:
    return f"{PENDING_ROW}{message_id}:{nick}"


def _key_of(name: str) -> tuple[int, str]:
    number, _, nick = name[len(PENDING_ROW) :].partition(":")
    return (int(number) if number.isdigit() else -1), nick


def _encode(copy: PendingCopy) -> bytes:
    relay = copy.relay.encode("utf-8")[:255]
    times = (copy.queued_at, copy.expires_at)
    fields = _COPY.pack(copy.counter, copy.private, *times, copy.relay_id, copy.report_as, len(relay))
    return fields + relay + copy.preview.encode("utf-8")


def _decode(name: str, value: bytes) -> PendingCopy | None:
    message_id, nick = _key_of(name)
    if message_id < 0 or not nick or len(value) < _COPY.size:
        return None
    counter, private, queued_at, expires_at, relay_id, report_as, length = _COPY.unpack_from(value)
    end = _COPY.size + length
    try:
        relay, preview = value[_COPY.size : end].decode("utf-8"), value[end:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(value) < end:
        return None
    relay_id = relay_id if any(relay_id) else b""
    where = (relay, relay_id, report_as)
    return PendingCopy(message_id, nick, counter, private, preview, queued_at, expires_at, *where)

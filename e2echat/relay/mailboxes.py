"""Mailboxes: what waits at the relay for someone who is away. Pure (no I/O).

Each known nick may have a mailbox: its items in ``seq`` order, each a ciphertext
someone sent it (``MAIL``) or a notice that one of its own messages was dropped unread
(``EXPIRED``). The owner is sent them when it connects, a window at a time, and
acknowledges them (``ack``); only then are they gone. Items sent but not acknowledged
when the owner leaves are sent again next time.

The limits (relay/limits.py) bound each mailbox (messages, bytes) and all of them (bytes);
a message over them is not kept and its sender is told ``full``. Items older than the
time to live are dropped (``expire``): the relay is not an archive.

Everything here returns the ``Op`` that keeps the change (relay/store.py); the core puts
them in ``Persist`` actions.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Container, Iterable

from e2echat.relay.limits import Limits
from e2echat.relay.store import EXPIRED, MAIL, Dequeue, Enqueue, MailItem
from e2echat.wire.codec import encode_message
from e2echat.wire.framing import encode_frame
from e2echat.wire.messages import Expired, Mail

log = logging.getLogger("e2echat.relay.mailboxes")

#: what an item costs the relay beyond its body, charged against ``mailbox_bytes`` and
#: ``mailbox_total`` so that they bound its real memory: a ``MailItem`` and its place in
#: a mailbox measured 163 bytes with a 1-byte body (tracemalloc, 100,000 items; Python
#: 3.11, 64-bit), rounded up for the body's own object header and the store's row.
ITEM_OVERHEAD = 200
# A notice (``EXPIRED``) is kept this many times ``mailbox_ttl``: it is the only word its
# sender gets of a message dropped unread, and that sender may be away longer than the
# message was kept.
NOTICE_TTL = 2


def item_cost(item: MailItem) -> int:
    """What ``item`` counts for against the limits: its body and ``ITEM_OVERHEAD``."""
    return len(item.body) + ITEM_OVERHEAD


class _Mailbox:
    # Slots: only nicks with something waiting have one, but there may be many.
    __slots__ = ("items", "mail", "notices", "out", "out_bytes", "sent", "size", "warned")

    def __init__(self) -> None:
        self.items: deque[MailItem] = deque()
        #: how many of them are messages (``MAIL``; what ``mailbox_messages`` bounds): the
        #: owner's own notices must not make a mailbox full to those who write to it
        self.mail = 0
        #: how many are notices (``EXPIRED``): at most ``mailbox_messages`` of them
        self.notices = 0
        #: what its messages cost (``item_cost``; what ``mailbox_bytes`` bounds)
        self.size = 0
        #: how many items at the front have been sent on the owner's connection
        self.sent = 0
        #: seq -> the size of its frame, for those sent and not acknowledged, and their sum
        self.out: dict[int, int] = {}
        self.out_bytes = 0
        #: whether its being full has been logged (once, until it drains)
        self.warned = False


def item_frame(item: MailItem) -> bytes:
    """The frame that hands ``item`` to its owner: ``mail`` or ``expired``."""
    if item.kind == MAIL:
        message: Mail | Expired = Mail(item.seq, item.sender, item.queued_at, item.body)
    else:
        message = Expired(item.seq, item.message_id, item.sender, item.reason)
    return encode_frame(encode_message(message))


def _nothing_out(box: _Mailbox) -> None:
    """None of ``box``'s items has been sent on its owner's connection (a new one, or none)."""
    box.sent = 0
    box.out.clear()
    box.out_bytes = 0


class Mailboxes:
    """Nick -> its mailbox, and the bytes held in all of them."""

    def __init__(self, limits: Limits, first_seq: int = 0) -> None:
        self.limits = limits
        self._boxes: dict[str, _Mailbox] = {}
        #: what every item in every mailbox costs (``item_cost``; what ``mailbox_total``
        #: bounds), notices too
        self.total = 0
        #: one counter for every mailbox, so a seq is never reused in one, even once it
        #: has drained (and its ``_Mailbox`` is gone)
        self._next_seq = first_seq
        self._total_warned = False

    def __len__(self) -> int:
        """How many mailboxes hold something."""
        return len(self._boxes)

    def count(self, nick: str) -> int:
        """Items waiting for ``nick``."""
        box = self._boxes.get(nick)
        return len(box.items) if box is not None else 0

    def messages_until(self, nick: str) -> float | None:
        """When the last message (``MAIL``) waiting for ``nick`` expires; None if none
        waits (notices aside)."""
        box = self._boxes.get(nick)
        if box is None or not box.mail:
            return None
        last = next(item for item in reversed(box.items) if item.kind == MAIL)
        return last.queued_at + self.limits.mailbox_ttl

    def items(self, nick: str) -> list[MailItem]:
        box = self._boxes.get(nick)
        return list(box.items) if box is not None else []

    def restore(self, items: Iterable[MailItem]) -> None:
        """Items as a store kept them (each mailbox in seq order), at start-up."""
        for item in items:
            box = self._boxes.get(item.to)
            if box is None:
                box = self._boxes[item.to] = _Mailbox()
            box.items.append(item)
            self._added(box, item)
            self._next_seq = max(self._next_seq, item.seq + 1)

    def put_mail(self, to: str, sender: str, message_id: int, body: bytes, now: float) -> Enqueue | None:
        """Keep ``sender``'s ciphertext for ``to``; None if that is over a limit (logged
        once per mailbox until it drains, and once for the relay until it is under again)."""
        limits, size = self.limits, len(body) + ITEM_OVERHEAD
        box = self._boxes.get(to)
        held, held_size = (box.mail, box.size) if box is not None else (0, 0)
        if held >= limits.mailbox_messages or held_size + size > limits.mailbox_bytes:
            if box is not None and not box.warned:
                box.warned = True
                log.warning(
                    "mailbox of %s is full (%d messages, %d bytes; at most %d and %d)",
                    to, held, held_size, limits.mailbox_messages, limits.mailbox_bytes,
                )  # fmt: skip
            return None
        if self.total + size > limits.mailbox_total:
            if not self._total_warned:
                self._total_warned = True
                log.warning(
                    "mailboxes are full: %d bytes held, at most %d in all", self.total, limits.mailbox_total
                )
            return None
        return self._put(to, MAIL, sender, message_id, now, body, "")

    def put_notice(
        self, to: str, recipient: str, message_id: int, reason: str, now: float
    ) -> list[Enqueue | Dequeue]:
        """Tell ``to`` that its message ``message_id`` to ``recipient`` was dropped unread.

        A notice costs ``ITEM_OVERHEAD`` against ``mailbox_total`` (it takes the place of
        a message, which cost more), and a mailbox holds at most ``mailbox_messages`` of
        them: beyond that, the oldest goes to make room. Its owner then misses some reports
        of messages not delivered (it still never hears that one was delivered): messages
        to many who stay away would otherwise pile up notices without bound."""
        ops: list[Enqueue | Dequeue] = []
        box = self._boxes.get(to)
        if box is not None and box.notices >= self.limits.mailbox_messages:
            ops.append(self._drop_oldest_notice(to, box))
        ops.append(self._put(to, EXPIRED, recipient, message_id, now, b"", reason))
        return ops

    def _drop_oldest_notice(self, to: str, box: _Mailbox) -> Dequeue:
        index, oldest = next((index, item) for index, item in enumerate(box.items) if item.kind != MAIL)
        del box.items[index]
        self._removed(box, oldest)
        if index < box.sent:  # sent on the owner's connection: its ack will find it gone
            box.sent -= 1
        return Dequeue(to, seqs=(oldest.seq,))

    def _put(
        self, to: str, kind: str, sender: str, message_id: int, now: float, body: bytes, reason: str
    ) -> Enqueue:
        box = self._boxes.get(to)
        if box is None:
            box = self._boxes[to] = _Mailbox()
        item = MailItem(to, self._next_seq, kind, sender, message_id, now, body, reason)
        self._next_seq += 1
        box.items.append(item)
        self._added(box, item)
        return Enqueue(item)

    def _added(self, box: _Mailbox, item: MailItem) -> None:
        cost = item_cost(item)
        if item.kind == MAIL:
            box.mail += 1
            box.size += cost
        else:
            box.notices += 1
        self.total += cost

    def _removed(self, box: _Mailbox, item: MailItem) -> None:
        cost = item_cost(item)
        if item.kind == MAIL:
            box.mail -= 1
            box.size -= cost
        else:
            box.notices -= 1
        box.out_bytes -= box.out.pop(item.seq, 0)
        self._shrink(cost)

    def drop(self, nick: str) -> list[MailItem]:
        """Empty ``nick``'s mailbox (its owner is forgotten, or has another key now): what
        it held."""
        box = self._boxes.pop(nick, None)
        if box is None:
            return []
        self._shrink(sum(item_cost(item) for item in box.items))
        return list(box.items)

    def connected(self, nick: str) -> None:
        """``nick``'s owner is online on a new connection: nothing has been sent on it yet."""
        box = self._boxes.get(nick)
        if box is not None:
            _nothing_out(box)

    def due(self, nick: str, room: int) -> list[tuple[int, bytes]]:
        """The items to send ``nick``'s owner now (each seq, and the frame): those not sent
        yet on its connection, as long as no more than ``mail_window`` items and
        ``mail_window_bytes`` of frames are unacknowledged, and no more than ``room``
        bytes go now (what its connection may still be given). One item at least when
        none is out: it alone may be over those bytes, and without it no ack would come
        to ask for the rest."""
        box = self._boxes.get(nick)
        if box is None:
            return []
        items, end = box.items, min(len(box.items), self.limits.mail_window)
        budget = min(self.limits.mail_window_bytes - box.out_bytes, room)
        due: list[tuple[int, bytes]] = []
        while box.sent < end:
            item = items[box.sent]
            frame = item_frame(item)
            if len(frame) > budget and box.sent:
                break
            budget -= len(frame)
            box.out[item.seq] = len(frame)
            box.out_bytes += len(frame)
            box.sent += 1
            due.append((item.seq, frame))
        return due

    def ack(self, nick: str, seq: int) -> Dequeue | None:
        """``nick``'s owner has handled every item up to ``seq``: they are gone (None if
        there were none left to drop: an ack repeated, or one that crossed a sweep). The
        caller checks that ``seq`` was sent on the owner's connection."""
        box = self._boxes.get(nick)
        if box is None:
            return None
        items, dropped = box.items, 0
        while items and items[0].seq <= seq:
            self._removed(box, items.popleft())
            dropped += 1
        if not dropped:
            return None  # acknowledged already
        box.sent -= dropped
        if not items:
            del self._boxes[nick]
        return Dequeue(nick, upto=seq)

    def handed_over(self, nick: str, upto: int) -> Dequeue | None:
        """``nick``'s items up to ``upto`` are kept by another relay of a cluster now (its
        owner is on that one): gone here. None if there were none."""
        box = self._boxes.get(nick)
        if box is None:
            return None
        items, dropped = box.items, 0
        while items and items[0].seq <= upto:
            self._removed(box, items.popleft())
            dropped += 1
        _nothing_out(box)  # its owner is not here
        if not items:
            del self._boxes[nick]
        return Dequeue(nick, upto=upto) if dropped else None

    def expire(self, now: float, online: Container[str]) -> tuple[list[Dequeue], list[MailItem]]:
        """Drop the messages older than ``mailbox_ttl``, and the notices older than
        NOTICE_TTL times that, from the mailboxes of owners who are away (an owner online
        is being handed them). The ops, and the items dropped."""
        cutoff = now - self.limits.mailbox_ttl
        notice_cutoff = now - NOTICE_TTL * self.limits.mailbox_ttl
        ops: list[Dequeue] = []
        gone: list[MailItem] = []
        for nick, box in list(self._boxes.items()):
            items = box.items
            if nick in online or items[0].queued_at > cutoff:
                continue
            # Items are queued in time order: the old ones are at the front, and a notice
            # among them may stay while messages behind it go.
            kept: list[MailItem] = []
            seqs = []
            while items and items[0].queued_at <= cutoff:
                item = items.popleft()
                if item.kind == EXPIRED and item.queued_at > notice_cutoff:
                    kept.append(item)
                    continue
                self._removed(box, item)
                seqs.append(item.seq)
                gone.append(item)
            items.extendleft(reversed(kept))
            if not seqs:
                continue
            _nothing_out(box)  # its owner is away
            ops.append(Dequeue(nick, seqs=tuple(seqs)))
            if not items:
                del self._boxes[nick]
        return ops, gone

    def _shrink(self, size: int) -> None:
        self.total -= size
        if self._total_warned and self.total <= self.limits.mailbox_total * 3 // 4:
            self._total_warned = False  # under again, with room: say so next time it fills

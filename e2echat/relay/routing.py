"""Where a send's copies go, and mailbox items to their owners, without any I/O.

``RelayCore`` reads the frames and keeps the connections; a ``Router`` it owns decides the
rest of a ``send``: each copy to a recipient online as a ``deliver`` (unless it is owed
more than it takes), into the mailbox of one who is away (``Kept``), or nowhere (told to
the sender in its ``routed``). And it hands mailbox items to their owners online: those
what waited for it, once it has been given everything it was owed (its welcome and member
lists: relay/paging.py), a window at a time as it acknowledges them (``ack``), and
notices as they come.

Every frame for a connection in one turn is counted against what it may be given before
the shell has written it (``Backlog.unflushed``, ``write_buffer_turn``), deliveries and
mailbox items alike; a connection still owed something is given neither.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from e2echat.errors import RemoteProtocolError
from e2echat.relay.actions import Action, ConnId, Persist, Write, keep
from e2echat.relay.kept import Kept
from e2echat.relay.limits import Backlog, Limits
from e2echat.relay.paging import Paging
from e2echat.relay.store import Op
from e2echat.wire.fastpath import Routes, deliver_head, encode_routed
from e2echat.wire.framing import encode_frame

_PREFIX = struct.Struct(">I")


@dataclass(slots=True)
class Copies:
    """Where a send's copies went: the deliveries (frames), the mailbox items (ops) and
    who is in which list of its ``routed``."""

    frames: list[tuple[ConnId, bytes]] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def routed(self, message_id: int) -> bytes:
        """The sender's ``routed`` for its send ``message_id``, encoded."""
        return encode_routed(message_id, self.delivered, self.queued, self.missing, self.full, self.refused)


class Router:
    def __init__(
        self, limits: Limits, kept: Kept, online: dict[str, ConnId], backlog: Backlog, paging: Paging
    ) -> None:
        """``online`` (nick -> connection, for everyone registered), ``backlog`` and
        ``paging`` are the core's own: read here, as it changes them."""
        self.limits = limits
        self.kept = kept
        self.online = online
        self.backlog = backlog
        self.paging = paging
        #: connection -> the highest mailbox seq sent on it: an ack above it acknowledges
        #: something the client was never sent (at or below it, a repeat: harmless)
        self._mail_sent: dict[ConnId, int] = {}

    def forget(self, conn: ConnId) -> None:
        self._mail_sent.pop(conn, None)

    def route(self, conn: ConnId, sender: str, message: Routes, now: float) -> list[Action]:
        """``sender``'s send (on ``conn``, its recipients each named once) at Unix time
        ``now``: the deliveries at once, and its ``routed``, once what it queued is kept."""
        copies = self.sort(sender, message.id, message.items, now)
        answer = (conn, encode_frame(copies.routed(message.id)))
        if not copies.ops:
            copies.frames.append(answer)
            return [Write(copies.frames)]
        # Deliveries at once; the sender hears "queued" only once its message is kept.
        persist = Persist(copies.ops, [answer])
        return [Write(copies.frames), persist] if copies.frames else [persist]

    def sort(self, sender: str, message_id: int, items: Sequence[tuple[str, bytes]], now: float) -> Copies:
        """Where each of ``items`` (a send's copies, recipients each named once) goes:
        delivered (the frames), queued in a mailbox (the ops), or nowhere."""
        online, backlog = self.online, self.backlog
        # A recipient already owed more than it takes is not sent more: what the sender
        # sends then is refused and it is told, rather than the recipient dropped. So is
        # one still owed its member lists: a delivery would overtake them.
        stalled, unflushed, budget = backlog.stalled, backlog.unflushed, self.limits.write_buffer_turn
        paging = self.paging
        # Each body goes on as it came, after a head made once per send: a deliver is
        # assembled, not encoded.
        head, pack = deliver_head(sender), _PREFIX.pack
        size = len(head)
        copies = Copies()
        frames, delivered, missing, refused = copies.frames, copies.delivered, copies.missing, copies.refused
        for to, body in items:
            target = online.get(to)
            if target is None:
                if not self.kept.knows(to):
                    missing.append(to)
                    continue
                op = self.kept.mailboxes.put_mail(to, sender, message_id, bytes(body), now)
                if op is None:
                    copies.full.append(to)
                else:
                    copies.ops.append(op)
                    copies.queued.append(to)
            elif to == sender:
                missing.append(to)
            elif target in stalled or unflushed.get(target, 0) >= budget or target in paging:
                refused.append(to)
            else:
                length = size + len(body)
                frames.append((target, pack(length) + head + body))
                unflushed[target] = unflushed.get(target, 0) + length
                delivered.append(to)
        return copies

    def due(self, nick: str) -> list[tuple[ConnId, bytes]]:
        """The mailbox items ``nick`` (online) may be sent now: counted against what its
        connection may be given in this turn, as deliveries are (``route``); none while
        it is owed something (its lists come first: the core asks again once it is not)."""
        conn, unflushed = self.online[nick], self.backlog.unflushed
        if conn in self.paging:
            return []
        queued = unflushed.get(conn, 0)
        due = self.kept.mailboxes.due(nick, self.limits.write_buffer_turn - queued)
        if not due:
            return []
        self._mail_sent[conn] = due[-1][0]
        unflushed[conn] = queued + sum(len(frame) for _, frame in due)
        return [(conn, frame) for _, frame in due]

    def notify(self) -> list[tuple[ConnId, bytes]]:
        """Hand their new mailbox items (notices) to those online."""
        notified = self.kept.notified
        frames = [frame for nick in notified if nick in self.online for frame in self.due(nick)]
        notified.clear()
        return frames

    def ack(self, conn: ConnId, nick: str, seq: int) -> list[Action]:
        """Mailbox items handled: gone, and the next ones sent. ``RemoteProtocolError`` for
        an ack of an item not sent on this connection (it is hung up on); an ack repeated,
        or of items gone already, changes nothing."""
        if seq > self._mail_sent.get(conn, -1):
            raise RemoteProtocolError(detail=f"ack of mailbox item {seq}, which was not sent")
        op = self.kept.mailboxes.ack(nick, seq)
        return keep([op] if op is not None else [], [], now=self.due(nick))

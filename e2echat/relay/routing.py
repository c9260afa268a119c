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

from e2echat.errors import RemoteProtocolError
from e2echat.relay.actions import Action, ConnId, Persist, Write, keep
from e2echat.relay.kept import Kept
from e2echat.relay.limits import Backlog, Limits
from e2echat.relay.paging import Paging
from e2echat.relay.store import Op
from e2echat.wire.fastpath import Routes, deliver_head, encode_routed
from e2echat.wire.framing import encode_frame

_PREFIX = struct.Struct(">I")


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
        online, backlog, items = self.online, self.backlog, message.items
        # A recipient already owed more than it takes is not sent more: what the sender
        # sends then is refused and it is told, rather than the recipient dropped. So is
        # one still owed its member lists: a delivery would overtake them.
        stalled, unflushed, budget = backlog.stalled, backlog.unflushed, self.limits.write_buffer_turn
        paging = self.paging
        # Each body goes on as it came, after a head made once per send: a deliver is
        # assembled, not encoded.
        head, pack = deliver_head(sender), _PREFIX.pack
        size = len(head)
        frames: list[tuple[ConnId, bytes]] = []
        delivered: list[str] = []
        missing: list[str] = []
        refused: list[str] = []
        queued: list[str] = []
        full: list[str] = []
        ops: list[Op] = []
        for to, body in items:
            target = online.get(to)
            if target is None:
                if not self.kept.knows(to):
                    missing.append(to)
                    continue
                op = self.kept.mailboxes.put_mail(to, sender, message.id, bytes(body), now)
                if op is None:
                    full.append(to)
                else:
                    ops.append(op)
                    queued.append(to)
            elif to == sender:
                missing.append(to)
            elif target in stalled or unflushed.get(target, 0) >= budget or target in paging:
                refused.append(to)
            else:
                length = size + len(body)
                frames.append((target, pack(length) + head + body))
                unflushed[target] = unflushed.get(target, 0) + length
                delivered.append(to)
        answer = (conn, encode_frame(encode_routed(message.id, delivered, queued, missing, full, refused)))
        if not ops:
            frames.append(answer)
            return [Write(frames)]
        # Deliveries at once; the sender hears "queued" only once its message is kept.
        return [Write(frames), Persist(ops, [answer])] if frames else [Persist(ops, [answer])]

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

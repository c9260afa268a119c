"""Where one connection is in our mailbox, without any I/O.

What waited in our mailbox while we were away comes after the directory, as ``mail`` and
``expired`` items in order: each is handled (shown, or its report made) as it is read,
and the relay is told once per read that everything up to the last is handled (one
``ack`` for a batch, not one an item), after which it forgets them and sends more. With
``hold_acks`` the core only says so (``MailboxRead``), after the read's events, and the
``ack`` waits for ``ClientCore.acknowledge``: the UI calls it once those events are stored.
"""

from __future__ import annotations


class MailboxReads:
    """The last mailbox item handled, the last a read ended on, and the last the relay was
    told of (``-1``: none yet). Items are numbered by the relay (``seq``), in order."""

    def __init__(self, hold_acks: bool) -> None:
        #: acknowledged when the UI says so, not as soon as read
        self.hold_acks = hold_acks
        self.handled = self._read = self.acked = -1

    def handle(self, seq: int) -> None:
        """Item ``seq`` is handled (an item sent again counts once)."""
        if seq > self.handled:
            self.handled = seq

    def end_of_read(self) -> int | None:
        """A read is over: the last item handled, if no earlier read ended on it."""
        if self.handled > self._read:
            self._read = self.handled
            return self.handled
        return None

    def acknowledge(self, seq: int) -> bool:
        """Whether to tell the relay that items up to ``seq`` are handled: not if that is
        not above what it was told, or is above what this connection read (a
        ``MailboxRead`` of an earlier connection: the relay sends those items again)."""
        if self.acked < seq <= self.handled:
            self.acked = seq
            return True
        return False

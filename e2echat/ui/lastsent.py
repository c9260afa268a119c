"""What became of the last message we sent, in a few words: the REPL's toolbar shows it,
so that a delivery need not print a line of its own. Pure: no I/O.
"""

from __future__ import annotations

from e2echat.client.events import NotSent, Queued
from e2echat.client.receipts import DeliveryReport, MessageQueued
from e2echat.ui.nicks import natural_sorted


class LastSent:
    """Follows the reports that come under the id of the last message sent."""

    def __init__(self) -> None:
        self._message_id: int | None = None
        self._delivered: set[str] = set()
        self._failed: set[str] = set()
        self._queued: set[str] = set()
        self._held = False
        self._not_sent = False

    def sent(self, message_id: int) -> None:
        """A message went out (or was held for the relay) under ``message_id``: what was
        known was of the one before."""
        self._message_id = message_id
        self._delivered, self._failed, self._queued = set(), set(), set()
        self._held = self._not_sent = False

    def update(self, event: object) -> None:
        """Take what ``event`` says of the last message, if it is about that one."""
        if not isinstance(event, DeliveryReport | MessageQueued | Queued | NotSent):
            return
        if self._message_id is None or event.message_id != self._message_id:
            return
        if isinstance(event, DeliveryReport):
            # A copy kept in a mailbox is reported again, under the same id, once read.
            self._held = False
            self._delivered.update(event.delivered)
            self._failed.update(nick for nick, _ in event.failed)
            self._queued.update(event.queued)
            self._queued -= self._delivered | self._failed
        elif isinstance(event, MessageQueued):
            self._held = False
            self._queued.update(event.nicks)
        elif isinstance(event, Queued):
            self._held = True
        elif isinstance(event, NotSent):
            self._not_sent = True

    @property
    def text(self) -> str:
        """``last: ✓ delivered to 3``, ``last: … waiting``, ``last: queued for bob``, …;
        empty before anything is sent."""
        if self._message_id is None:
            return ""
        if self._not_sent:
            return "last: NOT sent"
        if self._held:
            return "last: held until the relay is back"
        parts = []
        if self._failed:
            parts.append(f"!! NOT delivered to {_who(self._failed)}")
        if self._delivered:
            parts.append(f"✓ delivered to {_who(self._delivered)}")
        if self._queued:
            parts.append(f"queued for {_who(self._queued)}")
        return "last: " + (", ".join(parts) if parts else "… waiting")


def _who(nicks: set[str]) -> str:
    """One nick by name; more, by how many (the toolbar is one line)."""
    return natural_sorted(nicks)[0] if len(nicks) == 1 else str(len(nicks))

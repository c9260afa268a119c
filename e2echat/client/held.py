"""Lines typed while the relay was away, until each has reached everyone it was meant
for or its sender has been told, by name, who did not get it. Pure.

A line typed during an outage is meant for whom a line typed online would have gone
to: the room's members its sender last saw, online or away (a private line: its one
recipient). Once the relay is back, whoever of them is online gets it at once, and so
does whoever the relay says is a member away (it keeps the copy in their mailbox, as it
does a fresh line's); whoever comes back within a grace period gets it then: after a
relay restart that kept nothing, everyone reconnects, each at their own pace. Whoever is
neither back nor known to the relay by the end of the grace period is reported NOT
delivered. The copies go out as one or more messages ("parts"), whose reports are
gathered into one report for the line, under the id it was given when it was typed; a
copy kept in a mailbox is reported later, when its receipt comes, under that id too
(the part is sent with it as ``report_as``: it is kept with the copy, across restarts).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Protocol

from e2echat.client.events import ClientEvent, NotSent, Queued
from e2echat.client.outbox import preview
from e2echat.client.receipts import DeliveryReport, MessageQueued, SendReport
from e2echat.errors import E2EChatError
from e2echat.wire.grammar import DEFAULT_ROOM

NOT_BACK = "not back online in time"
KEY_CHANGED = "their key changed and was not accepted"
NO_SESSION = "no secure session"


class Sender(Protocol):
    """Where held lines go once the relay is back: the connection."""

    def send_room(
        self, room: str, text: str, only: Collection[str] | None = None, *, report_as: int = 0
    ) -> int: ...
    def send_private(self, nick: str, text: str, *, report_as: int = 0) -> int: ...
    @property
    def left_out(self) -> list[str]: ...


@dataclass
class HeldLine:
    message_id: int
    recipient: str | None  # None: the room
    text: str
    #: who it is still to go to; None: whoever is online when it can go (nobody was when
    #: it was typed)
    to_send: set[str] | None
    #: message id of each copy sent whose report is not in yet -> whom that copy went to
    parts: dict[int, frozenset[str]] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: kept in these recipients' mailboxes: each is reported when its receipt comes
    queued: list[str] = field(default_factory=list)
    #: a room line's room
    room: str = DEFAULT_ROOM


class HeldLines:
    def __init__(self) -> None:
        self._lines: list[HeldLine] = []
        self._by_part: dict[int, HeldLine] = {}

    @property
    def waiting(self) -> bool:
        """Some line has not yet gone to someone it is meant for."""
        return any(line.to_send is None or line.to_send for line in self._lines)

    def waiting_for(self) -> list[tuple[str, list[str]]]:
        """Each line not yet sent to everyone: its preview, and whom it is still to go to
        (["the room"] when nobody was online to name)."""
        return [
            (preview(line.text), sorted(line.to_send) if line.to_send is not None else ["the room"])
            for line in self._lines
            if line.to_send is None or line.to_send
        ]

    def hold(
        self,
        message_id: int,
        recipient: str | None,
        text: str,
        last_seen: Collection[str],
        last_away: Collection[str] = (),
        *,
        room: str = DEFAULT_ROOM,
    ) -> Queued:
        """Keep a line typed while the relay is away: for ``recipient``, or for ``room`` as
        its sender last saw it (``last_seen`` online, ``last_away`` members away)."""
        to_send = {recipient} if recipient is not None else ({*last_seen, *last_away} or None)
        self._lines.append(HeldLine(message_id, recipient, text, to_send, room=room))
        return Queued(preview(text), message_id)

    def release(
        self,
        sender: Sender,
        online: Collection[str],
        *,
        final: bool,
        away: Collection[str] = (),
        members: Callable[[str], Collection[str]] | None = None,
    ) -> list[ClientEvent]:
        """The relay is back (or someone came back to it): send each line to whoever it is
        meant for who is ``online``, or a member ``away`` (the relay keeps their copy in
        their mailbox); a room line only to ``members`` of its room, if given. ``final``:
        the grace period is over, and whoever it has not reached yet is reported."""
        events: list[ClientEvent] = []
        everyone = {*online, *away}
        for line in list(self._lines):
            reachable = everyone
            if line.recipient is None and members is not None:
                reachable = everyone.intersection(members(line.room))
            if line.to_send is None:  # meant for whoever is there
                if not reachable and final:
                    self._lines.remove(line)
                    events.append(NotSent((preview(line.text),), line.message_id))
                    continue
                line.to_send = reachable or None
            if line.to_send is None:
                continue
            due = line.to_send & reachable
            if due:
                line.to_send -= due
                self._send(sender, line, due)
            if final and line.to_send:
                line.failed += [(nick, NOT_BACK) for nick in sorted(line.to_send)]
                line.to_send.clear()
            events += self._finish(line)
        return events

    def settle(self, report: SendReport | DeliveryReport | MessageQueued) -> list[ClientEvent] | None:
        """A report on one of our parts: folded into its line's report (out once the line
        is done; that its copies wait in mailboxes, told under the line's id). None if
        ``report`` is not about a part (a copy that waited in a mailbox is reported under
        the line's id already): it is the caller's to pass on."""
        line = self._by_part.get(report.message_id)
        if line is None:
            return None
        if isinstance(report, SendReport):
            return []  # the relay's word; the receipts are what counts
        if isinstance(report, MessageQueued):
            return [replace(report, message_id=line.message_id, preview=preview(line.text))]
        del self._by_part[report.message_id]
        went_to = line.parts.pop(report.message_id)
        line.delivered += report.delivered
        line.failed += report.failed
        line.queued += report.queued
        accounted = {*report.delivered, *(nick for nick, _ in report.failed), *report.queued}
        line.failed += [(nick, NO_SESSION) for nick in sorted(went_to - accounted)]
        return self._finish(line)

    def give_up(self, reason: str) -> list[ClientEvent]:
        """Nothing more will be sent: whoever a line has not gone to is reported with
        ``reason``. (Parts already sent are reported as their own reports come in.)"""
        events: list[ClientEvent] = []
        for line in list(self._lines):
            if line.to_send is None:
                self._lines.remove(line)
                events.append(NotSent((preview(line.text),), line.message_id))
                continue
            line.failed += [(nick, reason) for nick in sorted(line.to_send)]
            line.to_send.clear()
            events += self._finish(line)
        return events

    def _send(self, sender: Sender, line: HeldLine, due: set[str]) -> None:
        part: int | None = None
        try:
            if line.recipient is None:
                part = sender.send_room(line.room, line.text, only=due, report_as=line.message_id)
            else:
                part = sender.send_private(line.recipient, line.text, report_as=line.message_id)
        except E2EChatError as exc:  # a refusal (CommandError), or anything else: reported
            reason = str(exc)
        # A room message says whom it left out for a changed key, sent or not.
        left_out = set(sender.left_out).intersection(due) if line.recipient is None else set()
        line.failed += [(nick, KEY_CHANGED) for nick in sorted(left_out)]
        if part is None:
            line.failed += [(nick, reason) for nick in sorted(due - left_out)]
            return
        line.parts[part] = frozenset(due - left_out)
        self._by_part[part] = line

    def _finish(self, line: HeldLine) -> list[ClientEvent]:
        if line.to_send is None or line.to_send or line.parts:
            return []
        self._lines.remove(line)
        report = DeliveryReport(
            line.message_id,
            line.recipient is not None,
            tuple(line.delivered),
            tuple(line.failed),
            preview(line.text),
            tuple(line.queued),
        )
        return [report]

"""A ledger of every message sent in a test, checked at the end: nothing silently lost,
nothing shown twice.

Record each message as it is sent (``sent``: sender, the id its report will come under,
its text, and whom it was meant for), and feed the ledger every event each client shows
(``record``). ``problems()`` then lists, for every (message, recipient) pair, whatever
breaks the promise DESIGN.md makes: each ends either delivered (the sender's report says
so AND the recipient was shown it exactly once) or reported NOT delivered to its sender,
or reported queued in the recipient's mailbox (then a later report of its own may settle
it; until one does, the recipient may have been shown it once, or not yet). Nobody is
shown a message twice, nor one nobody sent. Texts must be unique per sender (and at most
40 characters: reports quote a message by its first 40).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from e2echat.client.events import DeliveryReport, MessageReceived, NotSent


@dataclass
class Sent:
    sender: str
    message_id: int
    text: str
    #: whom it was meant for, as its sender saw the room when it was typed
    intended: frozenset[str]
    private: bool
    reports: list[DeliveryReport] = field(default_factory=list)
    not_sent: int = 0  # NotSent reports (a line meant for whoever was online: nobody was)


@dataclass
class Ledger:
    #: (sender, message id) -> what was sent
    messages: dict[tuple[str, int], Sent] = field(default_factory=dict)
    #: lines refused as they were typed (the sender was told at once): (sender, text, why)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    #: (recipient, sender, text, private) -> how many times it was shown
    shown: Counter[tuple[str, str, str, bool]] = field(default_factory=Counter)
    #: reports for no message the ledger knows of
    strays: list[str] = field(default_factory=list)

    def sent(self, sender: str, message_id: int, text: str, intended: set[str], *, private: bool) -> None:
        assert (sender, message_id) not in self.messages, f"{sender} reused message id {message_id}"
        self.messages[(sender, message_id)] = Sent(sender, message_id, text, frozenset(intended), private)

    def refuse(self, sender: str, text: str, why: str) -> None:
        self.refused.append((sender, text, why))

    def record(self, nick: str, event: object) -> None:
        """An event ``nick``'s client showed (others are ignored)."""
        if isinstance(event, MessageReceived):
            self.shown[(nick, event.sender, event.text, event.private)] += 1
        elif isinstance(event, DeliveryReport):
            message = self.messages.get((nick, event.message_id))
            if message is None:
                self.strays.append(f"{nick}: report for unknown message {event.message_id}: {event}")
            else:
                message.reports.append(event)
        elif isinstance(event, NotSent):
            for preview in event.previews:
                matches = [m for m in self.messages.values() if m.sender == nick and m.text == preview]
                if len(matches) != 1:
                    self.strays.append(f"{nick}: NotSent for {preview!r} matches {len(matches)} messages")
                else:
                    matches[0].not_sent += 1

    # -- the check ---------------------------------------------------------------------------

    def problems(self) -> list[str]:
        found = list(self.strays)
        for message in self.messages.values():
            found += self._check(message)
        sent = {(m.sender, m.text, m.private) for m in self.messages.values()}
        for (recipient, sender, text, private), times in self.shown.items():
            if times > 1:
                found.append(f"{recipient} was shown {sender}'s {text!r} {times} times")
            if (sender, text, private) not in sent:
                found.append(f"{recipient} was shown {text!r} from {sender}, who never sent it")
        return found

    def _check(self, message: Sent) -> list[str]:
        name = f"{message.sender}'s {message.text!r} (id {message.message_id})"
        reports, not_sent = message.reports, message.not_sent
        # One report, and later ones for copies it said were queued in a mailbox; or a NotSent.
        if (not reports and not_sent != 1) or (reports and not_sent):
            return [f"{name}: {len(reports)} reports and {not_sent} NotSent, not exactly one"]
        if not_sent:
            return []  # reported as sent to nobody at all
        delivered = Counter(nick for report in reports for nick in report.delivered)
        failed = Counter(nick for report in reports for nick, _ in report.failed)
        queued = {nick for report in reports for nick in report.queued}
        found = []
        for nick in sorted(message.intended | set(delivered) | set(failed) | queued):
            times = self.shown[(nick, message.sender, message.text, message.private)]
            settled = delivered[nick] + failed[nick]
            if settled > 1:
                found.append(f"{name}: reported {settled} times for {nick}")
            elif delivered[nick]:
                if times != 1:
                    found.append(f"{name}: reported delivered to {nick}, who was shown it {times} times")
            elif not failed[nick] and nick in queued:
                if times > 1:
                    found.append(f"{name}: queued for {nick}, who was shown it {times} times")
            elif not failed[nick]:
                found.append(f"{name}: SILENTLY LOST for {nick} (shown {times} times, not in the report)")
        return found

    def summary(self) -> str:
        pairs = delivered = failed = queued = 0
        for message in self.messages.values():
            pairs += len(message.intended)
            for report in message.reports:
                delivered += len(report.delivered)
                failed += len(report.failed)
                queued += len(report.queued)
        return (
            f"{len(self.messages)} messages sent ({len(self.refused)} more refused at once), "
            f"{pairs} (message, recipient) pairs meant; {delivered} delivered, "
            f"{failed} reported NOT delivered ({queued} queued in a mailbox first)"
        )

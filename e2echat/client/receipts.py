"""What became of each message we sent, from the send to delivered or NOT delivered.
Pure; time is passed in.

A message's life has two strands, and ``DeliveryTracker`` follows both in one record:

- the relay's word: its ``routed`` answers say, per recipient, whether it forwarded a
  copy. Once it has answered for every recipient: one ``SendReport``.
- the recipients' word: each recipient acknowledges its copy by counter, inside an
  encrypted, authenticated receipt, so the relay can neither forge an acknowledgement
  nor hide a missing one. Receipts, the relay's refusals, departures, timeouts and a
  lost connection settle each copy; once every copy is settled: one ``DeliveryReport``,
  the one to trust.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How long a recipient has to acknowledge a message before we say it was not confirmed.
RECEIPT_TIMEOUT = 15.0

OFFLINE = "offline"
REFUSED = "refused by the relay (too many messages, or they are not keeping up)"
TIMED_OUT = "no receipt"
LEFT = "left before confirming"


@dataclass(frozen=True)
class SendReport:
    """What the relay did with one of our messages, once it has answered for every recipient."""

    message_id: int
    private: bool
    delivered: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryReport:
    """The outcome of one message: who confirmed it, and why the others did not."""

    message_id: int
    private: bool
    delivered: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (nick, reason)
    #: the start of the message, so the sender knows which one this is
    preview: str = ""

    @property
    def complete(self) -> bool:
        return not self.failed


@dataclass
class Message:
    """One message we sent, until both its reports are out."""

    message_id: int
    private: bool
    preview: str
    sent_at: float
    #: the relay's word: recipients it has not answered for yet, and its answers so far
    unrouted: set[str]
    waiting: dict[str, int]  # nick -> the counter their copy was sent under; no receipt yet
    forwarded: list[str] = field(default_factory=list)
    not_forwarded: list[str] = field(default_factory=list)
    #: the recipients' word
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class DeliveryTracker:
    """Every message we sent whose reports are not all out yet."""

    def __init__(self, timeout: float = RECEIPT_TIMEOUT) -> None:
        self.timeout = timeout
        #: messages the relay has not answered for yet (no SendReport so far)
        self.awaiting_relay: dict[int, Message] = {}
        #: messages some recipient has not yet accounted for (no DeliveryReport so far)
        self._unconfirmed: dict[int, Message] = {}
        self._by_copy: dict[tuple[str, int], int] = {}  # (nick, counter) -> message id

    @property
    def unconfirmed(self) -> int:
        """Messages some recipient has not yet accounted for."""
        return len(self._unconfirmed)

    @property
    def settled(self) -> bool:
        """The relay has answered for every message, and every recipient has confirmed
        (or is known not to have got it)."""
        return not self.awaiting_relay and not self._unconfirmed

    def sent(
        self, message_id: int, private: bool, counters: dict[str, int], now: float, preview: str = ""
    ) -> None:
        """A message went to the recipients in ``counters``, each copy under its counter."""
        message = Message(message_id, private, preview, now, set(counters), dict(counters))
        self.awaiting_relay[message_id] = self._unconfirmed[message_id] = message
        for nick, counter in counters.items():
            self._by_copy[(nick, counter)] = message_id

    def routed(
        self, message_id: int, forwarded: tuple[str, ...], missing: tuple[str, ...], refused: tuple[str, ...]
    ) -> list[SendReport | DeliveryReport]:
        """The relay's answer (for some or all recipients): it forwarded a copy to
        ``forwarded``; ``missing`` were offline, ``refused`` it would not forward to."""
        reports: list[SendReport | DeliveryReport] = self._answered(message_id, forwarded, missing + refused)
        failures = [(nick, OFFLINE) for nick in missing] + [(nick, REFUSED) for nick in refused]
        return reports + self._fail(message_id, failures)

    def dropped(self, message_id: int, nick: str, reason: str) -> list[SendReport | DeliveryReport]:
        """The copy for ``nick`` was never sent (no session could be started): the relay
        will not answer for it, and it fails for ``reason``."""
        reports: list[SendReport | DeliveryReport] = self._answered(message_id, (), (nick,))
        return reports + self._fail(message_id, [(nick, reason)])

    def _answered(
        self, message_id: int, forwarded: tuple[str, ...], not_forwarded: tuple[str, ...]
    ) -> list[SendReport | DeliveryReport]:
        """What became of some copies at the relay; the ``SendReport`` once every copy is
        accounted for."""
        message = self.awaiting_relay.get(message_id)
        if message is None:
            return []
        for nick in forwarded:
            if nick in message.unrouted:
                message.unrouted.discard(nick)
                message.forwarded.append(nick)
        for nick in not_forwarded:
            if nick in message.unrouted:
                message.unrouted.discard(nick)
                message.not_forwarded.append(nick)
        if message.unrouted:
            return []
        del self.awaiting_relay[message_id]
        return [
            SendReport(message_id, message.private, tuple(message.forwarded), tuple(message.not_forwarded))
        ]

    def acknowledged(self, nick: str, counters: list[int]) -> list[DeliveryReport]:
        """``nick`` confirmed the copies it received under ``counters``."""
        touched = set()
        for counter in counters:
            message_id = self._by_copy.pop((nick, counter), None)
            if message_id is None:
                continue  # unknown or already settled: a receipt cannot confirm twice
            message = self._unconfirmed[message_id]
            message.waiting.pop(nick, None)
            message.delivered.append(nick)
            touched.add(message_id)
        return self._settle(touched)

    def peer_left(self, nick: str) -> list[DeliveryReport]:
        waiting_on = [mid for mid, message in self._unconfirmed.items() if nick in message.waiting]
        return [report for mid in waiting_on for report in self._fail(mid, [(nick, LEFT)])]

    def expire(self, now: float) -> list[DeliveryReport]:
        late = [mid for mid, message in self._unconfirmed.items() if now - message.sent_at >= self.timeout]
        return [
            report
            for mid in late
            for report in self._fail(mid, [(nick, TIMED_OUT) for nick in self._unconfirmed[mid].waiting])
        ]

    def abandon(self, reason: str) -> list[DeliveryReport]:
        """The connection is gone: the relay will answer for nothing more, and every open
        message fails for whoever has not confirmed."""
        self.awaiting_relay.clear()
        return [
            report
            for mid in list(self._unconfirmed)
            for report in self._fail(mid, [(nick, reason) for nick in self._unconfirmed[mid].waiting])
        ]

    def _fail(self, message_id: int, failures: list[tuple[str, str]]) -> list[DeliveryReport]:
        message = self._unconfirmed.get(message_id)
        if message is None:
            return []
        for nick, reason in failures:
            counter = message.waiting.pop(nick, None)
            if counter is None:
                continue
            self._by_copy.pop((nick, counter), None)
            message.failed.append((nick, reason))
        return self._settle({message_id})

    def _settle(self, message_ids: set[int]) -> list[DeliveryReport]:
        reports = []
        for message_id in sorted(message_ids):
            message = self._unconfirmed[message_id]
            if message.waiting:
                continue
            del self._unconfirmed[message_id]
            reports.append(
                DeliveryReport(
                    message_id,
                    message.private,
                    tuple(message.delivered),
                    tuple(message.failed),
                    message.preview,
                )
            )
        return reports

"""End-to-end delivery receipts: which recipient got which message. Pure; time is passed in.

Each recipient acknowledges each message by its counter, inside an encrypted,
authenticated receipt, so the relay can neither forge an acknowledgement nor hide a
missing one. ``DeliveryTracker`` remembers, per message, who still owes a receipt, and
turns receipts, the relay's routing answers, departures and timeouts into exactly one
``DeliveryReport`` per message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How long a recipient has to acknowledge a message before we say it was not confirmed.
RECEIPT_TIMEOUT = 15.0

OFFLINE = "offline"
REFUSED = "refused by the relay (too many messages)"
TIMED_OUT = "no receipt"
LEFT = "left before confirming"


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
class _Message:
    private: bool
    preview: str
    sent_at: float
    waiting: dict[str, int]  # nick -> the counter their copy was sent under
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class DeliveryTracker:
    def __init__(self, timeout: float = RECEIPT_TIMEOUT) -> None:
        self.timeout = timeout
        self._messages: dict[int, _Message] = {}
        self._by_copy: dict[tuple[str, int], int] = {}  # (nick, counter) -> message id

    @property
    def unconfirmed(self) -> int:
        """Messages some recipient has not yet accounted for."""
        return len(self._messages)

    def sent(
        self, message_id: int, private: bool, counters: dict[str, int], now: float, preview: str = ""
    ) -> None:
        self._messages[message_id] = _Message(private, preview, now, dict(counters))
        for nick, counter in counters.items():
            self._by_copy[(nick, counter)] = message_id

    def acknowledged(self, nick: str, counters: list[int]) -> list[DeliveryReport]:
        """``nick`` confirmed the copies it received under ``counters``."""
        touched = set()
        for counter in counters:
            message_id = self._by_copy.pop((nick, counter), None)
            if message_id is None:
                continue  # unknown or already settled: a receipt cannot confirm twice
            message = self._messages[message_id]
            message.waiting.pop(nick, None)
            message.delivered.append(nick)
            touched.add(message_id)
        return self._settle(touched)

    def routed(
        self, message_id: int, missing: tuple[str, ...], refused: tuple[str, ...]
    ) -> list[DeliveryReport]:
        """The relay's answer: ``missing`` were offline, ``refused`` it would not forward."""
        return self._fail(message_id, [(nick, OFFLINE) for nick in missing] + [(n, REFUSED) for n in refused])

    def peer_left(self, nick: str) -> list[DeliveryReport]:
        waiting_on = [mid for mid, message in self._messages.items() if nick in message.waiting]
        return [report for mid in waiting_on for report in self._fail(mid, [(nick, LEFT)])]

    def expire(self, now: float) -> list[DeliveryReport]:
        late = [mid for mid, message in self._messages.items() if now - message.sent_at >= self.timeout]
        return [
            report
            for mid in late
            for report in self._fail(mid, [(nick, TIMED_OUT) for nick in self._messages[mid].waiting])
        ]

    def abandon(self, reason: str) -> list[DeliveryReport]:
        """The connection is gone: every open message fails for whoever has not confirmed."""
        return [
            report
            for mid in list(self._messages)
            for report in self._fail(mid, [(nick, reason) for nick in self._messages[mid].waiting])
        ]

    def _fail(self, message_id: int, failures: list[tuple[str, str]]) -> list[DeliveryReport]:
        message = self._messages.get(message_id)
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
            message = self._messages[message_id]
            if message.waiting:
                continue
            del self._messages[message_id]
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

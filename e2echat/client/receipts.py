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

A copy the relay kept in an away recipient's mailbox (``queued``) leaves the message (one
``MessageQueued`` says so) for the ``PendingDeliveries``, which outlive the connection:
no timeout applies to it, and its receipt, whenever it comes, or the relay's ``expired``
notice makes a ``DeliveryReport`` of its own, for that recipient, under the same id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from e2echat.client.pending import PendingCopy, PendingDeliveries, lifetime
from e2echat.wire.grammar import DEFAULT_MAILBOX_TTL

# How long a recipient has to acknowledge a message before we say it was not confirmed.
RECEIPT_TIMEOUT = 15.0

NOT_KNOWN = "not known to this relay"
MAILBOX_FULL = "mailbox full"
REFUSED = "refused by the relay (too many messages, or they are not keeping up)"
TIMED_OUT = "no receipt"
LEFT = "left before confirming"
# A copy the relay says it keeps, whose number another copy waiting for them already has.
NUMBER_TAKEN = "not followed: another message waiting for them has its number"
# The oldest copy waiting, forgotten beyond pending.MAX_PENDING.
TOO_MANY_WAITING = "no longer tracked: too many messages waiting"
# No receipt nor notice within pending.lifetime of the relay's time to live.
NO_WORD = "no word from the relay within its time to live: it probably expired unread"
# The relay came back with other mailboxes than the one that kept it.
RELAY_RESTARTED = "the relay restarted and lost its mailboxes"
# The counter of a copy not yet numbered: one for someone away, whose session (and so its
# numbering) their prekey bundle decides. See ``DeliveryTracker.numbered``.
UNNUMBERED = -1
# Why the relay dropped a copy from a mailbox unread (its ``expired`` notice's reason).
EXPIRED_REASONS = {
    "expired": "kept unread in their mailbox until it expired",
    "key_changed": "they came back with another key before reading it",
    "evicted": "the relay forgot them before they read it",
}


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
    #: kept in these recipients' mailboxes: each gets a report of its own later
    queued: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class MessageQueued:
    """The relay kept our message's copies for ``nicks`` in their mailboxes (they are
    away): each is reported delivered when its receipt comes, whenever that is, or NOT
    delivered if the relay drops it unread."""

    message_id: int
    private: bool
    nicks: tuple[str, ...]
    preview: str = ""


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
    #: the id its copies kept in mailboxes are reported under (0: its own)
    report_as: int = 0
    forwarded: list[str] = field(default_factory=list)
    not_forwarded: list[str] = field(default_factory=list)
    #: the recipients' word
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)


class DeliveryTracker:
    """Every message we sent whose reports are not all out yet; and, in ``pending``, the
    copies waiting in mailboxes (kept beyond this tracker: a ``Client`` gives each of its
    connections the same)."""

    def __init__(self, timeout: float = RECEIPT_TIMEOUT, pending: PendingDeliveries | None = None) -> None:
        self.timeout = timeout
        self.pending = pending if pending is not None else PendingDeliveries()
        #: messages the relay has not answered for yet (no SendReport so far)
        self.awaiting_relay: dict[int, Message] = {}
        #: messages some recipient has not yet accounted for (no DeliveryReport so far)
        self._unconfirmed: dict[int, Message] = {}
        self._by_copy: dict[tuple[str, int], int] = {}  # (nick, counter) -> message id
        #: how long the relay keeps a message in a mailbox, its address and the id of its
        #: mailboxes (its welcome says; the address, the connection)
        self.mailbox_ttl = DEFAULT_MAILBOX_TTL
        self.relay = ""
        self.relay_id = b""

    @property
    def unconfirmed(self) -> int:
        """Messages some recipient has not yet accounted for."""
        return len(self._unconfirmed)

    def waiting_for(self) -> list[tuple[str, list[str]]]:
        """Each message some recipient has not yet accounted for, oldest first: its
        preview, and who (the relay's answer or their receipt) it still waits for."""
        return [(message.preview, list(message.waiting)) for message in self._unconfirmed.values()]

    @property
    def settled(self) -> bool:
        """The relay has answered for every message, and every recipient has confirmed
        (or is known not to have got it)."""
        return not self.awaiting_relay and not self._unconfirmed

    def sent(
        self,
        message_id: int,
        private: bool,
        counters: dict[str, int],
        now: float,
        preview: str = "",
        report_as: int = 0,
    ) -> None:
        """A message went to the recipients in ``counters``, each copy under its counter.
        ``report_as``: the id its copies kept in mailboxes are reported under, if not its own."""
        message = Message(message_id, private, preview, now, set(counters), dict(counters), report_as)
        self.awaiting_relay[message_id] = self._unconfirmed[message_id] = message
        # (nick, counter) pairs are the keys: a room message's 49 in one C call, unless a
        # copy for someone away waits for its number (see numbered)
        copies: Iterable[tuple[str, int]] = counters.items()
        if UNNUMBERED in counters.values():
            copies = [(nick, counter) for nick, counter in copies if counter != UNNUMBERED]
        self._by_copy.update(dict.fromkeys(copies, message_id))

    def numbered(self, message_id: int, nick: str, counter: int) -> None:
        """The copy of ``message_id`` for ``nick``, sent UNNUMBERED, now carries ``counter``."""
        message = self._unconfirmed.get(message_id)
        if message is not None and message.waiting.get(nick) == UNNUMBERED:
            message.waiting[nick] = counter
            self._by_copy[(nick, counter)] = message_id

    def routed(
        self,
        message_id: int,
        forwarded: tuple[str, ...],
        missing: tuple[str, ...],
        refused: tuple[str, ...],
        queued: tuple[str, ...] = (),
        full: tuple[str, ...] = (),
        *,
        now: float = 0.0,
    ) -> list[SendReport | DeliveryReport | MessageQueued]:
        """The relay's answer (for some or all recipients): it forwarded a copy to
        ``forwarded`` and kept one in the mailbox of ``queued`` (at ``now``, Unix time);
        ``missing`` it does not know, ``refused`` it would not forward to, and the
        mailboxes of ``full`` are full."""
        reports: list[SendReport | DeliveryReport | MessageQueued] = []
        reports += self._answered(message_id, forwarded + queued, missing + refused + full)
        if queued:
            reports += self._queued(message_id, queued, now)
        failures = [(nick, NOT_KNOWN) for nick in missing] + [(nick, REFUSED) for nick in refused]
        failures += [(nick, MAILBOX_FULL) for nick in full]
        return reports + self._fail(message_id, failures)

    def _queued(
        self, message_id: int, nicks: tuple[str, ...], now: float
    ) -> list[MessageQueued | DeliveryReport]:
        """The copies for ``nicks`` wait in their mailboxes: kept in ``pending`` from now on."""
        message = self._unconfirmed.get(message_id)
        if message is None:
            return []
        moved = []
        refused: list[DeliveryReport] = []
        for nick in nicks:
            counter = message.waiting.get(nick)
            if counter is None or counter == UNNUMBERED:
                continue  # not sent (yet): the relay cannot keep what it never had
            del message.waiting[nick]
            self._by_copy.pop((nick, counter), None)
            message.queued.append(nick)
            moved.append(nick)
            expires_at = now + lifetime(self.mailbox_ttl)
            copy = PendingCopy(
                message_id,
                nick,
                counter,
                message.private,
                message.preview,
                now,
                expires_at,
                self.relay,
                self.relay_id,
                message.report_as,
            )
            refused += self._not_followed(copy, self.pending.add(copy))
        if not moved:
            return []
        return [MessageQueued(message_id, message.private, tuple(moved), message.preview), *refused]

    def _not_followed(self, added: PendingCopy, copies: list[PendingCopy]) -> list[DeliveryReport]:
        """The reports of the waiting copies ``pending`` did not keep when ``added`` came."""
        return [_failed(copy, NUMBER_TAKEN if copy is added else TOO_MANY_WAITING) for copy in copies]

    def mailbox_dropped(self, message_id: int, nick: str, reason: str) -> list[DeliveryReport]:
        """The relay says it dropped our copy of ``message_id`` for ``nick`` from their
        mailbox unread, for ``reason`` (a key of EXPIRED_REASONS). Its report, if the copy
        was waiting (else the relay speaks of nothing we know: ignored)."""
        copy = self.pending.drop(message_id, nick)
        if copy is None:
            return []
        why = EXPIRED_REASONS.get(reason, reason)
        return [_failed(copy, why)]

    def welcome(self, relay: str, relay_id: bytes, mailbox_ttl: float) -> list[DeliveryReport]:
        """The relay at ``relay`` welcomed us, with its mailboxes ``relay_id`` kept for
        ``mailbox_ttl``: copies it kept in other mailboxes are lost (reported)."""
        self.relay, self.relay_id, self.mailbox_ttl = relay, relay_id, mailbox_ttl
        return [_failed(copy, RELAY_RESTARTED) for copy in self.pending.lost_with(relay, relay_id)]

    def outlived(self, now: float) -> list[DeliveryReport]:
        """The waiting copies no word of came within their lifetime, at ``now`` (Unix
        time): reported not delivered."""
        return [_failed(copy, NO_WORD) for copy in self.pending.outlived(now)]

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
        late: list[DeliveryReport] = []
        for counter in counters:
            message_id = self._by_copy.pop((nick, counter), None)
            if message_id is None:
                # Waiting in their mailbox, perhaps since an earlier run; else unknown or
                # already settled: a receipt cannot confirm twice.
                copy = self.pending.confirmed(nick, counter)
                if copy is not None:
                    late.append(DeliveryReport(copy.reported_as, copy.private, (nick,), (), copy.preview))
                continue
            message = self._unconfirmed[message_id]
            message.waiting.pop(nick, None)
            message.delivered.append(nick)
            touched.add(message_id)
        return self._settle(touched) + late if late else self._settle(touched)

    def peer_left(self, nick: str, *, away: bool = False) -> list[DeliveryReport]:
        """``nick``'s connection ended: copies forwarded to it and not confirmed fail.
        ``away``: they left (they did not come back under other keys): a copy the relay
        has not answered for yet waits for its answer (it keeps it in their mailbox)."""
        waiting_on = [
            mid
            for mid, message in self._unconfirmed.items()
            if nick in message.waiting and not (away and nick in message.unrouted)
        ]
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
                    tuple(message.queued),
                )
            )
        return reports


def _failed(copy: PendingCopy, reason: str) -> DeliveryReport:
    """The report of a copy that waited in a mailbox and will not be delivered."""
    return DeliveryReport(copy.reported_as, copy.private, (), ((copy.nick, reason),), copy.preview)

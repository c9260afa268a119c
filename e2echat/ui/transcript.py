"""What the history keeps: one ``Entry`` per line worth keeping, how an entry is encoded
inside its seal, and which client events make or change one. Pure: no I/O.

The history is driven by the events the chat shows (``record``): each kind of event that
is kept has one recorder in ``RECORDERS``, so keeping a new kind is one line there. Our
own messages are recorded when they are sent (``sent``), and their delivery state is
changed afterwards, by message id (``StateChange``), as reports come in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from e2echat.client.events import KeyChanged, MailReceived, MessageReceived, Queued
from e2echat.client.receipts import DeliveryReport, MessageQueued
from e2echat.ui.cells import neutralize

#: the one room there is until rooms come (issue 18: "the room" is #lobby)
ROOM = "#lobby"
_FORMAT = 1  # the first item of every encoded entry
# Each encoding is padded with spaces (JSON ignores them) to a multiple of this, so that
# a row's size on disk tells a text's length only to within this many bytes.
_PAD = 64


class State(StrEnum):
    """What became of one of our messages, as far as we know."""

    NONE = ""  # not ours: nothing to report
    SENDING = "sending"  # sent; no report yet (after a restart: none ever came)
    QUEUED = "queued"  # held for the relay, or kept in an absent person's mailbox
    DELIVERED = "delivered"  # every recipient confirmed it
    FAILED = "failed"  # NOT delivered to someone (``detail`` says to whom and why)


class Kind(StrEnum):
    MESSAGE = "message"
    NOTICE = "notice"  # something the chat said about a conversation (a key change)


@dataclass(frozen=True)
class Entry:
    """One line of a conversation: ``#lobby``, or the peer's nick for a private one."""

    conversation: str
    #: True for what came in, False for what we sent (and for notices)
    incoming: bool
    sender: str
    text: str
    #: when it was shown here (Unix time)
    shown_at: float
    #: when its sender sent it, by the sender's clock (inside the encryption); None if unknown
    sent_at: float | None = None
    #: ours: the id its delivery reports come under
    message_id: int | None = None
    state: State = State.NONE
    #: the delivery report in words: "delivered to bob", "NOT delivered to carol (offline)"
    detail: str = ""
    kind: Kind = Kind.MESSAGE

    @property
    def private(self) -> bool:
        return self.conversation != ROOM


@dataclass(frozen=True)
class StateChange:
    """The delivery state of our message ``message_id`` is now ``state``."""

    message_id: int
    state: State
    detail: str = ""

    def apply(self, entry: Entry) -> Entry:
        return replace(entry, state=self.state, detail=self.detail)


Change = Entry | StateChange


def conversation_of(nick: str | None) -> str:
    """The conversation of a message to or from ``nick`` alone; None: the room."""
    return ROOM if nick is None else nick


def sent(sender: str, text: str, recipient: str | None, message_id: int, now: float) -> Entry:
    """What we just sent (to ``recipient`` alone, or the room), not yet reported on."""
    return Entry(conversation_of(recipient), False, sender, text, now, now, message_id, State.SENDING)


def delivery_summary(report: DeliveryReport) -> str:
    """A delivery report in words, without the message: who got it, who did not and why."""
    if not report.failed:
        if report.private or len(report.delivered) <= 3:
            return f"delivered to {', '.join(report.delivered)}"
        return f"delivered to all {len(report.delivered)}"
    failures = ", ".join(f"{nick} ({reason})" for nick, reason in report.failed)
    summary = f"NOT delivered to {failures}"
    if report.delivered:
        summary += f"; delivered to {', '.join(report.delivered)}"
    return summary


def _received(event: MessageReceived, now: float) -> Change:
    conversation = event.sender if event.private else ROOM
    return Entry(conversation, True, event.sender, event.text, now, event.sent_at)


def _reported(event: DeliveryReport, now: float) -> Change | None:
    if not event.delivered and not event.failed:
        return None  # every copy waits in a mailbox: MessageQueued said so
    state = State.DELIVERED if event.complete else State.FAILED
    return StateChange(event.message_id, state, delivery_summary(event))


def _queued(event: MessageQueued, now: float) -> Change:
    return StateChange(event.message_id, State.QUEUED, f"queued for {', '.join(event.nicks)} (offline)")


def _held(event: Queued, now: float) -> Change | None:
    if not event.message_id:  # from a client that does not say which message
        return None
    return StateChange(event.message_id, State.QUEUED, "waiting for the relay")


def _key_changed(event: KeyChanged, now: float) -> Change:
    text = f"{event.nick}'s identity key changed (to {event.new_fingerprint})"
    return Entry(event.nick, False, event.nick, text, now, kind=Kind.NOTICE)


#: event type -> what the history keeps of it. Events not named here are not kept.
RECORDERS: dict[type, Callable[[Any, float], Change | None]] = {
    MessageReceived: _received,
    MailReceived: _received,
    DeliveryReport: _reported,
    MessageQueued: _queued,
    Queued: _held,
    KeyChanged: _key_changed,
}


def record(event: object, now: float) -> Change | None:
    """What the history keeps of ``event``, shown at ``now``: a new entry, a change of an
    own message's state, or nothing."""
    recorder = RECORDERS.get(type(event))
    return None if recorder is None else recorder(event, now)


def matches(entry: Entry, needle: str) -> bool:
    """``/search``: the text holds ``needle``, whatever the case."""
    return needle.casefold() in entry.text.casefold()


# -- inside the seal -------------------------------------------------------------------------


def encode_entry(number: int, entry: Entry) -> bytes:
    """``entry`` as the bytes its seal holds, with its row ``number``: a row moved to
    another place in the file does not open as that place's."""
    items = [
        _FORMAT,
        number,
        entry.conversation,
        entry.incoming,
        entry.sender,
        entry.text,
        entry.shown_at,
        entry.sent_at,
        entry.message_id,
        entry.state.value,
        entry.detail,
        entry.kind.value,
    ]
    data = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return data + b" " * (-len(data) % _PAD)


def decode_entry(number: int, data: bytes) -> Entry:
    """The entry ``encode_entry`` made for row ``number``. Raises ValueError for anything
    else (another row's, another format, or not an entry at all)."""
    try:
        items = json.loads(data.decode("utf-8"))
        (version, inside, conversation, incoming, sender, text, shown_at, sent_at, message_id) = items[:9]
        state, detail, kind = State(items[9]), items[10], Kind(items[11])
    except (UnicodeDecodeError, TypeError, KeyError, IndexError, ValueError):
        raise ValueError("not a history entry") from None
    if version != _FORMAT or inside != number or len(items) != 12:
        raise ValueError("not this row's entry")
    if not (
        isinstance(conversation, str)
        and isinstance(incoming, bool)
        and isinstance(sender, str)
        and isinstance(text, str)
        and isinstance(shown_at, int | float)
        and (sent_at is None or isinstance(sent_at, int | float))
        and (message_id is None or (isinstance(message_id, int) and not isinstance(message_id, bool)))
        and isinstance(detail, str)
    ):
        raise ValueError("not a history entry")
    sent = None if sent_at is None else float(sent_at)
    return Entry(conversation, incoming, sender, text, float(shown_at), sent, message_id, state, detail, kind)


# -- export ------------------------------------------------------------------------------------


def _iso(moment: float | None) -> str | None:
    return None if moment is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(moment))


def export_json(entry: Entry) -> str:
    """``entry`` as one line of JSON, for ``e2echat export --format jsonl``. ASCII only: a
    peer's control and bidi characters arrive as \\u escapes, safe on a terminal too."""
    record = {
        "conversation": entry.conversation,
        "time": _iso(entry.shown_at),
        "sent_at": _iso(entry.sent_at),
        "direction": "in" if entry.incoming else "out",
        "kind": entry.kind.value,
        "sender": entry.sender,
        "text": entry.text,
        "message_id": entry.message_id,
        "state": entry.state.value or None,
        "detail": entry.detail or None,
    }
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    return text.replace("\x7f", "\\u007f")


def export_text(entry: Entry) -> str:
    """``entry`` as text, for ``e2echat export --format txt``: the day and time, the
    conversation, then the line as the chat showed it (a peer's text neutralized)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.shown_at))
    text = neutralize(entry.text, "\n    ")
    if entry.kind is Kind.NOTICE:
        return f"{stamp} {entry.conversation} -- {text}"
    state = f" ({entry.detail or entry.state.value})" if entry.state is not State.NONE else ""
    return f"{stamp} {entry.conversation} <{entry.sender}>{state} {text}"

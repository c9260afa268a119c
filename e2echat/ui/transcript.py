"""What the history keeps: one ``Entry`` per line worth keeping, how an entry is encoded
inside its seal, and which client events make or change one. Pure: no I/O.

The history is driven by the events the chat shows (``record``): each kind of event that
is kept has one recorder in ``RECORDERS``, so keeping a new kind is one line there. Our
own messages are recorded when they are sent (``sent``), and their delivery state is
changed afterwards, by message id (``StateChange``), as reports come in. A room message's
reports come one recipient at a time (a receipt from someone who was away may come days
later): each entry keeps what became of the copy for each recipient (``Outcome``), and its
state and detail sum them all up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from e2echat.client.events import (
    KeyChanged,
    MailFromPastMember,
    MailReceived,
    MessageReceived,
    NotSent,
    Queued,
)
from e2echat.client.fileevents import TransferDone
from e2echat.client.filenames import size_text
from e2echat.client.receipts import DeliveryReport, MessageQueued
from e2echat.ui.actions import readable
from e2echat.ui.cells import neutralize
from e2echat.wire.grammar import DEFAULT_ROOM

#: the detail of a line typed while the relay was away that never went (``NotSent``)
NEVER_SENT = "NOT sent: no connection to the relay"
_FORMAT = 2  # the first item of every encoded entry (1: before ``recipients``; still read)
# One encoder for every entry (json.dumps with options makes a new one each call).
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
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


#: what may become of one recipient's copy
_OUTCOMES = (State.QUEUED, State.DELIVERED, State.FAILED)


@dataclass(frozen=True)
class Outcome:
    """What became of the copy of one of our messages for one recipient, as last reported."""

    nick: str
    state: State  # QUEUED, DELIVERED or FAILED
    reason: str = ""  # FAILED: why


@dataclass(frozen=True)
class Entry:
    """One line of a conversation: a room (``#ops``), or the peer's nick for a private one."""

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
    #: ours: what became of the copy for each recipient reported on so far
    recipients: tuple[Outcome, ...] = ()

    @property
    def private(self) -> bool:
        return not is_room(self.conversation)


@dataclass(frozen=True)
class StateChange:
    """News of our message ``message_id``: what became of the copies for some recipients
    (``outcomes``), merged into what was known; or, with none, its state as a whole (held
    for the relay, never sent)."""

    message_id: int
    state: State
    detail: str = ""
    outcomes: tuple[Outcome, ...] = ()

    def apply(self, entry: Entry) -> Entry:
        if not self.outcomes:
            return replace(entry, state=self.state, detail=self.detail)
        merged = {outcome.nick: outcome for outcome in entry.recipients}
        for outcome in self.outcomes:
            before = merged.get(outcome.nick)
            if outcome.state is State.QUEUED and before is not None and before.state is not State.QUEUED:
                continue  # its receipt overtook the report that it was queued
            merged[outcome.nick] = outcome
        recipients = tuple(sorted(merged.values(), key=lambda outcome: outcome.nick))
        state, detail = summary(recipients, private=entry.private)
        return replace(entry, state=state, detail=detail, recipients=recipients)


Change = Entry | StateChange


def is_room(conversation: str) -> bool:
    """Whether ``conversation`` is a room's (a nick never starts with "#")."""
    return conversation.startswith("#")


def conversation_of(nick: str | None, room: str = DEFAULT_ROOM) -> str:
    """The conversation of a message to or from ``nick`` alone; None: of ``room``."""
    return room if nick is None else nick


def sent(
    sender: str, text: str, recipient: str | None, message_id: int, now: float, room: str = DEFAULT_ROOM
) -> Entry:
    """What we just sent (to ``recipient`` alone, or to ``room``), not yet reported on."""
    return Entry(conversation_of(recipient, room), False, sender, text, now, now, message_id, State.SENDING)


def summary(recipients: tuple[Outcome, ...], *, private: bool) -> tuple[State, str]:
    """The state of a message from what became of each copy, and those in words: who did
    NOT get it and why (each by name), whose copy waits in their mailbox, who got it."""
    failed = [outcome for outcome in recipients if outcome.state is State.FAILED]
    queued = [outcome.nick for outcome in recipients if outcome.state is State.QUEUED]
    delivered = [outcome.nick for outcome in recipients if outcome.state is State.DELIVERED]
    parts = []
    if failed:
        parts.append("NOT delivered to " + ", ".join(f"{o.nick} ({o.reason})" for o in failed))
    if queued:
        parts.append(f"waiting for {_some(queued)} (queued)")
    if delivered and not failed and not queued and not private and len(delivered) > _NAMED:
        parts.append(f"delivered to all {len(delivered)}")
    elif delivered:
        parts.append(f"delivered to {_some(delivered)}")
    state = State.FAILED if failed else State.QUEUED if queued else State.DELIVERED
    return state, "; ".join(parts)


#: a summary names this many recipients at most; more are counted
_NAMED = 3


def _some(nicks: list[str]) -> str:
    return ", ".join(nicks) if len(nicks) <= _NAMED else f"{len(nicks)} people"


def _received(event: MessageReceived, now: float) -> Change:
    conversation = event.sender if event.private else (event.room or DEFAULT_ROOM)
    return Entry(conversation, True, event.sender, event.text, now, event.sent_at)


def _reported(event: DeliveryReport, now: float) -> Change | None:
    outcomes = (
        *(Outcome(nick, State.DELIVERED) for nick in event.delivered),
        *(Outcome(nick, State.FAILED, reason) for nick, reason in event.failed),
        *(Outcome(nick, State.QUEUED) for nick in event.queued),
    )
    if not outcomes:
        return None
    return _reports(event.message_id, outcomes, event.private)


def _queued(event: MessageQueued, now: float) -> Change:
    return _reports(
        event.message_id, tuple(Outcome(nick, State.QUEUED) for nick in event.nicks), event.private
    )


def _reports(message_id: int, outcomes: tuple[Outcome, ...], private: bool) -> StateChange:
    # Its state and detail say what this report says alone; ``apply`` merges it with the rest.
    return StateChange(message_id, *summary(outcomes, private=private), outcomes)


def _held(event: Queued, now: float) -> Change | None:
    if not event.message_id:  # from a client that does not say which message
        return None
    return StateChange(event.message_id, State.QUEUED, "waiting for the relay")


def _not_sent(event: NotSent, now: float) -> Change | None:
    if not event.message_id:  # from a client that does not say which message
        return None
    return StateChange(event.message_id, State.FAILED, NEVER_SENT)


def _key_changed(event: KeyChanged, now: float) -> Change:
    text = f"{event.nick}'s identity key changed (to {event.new_fingerprint})"
    return Entry(event.nick, False, event.nick, text, now, kind=Kind.NOTICE)


def _transfer_done(event: TransferDone, now: float) -> Change:
    """How a file transfer ended, in the conversation with its peer (or the room it was
    offered in), kept as a notice: the chat's own words about the file, a peer's only
    in the name it landed under (neutralised where it is shown, as every notice is)."""
    what = f"{event.name} ({size_text(event.size)})"
    incoming = event.direction == "in"
    if event.ok and incoming:
        text = f"you received {what} from {event.peer} -> {event.path}"
    elif event.ok:
        text = f"you sent {what} to {event.peer}"
    else:
        arrow = f"from {event.peer}" if incoming else f"to {event.peer}"
        state = event.state.upper() if event.state == "failed" else event.state
        detail = f": {event.detail}" if event.detail and event.detail != event.state else ""
        text = f"file {what} {arrow}: {state}{detail}"
    conversation = event.room or event.peer
    return Entry(conversation, incoming, event.peer, text, now, kind=Kind.NOTICE)


#: event type -> what the history keeps of it. Events not named here are not kept.
RECORDERS: dict[type, Callable[[Any, float], Change | None]] = {
    MessageReceived: _received,
    MailReceived: _received,
    MailFromPastMember: _received,
    DeliveryReport: _reported,
    MessageQueued: _queued,
    Queued: _held,
    NotSent: _not_sent,
    KeyChanged: _key_changed,
    TransferDone: _transfer_done,
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
        [[outcome.nick, outcome.state.value, outcome.reason] for outcome in entry.recipients],
    ]
    data = _encode_json(items).encode("utf-8")
    return data + b" " * (-len(data) % _PAD)


def decode_entry(number: int, data: bytes) -> Entry:
    """The entry ``encode_entry`` made for row ``number``. Raises ValueError for anything
    else (another row's, another format, or not an entry at all)."""
    try:
        items = json.loads(data.decode("utf-8"))
        (version, inside, conversation, incoming, sender, text, shown_at, sent_at, message_id) = items[:9]
        state, detail, kind = State(items[9]), items[10], Kind(items[11])
        # Format 1 had no recipients: written before messages were reported per recipient.
        recipients = tuple(_outcome(item) for item in items[12]) if version == _FORMAT else ()
    except (UnicodeDecodeError, TypeError, KeyError, IndexError, ValueError):
        raise ValueError("not a history entry") from None
    if (version, len(items)) not in ((_FORMAT, 13), (1, 12)) or inside != number:
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
    return Entry(
        conversation,
        incoming,
        sender,
        text,
        float(shown_at),
        sent,
        message_id,
        state,
        detail,
        kind,
        recipients,
    )


def _outcome(item: object) -> Outcome:
    """One recipient's outcome as ``encode_entry`` writes it. Raises ValueError."""
    if not isinstance(item, list) or len(item) != 3:
        raise ValueError("not an outcome")
    nick, state, reason = item
    if not (isinstance(nick, str) and isinstance(reason, str) and State(state) in _OUTCOMES):
        raise ValueError("not an outcome")
    return Outcome(nick, State(state), reason)


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
        "recipients": [
            {"nick": outcome.nick, "state": outcome.state.value, "reason": outcome.reason or None}
            for outcome in entry.recipients
        ]
        or None,
    }
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    return text.replace("\x7f", "\\u007f")


def export_text(entry: Entry) -> str:
    """``entry`` as text, for ``e2echat export --format txt``: the day and time (of a line
    received, when its sender sent it, if they said: as /history shows it; a mail may have
    waited days), the conversation, then the line as the chat showed it (a peer's text
    neutralized)."""
    when = entry.sent_at if entry.incoming and entry.sent_at is not None else entry.shown_at
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    text = neutralize(readable(entry.text) if entry.kind is not Kind.NOTICE else entry.text, "\n    ")
    if entry.kind is Kind.NOTICE:
        return f"{stamp} {entry.conversation} -- {text}"
    state = f" ({entry.detail or entry.state.value})" if entry.state is not State.NONE else ""
    return f"{stamp} {entry.conversation} <{entry.sender}>{state} {text}"

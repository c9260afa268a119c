"""Events -> what a person reads: the one place that decides how each kind of event
looks and what it says. Pure: no I/O, no prompt_toolkit.

The look of a line comes from the type of what is shown, never from its text. The REPL
paints each line in its style; line mode prints the text; ``--json`` writes records.

Everything a peer controls (message text; nicks are already restricted by the protocol)
goes through ``neutralize`` so that nobody can move the cursor, clear the screen or
re-order the text of someone else's terminal.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Literal

from e2echat.client.events import (
    Away,
    ClientEvent,
    ConnectionLost,
    Disconnected,
    KeyChanged,
    KeyPinned,
    MailboxRead,
    MailFromPastMember,
    MailReceived,
    MessageQueued,
    MessageReceived,
    MessagesMissing,
    NotSent,
    PeerJoined,
    PeerLeft,
    Queued,
    Reconnecting,
    Registered,
    RegistrationFailed,
    RelayClosing,
    RelayError,
    RelayKeyRefused,
    RoomChanged,
    RoomEntered,
    RoomListed,
    RoomParted,
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.client.fileevents import FileOffered, TransferChanged, TransferDone, TransferProgress
from e2echat.client.receipts import DeliveryReport
from e2echat.client.status import CLOSE_QUOTE, OPEN_QUOTE
from e2echat.client.trust import Trust
from e2echat.ui import transfers
from e2echat.ui.actions import action_of, readable
from e2echat.ui.arrivals import Arrival, arrival_text
from e2echat.ui.cells import CONTINUATION, neutralize
from e2echat.ui.nicks import natural_key, natural_sorted
from e2echat.ui.transcript import Entry, Kind, State


def clock(now: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now))


#: How a line looks: a class in the REPL's style sheet. It is chosen from the type of
#: what is shown, never from its text: text can be anything a peer typed.
LineStyle = Literal["message", "private", "mention", "own", "notice", "warning"]
#: a line about several first contacts names this many of them
FIRST_CONTACTS_NAMED = 5
#: One line on the screen: how it looks, and what it says.
Line = tuple[LineStyle, str]


class Headed(str):
    """The text of a message's first line, which also knows whose nick its header shows
    and where (``nick_at``: the offset in the text): the REPL draws that nick in its own
    colour. It is text to every other reader. Where the nick is comes from the event, as
    the header was built, never from reading the text (which a peer wrote). So does the
    room a room message's header names (``room_at``; -1 if none): the REPL draws the
    current room's tag less loudly."""

    nick: str
    nick_at: int
    room: str
    room_at: int

    def __new__(cls, text: str, nick: str, nick_at: int, room: str = "", room_at: int = -1) -> Headed:
        headed = super().__new__(cls, text)
        headed.nick = nick
        headed.nick_at = nick_at
        headed.room = room
        headed.room_at = room_at
        return headed


@dataclass(frozen=True)
class Notice:
    """Something the chat itself tells the user."""

    text: str


@dataclass(frozen=True)
class Problem:
    """Something the chat itself warns the user about."""

    text: str


@dataclass(frozen=True)
class OwnMessage:
    """What we sent, echoed in our own timeline."""

    nick: str
    text: str
    recipient: str | None = None  # None: ``room``
    room: str = ""


@dataclass(frozen=True)
class HelpText:
    """The commands' help: our own text, shown as it is."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Recalled:
    """A line of the history shown again: at start-up, by /history or /search."""

    entry: Entry


@dataclass(frozen=True)
class FirstContacts:
    """Several keys pinned at once, on first contact: shown as one line, not one each."""

    nicks: tuple[str, ...]


@dataclass(frozen=True)
class Mention:
    """A line that mentioned us: when it was shown, where (a room, or "private"), who."""

    shown_at: float
    where: str
    sender: str
    text: str


@dataclass(frozen=True)
class RoomChanges:
    """What changed the safety numbers of our rooms in one turn of the event loop: one
    line per room, not one per join (a room's members come and go in bursts)."""

    #: (room, what changed it), in the order they happened
    changes: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MentionList:
    """What /mentions shows: the recent mentions, oldest first."""

    mentions: tuple[Mention, ...]


#: everything the chat shows: what the client says, and what the chat says itself
Shown = (
    ClientEvent
    | Notice
    | Problem
    | OwnMessage
    | HelpText
    | Recalled
    | MentionList
    | FirstContacts
    | RoomChanges
    | Arrival
)


def render(
    event: Shown,
    now: float | None = None,
    *,
    multiline: bool = False,
    relay: str = "",
    mention: bool = False,
    timestamps: bool = True,
) -> list[Line]:
    """The lines that show ``event`` (none if it needs none), each with its look, at
    ``now`` (Unix time; the clock by default). ``multiline`` shows line breaks in messages
    as line breaks; ``relay`` is the relay's address, for the lines that name it;
    ``mention``: a message received mentions us (highlighted, and marked so in its header);
    ``timestamps``: each line starts with the time (HH:MM:SS). A line of history keeps
    its time: when it was shown is what it is about.
    A message's first line is ``Headed``: it knows where its sender's nick is."""
    now = time.time() if now is None else now
    if isinstance(event, MentionList):
        heading, *mentions = _mention_list(event, now)
        return [heading if timestamps else _unstamped(heading, clock(now)), *mentions]
    shown = _describe(event, now, multiline, relay, mention)
    if shown is None:
        return []
    style, text = shown
    lines: list[Line] = [(style, line) for line in text.split("\n")]
    if isinstance(text, Headed) and style != "warning":  # a warning stays one colour, all of it
        lines[0] = (style, Headed(lines[0][1], text.nick, text.nick_at, text.room, text.room_at))
    if not timestamps and not isinstance(event, Recalled | HelpText):
        lines = [_unstamped(line, clock(now)) for line in lines]
    return lines


def _unstamped(line: Line, stamp: str) -> Line:
    """``line`` without the time ``_describe`` starts each of its lines with (the rows
    that continue a message start with its indent: they keep it)."""
    style, text = line
    if not text.startswith(f"{stamp} "):
        return line
    cut = len(stamp) + 1
    if isinstance(text, Headed):
        room_at = text.room_at - cut if text.room_at >= 0 else -1
        return style, Headed(text[cut:], text.nick, text.nick_at - cut, text.room, room_at)
    return style, text[cut:]


def _headed(before: str, nick: str, after: str, room: str = "", room_at: int = -1) -> Headed:
    """A message's text: ``before`` its sender's ``nick``, then the rest; ``room`` is the
    room its header names at ``room_at``, if any."""
    return Headed(f"{before}{nick}{after}", nick, len(before), room, room_at)


def _mention_list(event: MentionList, now: float) -> list[Line]:
    if not event.mentions:
        return [_notice(clock(now), "nobody has mentioned you in this session")]
    count = len(event.mentions)
    heading = "1 line mentioned you:" if count == 1 else f"the last {count} lines that mentioned you:"
    lines: list[Line] = [_notice(clock(now), heading)]
    for mention in event.mentions:
        mark, text = _acted(f"{clock(mention.shown_at)} {mention.where}", mention.text, "\\n")
        lines.append(("mention", _headed(f"{mark} <", mention.sender, f"> {text}")))
    return lines


def _acted(mark: str, text: str, newline: str) -> tuple[str, str]:
    """A message's header marks and its text as shown: an action (/me) is marked ``*``
    in the header, before the sender's name, and shown without its markers."""
    action = action_of(text)
    if action is None:
        return mark, neutralize(text, newline)
    return f"{mark} *", neutralize(action, newline)


def quote_preview(preview: str) -> str:
    """A message's preview, quoted in a line about it (an action as ``* waves``)."""
    return f'"{neutralize(readable(preview))}"'


def _notice(stamp: str, text: str) -> tuple[LineStyle, str]:
    return "notice", f"{stamp} -- {neutralize(text)}"


def _problem(stamp: str, text: str) -> tuple[LineStyle, str]:
    return "warning", f"{stamp} !! {neutralize(text)}"


# A message older than this by our clock when shown says how old it is: longer than any
# honest delivery takes, and beyond the drift of clocks kept by NTP. (The sender's clock
# says when it was sent: one that is slow by more than this makes its messages look old.)
OLD_MESSAGE = 60.0


def age_text(seconds: float) -> str:
    """How long ago, in words: "75 s", "5 min", "3 h", "2 days"."""
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 120 * 60:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def sent_text(sent_at: float, now: float) -> str:
    """When a message kept for us was sent, by our calendar: "today 14:02", "yesterday
    14:02", or "2026-12-05 14:02" (local time)."""
    sent, today = time.localtime(sent_at), time.localtime(now)
    minute = time.strftime("%H:%M", sent)
    if sent[:3] == today[:3]:
        return f"today {minute}"
    yesterday = time.localtime(now - 86400)
    if sent[:3] == yesterday[:3]:
        return f"yesterday {minute}"
    return time.strftime("%Y-%m-%d %H:%M", sent)


def _describe(
    event: Shown, now: float, multiline: bool, relay: str, mention: bool
) -> tuple[LineStyle, str] | None:
    """``event``'s look, and its text (several lines joined by newlines)."""
    newline = CONTINUATION if multiline else "\\n"
    stamp = clock(now)
    if isinstance(event, MessageReceived):
        # Its room first, as the sender named it inside the encryption (and checked).
        mark = " [private]" if event.private else f" {event.room}" if event.room else ""
        mark += " [late]" if event.late else ""
        if isinstance(event, MailReceived):
            # Kept while we were away: when it was sent (the sender's word, inside the
            # encryption), in the header, before the sender's name.
            mark += f" [{sent_text(event.sent_at, now)}]" if event.sent_at is not None else " [while away]"
            if isinstance(event, MailFromPastMember):
                mark += f" (has since left {event.room})"
        elif event.sent_at is not None and now - event.sent_at >= OLD_MESSAGE:
            # In the header, before the sender's name: text a peer typed comes after it.
            mark += f" (sent {age_text(now - event.sent_at)} ago)"
        mark += " [mention]" if mention else ""
        mark, text = _acted(mark, event.text, newline)
        room_at = len(stamp) + 1 if event.room and not event.private else -1
        trust = TRUST_MARKS[event.trust]
        line = _headed(f"{stamp}{mark} <", event.sender, f" {trust}> {text}", event.room, room_at)
        if event.trust is Trust.CHANGED:  # from a key we have not accepted: a warning
            return "warning", line
        if mention:
            return "mention", line
        return ("private" if event.private else "message"), line
    if isinstance(event, OwnMessage):
        to = f" [private to {event.recipient}]" if event.recipient else f" {event.room}" if event.room else ""
        mark, text = _acted(to, event.text, newline)
        room_at = len(stamp) + 1 if event.room and not event.recipient else -1
        return "own", _headed(f"{stamp}{mark} <", event.nick, f"> {text}", event.room, room_at)
    if isinstance(event, Recalled):
        return _recalled(event.entry, now, newline)
    if isinstance(event, Notice):
        return _notice(stamp, event.text)
    if isinstance(event, Problem):
        return _problem(stamp, event.text)
    if isinstance(event, HelpText):
        return "message", "\n".join(event.lines)
    if isinstance(event, KeyPinned):
        return "notice", (
            f"{stamp} -- first contact with {event.nick}: their key is pinned from now on "
            f"(unverified; /verify {event.nick} to check it)"
        )
    if isinstance(event, FirstContacts):
        named = natural_sorted(event.nicks)
        who = ", ".join(named[:FIRST_CONTACTS_NAMED])
        if len(named) > FIRST_CONTACTS_NAMED:
            who += f" and {len(named) - FIRST_CONTACTS_NAMED} more"
        return "notice", (
            f"{stamp} -- first contact with {len(named)} people ({who}): their keys are pinned from now "
            "on (unverified; /who lists them, /verify NICK checks one)"
        )
    if isinstance(event, KeyChanged):
        nick = event.nick
        return "warning", "\n".join(
            f"{stamp} !! {line}"
            for line in (
                f"WARNING: {nick}'s identity key has CHANGED.",
                f"  pinned key: {event.pinned_fingerprint}",
                f"  key now:    {event.new_fingerprint}",
                f"This happens when {nick} reinstalled or lost their key, but it is also exactly what "
                f"someone impersonating {nick} (the relay, for example) would look like.",
                f"Nothing is sent to {nick} until you accept the new key. Compare safety numbers with "
                f"{nick} in person or on a call: /verify {nick} shows yours, and /verify {nick} NUMBER "
                f"accepts and verifies the key if {nick}'s number matches. /trust {nick} accepts this "
                "key, the one shown above, without comparing (it stays unverified); if the relay "
                "announces yet another, it is not accepted.",
            )
        )
    if isinstance(event, PeerJoined):
        return "notice", f"{stamp} -- {event.nick} came online"
    if isinstance(event, PeerLeft):
        return "notice", f"{stamp} -- {event.nick} went offline"
    if isinstance(event, Away):
        who = "you are" if event.ours else f"{event.nick} is"
        # Quoted (a peer's text): a mark at its start attaches to the quote, not our text.
        return _notice(stamp, f"{who} away: {quoted_away(event.message)}" if event.message else f"{who} back")
    if isinstance(event, RoomEntered):
        return "notice", f"{stamp} -- {event.nick} joined {event.room}"
    if isinstance(event, RoomParted):
        return "notice", f"{stamp} -- {event.nick} left {event.room}"
    if isinstance(event, Arrival):
        return "notice", f"{stamp} -- {arrival_text(event)}"
    if isinstance(event, RoomListed):
        return "notice", f"{stamp} -- {event.room}: {members_text(event.online, event.away)}"
    if isinstance(event, RoomChanged):
        return _room_changes(stamp, ((event.room, event.why),))
    if isinstance(event, RoomChanges):
        return _room_changes(stamp, event.changes)
    if isinstance(event, Registered):
        return _notice(
            stamp,
            f"connected to the relay at {relay} as {event.nick}; {online_text(event.peers)}; "
            "/help lists the commands",
        )
    if isinstance(event, MessagesMissing):
        if event.count == 1:
            return "warning", f"{stamp} !! 1 message from {event.sender} is missing"
        return "warning", f"{stamp} !! {event.count} messages from {event.sender} are missing"
    if isinstance(event, MessageQueued):
        return (
            "notice",
            f"{stamp} -- {quote_preview(event.preview)} queued for "
            f"{', '.join(natural_sorted(event.nicks))} (offline)",
        )
    if isinstance(event, DeliveryReport):
        if not event.delivered and not event.failed:
            return None  # every copy waits in a mailbox: MessageQueued said so
        return ("warning" if event.failed else "notice"), delivery_line(event, stamp)
    if isinstance(event, SplitView) and event.room:
        return "warning", (
            f"{stamp} !! warning: {event.sender} sees other members of {event.room} than you do: the relay "
            f"may have added a reader for one of you, or hidden one. Compare the room's safety number "
            f"(/verify {event.room}) before you say anything secret there."
        )
    if isinstance(event, SplitView):
        return "warning", (
            f"{stamp} !! warning: {event.sender} sees a different directory than you do: the relay may "
            "be showing people different keys. Compare safety numbers (/verify) before you trust a key."
        )
    if isinstance(event, SecurityWarning):
        return "warning", f"{stamp} !! warning: {neutralize(event.text)}"
    if isinstance(event, RelayError):
        return "warning", f"{stamp} !! relay error: {neutralize(event.text)}"
    if isinstance(event, RelayClosing):
        return "notice", f"{stamp} -- the relay is shutting down: {neutralize(event.reason)}"
    if isinstance(event, RelayKeyRefused):
        expected = "the one given with --trust-relay-key" if event.given else "the one pinned for it"
        return "warning", (
            f"{stamp} !! the relay's key ({event.offered}) is not {expected} ({event.expected}): "
            "it may be an impostor; nothing was sent to it"
        )
    if isinstance(event, RegistrationFailed):
        return "warning", f"{stamp} !! the relay refused us: {neutralize(event.text)}"
    if isinstance(event, ConnectionLost):
        return _problem(stamp, f"lost the relay at {relay}: {event.detail}")
    if isinstance(event, Reconnecting):
        return _notice(stamp, f"reconnecting in {event.delay:g}s" + (f" ({event.why})" if event.why else ""))
    if isinstance(event, Queued):
        quoted = quote_preview(event.preview)
        return _notice(stamp, f"not connected: {quoted} will be sent when the relay is back")
    if isinstance(event, NotSent):
        quoted = ", ".join(quote_preview(preview) for preview in event.previews)
        return _problem(stamp, f"NOT sent (no connection to the relay): {quoted}")
    if isinstance(event, FileOffered | TransferProgress | TransferChanged | TransferDone):
        mark = TRUST_MARKS[event.trust] if isinstance(event, FileOffered) else ""
        return transfers.describe(event, stamp, mark)
    # SendReport is the relay's word; the DeliveryReport that follows is the one to trust.
    # Disconnected ends the chat; the front end says why. MailboxRead is the chat's to act on,
    # RoomRefused the chat's to say (ui/places.py).
    return None


#: how a line of history shows what became of one of our messages (else: its detail)
_STATE_MARKS = {State.SENDING: " [unconfirmed]", State.DELIVERED: ""}


def _recalled(entry: Entry, now: float, newline: str) -> tuple[LineStyle, str]:
    """A line of history: its time (with the day, if not today), then as it was shown. A
    line received shows when its sender sent it, if they said, as mail does (it may have
    waited in a mailbox for days before it was shown)."""
    same_day = time.localtime(entry.shown_at)[:3] == time.localtime(now)[:3]
    stamp = (
        clock(entry.shown_at) if same_day else time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.shown_at))
    )
    if entry.kind is Kind.NOTICE:
        return "notice", f"{stamp} -- {neutralize(entry.text, newline)}"
    if entry.incoming:
        if entry.sent_at is not None:
            stamp = f"[{sent_text(entry.sent_at, now)}]"
        mark, text = _acted(" [private]" if entry.private else f" {entry.conversation}", entry.text, newline)
        style: LineStyle = "private" if entry.private else "message"
        return style, _headed(f"{stamp}{mark} <", entry.sender, f"> {text}")
    mark = f" [private to {entry.conversation}]" if entry.private else f" {entry.conversation}"
    mark += _STATE_MARKS.get(entry.state, f" [{neutralize(entry.detail or entry.state.value)}]")
    mark, text = _acted(mark, entry.text, newline)
    style = "warning" if entry.state is State.FAILED else "own"
    return style, _headed(f"{stamp}{mark} <", entry.sender, f"> {text}")


def delivery_line(report: DeliveryReport, stamp: str) -> str:
    quoted = quote_preview(report.preview)
    delivered = ", ".join(natural_sorted(report.delivered))
    if not report.failed:
        if report.private or len(report.delivered) <= 3:
            return f"{stamp} -- {quoted} delivered to {delivered}"
        return f"{stamp} -- {quoted} delivered to all {len(report.delivered)}"
    failed = sorted(report.failed, key=lambda failure: natural_key(failure[0]))
    failures = ", ".join(f"{nick} ({reason})" for nick, reason in failed)
    line = f"{stamp} !! {quoted} NOT delivered to {failures}"
    if report.delivered:
        line += f"; delivered to {delivered}"
    return line


#: how each message shows its sender's trust state
TRUST_MARKS = {Trust.VERIFIED: "✓", Trust.UNVERIFIED: "?", Trust.CHANGED: "KEY CHANGED"}


def who_entry(nick: str, trust: Trust, away: str = "", since: float | None = None) -> str:
    """``nick`` as /who lists them, with their ``away`` message if they are away (a
    peer's text: neutralised, as a message is, and quoted), and ``since`` when (Unix
    time, shown as local time): "bob (verified, away since 12:58: “at lunch”)"."""
    if not away:
        return f"{nick} ({trust.value})"
    when = "" if since is None else f" since {time.strftime('%H:%M', time.localtime(since))}"
    return f"{nick} ({trust.value}, away{when}: {quoted_away(away)})"


def quoted_away(message: str) -> str:
    """An away message as shown: neutralised, between quotes it cannot hold
    (client/status.py), so that "lunch), mallory (verified" reads as one quote, not as
    another entry with a trust mark."""
    return f"{OPEN_QUOTE}{neutralize(message)}{CLOSE_QUOTE}"


def _room_changes(stamp: str, changes: tuple[tuple[str, str], ...]) -> tuple[LineStyle, str]:
    """One line per room whose safety number changed, saying what changed it."""
    by_room: dict[str, list[str]] = {}
    for room, why in changes:
        whys = by_room.setdefault(room, [])
        if why not in whys:
            whys.append(why)
    return "notice", "\n".join(
        f"{stamp} -- the safety number of {room} changed: {', '.join(whys)} (/verify {room} shows it)"
        for room, whys in by_room.items()
    )


def members_text(online: tuple[str, ...] | list[str], away: tuple[str, ...] | list[str]) -> str:
    """A room's members besides us, as a line says them: "you, alice, bob; offline: carol".
    (Not "away": that is what /away says of someone online.)"""
    if not online and not away:
        return "only you"
    said = ", ".join(["you", *natural_sorted(online)])
    return said + (f"; offline: {', '.join(natural_sorted(away))}" if away else "")


def online_text(peers: tuple[str, ...] | list[str]) -> str:
    if not peers:
        return "nobody else is online"
    return f"online: {', '.join(natural_sorted(peers))}"


def event_record(event: object) -> dict[str, object]:
    """``event`` as a JSON-ready object for ``--json``: its fields, plus ``type`` (the
    event's name in snake case) and ``time``."""
    name = type(event).__name__
    kind = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    record: dict[str, object] = {"type": kind, "time": _iso_time()}
    if isinstance(event, MessageReceived):  # (a named tuple, not a dataclass)
        fields: dict[str, object] = event._asdict()
    elif dataclasses.is_dataclass(event) and not isinstance(event, type):
        fields = {field.name: getattr(event, field.name) for field in dataclasses.fields(event)}
    else:
        fields = {}
    for name, value in fields.items():
        record[name] = value.value if isinstance(value, Trust) else value
    return record


def json_lines(event: Shown, *, mention: bool = False) -> list[str]:
    """``event`` for ``--json``: one JSON object a line, or nothing. A message received
    says whether it ``mention``s us."""
    if isinstance(event, Disconnected | SendReport | OwnMessage | MailboxRead):
        return []  # the chat's end, the relay's word, what we typed ourselves, bookkeeping
    if isinstance(event, HelpText):
        return list(event.lines)  # for a person reading, as it always was
    if isinstance(event, MentionList):
        return [_json_text({"type": "mention", **dataclasses.asdict(mention)}) for mention in event.mentions]
    record: dict[str, object]
    if isinstance(event, Recalled):
        record = {"type": "recalled", **dataclasses.asdict(event.entry)}
    elif isinstance(event, Notice | Problem):
        # "time" last, where scripts reading these lines have always found it.
        record = {"type": type(event).__name__.lower(), "text": event.text, "time": _iso_time()}
    else:
        record = event_record(event)
        if isinstance(event, MessageReceived):
            record["mention"] = mention
    return [_json_text(record)]


def _json_text(record: dict[str, object]) -> str:
    # ASCII only: every control, C1 and bidi character a peer sent arrives as a \u
    # escape, so this output is safe on a terminal too (DEL is escaped by hand).
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    return text.replace("\x7f", "\\u007f")


def _iso_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

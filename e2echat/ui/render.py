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
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Literal

from e2echat.client.events import (
    ClientEvent,
    ConnectionLost,
    Disconnected,
    KeyChanged,
    KeyPinned,
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
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.client.receipts import DeliveryReport
from e2echat.client.trust import Trust

_ZERO_WIDTH_JOINER = "\u200d"  # joins emoji into one picture (families, flags)

#: Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt) outside the
#: categories ``terminal_cells`` refuses anyway (Cf, Cn): invisible fillers that terminals
#: draw 0, 1 or 2 cells wide. Variation selectors are handled on their own.
_IGNORABLE = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x115F),  # Hangul choseong filler
    (0x1160, 0x11FF),  # the jungseong filler, and the conjoining vowels and finals after it
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xD7B0, 0xD7FF),  # more conjoining vowels and finals
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
)
_VARIATION_SELECTORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
#: What Unicode says may be wide (W, F) or is wide in East Asian fonts (A: ambiguous).
_WIDE = frozenset("WFA")
#: The widest a terminal draws one code point that it draws at all.
MAX_CELLS = 2


def _within(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= code <= high for low, high in ranges)


def terminal_cells(char: str) -> int | None:
    """The most cells any terminal may give ``char``, or None if it must not be drawn as
    itself. This is the one rule for what reaches a terminal as it is; ``neutralize``
    escapes the rest and the REPL wraps with these widths, so no width the REPL counts is
    ever less than what a terminal draws. (Counting too many wraps a row early: harmless.
    Counting too few lets the terminal wrap by itself, and a peer's text starts a row at
    the left edge, where it passes for a line of its own: issue 16.)

    * Printable ASCII: 1.
    * None for what has no certain width, or none at all: controls (Cc), format characters
      (Cf: bidi controls, zero-width spaces, soft hyphen; but ZWJ, see below), surrogates
      (Cs), private use (Co: the font decides), unassigned code points (Cn: a terminal with
      newer tables may draw them wide), line and paragraph separators (Zl, Zp), and the
      default-ignorable fillers (U+115F, U+3164, U+FFA0, ...) and conjoining Hangul jamo
      that terminals draw 0, 1 or 2 wide (prompt_toolkit counts U+3164 0, tmux draws 2).
    * 2 for characters Unicode calls wide or fullwidth, and for East Asian Ambiguous ones
      (terminals in CJK locales draw them wide).
    * 2 for combining marks (Mn, Mc, Me) and variation selectors: prompt_toolkit counts
      them 0, most terminals 0 or 1, some draw spacing and wide marks 2 (U+302E, U+A9C0);
      and a terminal whose tables predate a mark draws it on a cell of its own.
    * 2 for other symbols (So): emoji, which terminals draw 2 wide whatever their East
      Asian Width (regional indicators, text-style emoji with U+FE0F), and pictographs
      that tmux draws 2 wide (U+4DC0 hexagrams).
    * 2 for everything beyond the Basic Multilingual Plane: emoji, CJK extensions and
      rarer scripts, where width tables differ most between Unicode versions (the wcwidth
      table prompt_toolkit uses makes U+1D360 wide; Unicode 14 does not).
    * 1 for the zero-width joiner: 0 everywhere it joins, but counting it costs little.
    * 1 for everything else (letters, digits, punctuation of narrow scripts, spaces).

    Sequences never take more than the sum of their parts: a terminal that joins emoji
    or marks into one picture draws fewer cells than counted, never more.
    """
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return 1
    category = unicodedata.category(char)
    if char == _ZERO_WIDTH_JOINER:
        return 1
    if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or _within(code, _IGNORABLE):
        return None
    wide = unicodedata.east_asian_width(char) in _WIDE
    if wide or category[0] == "M" or category == "So" or code > 0xFFFF:
        return MAX_CELLS
    return 1


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def neutralize(text: str, newline: str = "\\n") -> str:
    """``text`` from a peer or the relay, made safe to put on a terminal: every character
    ``terminal_cells`` refuses (controls such as ESC, CR and BEL, bidi overrides,
    zero-width and filler characters, private use, unassigned) becomes a visible escape
    such as ``\\x1b`` or ``\\u3164``, and so does a combining mark, variation selector or
    zero-width joiner with nothing of the sender's own before it to attach to (it would
    attach to our header, or draw on its own at an uncertain width). A variation selector
    is kept only right after the character whose look it selects. A tab becomes four
    spaces; a newline becomes ``newline``: a visible ``\\n`` on one-line output, or a real
    line break and an indent where a message may span lines."""
    out = []
    attached = False  # the last character was drawn as itself, and a mark may follow it
    selectable = False  # ... and it was a base character, which a variation selector may follow
    for char in text:
        if char == "\n":
            out.append(newline)
            attached = selectable = False
            continue
        if char == "\t":
            out.append("    ")
            attached = selectable = False
            continue
        code = ord(char)
        category = unicodedata.category(char)
        if terminal_cells(char) is None:
            keep, attached, selectable = False, False, False
        elif _within(code, _VARIATION_SELECTORS):
            keep, attached, selectable = selectable, selectable, False
        elif category[0] == "M":
            keep, selectable = attached, False
        elif char == _ZERO_WIDTH_JOINER:
            keep, attached, selectable = attached, False, False
        else:
            keep = True
            attached = selectable = category[0] in "LNPS"
        out.append(char if keep else _escape(char))
    return "".join(out)


# Where the text of a multi-line or wrapped message continues: under the text, not
# under the time.
INDENT = 11
CONTINUATION = "\n" + " " * INDENT


def wrap_cells(line: str, width: int, indent: int = INDENT) -> list[str]:
    """Wrap ``line`` into rows of at most ``width`` terminal cells, at spaces where
    possible, continuing under the text: so no row of a peer's message can start at the
    left edge, where it could pass for a line of its own. ``line`` is neutralized first
    (a no-op on lines ``render`` made) and cells are counted with ``terminal_cells``,
    which never counts fewer than a terminal draws, so the terminal never has to wrap a
    row itself. ``indent`` shrinks on a terminal too narrow for it, keeping room for a
    wide character and at least one cell of indent."""
    width = max(width, MAX_CELLS + 1)
    indent = max(1, min(indent, width - MAX_CELLS))
    rows: list[str] = []
    row, used = "", 0
    for word in re.split(r"( )", neutralize(line)):
        cells = _cells(word)
        if used + cells <= width:
            row, used = row + word, used + cells
            continue
        if word == " ":
            continue  # the break itself
        if cells <= width - indent and used > indent:  # the word fits on a fresh row
            rows.append(row.rstrip(" "))
            row, used = " " * indent + word, indent + cells
            continue
        for char in word:  # longer than a row: cut it
            char_cells = _char_cells(char)
            if used + char_cells > width:
                rows.append(row)
                row, used = " " * indent, indent
            row, used = row + char, used + char_cells
    rows.append(row)
    return rows


def _cells(text: str) -> int:
    return sum(_char_cells(char) for char in text)


def _char_cells(char: str) -> int:
    cells = terminal_cells(char)
    # Neutralized text holds nothing terminal_cells refuses; if it did, count it wide.
    return MAX_CELLS if cells is None else cells


def clock(now: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now))


#: How a line looks: a class in the REPL's style sheet. It is chosen from the type of
#: what is shown, never from its text: text can be anything a peer typed.
LineStyle = Literal["message", "private", "own", "notice", "warning"]
#: One line on the screen: how it looks, and what it says.
Line = tuple[LineStyle, str]


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
    recipient: str | None = None  # None: the room


@dataclass(frozen=True)
class HelpText:
    """The commands' help: our own text, shown as it is."""

    lines: tuple[str, ...]


#: everything the chat shows: what the client says, and what the chat says itself
Shown = ClientEvent | Notice | Problem | OwnMessage | HelpText


def render(event: Shown, now: float | None = None, *, multiline: bool = False, relay: str = "") -> list[Line]:
    """The lines that show ``event`` (none if it needs none), each with its look.
    ``multiline`` shows line breaks in messages as line breaks; ``relay`` is the relay's
    address, for the lines that name it."""
    shown = _describe(event, clock(now), multiline, relay)
    if shown is None:
        return []
    style, text = shown
    return [(style, line) for line in text.split("\n")]


def _notice(stamp: str, text: str) -> tuple[LineStyle, str]:
    return "notice", f"{stamp} -- {neutralize(text)}"


def _problem(stamp: str, text: str) -> tuple[LineStyle, str]:
    return "warning", f"{stamp} !! {neutralize(text)}"


def _describe(event: Shown, stamp: str, multiline: bool, relay: str) -> tuple[LineStyle, str] | None:
    """``event``'s look, and its text (several lines joined by newlines)."""
    newline = CONTINUATION if multiline else "\\n"
    if isinstance(event, MessageReceived):
        mark = " [private]" if event.private else ""
        mark += " [late]" if event.late else ""
        text = neutralize(event.text, newline)
        line = f"{stamp}{mark} <{event.sender} {TRUST_MARKS[event.trust]}> {text}"
        if event.trust is Trust.CHANGED:  # from a key we have not accepted: a warning
            return "warning", line
        return ("private" if event.private else "message"), line
    if isinstance(event, OwnMessage):
        to = f"[private to {event.recipient}] " if event.recipient else ""
        return "own", f"{stamp} {to}<{event.nick}> {neutralize(event.text, newline)}"
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
                f"accepts and verifies the key if {nick}'s number matches. /trust {nick} accepts it "
                "without comparing (it stays unverified).",
            )
        )
    if isinstance(event, PeerJoined):
        return "notice", f"{stamp} -- {event.nick} joined"
    if isinstance(event, PeerLeft):
        return "notice", f"{stamp} -- {event.nick} left"
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
    if isinstance(event, DeliveryReport):
        return ("warning" if event.failed else "notice"), delivery_line(event, stamp)
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
    if isinstance(event, RegistrationFailed):
        return "warning", f"{stamp} !! the relay refused us: {neutralize(event.text)}"
    if isinstance(event, ConnectionLost):
        return _problem(stamp, f"lost the relay at {relay}: {event.detail}")
    if isinstance(event, Reconnecting):
        return _notice(stamp, f"reconnecting in {event.delay:g}s" + (f" ({event.why})" if event.why else ""))
    if isinstance(event, Queued):
        return _notice(stamp, f'not connected: "{event.preview}" will be sent when the relay is back')
    if isinstance(event, NotSent):
        quoted = ", ".join(f'"{preview}"' for preview in event.previews)
        return _problem(stamp, f"NOT sent (no connection to the relay): {quoted}")
    # SendReport is the relay's word; the DeliveryReport that follows is the one to trust.
    # Disconnected ends the chat; the front end says why.
    return None


def delivery_line(report: DeliveryReport, stamp: str) -> str:
    quoted = f'"{neutralize(report.preview)}"'
    if not report.failed:
        if report.private or len(report.delivered) <= 3:
            return f"{stamp} -- {quoted} delivered to {', '.join(report.delivered)}"
        return f"{stamp} -- {quoted} delivered to all {len(report.delivered)}"
    failures = ", ".join(f"{nick} ({reason})" for nick, reason in report.failed)
    line = f"{stamp} !! {quoted} NOT delivered to {failures}"
    if report.delivered:
        line += f"; delivered to {', '.join(report.delivered)}"
    return line


#: how each message shows its sender's trust state
TRUST_MARKS = {Trust.VERIFIED: "✓", Trust.UNVERIFIED: "?", Trust.CHANGED: "KEY CHANGED"}


def who_entry(nick: str, trust: Trust) -> str:
    return f"{nick} ({trust.value})"


def online_text(peers: tuple[str, ...] | list[str]) -> str:
    if not peers:
        return "nobody else is online"
    return f"online: {', '.join(peers)}"


def event_record(event: object) -> dict[str, object]:
    """``event`` as a JSON-ready object for ``--json``: its fields, plus ``type`` (the
    event's name in snake case) and ``time``."""
    name = type(event).__name__
    kind = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    record: dict[str, object] = {"type": kind, "time": _iso_time()}
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        for field in dataclasses.fields(event):
            value = getattr(event, field.name)
            record[field.name] = value.value if isinstance(value, Trust) else value
    return record


def json_lines(event: Shown) -> list[str]:
    """``event`` for ``--json``: one JSON object a line, or nothing."""
    if isinstance(event, Disconnected | SendReport | OwnMessage):
        return []  # the chat's end, the relay's word, and what we typed ourselves
    if isinstance(event, HelpText):
        return list(event.lines)  # for a person reading, as it always was
    record: dict[str, object]
    if isinstance(event, Notice | Problem):
        # "time" last, where scripts reading these lines have always found it.
        record = {"type": type(event).__name__.lower(), "text": event.text, "time": _iso_time()}
    else:
        record = event_record(event)
    # ASCII only: every control, C1 and bidi character a peer sent arrives as a \u
    # escape, so this output is safe on a terminal too (DEL is escaped by hand).
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    return [text.replace("\x7f", "\\u007f")]


def _iso_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

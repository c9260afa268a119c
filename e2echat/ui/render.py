"""Events -> the lines a person reads. Pure: no I/O, no prompt_toolkit.

Everything a peer controls (message text; nicks are already restricted by the protocol)
goes through ``neutralize`` so that nobody can move the cursor, clear the screen or
re-order the text of someone else's terminal.
"""

from __future__ import annotations

import dataclasses
import time
import unicodedata

from e2echat.client.events import (
    Event,
    KeyChanged,
    KeyPinned,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    PeerLeft,
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

_ZERO_WIDTH_JOINER = "\u200d"  # inside emoji sequences (family, flags): harmless, keep it


def _invisible(char: str) -> bool:
    """Characters that change how text is laid out or read without showing themselves:
    format characters (bidi overrides and isolates, zero-width marks) and line and
    paragraph separators. A peer could use them to disguise or reorder what we show."""
    return char != _ZERO_WIDTH_JOINER and unicodedata.category(char) in ("Cf", "Zl", "Zp")


def neutralize(text: str, newline: str = "\\n") -> str:
    """Show control characters (ESC, CR, BEL, ...) and bidi overrides as visible escapes.
    A newline becomes ``newline``: a visible ``\\n`` on one-line output, or a real line
    break and an indent where a message may span lines."""
    out = []
    for char in text:
        code = ord(char)
        if char == "\n":
            out.append(newline)
        elif char == "\t":
            out.append("    ")
        elif code < 0x20 or 0x7F <= code < 0xA0 or _invisible(char):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


# Where the text of a multi-line message continues: under the text, not under the time.
CONTINUATION = "\n" + " " * 11


def clock(now: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now))


def format_event(event: Event, now: float | None = None, *, multiline: bool = False) -> str | None:
    """The text for ``event`` (one line, or several for a multi-line message when
    ``multiline``), or None if it needs none."""
    stamp = clock(now)
    if isinstance(event, MessageReceived):
        mark = " [private]" if event.private else ""
        mark += " [late]" if event.late else ""
        text = neutralize(event.text, CONTINUATION if multiline else "\\n")
        return f"{stamp}{mark} <{event.sender} {TRUST_MARKS[event.trust]}> {text}"
    if isinstance(event, KeyPinned):
        return (
            f"{stamp} -- first contact with {event.nick}: their key is pinned from now on "
            f"(unverified; /verify {event.nick} to check it)"
        )
    if isinstance(event, KeyChanged):
        nick = event.nick
        return "\n".join(
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
        return f"{stamp} -- {event.nick} joined"
    if isinstance(event, PeerLeft):
        return f"{stamp} -- {event.nick} left"
    if isinstance(event, Registered):
        return f"{stamp} -- you are {event.nick}; {online_text(event.peers)}"
    if isinstance(event, MessagesMissing):
        if event.count == 1:
            return f"{stamp} !! 1 message from {event.sender} is missing"
        return f"{stamp} !! {event.count} messages from {event.sender} are missing"
    if isinstance(event, SendReport):
        return None  # the relay's word; the DeliveryReport that follows is the one to trust
    if isinstance(event, DeliveryReport):
        return delivery_line(event, stamp)
    if isinstance(event, SplitView):
        return (
            f"{stamp} !! warning: {event.sender} sees a different directory than you do: the relay may "
            "be showing people different keys. Compare safety numbers (/verify) before you trust a key."
        )
    if isinstance(event, SecurityWarning):
        return f"{stamp} !! warning: {neutralize(event.text)}"
    if isinstance(event, RelayError):
        return f"{stamp} !! relay error: {neutralize(event.text)}"
    if isinstance(event, RelayClosing):
        return f"{stamp} -- the relay is shutting down: {neutralize(event.reason)}"
    if isinstance(event, RegistrationFailed):
        return f"{stamp} !! the relay refused us: {neutralize(event.text)}"
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


def line_style(line: str, our_nick: str) -> str:
    """The look of a line we print, from its shape (our lines have a stable form):
    'warning', 'notice', 'own', 'private' or 'message'."""
    body = line[9:] if len(line) > 8 and line[2] == ":" and line[5] == ":" else line
    if body.startswith("!!") or "KEY CHANGED>" in body:
        return "warning"
    if body.startswith("--"):
        return "notice"
    if body.startswith((f"<{our_nick}>", "[private to ")):
        return "own"
    if body.startswith("[private]"):
        return "private"
    return "message"


def own_message(nick: str, text: str, recipient: str | None = None, *, multiline: bool = False) -> str:
    """How what we sent is shown in our own timeline."""
    shown = neutralize(text, CONTINUATION if multiline else "\\n")
    to = f"[private to {recipient}] " if recipient else ""
    return f"{clock()} {to}<{nick}> {shown}"


def event_record(event: object) -> dict[str, object]:
    """``event`` as a JSON-ready object for ``--json``: its fields, plus ``type`` (the
    event's name in snake case) and ``time``."""
    name = type(event).__name__
    kind = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    record: dict[str, object] = {"type": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        for field in dataclasses.fields(event):
            value = getattr(event, field.name)
            record[field.name] = value.value if isinstance(value, Trust) else value
    return record

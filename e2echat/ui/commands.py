"""What the user typed -> a Command. Pure: no I/O, no prompt_toolkit.

A plain line is a room message; a line starting with "/" is a command; "//" at the start
sends a line that begins with a literal "/".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from e2echat.crypto.identity import parse_fingerprint
from e2echat.errors import CommandError


@dataclass(frozen=True)
class Say:
    """A message to everyone else online."""

    text: str


@dataclass(frozen=True)
class PrivateMessage:
    nick: str
    text: str


@dataclass(frozen=True)
class Who:
    pass


@dataclass(frozen=True)
class Help:
    topic: str | None = None


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Verify:
    """Show the safety number with ``nick``, or compare it with pasted ``digits``."""

    nick: str
    digits: str | None = None


@dataclass(frozen=True)
class TrustPeer:
    """Accept or verify ``nick``'s key: the one last shown (or with ``fingerprint``)."""

    nick: str
    fingerprint: str | None = None


@dataclass(frozen=True)
class Untrust:
    nick: str


@dataclass(frozen=True)
class Set:
    """A setting of this chat: ``/set bell off``."""

    name: str
    value: str


@dataclass(frozen=True)
class History:
    """Show the last ``count`` lines of ``conversation`` (``#lobby`` or a nick; None: of all)."""

    conversation: str | None = None
    count: int = 20


@dataclass(frozen=True)
class Search:
    """Show the newest lines whose text holds ``text``, whatever the case."""

    text: str


SETTINGS = {"bell": ("on", "off")}
#: the most lines one /history shows: a screenful is 50; more than this is an export's work
MAX_HISTORY_LINES = 1000

Command = Say | PrivateMessage | Who | Help | Quit | Verify | TrustPeer | Untrust | Set | History | Search

#: name -> (usage, one line of help). The order is the order /help lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "msg": ("/msg NICK TEXT", "send TEXT to NICK alone; nobody else receives anything"),
    "who": ("/who", "list who is online, and how far you trust each key"),
    "verify": (
        "/verify NICK [NUMBER]",
        "show your safety number with NICK, or compare it with a NUMBER they read to you",
    ),
    "trust": (
        "/trust NICK [FINGERPRINT]",
        "accept NICK's changed key, the one the warning showed (or with FINGERPRINT); "
        "or, once you compared safety numbers, mark NICK verified",
    ),
    "untrust": ("/untrust NICK", "clear NICK's verified mark"),
    "set": ("/set bell on|off", "ring the terminal bell on private messages, or not"),
    "history": (
        "/history [WHERE] [N]",
        "show the last N lines (20) of all conversations, or of WHERE: #lobby, or a NICK",
    ),
    "search": ("/search TEXT", "show the newest lines that contain TEXT, whatever the case"),
    "help": ("/help [COMMAND]", "list the commands, or explain one"),
    "quit": ("/quit", "leave (Ctrl+D does the same)"),
}
_ALIASES = {"exit": "quit", "q": "quit", "w": "who", "m": "msg", "query": "msg"}


def help_text(topic: str | None = None) -> list[str]:
    if topic:
        name = _ALIASES.get(topic.lstrip("/"), topic.lstrip("/"))
        if name not in COMMANDS:
            raise CommandError(detail=f"no command /{topic.lstrip('/')}{_suggestion(name)}")
        usage, text = COMMANDS[name]
        return [f"{usage} — {text}"]
    lines = ["Type a line to send it to everyone online, encrypted for each of them."]
    lines += [f"  {usage:<22} {text}" for usage, text in COMMANDS.values()]
    lines.append(f"  {'//TEXT':<22} send a line that starts with '/'")
    return lines


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, [*COMMANDS, *_ALIASES], n=1, cutoff=0.6)
    if not close:
        return "; /help lists the commands"
    return f" — did you mean /{_ALIASES.get(close[0], close[0])}?"


def parse(line: str) -> Command | None:
    """Parse one input line. ``None`` for a blank line; ``CommandError`` for a bad one."""
    stripped = line.strip()
    if not stripped:
        return None
    if stripped.startswith("//"):
        return Say(line.lstrip()[1:])
    if not stripped.startswith("/"):
        return Say(line)
    name, _, rest = stripped[1:].partition(" ")
    name = _ALIASES.get(name.lower(), name.lower())
    rest = rest.strip()
    if name == "msg":
        nick, _, text = rest.partition(" ")
        if not nick or not text.strip():
            raise CommandError(detail=f"usage: {COMMANDS['msg'][0]}")
        return PrivateMessage(nick, text.strip())
    if name == "who":
        return Who()
    if name == "help":
        return Help(rest or None)
    if name == "quit":
        return Quit()
    if name == "set":
        setting, _, value = rest.partition(" ")
        value = value.strip().lower()
        if setting not in SETTINGS or value not in SETTINGS[setting]:
            raise CommandError(detail=f"usage: {COMMANDS['set'][0]}")
        return Set(setting, value)
    if name == "history":
        return _history(rest)
    if name == "search":
        if not rest:
            raise CommandError(detail=f"usage: {COMMANDS['search'][0]}")
        return Search(rest)
    if name in ("verify", "trust", "untrust"):
        nick, _, digits = rest.partition(" ")
        if (
            not nick
            or (digits and name == "untrust")
            or (digits and name == "trust" and parse_fingerprint(digits) is None)
        ):
            raise CommandError(detail=f"usage: {COMMANDS[name][0]}")
        if name == "verify":
            return Verify(nick, "".join(digits.split()) or None)
        return (
            TrustPeer(nick, parse_fingerprint(digits) if digits else None)
            if name == "trust"
            else Untrust(nick)
        )
    raise CommandError(detail=f"unknown command /{name}{_suggestion(name)}")


def _history(rest: str) -> History:
    words = rest.split()
    conversation = None
    if words and not words[0].isdigit():
        conversation = words.pop(0)
    if len(words) > 1 or (words and not (words[0].isascii() and words[0].isdigit())):
        raise CommandError(detail=f"usage: {COMMANDS['history'][0]}")
    count = int(words[0]) if words else History.count
    if not 1 <= count <= MAX_HISTORY_LINES:
        raise CommandError(detail=f"/history shows 1 to {MAX_HISTORY_LINES} lines")
    return History(conversation, count)

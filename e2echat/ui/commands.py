"""What the user typed -> a Command. Pure: no I/O, no prompt_toolkit.

A plain line is a message to the current room; a line starting with "/" is a command;
"//" at the start sends a line that begins with a literal "/".
"""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass

from e2echat.client.status import checked_away
from e2echat.crypto.identity import parse_fingerprint
from e2echat.errors import CommandError
from e2echat.ui import settings
from e2echat.wire.grammar import ROOM_RULE, is_valid_room


@dataclass(frozen=True)
class Say:
    """A message to the current room."""

    text: str


@dataclass(frozen=True)
class Action:
    """/me: ``text`` as an action, to the current room (shown ``* <alice ?> waves``)."""

    text: str


@dataclass(frozen=True)
class SetAway:
    """/away: say we are away (``message``: why), or back (``message`` empty)."""

    message: str


@dataclass(frozen=True)
class Join:
    """Join ``room`` (or switch to it): it becomes the current room."""

    room: str


@dataclass(frozen=True)
class Part:
    """Leave ``room`` (None: the current one)."""

    room: str | None = None


@dataclass(frozen=True)
class Rooms:
    """List our rooms: members online and in all, lines unread."""


@dataclass(frozen=True)
class Names:
    """List the members of ``room`` (None: the current one)."""

    room: str | None = None


@dataclass(frozen=True)
class Reconnect:
    """Connect to the relay again, now."""


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
    """Show the safety number with ``nick`` (or of a room: ``nick`` is "#ops"), or compare
    it with pasted ``digits``."""

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
    """Change a setting, and keep it in the profile: ``/set bell off``."""

    name: str
    value: str


@dataclass(frozen=True)
class ListSettings:
    """``/set`` alone: every setting, its value and its choices."""


@dataclass(frozen=True)
class History:
    """Show the last ``count`` lines of ``conversation`` (a room or a nick; None: of all)."""

    conversation: str | None = None
    count: int = 20


@dataclass(frozen=True)
class Search:
    """Show the newest lines whose text holds ``text``, whatever the case."""

    text: str


@dataclass(frozen=True)
class Mentions:
    """List the recent lines that mentioned us."""


@dataclass(frozen=True)
class Clear:
    """Clear the screen."""


@dataclass(frozen=True)
class SendFile:
    """Offer the file at ``path`` to ``target``: a nick, or ``#ROOM`` (everyone in it)."""

    target: str
    path: str


@dataclass(frozen=True)
class AcceptFile:
    """Take offer ``number`` (None: the only one not yet answered)."""

    number: int | None = None


@dataclass(frozen=True)
class RejectFile:
    number: int | None = None


@dataclass(frozen=True)
class CancelTransfer:
    number: int


@dataclass(frozen=True)
class ListFiles:
    """/files: every transfer, with its state, size and speed."""


#: /mentions lists this many, the newest: more than a screenful is the history's work
MENTIONS_KEPT = 50
#: the most lines one /history shows: a screenful is 50; more than this is an export's work
MAX_HISTORY_LINES = 1000

Command = (
    Say
    | Action
    | SetAway
    | Join
    | Part
    | Rooms
    | Names
    | Reconnect
    | PrivateMessage
    | Who
    | Help
    | Quit
    | Verify
    | TrustPeer
    | Untrust
    | Set
    | ListSettings
    | History
    | Search
    | Mentions
    | Clear
    | SendFile
    | AcceptFile
    | RejectFile
    | CancelTransfer
    | ListFiles
)


#: the commands of file transfers (ui/chat.py hands them on together)
FileCommand = SendFile | AcceptFile | RejectFile | CancelTransfer | ListFiles


@dataclass(frozen=True)
class CommandHelp:
    """What /help says of one command: how to type it, what it does, and an example."""

    usage: str
    description: str
    example: str


#: name -> its help. The order is the order /help lists them in.
COMMANDS: dict[str, CommandHelp] = {
    "join": CommandHelp(
        "/join #ROOM",
        "join #ROOM (made if new) or switch to it: typed lines go there. A room's name is "
        + ROOM_RULE
        + ". Alt+1..9, Ctrl+N and Ctrl+P switch too",
        "/join #ops",
    ),
    "part": CommandHelp(
        "/part [#ROOM]",
        "leave #ROOM (the current room if none given); nothing more reaches you there",
        "/part #ops",
    ),
    "rooms": CommandHelp(
        "/rooms", "list your rooms: members online and in all, and lines you have not seen", "/rooms"
    ),
    "names": CommandHelp(
        "/names [#ROOM]",
        "list the members of #ROOM (the current room if none given): online (and whether /away), or "
        "offline (their messages wait for them)",
        "/names #ops",
    ),
    "msg": CommandHelp(
        "/msg NICK TEXT",
        "send TEXT to NICK alone, in your rooms or not; nobody else receives anything",
        "/msg bob see you at 6",
    ),
    "me": CommandHelp(
        "/me ACTION",
        "say what you do, in the current room: /me waves shows as * <alice ?> waves",
        "/me waves",
    ),
    "who": CommandHelp("/who", "list who is online in your rooms, and how far you trust each key", "/who"),
    "away": CommandHelp(
        "/away [MESSAGE]",
        "say you are away, and why: those online you have talked with see it in /who until you "
        "type a line or /away alone; it lasts across reconnects, not past /quit",
        "/away at lunch, back at 2",
    ),
    "send": CommandHelp(
        "/send NICK|#ROOM PATH",
        "offer the file at PATH to NICK (or to everyone in #ROOM), end-to-end encrypted; "
        "nothing goes before they accept it",
        "/send bob ~/report.pdf",
    ),
    "accept": CommandHelp(
        "/accept [ID]", "take the file offered as ID (no ID: the only one open)", "/accept 3"
    ),
    "reject": CommandHelp(
        "/reject [ID]", "refuse the file offered as ID (no ID: the only one open)", "/reject 3"
    ),
    "cancel": CommandHelp(
        "/cancel ID", "stop transfer ID, sending or receiving; a partial file is deleted", "/cancel 3"
    ),
    "files": CommandHelp("/files", "list the file transfers: state, size, progress and speed", "/files"),
    "verify": CommandHelp(
        "/verify NICK|#ROOM [NUMBER]",
        "show your safety number with NICK, or the safety number of #ROOM (the same for every member who "
        "sees the same members and keys: compare it in a meeting); or compare it with a NUMBER read to you",
        "/verify bob 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890",
    ),
    "trust": CommandHelp(
        "/trust NICK [FINGERPRINT]",
        "accept NICK's changed key, the one the warning showed (or with FINGERPRINT); "
        "or, once you compared safety numbers, mark NICK verified",
        "/trust bob",
    ),
    "untrust": CommandHelp("/untrust NICK", "clear NICK's verified mark", "/untrust bob"),
    "mentions": CommandHelp(
        "/mentions",
        f"list the last {MENTIONS_KEPT} lines that mentioned your nick in this session: when, where and who",
        "/mentions",
    ),
    "set": CommandHelp(
        "/set [NAME VALUE]",
        f"list the settings ({', '.join(settings.SETTINGS)}) with their values and choices, or "
        "change one now; your profile keeps it for next time. delivery quiet: only failures print "
        "a line, and the toolbar shows what became of your last message",
        "/set delivery verbose",
    ),
    "history": CommandHelp(
        "/history [WHERE] [N]",
        "show the last N lines (20) of all conversations, or of WHERE: a #ROOM, or a NICK",
        "/history bob 50",
    ),
    "search": CommandHelp(
        "/search TEXT", "show the newest lines that contain TEXT, whatever the case", "/search invoice"
    ),
    "reconnect": CommandHelp(
        "/reconnect",
        "while the relay is away: try it again now, not at the next try (1, 2, 4 … up to 30 seconds apart)",
        "/reconnect",
    ),
    "clear": CommandHelp("/clear", "clear the screen (Ctrl+L does the same)", "/clear"),
    "help": CommandHelp("/help [COMMAND]", "list the commands, or explain one", "/help verify"),
    "quit": CommandHelp("/quit", "leave (Ctrl+D, or Ctrl+C on an empty line, does the same)", "/quit"),
}
_ALIASES = {"exit": "quit", "q": "quit", "w": "who", "m": "msg", "query": "msg"}
#: /help's listing fits 80 columns: a description wraps under its own column
HELP_WIDTH = 79
_USAGE_WIDTH = max(len(entry.usage) for entry in COMMANDS.values()) + 1


def help_text(topic: str | None = None) -> list[str]:
    """The /help listing, or the usage, description and example of ``topic``."""
    if topic:
        name = _ALIASES.get(topic.lstrip("/"), topic.lstrip("/"))
        if name not in COMMANDS:
            raise CommandError(detail=f"no command /{topic.lstrip('/')}{_suggestion(name)}")
        entry = COMMANDS[name]
        return [
            f"usage: {entry.usage}",
            *textwrap.wrap(entry.description, HELP_WIDTH, initial_indent="  ", subsequent_indent="  "),
            f"example: {entry.example}",
        ]
    lines = ["Type a line to send it to the current room, encrypted for each of its members."]
    rows = [(entry.usage, entry.description) for entry in COMMANDS.values()]
    rows.append(("//TEXT", "send a line that starts with '/'"))
    for usage, description in rows:
        column = f"  {usage:<{_USAGE_WIDTH}} "
        wrapped = textwrap.wrap(description, HELP_WIDTH - len(column))
        lines.append(column + wrapped[0])
        lines += [" " * len(column) + more for more in wrapped[1:]]
    lines.append("/help COMMAND explains one, with an example. Tab completes nicks and commands.")
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
            raise CommandError(detail=f"usage: {COMMANDS['msg'].usage}")
        return PrivateMessage(nick, text.strip())
    if name == "who":
        return Who()
    if name in ("join", "part", "names"):
        return _room_command(name, rest)
    if name == "rooms":
        return Rooms()
    if name == "me":
        if not rest:
            raise CommandError(detail=f"usage: {COMMANDS['me'].usage}")
        return Action(rest)
    if name == "away":
        return SetAway(checked_away(rest))
    if name == "reconnect":
        return Reconnect()
    if name == "mentions":
        return Mentions()
    if name == "clear":
        return Clear()
    if name == "help":
        return Help(rest or None)
    if name == "quit":
        return Quit()
    if name == "set":
        if not rest:
            return ListSettings()
        setting, _, value = rest.partition(" ")
        return Set(*settings.checked(setting, value))
    if name == "send":
        target, _, path = rest.partition(" ")
        if not target or not path.strip():
            raise CommandError(detail=f"usage: {COMMANDS['send'].usage}")
        return SendFile(target, path.strip())
    if name in ("accept", "reject"):
        number = _transfer_number(rest, name) if rest else None
        return AcceptFile(number) if name == "accept" else RejectFile(number)
    if name == "cancel":
        return CancelTransfer(_transfer_number(rest, name))
    if name == "files":
        return ListFiles()
    if name == "history":
        return _history(rest)
    if name == "search":
        if not rest:
            raise CommandError(detail=f"usage: {COMMANDS['search'].usage}")
        return Search(rest)
    if name in ("verify", "trust", "untrust"):
        nick, _, digits = rest.partition(" ")
        if (
            not nick
            or (digits and name == "untrust")
            or (digits and name == "trust" and parse_fingerprint(digits) is None)
        ):
            raise CommandError(detail=f"usage: {COMMANDS[name].usage}")
        if name == "verify":
            return Verify(nick, "".join(digits.split()) or None)
        return (
            TrustPeer(nick, parse_fingerprint(digits) if digits else None)
            if name == "trust"
            else Untrust(nick)
        )
    raise CommandError(detail=f"unknown command /{name}{_suggestion(name)}")


def _room_command(name: str, rest: str) -> Join | Part | Names:
    words = rest.split()
    if len(words) > 1 or (name == "join" and not words):
        raise CommandError(detail=f"usage: {COMMANDS[name].usage}")
    room = words[0].lower() if words else None
    if room is not None and not room.startswith("#"):
        room = "#" + room  # "/join ops": what else could it mean
    if room is not None and not is_valid_room(room):
        raise CommandError(detail=f"no room {words[0]!r}: a room's name is {ROOM_RULE}")
    if name == "join":
        assert room is not None
        return Join(room)
    return Part(room) if name == "part" else Names(room)


def _transfer_number(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise CommandError(detail=f"usage: {COMMANDS[name].usage}")
    return int(text)


def _history(rest: str) -> History:
    words = rest.split()
    conversation = None
    if words and not words[0].isdigit():
        conversation = words.pop(0)
    if len(words) > 1 or (words and not (words[0].isascii() and words[0].isdigit())):
        raise CommandError(detail=f"usage: {COMMANDS['history'].usage}")
    count = int(words[0]) if words else History.count
    if not 1 <= count <= MAX_HISTORY_LINES:
        raise CommandError(detail=f"/history shows 1 to {MAX_HISTORY_LINES} lines")
    return History(conversation, count)

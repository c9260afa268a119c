"""The front end for terminals: a prompt_toolkit REPL. (Pipes get linemode.py.)

Typed lines go to a ``Chat`` while its events print: above the prompt (``patch_stdout``),
without disturbing what is being typed, each line painted in the style its event's type
chose.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application.current import get_app_session
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.data_structures import Point
from prompt_toolkit.document import Document
from prompt_toolkit.filters import is_searching
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import History, InMemoryHistory, ThreadedHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout.screen import Char
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.renderer import Renderer
from prompt_toolkit.styles import Style

from e2echat.client.trust import Trust
from e2echat.store.history import HistoryStore
from e2echat.ui import commands, transfers
from e2echat.ui.cells import wrap_cells
from e2echat.ui.chat import Chat
from e2echat.ui.nicks import natural_sorted, nick_colour
from e2echat.ui.render import Headed, LineStyle
from e2echat.ui.settings import SETTINGS

STYLE = Style.from_dict(
    {
        "notice": "#888888",
        "warning": "#ff5555 bold",
        "private": "#d787ff",
        "mention": "#ffd75f bold",
        "own": "#5fafff",
        # The current room's tag: less loud than the lines of rooms the user is not in.
        "room-current": "#6c6c6c",
        "message": "",
        "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    }
)


#: commands whose first argument is a room (/verify: a room or a nick)
_ROOM_COMMANDS = ("/join", "/part", "/names", "/verify", "/history")


class ChatCompleter(Completer):
    """Tab completes command names after "/" (and after "/help "), room names after
    /join, /part, /names, /verify and /history, and online nicks anywhere else in the
    line; a nick that starts the line gets ": ", as IRC's do."""

    def __init__(self, nicks: Callable[[], list[str]], rooms: Callable[[], list[str]] = list) -> None:
        self.nicks = nicks
        self.rooms = rooms
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split(" ")
        partial = words[-1]
        if text.startswith("/") and not text.startswith("//"):
            if len(words) == 1:  # the command itself
                yield from _command_names(partial, "/")
                return
            command = words[0].lower()
            if len(words) == 2 and command == "/help":
                yield from _command_names(partial, "/" if partial.startswith("/") else "")
                return
            if command == "/send" and len(words) >= 3:  # the path, which may hold spaces
                path = text.split(" ", 2)[2]
                yield from self._paths.get_completions(Document(path, len(path)), complete_event)
                return
            if (
                len(words) == 2
                and command in _ROOM_COMMANDS
                and (partial.startswith("#") or command != "/verify")
            ):
                for room in self.rooms():
                    if room.startswith(partial.lower() if partial.startswith("#") else f"#{partial.lower()}"):
                        yield Completion(room, start_position=-len(partial))
                if command != "/history":
                    return
            if command == "/set" and len(words) in (2, 3):
                setting = SETTINGS.get(words[1].lower()) if len(words) == 3 else None
                names = SETTINGS if len(words) == 2 else setting.choices if setting else ()
                for name in names:
                    if name.startswith(partial.lower()):
                        yield Completion(name, start_position=-len(partial))
                return
        yield from self._nicks(partial, at_start=len(words) == 1)

    def _nicks(self, partial: str, *, at_start: bool) -> Iterable[Completion]:
        at = "@" if partial.startswith("@") else ""  # "@bo" -> "@bob"
        wanted = partial[len(at) :].casefold()
        suffix = ": " if at_start else ""
        for nick in natural_sorted(self.nicks()):
            if nick.casefold().startswith(wanted):
                yield Completion(f"{at}{nick}{suffix}", start_position=-len(partial), display=nick)


def _command_names(partial: str, slash: str) -> Iterable[Completion]:
    for name in sorted(commands.COMMANDS):
        if f"{slash}{name}".startswith(partial.lower()):
            yield Completion(f"{slash}{name}", start_position=-len(partial))


def toolbar_text(chat: Chat) -> str:
    """The bottom line: where we are, whether we are connected, who is there, and what
    became of our last message."""
    link = chat.link
    core = link.core
    state = "connected" if link.online else "reconnecting…"
    peers = core.peers
    unverified = sum(1 for nick in peers if core.trust(nick) is Trust.UNVERIFIED)
    changed = sum(1 for nick in peers if core.trust(nick) is Trust.CHANGED)
    parts = [f" {chat.rooms.current or 'no room'}", link.address, state]
    moving = transfers.toolbar_text(chat.files.transfers.listing(), time.monotonic()) if chat.files else ""
    if moving:  # before the rest, as the last message's state
        parts.append(moving)
    if chat.last_sent.text:  # before the rest: a narrow terminal cuts the toolbar's end
        parts.append(chat.last_sent.text)
    unread = [
        f"{number}:{name} {chat.rooms.unread[name]}"
        for number, name in enumerate(chat.rooms.names, 1)
        if chat.rooms.unread.get(name)
    ]
    if unread:
        parts.append("unread " + ", ".join(unread))
    parts.append(f"{len(peers)} online")
    if core.our_away:
        parts.append("away")
    if unverified:
        parts.append(f"{unverified} unverified")
    if changed:
        parts.append(f"{changed} KEY CHANGED")
    parts.append("bell " + ("on" if chat.bell_on else "off"))
    return " · ".join(parts) + " "


def key_bindings(chat: Chat | None = None) -> KeyBindings:
    bindings = KeyBindings()

    if chat is not None:
        # Alt+1..9: the n-th room, in /rooms order; Ctrl+N / Ctrl+P: the next or previous
        # (they move through the input history elsewhere; Up and Down still do here).
        for number in range(1, 10):

            @bindings.add("escape", str(number))
            def _room(event: KeyPressEvent, number: int = number) -> None:
                chat.switch_to(number)
                event.app.invalidate()

        @bindings.add("c-n")
        def _next(event: KeyPressEvent) -> None:
            chat.step(1)
            event.app.invalidate()

        @bindings.add("c-p")
        def _previous(event: KeyPressEvent) -> None:
            chat.step(-1)
            event.app.invalidate()

    # As in a shell: clears what is typed; on an empty line, leaves. (Not while searching
    # the history with Ctrl+R: there it ends the search, as prompt_toolkit's own binding does.)
    @bindings.add("c-c", filter=~is_searching)
    def _interrupt(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    @bindings.add("escape", "enter")  # Esc then Enter (or Alt+Enter): a newline in the message
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


#: messages from earlier sessions that Up brings back
RECALLED_INPUT = 200


class SentBefore(History):
    """Input history with nothing typed on disk: Up brings back what was typed in this
    session (kept in memory), then the messages sent in earlier ones, as they would be
    typed, from the sealed history. Commands other than messages last a session."""

    def __init__(self, store: HistoryStore, count: int = RECALLED_INPUT) -> None:
        super().__init__()
        self.store = store
        self.count = count

    def load_history_strings(self) -> Iterable[str]:
        for entry in reversed(self.store.sent(self.count).entries):  # newest first
            yield f"/msg {entry.conversation} {entry.text}" if entry.private else entry.text

    def store_string(self, string: str) -> None:
        pass  # kept by History in memory; a message sent is kept (sealed) by the chat


def input_history(store: HistoryStore) -> History:
    """``SentBefore``, loaded in a thread: the prompt does not wait for it."""
    return ThreadedHistory(SentBefore(store))


def rows_above_cursor(lengths: Sequence[int], cursor_x: int, columns: int) -> int:
    """How many rows above the cursor the first row the prompt drew is, once the terminal
    has rewrapped those rows to ``columns``, as tmux, kitty, VTE, Alacritty and iTerm2 do
    on a resize: ``lengths`` are the cells of each row drawn, down to the cursor's, and
    ``cursor_x`` the cursor's column in that last row. (Wide characters a row's split
    pushes down are not counted: an estimate, close but not exact, for those.)"""

    def height(length: int) -> int:
        return max(1, -(-length // columns))

    *above, own = lengths
    # A cursor past the end of its row stays at the end of its row's last piece.
    own_rows = height(own) - 1 if cursor_x >= own else cursor_x // columns
    return sum(height(length) for length in above) + own_rows


def _drawn_cells(row: Mapping[int, Char]) -> int:
    """The cells a row of the screen takes, but for blanks at its end: terminals keep no
    length for those, nor rewrap them."""
    return max((x + (char.width or 1) for x, char in row.items() if char.char.strip()), default=0)


def terminal_rewraps(environ: Mapping[str, str]) -> bool:
    """Whether the terminal, as ``environ`` describes it, rewraps its rows on a resize.
    xterm (which sets XTERM_VERSION) and the Linux console (TERM=linux) do not; tmux
    does, on its own screen, whatever terminal it runs in."""
    if environ.get("TMUX"):
        return True
    return not environ.get("XTERM_VERSION") and environ.get("TERM") != "linux"


def erase_rewrapped_rows(renderer: Renderer) -> None:
    """Makes ``renderer`` erase, after a resize, every row the terminal made of what it
    drew: prompt_toolkit steps back up the rows it drew, and where the terminal rewrapped
    a row wider than its new width into two, the first was left on the screen, an
    orphaned copy of the prompt or the draft (prompt-toolkit#1933).

    In a terminal that does not rewrap (xterm, the Linux console), this would go up too
    far after a shrink and erase lines of chat just above the prompt, one for each row the
    rewrap would have added: those two say who they are (``terminal_rewraps``), and keep
    prompt_toolkit's own erase. Another terminal that does not rewrap and does not say so
    loses them (a wider terminal adds no rows: nothing changes); where users are (tmux,
    kitty, VTE, Alacritty, iTerm2) the redraw is clean."""
    if not terminal_rewraps(os.environ):
        return
    erase = renderer.erase

    def erase_all(leave_alternate_screen: bool = True) -> None:
        # The renderer's own record of what it drew, and where it left the cursor: there
        # is no public way to it (erase itself reads it).
        screen, size, cursor = renderer._last_screen, renderer._last_size, renderer._cursor_pos
        columns = renderer.output.get_size().columns
        if screen is not None and size is not None and columns != size.columns:
            drawn = screen.data_buffer  # (a defaultdict: read, not indexed, to add no row)
            lengths = [min(_drawn_cells(drawn.get(y, {})), size.columns) for y in range(cursor.y + 1)]
            renderer._cursor_pos = Point(x=cursor.x, y=rows_above_cursor(lengths, cursor.x, columns))
        erase(leave_alternate_screen)

    # This one renderer's erase, wrapped (mypy frowns on assigning to a method).
    renderer.erase = erase_all  # type: ignore[method-assign]


def make_session(
    chat: Chat,
    history: History | None = None,
    *,
    input: Input | None = None,
    output: Output | None = None,
) -> PromptSession[str]:
    session: PromptSession[str] = PromptSession(
        history=history or InMemoryHistory(),
        completer=ChatCompleter(lambda: chat.link.core.peers, lambda: chat.rooms.names),
        complete_while_typing=False,
        bottom_toolbar=lambda: toolbar_text(chat),
        key_bindings=key_bindings(chat),
        style=STYLE,
        erase_when_done=True,  # what was typed reappears in the timeline, with the time
        enable_history_search=False,
        input=input,
        output=output,
    )
    erase_rewrapped_rows(session.app.renderer)
    return session


def terminal_writer(
    *, color: bool | Callable[[], bool], current_room: Callable[[], str | None] = lambda: None
) -> Callable[[LineStyle, str], None]:
    """Prints above the prompt, wrapping long lines under their text, in the colour of
    their style (which the event's type chose), a message's sender in their nick's
    colour and the ``current_room``'s tag dimmed, while ``color`` (asked at each line:
    ``/set colours`` changes it; NO_COLOR turns it off), at the terminal's width when the
    line comes (a resize changes it). Rows stop one cell short of the
    edge, so the terminal never wraps one itself (not even the pending wrap some
    terminals apply at the last column)."""
    colours = color if callable(color) else lambda: color

    def write(style: LineStyle, line: str) -> None:
        # The terminal's own width, as the prompt is drawn at: not $COLUMNS, which a shell
        # may have exported at another size, and which no resize changes.
        width = get_app_session().output.get_size().columns - 1
        rows = wrap_cells(line, width)
        if colours():
            fragments = painted(style, line, rows, current_room())
            print_formatted_text(FormattedText(fragments), style=STYLE)
        else:
            print("\n".join(rows), flush=True)

    return write


def painted(
    style: LineStyle, line: str, rows: list[str], current_room: str | None = None
) -> list[tuple[str, str]]:
    """``rows`` (``line`` wrapped) as styled fragments: all in ``style``, but for the
    sender's nick of a message (``Headed``: render said where it is), in its colour, and
    its room's tag, dimmed if it is the ``current_room``."""
    text = "\n".join(rows)
    if not isinstance(line, Headed):
        return [(f"class:{style}", text)]
    # (where, what, extra style) of each span the header marks, in order; a terminal too
    # narrow to keep the header whole marks none.
    spans = [(line.nick_at, line.nick, nick_colour(line.nick))]
    if line.room and line.room == current_room and line.room_at >= 0:
        spans.insert(0, (line.room_at, line.room, "class:room-current"))
    if any(rows[0][start : start + len(what)] != what for start, what, _ in spans):
        return [(f"class:{style}", text)]
    fragments, done = [], 0
    for start, what, extra in spans:
        end = start + len(what)
        fragments += [(f"class:{style}", text[done:start]), (f"class:{style} {extra}", text[start:end])]
        done = end
    return [*fragments, (f"class:{style}", text[done:])]


def screen_clearer(session: PromptSession[str]) -> Callable[[], None]:
    """/clear: the screen erased, the cursor at the top; the prompt is drawn again there."""

    def clear() -> None:
        session.output.erase_screen()
        session.output.cursor_goto(0, 0)
        session.output.flush()

    return clear


async def run_repl(chat: Chat, session: PromptSession[str] | None = None, *, patch: bool = True) -> None:
    """The interactive prompt. Returns when the user leaves; raises RelayGone."""

    def prompt() -> str:  # asked at each redraw: switching rooms changes it
        return f"{chat.rooms.current or '(no room)'} {chat.link.nick}> "

    session = session or make_session(chat)
    chat.clear_screen = screen_clearer(session)
    chat.status_line = True  # the toolbar shows what became of the last message

    def restyle() -> None:
        # prompt_toolkit reads the session's colour depth at each redraw; 1 bit is what
        # it uses for NO_COLOR: bold and reverse, no colours. None: the terminal's own.
        session.color_depth = None if chat.colours_on else ColorDepth.DEPTH_1_BIT
        session.app.invalidate()

    chat.restyle = restyle
    chat.redraw = session.app.invalidate  # after each event, and a transfer's progress
    restyle()

    async def typing() -> None:
        while True:
            try:
                line = await session.prompt_async(prompt)
            except (EOFError, KeyboardInterrupt):  # Ctrl+D, or Ctrl+C on an empty line: leave cleanly
                return
            if not chat.handle_line(line):
                return

    with patch_stdout(raw=True) if patch else contextlib.nullcontext():
        chat.show_earlier()
        await chat.run(typing())

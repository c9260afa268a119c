"""The front end for terminals: a prompt_toolkit REPL. (Pipes get linemode.py.)

Typed lines go to a ``Chat`` while its events print: above the prompt (``patch_stdout``),
without disturbing what is being typed, each line painted in the style its event's type
chose.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import History, InMemoryHistory, ThreadedHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from e2echat.client.trust import Trust
from e2echat.store.history import HistoryStore
from e2echat.ui import commands
from e2echat.ui.cells import wrap_cells
from e2echat.ui.chat import Chat
from e2echat.ui.render import LineStyle

COMMANDS_WITH_A_NICK = ("/msg", "/verify", "/trust", "/untrust", "/m", "/query")

STYLE = Style.from_dict(
    {
        "notice": "#888888",
        "warning": "#ff5555 bold",
        "private": "#d787ff",
        "own": "#5fafff",
        "message": "",
        "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    }
)


class ChatCompleter(Completer):
    """Tab completes command names, and online nicks after the commands that take one."""

    def __init__(self, nicks: Callable[[], list[str]]) -> None:
        self.nicks = nicks

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/"):
            return
        words = text.split(" ")
        if len(words) == 1:  # the command itself
            for name in sorted(commands.COMMANDS):
                if f"/{name}".startswith(text):
                    yield Completion(f"/{name}", start_position=-len(text))
        elif len(words) == 2 and words[0] in COMMANDS_WITH_A_NICK:  # its first argument
            partial = words[1]
            for nick in self.nicks():
                if nick.startswith(partial):
                    yield Completion(nick, start_position=-len(partial))
        elif len(words) == 2 and words[0] == "/set" and "bell".startswith(words[1]):
            yield Completion("bell", start_position=-len(words[1]))


def toolbar_text(chat: Chat) -> str:
    """The bottom line: where we are, whether we are connected, who is there."""
    link = chat.link
    core = link.core
    state = "connected" if link.online else "reconnecting…"
    peers = core.peers
    unverified = sum(1 for nick in peers if core.trust(nick) is Trust.UNVERIFIED)
    changed = sum(1 for nick in peers if core.trust(nick) is Trust.CHANGED)
    parts = [f" {link.address}", state, f"{len(peers)} online"]
    if unverified:
        parts.append(f"{unverified} unverified")
    if changed:
        parts.append(f"{changed} KEY CHANGED")
    parts.append("bell " + ("on" if chat.bell_on else "off"))
    return " · ".join(parts) + " "


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

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


def make_session(
    chat: Chat,
    history: History | None = None,
    *,
    input: Input | None = None,
    output: Output | None = None,
) -> PromptSession[str]:
    return PromptSession(
        history=history or InMemoryHistory(),
        completer=ChatCompleter(lambda: chat.link.core.peers),
        complete_while_typing=False,
        bottom_toolbar=lambda: toolbar_text(chat),
        key_bindings=key_bindings(),
        style=STYLE,
        erase_when_done=True,  # what was typed reappears in the timeline, with the time
        enable_history_search=False,
        input=input,
        output=output,
    )


def terminal_writer(*, color: bool) -> Callable[[LineStyle, str], None]:
    """Prints above the prompt, wrapping long lines under their text, in the colour of
    their style (which the event's type chose) unless NO_COLOR is set. Rows stop one
    cell short of the edge, so the terminal never wraps one itself (not even the
    pending wrap some terminals apply at the last column)."""

    def write(style: LineStyle, line: str) -> None:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        text = "\n".join(wrap_cells(line, width))
        if color:
            print_formatted_text(FormattedText([(f"class:{style}", text)]), style=STYLE)
        else:
            print(text, flush=True)

    return write


async def run_repl(chat: Chat, session: PromptSession[str] | None = None, *, patch: bool = True) -> None:
    """The interactive prompt. Returns when the user leaves; raises RelayGone."""
    prompt = f"{chat.link.nick}> "
    session = session or make_session(chat)

    async def typing() -> None:
        while True:
            try:
                line = await session.prompt_async(prompt)
            except (EOFError, KeyboardInterrupt):  # Ctrl+D or Ctrl+C: leave cleanly
                return
            if not chat.handle_line(line):
                return

    with patch_stdout(raw=True) if patch else contextlib.nullcontext():
        chat.show_earlier()
        await chat.run(typing())

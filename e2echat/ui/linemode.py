"""The front end for pipes and files (standard input not a terminal): each line read is
typed, each event is one line on stdout, and at end of input we wait until the relay has
answered for everything sent before leaving. No prompt_toolkit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Callable

from e2echat.ui.cells import wrap_cells
from e2echat.ui.chat import Chat
from e2echat.ui.render import LineStyle


def print_text(style: LineStyle, text: str) -> None:
    """Line mode's writer: the text alone (a style is a terminal's colour). On a terminal
    (standard output can be one even when input is a pipe), long lines wrap under their
    text as in the REPL, one cell short of the edge: the terminal must never wrap a line
    itself, or the rest of a peer's text would start a row of its own at the left edge."""
    if sys.stdout.isatty():
        text = "\n".join(wrap_cells(text, shutil.get_terminal_size().columns - 1))
    print(text, flush=True)


def print_record(style: LineStyle, text: str) -> None:
    """``--json``'s writer: one JSON object a line, never wrapped (a wrapped record is
    no longer one line of JSON). Its text is ASCII with every control, format and
    wide character escaped, so a terminal draws it one cell per character."""
    print(text, flush=True)


def line_writer(*, json: bool) -> Callable[[LineStyle, str], None]:
    """The writer for line mode: records for ``--json``, wrapped text otherwise."""
    return print_record if json else print_text


async def run_line_mode(chat: Chat, fd: int | None = None) -> None:
    """Lines from a pipe or file; one line per event on stdout; leave at end of input."""
    source = sys.stdin.fileno() if fd is None else fd
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def deliver(line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while we were reading
            loop.call_soon_threadsafe(lines.put_nowait, line)

    def read_input() -> None:
        # A daemon thread, not run_in_executor, so that a blocked read cannot hold up exit;
        # and os.read on the descriptor, not sys.stdin, whose buffer lock a daemon thread
        # must not hold while the interpreter shuts down.
        pending = b""
        try:
            while chunk := os.read(source, 65536):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    deliver(raw.decode("utf-8", errors="replace"))
            if pending:
                deliver(pending.decode("utf-8", errors="replace"))
        except OSError:
            pass
        finally:
            deliver(None)

    threading.Thread(target=read_input, name="e2echat-stdin", daemon=True).start()

    async def typing() -> None:
        while (line := await lines.get()) is not None:
            # A pipe can hold more than the relay takes a second: read on only once what
            # was sent has gone, so that nothing is refused and receipts are not late.
            await chat.link.wait_sendable()
            if not chat.handle_line(line.rstrip("\r\n")):
                return

    await chat.run(typing())

"""The two front ends: a prompt_toolkit REPL for terminals, line mode for pipes.

Both feed typed lines to a ``Chat`` while its events print. In the REPL, incoming lines
print above the prompt (``patch_stdout``) without disturbing what is being typed. In line
mode every event is one line on stdout, and at end of input we wait until the relay has
answered for everything sent before leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

from e2echat.chat import Chat
from e2echat.client import Disconnected
from e2echat.errors import RelayGone

# How long, after the user is done, to wait for the relay to answer for what was sent.
SETTLE_TIMEOUT = 10.0


async def _run_until_done(chat: Chat, typing: Coroutine[Any, Any, None]) -> Disconnected | None:
    """Run the input loop and the event loop side by side until one ends.

    Returns None when the user left, or how the connection ended if the relay went.
    """
    events = asyncio.create_task(chat.run_events(), name="e2echat-events")
    typing_task = asyncio.create_task(typing, name="e2echat-input")
    try:
        await asyncio.wait({events, typing_task}, return_when=asyncio.FIRST_COMPLETED)
        if typing_task.done():
            typing_task.result()  # the user is done (or the input loop failed: raise it)
            await chat.finish(SETTLE_TIMEOUT)
    finally:
        for task in (events, typing_task):
            task.cancel()
        await asyncio.gather(events, typing_task, return_exceptions=True)
    chat.show_queued()
    if typing_task.done() and not typing_task.cancelled():
        return None
    return events.result()


def _gone(chat: Chat, ended: Disconnected) -> RelayGone:
    connection = chat.connection
    return RelayGone(host=connection.host, port=connection.port, detail=ended.detail)


async def run_repl(chat: Chat, session: PromptSession[str] | None = None, *, patch: bool = True) -> None:
    """The interactive prompt. Returns when the user leaves; raises RelayGone."""
    prompt = f"{chat.connection.nick}> "
    session = session or PromptSession()

    async def typing() -> None:
        while True:
            try:
                line = await session.prompt_async(prompt)
            except (EOFError, KeyboardInterrupt):  # Ctrl+D or Ctrl+C: leave cleanly
                return
            if not chat.handle_line(line):
                return

    with patch_stdout(raw=True) if patch else contextlib.nullcontext():
        ended = await _run_until_done(chat, typing())
    if ended is not None:
        raise _gone(chat, ended)


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
            if not chat.handle_line(line.rstrip("\r\n")):
                return

    ended = await _run_until_done(chat, typing())
    if ended is not None:
        raise _gone(chat, ended)

"""The REPL driven headless: a real PromptSession on pipe input, a real relay and peers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from e2echat.client.core import MessageReceived
from e2echat.errors import RelayGone
from e2echat.relay.server import Relay
from e2echat.ui.chat import Chat
from e2echat.ui.repl import run_repl

from support import WAIT, Peer, peers, running_relay


class Screen:
    """Collects the lines the REPL writes, each with its style, and lets a test wait for one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.styles: list[str] = []
        self._changed = asyncio.Event()

    def write(self, style: str, line: str) -> None:
        self.lines.append(line)
        self.styles.append(style)
        self._changed.set()

    def style_of(self, line: str) -> str:
        return self.styles[self.lines.index(line)]

    async def wait_for(self, text: str) -> str:
        async def find() -> str:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), WAIT)


@contextlib.contextmanager
def headless() -> Iterator[tuple[PipeInput, PromptSession[str]]]:
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        yield pipe, PromptSession(input=pipe, output=DummyOutput())


@contextlib.asynccontextmanager
async def repl_for(
    relay: Relay, nick: str, *others: str
) -> AsyncIterator[tuple[PipeInput, Screen, list[Peer], asyncio.Task[None]]]:
    async with peers(relay, nick, *others) as connected:
        me, rest = connected[0], connected[1:]
        screen = Screen()
        with headless() as (pipe, session):
            task = asyncio.create_task(run_repl(Chat(me.connection, screen.write), session, patch=False))
            try:
                yield pipe, screen, rest, task
            finally:
                if not task.done():
                    pipe.send_text("/quit\r")
                with contextlib.suppress(RelayGone):
                    await asyncio.wait_for(task, WAIT)


async def test_typed_line_goes_to_the_room() -> None:
    async with (
        running_relay() as relay,
        repl_for(relay, "alice", "bob", "carol") as (pipe, _, (bob, carol), _t),
    ):
        pipe.send_text("hello from the prompt\r")
        for peer in (bob, carol):
            got = await peer.next(MessageReceived)
            assert (got.sender, got.text, got.private) == ("alice", "hello from the prompt", False)


async def test_msg_command_goes_to_one_person() -> None:
    async with (
        running_relay() as relay,
        repl_for(relay, "alice", "bob", "carol") as (pipe, _, (bob, carol), _t),
    ):
        pipe.send_text("/msg bob just you\r")
        pipe.send_text("and everyone\r")
        got = await bob.next(MessageReceived)
        assert (got.text, got.private) == ("just you", True)
        assert await carol.next_delivery() == MessageReceived("alice", "and everyone", private=False)


async def test_incoming_messages_are_shown_with_time_sender_and_privacy() -> None:
    async with running_relay() as relay, repl_for(relay, "alice", "bob") as (_, screen, (bob,), _t):
        bob.connection.send_room("#lobby", "hi all")
        bob.connection.send_private("alice", "hi you")
        room = await screen.wait_for("<bob ?> hi all")
        private = await screen.wait_for("<bob ?> hi you")
        assert "[private]" not in room
        assert "[private]" in private
        assert room[:8].count(":") == 2  # HH:MM:SS first


async def test_who_help_and_unknown_command() -> None:
    async with running_relay() as relay, repl_for(relay, "alice", "bob") as (pipe, screen, _, _t):
        pipe.send_text("/who\r")
        assert "online: bob" in await screen.wait_for("you are alice")
        pipe.send_text("/help\r")
        await screen.wait_for("/msg NICK TEXT")
        pipe.send_text("/mgs bob hi\r")
        assert "did you mean /msg?" in await screen.wait_for("unknown command /mgs")
        pipe.send_text("/msg ghost hi\r")
        await screen.wait_for("NOT delivered to ghost (not known to this relay)")


async def test_escape_sequences_from_peers_are_neutralized() -> None:
    async with running_relay() as relay, repl_for(relay, "alice", "bob") as (_, screen, (bob,), _t):
        bob.connection.send_room("#lobby", "\x1b[2J\x1b]0;pwned\x07clear")
        line = await screen.wait_for("clear")
        assert "\x1b" not in line and "\x07" not in line
        assert "\\x1b[2J" in line


@pytest.mark.parametrize(
    "keys", ["/quit\r", "/exit\r", "\x04", "\x03"], ids=["quit", "exit", "ctrl-d", "ctrl-c"]
)
async def test_leaving_is_clean_and_loses_nothing(keys: str) -> None:
    async with running_relay() as relay, repl_for(relay, "alice", "bob") as (pipe, _, (bob,), task):
        pipe.send_text("last words\r" + keys)
        await asyncio.wait_for(task, WAIT)
        assert task.exception() is None
        assert (await bob.next(MessageReceived)).text == "last words"


async def test_relay_gone_ends_the_repl_with_a_clear_error() -> None:
    async with running_relay() as relay, repl_for(relay, "alice") as (_, screen, _, task):
        await relay.stop("going down for maintenance")
        with pytest.raises(RelayGone, match=r"lost the relay at 127\.0\.0\.1"):
            await asyncio.wait_for(task, WAIT)
        await screen.wait_for("the relay is shutting down: going down for maintenance")

"""Rooms in the REPL driven headless: a real PromptSession on pipe input, a real relay
and peers. /join, switching with Alt+1..9, Ctrl+N and Ctrl+P, /rooms, /names, and the
room's tag on each line and in the prompt and toolbar."""

from __future__ import annotations

from test_repl_features import repl, until

from e2echat.client.core import MessageReceived
from e2echat.ui.repl import toolbar_text

from support import peers, running_relay

ALT_2, CTRL_N, CTRL_P = "\x1b2", "\x0e", "\x10"


async def test_join_switch_and_list_rooms_at_the_prompt() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        async with repl(alice) as (pipe, screen, _):

            def chat_rooms() -> str:  # the prompt, as drawn
                message = screen.session.message
                return str(message() if callable(message) else message)

            await until(lambda: "#lobby alice> " in chat_rooms())
            pipe.send_text("/join #ops\r")
            await screen.wait_for("you joined #ops; typed lines go there")
            assert "#ops alice> " in chat_rooms()
            bob.connection.join("#ops")
            await screen.wait_for("bob joined #ops")
            pipe.send_text("to ops\r")
            got = await bob.next(MessageReceived)
            assert (got.text, got.room) == ("to ops", "#ops")
            await screen.wait_for("#ops <alice> to ops")  # our own line, with its room

            pipe.send_text(CTRL_P)  # back to #lobby
            await until(lambda: "#lobby alice> " in chat_rooms())
            pipe.send_text("to the lobby\r")
            got = await bob.next(MessageReceived)
            assert (got.text, got.room) == ("to the lobby", "#lobby")
            pipe.send_text(CTRL_N)
            await until(lambda: "#ops alice> " in chat_rooms())
            pipe.send_text(CTRL_N)  # round the end
            await until(lambda: "#lobby alice> " in chat_rooms())

            bob.connection.send_room("#ops", "news in ops")
            line = await screen.wait_for("news in ops")
            assert line.endswith("#ops <bob ?> news in ops")
            await until(lambda: "unread 2:#ops 1" in toolbar_text(screen.chat))
            pipe.send_text("/rooms\r")
            await screen.wait_for("   2 #ops    2/2  1 unread")
            pipe.send_text(ALT_2)
            await until(lambda: "#ops alice> " in chat_rooms())
            assert "unread" not in toolbar_text(screen.chat)
            assert toolbar_text(screen.chat).startswith(" #ops · ")
            pipe.send_text("/names\r")
            await screen.wait_for("#ops, 2 members: you, bob (unverified)")

"""/me and /reconnect (issue 19): an action travels as text inside the encryption and is
shown as one everywhere a message or its preview is; /reconnect tries the relay at once
instead of at the next backoff step. A real relay over loopback sockets."""

from __future__ import annotations

import asyncio

import pytest
from nacl.public import PrivateKey

from e2echat.client.connection import Connection
from e2echat.client.events import ConnectionLost, MessageReceived, Reconnecting
from e2echat.client.receipts import DeliveryReport
from e2echat.client.reconnect import Backoff, Client
from e2echat.client.trust import Trust
from e2echat.errors import CommandError
from e2echat.relay.server import Relay
from e2echat.ui import commands
from e2echat.ui.actions import action_of, as_action, readable
from e2echat.ui.chat import Chat
from e2echat.ui.render import OwnMessage, delivery_line, render
from e2echat.wire.grammar import DEFAULT_ROOM

from support import LOOPBACK, WAIT, connect, peers, running, running_relay, text_into

NOW = 1_700_000_000.0


def test_me_parses_into_an_action_and_needs_its_text() -> None:
    assert commands.parse("/me waves at everyone") == commands.Action("waves at everyone")
    with pytest.raises(CommandError, match="usage: /me ACTION"):
        commands.parse("/me   ")
    assert commands.parse("/reconnect") == commands.Reconnect()


@pytest.mark.parametrize(
    ("text", "action"),
    [
        (as_action("waves"), "waves"),
        (as_action(""), ""),
        ("\x01ACTION cut short by a previ…", "cut short by a previ…"),  # a preview
        ("waves", None),
        ("\x01ACTIONwaves\x01", None),
        ("ACTION waves", None),
    ],
)
def test_an_action_is_known_by_its_markers(text: str, action: str | None) -> None:
    assert action_of(text) == action
    assert readable(text) == (text if action is None else f"* {action}")


def test_actions_are_shown_with_a_star_before_the_authenticated_sender() -> None:
    received = MessageReceived("bob", as_action("waves \x1b[2J"), False, Trust.VERIFIED)
    ((_, line),) = render(received, NOW)
    assert line.endswith(" * <bob ✓> waves \\x1b[2J")  # the peer's text still neutralized
    ((_, own),) = render(OwnMessage("alice", as_action("nods")), NOW)
    assert own.endswith(" * <alice> nods")
    report = DeliveryReport(1, False, ("bob",), (), preview=as_action("nods"))
    assert '"* nods" delivered to bob' in delivery_line(report, "12:00:00")


def test_help_me_shows_what_is_drawn() -> None:
    [_, description, _] = commands.help_text("me")
    shown = render(MessageReceived("alice", as_action("waves"), private=False), NOW, timestamps=False)
    drawn = shown[0][1]
    assert drawn == "* <alice ?> waves"
    assert description.strip().endswith(f"shows as {drawn}")


async def test_me_reaches_everyone_as_an_action_over_the_relay() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines), echo=True)
        chat.handle_line("/me waves at bob")
        received = await bob.next(MessageReceived)
        assert received.text == as_action("waves at bob")  # inside the encryption, as typed
        seen: list[str] = []
        Chat(bob.connection, text_into(seen)).show(received)
        assert seen[-1].endswith("[mention] * <alice ?> waves at bob")  # an action may mention
        assert any(line.endswith(" * <alice> waves at bob") for line in lines)
        chat.show(await alice.next(DeliveryReport))
        assert '"* waves at bob" delivered to bob' in lines[-1]


async def test_reconnect_tries_the_relay_now_not_at_the_next_backoff_step() -> None:
    identity = PrivateKey.generate()
    first = Relay(LOOPBACK, 0)
    async with running(first):
        port = first.port
        # A backoff of a minute: only /reconnect can bring her back within the test.
        alice = await connect(
            first, "alice", identity, reconnecting=True, backoff=Backoff(first=60, cap=60, jitter=0.0)
        )
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("/reconnect")
        assert lines[-1].endswith(f"already connected to the relay at 127.0.0.1:{port}")
    await alice.next(ConnectionLost)
    assert (await alice.next(Reconnecting)).delay == 60
    second = Relay(LOOPBACK, port, key=first.core.key)
    async with running(second):
        chat.handle_line("/reconnect")
        assert "trying the relay at" in lines[-1]
        await asyncio.wait_for(_until_online(alice.connection), WAIT)
    await alice.next(ConnectionLost)
    async with running(Relay(LOOPBACK, port, key=first.core.key)):
        # The next outage waits out its backoff: the /reconnect of the last one is spent.
        await asyncio.sleep(1.0)
        assert not alice.connection.online
        await alice.connection.close()
    chat.handle_line("/reconnect")  # closed for good: nothing to try
    assert "not trying the relay again" in lines[-1]


async def _until_online(link: Connection | Client) -> None:
    while not link.online:
        await asyncio.sleep(0.02)


def test_an_actions_markers_mention_no_one_and_lists_show_it_as_an_action() -> None:
    from e2echat.ui.render import Mention, MentionList
    from e2echat.ui.transcript import Entry, export_text

    class Named:  # what Chat needs to know of its link to look for mentions: our nick
        nick = "action"
        address = "127.0.0.1:8000"

    lines: list[str] = []
    chat = Chat(Named(), text_into(lines))  # type: ignore[arg-type]
    chat.show(MessageReceived("bob", as_action("waves"), False))
    assert not chat.mentions  # "\x01ACTION" is not the word "action"
    chat.show(MessageReceived("bob", as_action("waves at action"), False))
    assert len(chat.mentions) == 1
    (_, (_, listed)) = render(MentionList((Mention(NOW, "#lobby", "bob", as_action("pokes alice")),)), NOW)
    assert listed.endswith("#lobby * <bob> pokes alice")
    exported = export_text(Entry(DEFAULT_ROOM, True, "bob", as_action("waves"), NOW))
    assert exported.endswith("#lobby <bob> * waves")

"""Attacks on rooms by the relay (tests/hostile.py), each of which must fail: showing a
room's message to someone not in it, moving a message to another room, and adding a
reader to one member's view of a room. The room is named inside the encryption and
checked by each receiver against its own member lists; each member's view of the room
travels with every message, and the room's safety number is made from the same bytes."""

from __future__ import annotations

import asyncio

from e2echat.client.core import MessageReceived, SecurityWarning, SplitView
from e2echat.client.events import RoomChanged
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m
from e2echat.wire.objects import PeerInfo

from hostile import HostileRelay, deliveries, flip_bit
from relay_frames import Outgoing
from support import Peer, connect, peers, running, text_into


async def _in_ops(relay: HostileRelay, *people: Peer) -> None:
    """``people`` join #ops, each seeing all the others in it."""
    for person in people:
        person.connection.join("#ops")
    for person in people:
        others = {p.nick for p in people} - {person.nick}
        while not others <= set(getattr(person.connection.core.room("#ops"), "others", [])):
            await person.next_any_event()


async def test_a_room_message_the_relay_shows_a_non_member_is_dropped_and_said() -> None:
    """The relay tells alice that carol is in #ops (she is not), so that alice encrypts her
    #ops messages for carol too. carol's client does not show it: #ops is not one of her
    rooms; she is told the relay (or alice) tried. The lie also shows in #ops's safety
    number, which alice and bob no longer share, and bob is warned at alice's message."""
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        await _in_ops(relay, alice, bob)
        assert alice.connection.core.room_safety_number("#ops") == bob.connection.core.room_safety_number(
            "#ops"
        )
        relay.inject("alice", m.Entered("#ops", alice.connection.core.directory["carol"]))
        await alice.next(RoomChanged, lambda e: e.room == "#ops")
        assert alice.connection.core.room_safety_number("#ops") != bob.connection.core.room_safety_number(
            "#ops"
        )
        alice.connection.send_room("#ops", "the ops secret")
        warning = await carol.next_delivery()
        assert isinstance(warning, SecurityWarning)
        assert "for #ops, a room you are not in" in warning.text
        assert await bob.next_delivery() == SplitView("alice", "#ops")
        shown = await bob.next_delivery()
        assert isinstance(shown, MessageReceived) and (shown.text, shown.room) == ("the ops secret", "#ops")
        await asyncio.sleep(0.2)  # anything more carol would see of it
        assert not [e for e in carol.seen if isinstance(e, MessageReceived)]


async def test_the_relay_cannot_move_a_message_to_another_room() -> None:
    """bob is in #a and #b. The relay takes alice's #a message and does what it can to have
    bob show it in #b: as it is (it shows in #a: the room is inside the encryption), with
    any bit of it changed (it does not open), or again (the ratchet refuses it). Never
    does a message alice wrote for #a appear in #b."""
    changed: list[bytes] = []

    def relabel(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if relay.nick(action.conn) != "bob" or deliver.sender != "alice" or not changed:
            return [action]
        body = changed.pop()
        return [action, Outgoing(action.conn, m.Deliver("alice", body))]

    async with (
        running(HostileRelay(deliveries(relabel))) as relay,
        peers(relay, "alice", "bob") as (alice, bob),
    ):
        for person in (alice, bob):
            person.connection.join("#a")
            person.connection.join("#b")
        while not set(getattr(alice.connection.core.room("#b"), "others", [])) >= {"bob"}:
            await alice.next_any_event()
        while not set(getattr(bob.connection.core.room("#b"), "others", [])) >= {"alice"}:
            await bob.next_any_event()
        alice.connection.send_room("#a", "for #a only")
        shown = await bob.next(MessageReceived)
        assert shown.room == "#a"
        body = next(e.body for send in relay.sends_from("alice") for e in send.items if e.to == "bob")
        # The room's name sits near the start of the plaintext, past the ratchet's
        # header: a bit flipped anywhere in the first 200 bytes, and the body again as is.
        for bit in (8 * 40, 8 * 100, 8 * 150, 8 * 199):
            changed.append(flip_bit(body, bit))
        changed.append(body)
        for _ in range(len(changed) + 1):
            alice.connection.send_room("#b", "for #b")  # each carries one forgery after it
            await bob.next(MessageReceived, lambda e: e.text == "for #b")
        await asyncio.sleep(0.2)
        received = [e for e in bob.seen if isinstance(e, MessageReceived)]
        assert [(e.text, e.room) for e in received if e.text == "for #a only"] == [("for #a only", "#a")]
        assert all(e.room == "#b" for e in received if e.text == "for #b")
        assert len([e for e in bob.seen if isinstance(e, SecurityWarning)]) >= 5


async def test_a_reader_added_for_one_member_changes_their_room_safety_number() -> None:
    """The relay adds mallory to alice's view of #ops (alice would encrypt for her) and
    keeps it from bob. Reading the two numbers aloud in a meeting catches it: they differ.
    And bob is warned, naming the room, at alice's next #ops message."""
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob") as (alice, bob):
        mallory = await connect(relay, "mallory", rooms=("#elsewhere",))
        await _in_ops(relay, alice, bob)
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        chat.handle_line("/verify #ops")
        number_before = lines[-2].rsplit(": ", 1)[1]
        relay.inject("alice", m.Entered("#ops", announced(mallory)))
        await alice.next(RoomChanged, lambda e: e.room == "#ops")
        chat.handle_line("/verify #ops")
        number_after = lines[-2].rsplit(": ", 1)[1]
        assert number_after != number_before
        bob_lines: list[str] = []
        Chat(bob.connection, text_into(bob_lines)).handle_line(f"/verify #ops {number_after}")
        assert "does NOT match" in bob_lines[-1]
        alice.connection.send_room("#ops", "who is here?")
        assert await bob.next_delivery() == SplitView("alice", "#ops")
        await mallory.connection.close()


def announced(peer: Peer) -> PeerInfo:
    """``peer``'s entry as the relay announces it (its real keys)."""
    core = peer.connection.core
    return PeerInfo(core.nick, core._identity.public_key, core._handshake._session_key.public_key)

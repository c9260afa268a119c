"""Rooms end to end, through a real relay on 127.0.0.1: who gets what, joins and parts,
a member away, private messages outside any shared room, and the chat's commands."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from test_mailbox_e2e import Profile, _relay

from e2echat.client.events import (
    ConnectionLost,
    MailFromPastMember,
    MailReceived,
    MessageQueued,
    MessageReceived,
    Registered,
    RoomChanged,
    RoomEntered,
    RoomListed,
    RoomRefused,
    SecurityWarning,
)
from e2echat.client.reconnect import Client
from e2echat.errors import CommandError
from e2echat.relay.server import Relay
from e2echat.ui.chat import Chat
from e2echat.ui.render import render
from e2echat.ui.roomlist import RoomList
from e2echat.wire import messages as m
from e2echat.wire.objects import Member

from hostile import HostileRelay, Tamper
from relay_frames import Outgoing
from support import LOOPBACK, Peer, connect, peers, running, running_relay, text_into


async def _members(peer: Peer, room: str, *nicks: str) -> None:
    """Until ``peer`` sees ``nicks`` in ``room``."""
    while not set(nicks) <= set(getattr(peer.connection.core.room(room), "others", [])):
        await peer.next_any_event()


async def test_two_rooms_each_message_reaches_its_own_room_only() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        alice.connection.join("#ops")
        bob.connection.join("#ops")
        await _members(alice, "#ops", "bob")
        await _members(bob, "#ops", "alice")
        alice.connection.send_room("#ops", "ops only")
        alice.connection.send_room("#lobby", "for everyone")
        got = [await bob.next(MessageReceived) for _ in range(2)]
        assert [(e.text, e.room) for e in got] == [("ops only", "#ops"), ("for everyone", "#lobby")]
        other = await carol.next(MessageReceived)
        assert (other.text, other.room) == ("for everyone", "#lobby")
        await asyncio.sleep(0.2)
        assert [e.text for e in carol.seen if isinstance(e, MessageReceived)] == ["for everyone"]


async def test_part_stops_delivery() -> None:
    """What alice sends after bob left #ops has no copy for him: asserted on what she
    wrote (bob's client would drop a late copy quietly, for PARTED_GRACE, and show none)."""
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        for person in (alice, bob, carol):
            person.connection.join("#ops")
        await _members(alice, "#ops", "bob", "carol")
        lines: list[str] = []
        chat = Chat(bob.connection, text_into(lines), rooms=RoomList(["#lobby", "#ops"], "#ops"))
        chat.handle_line("/part")
        assert lines[-1].endswith("you left #ops; typed lines go to #lobby")
        while "bob" in getattr(alice.connection.core.room("#ops"), "others", []):
            await alice.next_any_event()
        message_id = alice.connection.send_room("#ops", "after bob left")
        assert (await carol.next(MessageReceived)).text == "after bob left"
        copies = [
            item.to for send in relay.sends_from("alice") if send.id == message_id for item in send.items
        ]
        assert copies == ["carol"]
        alice.connection.send_room("#lobby", "in the lobby")
        assert (await bob.next(MessageReceived)).text == "in the lobby"  # the first he gets
        assert not [e for e in bob.seen if isinstance(e, MessageReceived) and e.room == "#ops"]


async def test_a_member_away_gets_the_room_s_messages_from_the_mailbox(tmp_path: Path) -> None:
    alice, carol = Profile("alice", tmp_path), Profile("carol", tmp_path)
    async with running(_relay(tmp_path, PrivateKey.generate())) as relay:
        async with carol.run(relay, rooms=("#lobby", "#ops")):
            pass  # carol is in #ops, and away now: a member still
        async with alice.run(relay, rooms=("#ops",)) as a:
            assert a.connection.core.away_in("#ops") == ["carol"]
            a.connection.send_room("#ops", "while you were out")
            queued = await a.next(MessageQueued)
            assert queued.nicks == ("carol",)
        async with carol.run(relay, rooms=("#lobby", "#ops")) as c:
            shown = await c.next(MailReceived)
            assert (shown.sender, shown.text, shown.room) == ("alice", "while you were out", "#ops")


async def test_a_private_message_reaches_someone_we_share_no_room_with() -> None:
    async with running_relay() as relay:
        alice = await connect(relay, "alice", rooms=("#a",))
        dave = await connect(relay, "dave", rooms=("#d",))
        try:
            assert "dave" not in alice.connection.core.peers  # no contact: no room shared
            alice.connection.send_private("dave", "a word outside the rooms")  # his bundle, fetched
            got = await dave.next(MessageReceived)
            assert (got.sender, got.text, got.private) == ("alice", "a word outside the rooms", True)
            dave.connection.send_private("alice", "and back")
            got = await alice.next(MessageReceived)
            assert (got.sender, got.text, got.private) == ("dave", "and back", True)
        finally:
            await alice.connection.close()
            await dave.connection.close()


async def test_the_chat_joins_lists_names_and_verifies_rooms() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        kept: list[tuple[list[str], str | None]] = []
        lines: list[str] = []
        chat = Chat(
            alice.connection, text_into(lines), keep_rooms=lambda names, now: kept.append((names, now))
        )
        chat.handle_line("/join #ops")
        assert lines[-1].endswith("you joined #ops; typed lines go there")
        assert kept[-1] == (["#lobby", "#ops"], "#ops")
        listed = await alice.next(RoomListed)
        assert listed.room == "#ops" and listed.online == ()
        bob.connection.join("#ops")
        await alice.next(RoomEntered)
        chat.handle_line("hello ops")  # to the current room
        got = await bob.next(MessageReceived)
        assert (got.text, got.room) == ("hello ops", "#ops")
        chat.handle_line("/rooms")
        assert "   1 #lobby  2/2" in lines and " * 2 #ops    2/2" in lines  # in columns
        chat.handle_line("/names")
        assert lines[-1].endswith("#ops, 2 members: you, bob (unverified)")
        chat.handle_line("/verify #ops")
        number = alice.connection.core.room_safety_number("#ops")
        assert "the safety number of #ops: " in lines[-2] and number[:5] in lines[-2]
        chat.handle_line(f"/verify #ops {number}")
        assert "matches" in lines[-1]
        chat.handle_line("/part #ops")
        chat.handle_line("/part")
        assert kept[-1][0] == [] and kept[-1][1] is None
        assert chat.handle_line("anyone?") and "join a room first" in lines[-1]
        with pytest.raises(CommandError):
            alice.connection.send_room("#ops", "gone")


async def test_mail_for_a_room_the_reader_is_not_in_is_dropped_and_said(tmp_path: Path) -> None:
    """The relay has alice believe carol is a member of #ops (away), so alice's #ops message
    is kept in carol's mailbox: carol, who is not in #ops, does not show it."""
    alice, carol = Profile("alice", tmp_path), Profile("carol", tmp_path)
    async with running(HostileRelay()) as relay:
        async with carol.run(relay) as c:
            carol_key = c.connection.core.keyring.identity.public_key
        async with alice.run(relay, rooms=("#ops",)) as a:
            relay.inject("alice", m.Members("#ops", (), (Member("carol", carol_key),)))
            while a.connection.core.away_in("#ops") != ["carol"]:
                await a.next_any_event()
            a.connection.send_room("#ops", "ops secret")
            await a.next(MessageQueued)
        async with carol.run(relay) as c:
            warning = await c.next(SecurityWarning)
            assert "for #ops, a room you are not in" in warning.text
            await asyncio.sleep(0.2)
            assert not [e for e in c.seen if isinstance(e, MessageReceived)]


async def test_rooms_survive_a_relay_that_forgot_them() -> None:
    """The relay restarts with nothing kept: each client names its rooms again when it
    registers, and #ops is as it was."""
    identities = {nick: PrivateKey.generate() for nick in ("alice", "bob")}
    first = Relay(LOOPBACK, 0)
    async with running(first):
        port = first.port
        alice = await connect(first, "alice", identities["alice"], reconnecting=True)
        bob = await connect(first, "bob", identities["bob"], reconnecting=True)
        for person in (alice, bob):
            person.connection.join("#ops")
        await _members(alice, "#ops", "bob")
        assert alice.connection.core.rooms == ["#lobby", "#ops"]
    for person in (alice, bob):
        await person.next(ConnectionLost)
    async with running(Relay(LOOPBACK, port, key=first.core.key)):  # restarted, knowing nobody
        for person in (alice, bob):
            await person.next(Registered)
        await _members(alice, "#ops", "bob")
        alice.connection.send_room("#ops", "still in ops")
        got = await bob.next(MessageReceived, lambda e: e.text == "still in ops")
        assert got.room == "#ops"
        for person in (alice, bob):
            await person.connection.close()


def _adds_a_reader(room: str, victim: str, reader: Member, when: list[bool]) -> Tamper:
    """A relay that, once ``when`` holds True, lists ``reader`` (away) among ``room``'s
    members to ``victim``, in the first list of a connection, as if they had always been."""

    def tamper(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if (
            when
            and isinstance(message, m.Members)
            and message.room == room
            and relay.nick(action.conn) == victim
        ):
            message = dataclasses.replace(message, away=(*message.away, reader))
        return [Outgoing(action.conn, message)]

    return tamper


async def test_a_reader_added_across_a_reconnect_is_said() -> None:
    mallory = Member("mallory", PrivateKey.generate().public_key)
    added: list[bool] = []
    async with running(HostileRelay(_adds_a_reader("#ops", "alice", mallory, added))) as relay:
        alice = await connect(relay, "alice", reconnecting=True, rooms=("#lobby", "#ops"))
        bob = await connect(relay, "bob", rooms=("#lobby", "#ops"))
        await _members(alice, "#ops", "bob")
        added.append(True)
        relay.hang_up("alice")
        changed = await alice.next(RoomChanged, lambda e: "away" in e.why)
        assert changed.why == "while you were away, mallory joined"
        for person in (alice, bob):
            await person.connection.close()


async def test_a_reader_added_between_two_runs_is_said(tmp_path: Path) -> None:
    mallory = Member("mallory", PrivateKey.generate().public_key)
    added: list[bool] = []
    alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
    async with running(HostileRelay(_adds_a_reader("#ops", "alice", mallory, added))) as relay:
        async with bob.run(relay, rooms=("#ops",)) as b:
            async with alice.run(relay, rooms=("#ops",)) as a:
                await _members(a, "#ops", "bob")
            added.append(True)
            async with alice.run(relay, rooms=("#ops",)) as a:
                changed = await a.next(RoomChanged, lambda e: "away" in e.why)
                assert changed.why == "while you were away, mallory joined"
            del b


async def test_mail_from_someone_who_has_since_left_the_room_is_shown_marked(tmp_path: Path) -> None:
    """alice says "bye all" in #ops and parts it while carol is away: carol's copy waits in
    her mailbox, and is shown to her (marked), not taken for an attack."""
    alice, carol = Profile("alice", tmp_path), Profile("carol", tmp_path)
    async with running(_relay(tmp_path, PrivateKey.generate())) as relay:
        async with carol.run(relay, rooms=("#ops",)):
            pass  # a member of #ops, away now
        async with alice.run(relay, rooms=("#ops",)) as a:
            while a.connection.core.away_in("#ops") != ["carol"]:
                await a.next_any_event()
            a.connection.send_room("#ops", "bye all")
            await a.next(MessageQueued)
            a.connection.part("#ops")
        async with carol.run(relay, rooms=("#ops",)) as c:
            got = await c.next(MailReceived)
            assert isinstance(got, MailFromPastMember)
            assert (got.sender, got.text, got.room) == ("alice", "bye all", "#ops")
            assert not [e for e in c.seen if isinstance(e, SecurityWarning)]
            assert "(has since left #ops)" in render(got)[0][1]


async def test_mail_for_a_room_parted_while_offline_is_dropped_quietly(tmp_path: Path) -> None:
    """carol /parts #ops while no connection is up; what was kept for her there meanwhile
    comes with her next connection: not shown (she left), and no alarm either."""
    alice, carol = Profile("alice", tmp_path), Profile("carol", tmp_path)
    async with running(_relay(tmp_path, PrivateKey.generate())) as relay:
        async with carol.run(relay, rooms=("#lobby", "#ops")):
            pass
        async with alice.run(relay, rooms=("#ops",)) as a:
            while a.connection.core.away_in("#ops") != ["carol"]:
                await a.next_any_event()
            a.connection.send_room("#ops", "for #ops")
            await a.next(MessageQueued)
        async with carol.run(relay, rooms=("#lobby",), parted=("#ops",)) as c:
            await asyncio.sleep(0.3)
            assert not [e for e in c.seen if isinstance(e, MessageReceived | SecurityWarning)]
            while not c.connection.events.empty():
                event = c.connection.events.get_nowait()
                assert not isinstance(event, MessageReceived | SecurityWarning), event


async def test_an_error_the_relay_makes_up_does_not_rewrite_the_profile_s_rooms() -> None:
    """Before, one Error("too_many_rooms") at registration, before the member lists, took
    every room not yet listed out of the chat and out of the profile."""
    made_up: list[bool] = []

    def error_first(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        if isinstance(action.message, m.Members) and relay.nick(action.conn) == "alice" and not made_up:
            made_up.append(True)
            return [Outgoing(action.conn, m.Error("too_many_rooms", "the relay is full")), action]
        return [action]

    async with running(HostileRelay(error_first)) as relay:
        alice = await connect(relay, "alice", rooms=("#lobby", "#ops"))
        try:
            kept: list[tuple[list[str], str | None]] = []
            lines: list[str] = []
            chat = Chat(
                alice.connection,
                text_into(lines),
                rooms=RoomList(["#lobby", "#ops"], "#ops"),
                keep_rooms=lambda names, now: kept.append((names, now)),
            )
            while not getattr(alice.connection.core.room("#ops"), "listed", False):
                chat.show(await alice.next_any_event())
            assert made_up and alice.connection.core.rooms == ["#lobby", "#ops"]
            assert chat.rooms.names == ["#lobby", "#ops"] and kept == []
        finally:
            await alice.connection.close()


async def test_a_refused_join_leaves_the_list_but_not_the_profile() -> None:
    async with running(HostileRelay(max_rooms=2)) as relay:  # #lobby and one more
        alice = await connect(relay, "alice")
        try:
            kept: list[tuple[list[str], str | None]] = []
            lines: list[str] = []
            chat = Chat(
                alice.connection, text_into(lines), keep_rooms=lambda names, now: kept.append((names, now))
            )
            chat.handle_line("/join #ops")
            chat.handle_line("/join #full")
            refused = await alice.next(RoomRefused)
            chat.show(refused)
            assert refused.room == "#full" and chat.rooms.names == ["#lobby", "#ops"]
            assert "you are not in #full: the relay refused it" in lines[-1]
            assert kept[-1][0] == ["#lobby", "#ops", "#full"]  # as /join kept it: not rewritten
            chat.handle_line("/part #ops")
            assert kept[-1][0] == ["#lobby", "#full"]  # still kept, for the next start
        finally:
            await alice.connection.close()


async def test_join_again_asks_again_for_a_room_whose_members_never_came() -> None:
    dropped: list[bool] = []

    def drop_first_answer(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        message = action.message
        if isinstance(message, m.Members) and message.room == "#slow" and not dropped:
            dropped.append(True)
            return []
        return [action]

    async with running(HostileRelay(drop_first_answer)) as relay:
        alice = await connect(relay, "alice")
        try:
            chat = Chat(alice.connection, text_into([]))
            chat.handle_line("/join #slow")
            chat.handle_line("/join #slow")  # no answer yet: asked again
            listed = await alice.next(RoomListed)
            assert listed.room == "#slow" and dropped
        finally:
            await alice.connection.close()


async def test_a_join_typed_while_a_reconnect_registers_is_not_lost() -> None:
    """The user types /join #ops while the new connection is registering (its welcome is on
    its way): the join reaches the relay once the connection is up."""
    client: list[Client] = []

    def join_during_welcome(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        if isinstance(action.message, m.Welcome) and client and relay.nick(action.conn) == "alice":
            client.pop().join("#ops")  # (the Client's connection is still the old one)
        return [action]

    async with running(HostileRelay(join_during_welcome)) as relay:
        alice = await connect(relay, "alice", reconnecting=True)
        try:
            assert isinstance(alice.connection, Client)
            client.append(alice.connection)
            relay.hang_up("alice")
            listed = await alice.next(RoomListed)
            assert listed.room == "#ops" and "#ops" in alice.connection.core.rooms
        finally:
            await alice.connection.close()

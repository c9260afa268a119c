"""A hostile relay inside a cluster is no worse than a hostile single relay: the attacker is
one relay of the cluster, its victim a client on it, the other party on an honest relay
whose copies reach the attacker through NATS. And a member that lies in the cluster's
nicks bucket (another key for a nick) is caught by the clients' pins, as a single relay's
lying directory is. So do the room attacks: a fake member shown by the hostile relay to
its client, a fake membership it puts in the cluster's rooms bucket, another key for a
member shown in a room's list: the detections of a single relay's lies still fire."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
from nacl.public import PrivateKey
from test_mailbox_e2e import Profile
from test_room_attacks import announced

from e2echat.client.core import MessageReceived, SecurityWarning, SplitView
from e2echat.client.events import KeyChanged, RoomChanged
from e2echat.relay.cluster.relay import ClusterRelay
from e2echat.relay.cluster.roomlink import rooms_bucket
from e2echat.relay.cluster.rooms import Membership, encode_membership, member_key
from e2echat.relay.cluster.wire import Names, encode_claim, nick_key
from e2echat.wire import messages as m
from e2echat.wire.objects import PeerInfo

from hostile import HostileRelay, Tamper, deliveries, substitute_keys
from nats_support import NatsServer
from relay_frames import Outgoing
from support import LOOPBACK, WAIT, Peer, connect, meet, running


class HostileMember(HostileRelay, ClusterRelay):
    """``HostileRelay``'s seams on a relay of a cluster."""

    def __init__(self, tamper: Tamper | None = None, **options: Any) -> None:
        super().__init__(tamper, **options)


@contextlib.asynccontextmanager
async def victims(
    server: NatsServer, tamper: Tamper | None
) -> AsyncIterator[tuple[HostileMember, Peer, Peer]]:
    """alice on an honest relay, bob on the hostile one; each has pinned the other."""
    async with (
        running(ClusterRelay(LOOPBACK, 0, cluster=server.url)) as honest,
        running(HostileMember(None, cluster=server.url)) as hostile,
    ):
        alice = await connect(honest, "alice")
        bob = await connect(hostile, "bob")
        try:
            await meet(alice, bob)
            hostile.tamper = tamper  # from now on
            yield hostile, alice, bob
        finally:
            await alice.connection.close()
            await bob.connection.close()


def _first_from_alice(rewrite: Tamper) -> Tamper:
    done: list[bool] = []

    def tamper(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if done or deliver.sender != "alice":
            return [action]
        done.append(True)
        return rewrite(relay, action)

    return deliveries(tamper)


async def test_a_body_changed_by_a_hostile_member_is_not_shown(nats_server: NatsServer) -> None:
    def flip(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        assert isinstance(action.message, m.Deliver)
        body = bytearray(action.message.body)
        body[-1] ^= 1
        return [Outgoing(action.conn, m.Deliver("alice", bytes(body)))]

    async with victims(nats_server, _first_from_alice(flip)) as (_, alice, bob):
        alice.connection.send_private("bob", "changed on the way")
        assert isinstance(await bob.next_delivery(), SecurityWarning)
        alice.connection.send_private("bob", "the next one")  # the session survives
        await bob.next(MessageReceived, lambda e: e.text == "the next one")
        # Not shown as it came; at most once, as sent again by alice, whose copy bob reported.
        assert sum(isinstance(e, MessageReceived) and e.text == "changed on the way" for e in bob.seen) <= 1


async def test_a_copy_relabelled_by_a_hostile_member_is_not_shown_as_from_anyone(
    nats_server: NatsServer,
) -> None:
    def relabel(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        assert isinstance(action.message, m.Deliver)
        return [Outgoing(action.conn, m.Deliver("mallory", action.message.body))]

    async with victims(nats_server, _first_from_alice(relabel)) as (_, alice, bob):
        alice.connection.send_private("bob", "from alice")
        warning = await bob.next_delivery()
        assert isinstance(warning, SecurityWarning)


async def test_a_copy_replayed_by_a_hostile_member_is_shown_once(nats_server: NatsServer) -> None:
    twice = deliveries(lambda relay, action, d: [action, action] if d.sender == "alice" else [action])
    async with victims(nats_server, twice) as (_, alice, bob):
        alice.connection.send_private("bob", "once only")
        await bob.next(MessageReceived, lambda e: e.text == "once only")
        alice.connection.send_private("bob", "and then")
        await bob.next(MessageReceived, lambda e: e.text == "and then")
        assert sum(isinstance(e, MessageReceived) and e.text == "once only" for e in bob.seen) == 1
        assert any(isinstance(e, SecurityWarning) and "replay" in e.text for e in bob.seen)


async def test_another_key_put_in_the_bucket_by_a_member_is_caught_by_the_pin(
    nats_server: NatsServer,
) -> None:
    async with (
        running(ClusterRelay(LOOPBACK, 0, cluster=nats_server.url)) as first,
        running(ClusterRelay(LOOPBACK, 0, cluster=nats_server.url)) as second,
        running(HostileMember(None, cluster=nats_server.url)) as hostile,
    ):
        alice, bob = await connect(first, "alice"), await connect(second, "bob")
        try:
            await meet(alice, bob)  # bob has pinned alice's key
            # The hostile member says, cluster-wide, that alice is on it with keys of its own.
            forged = PeerInfo("alice", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
            client = await nats.connect(nats_server.url, connect_timeout=WAIT, allow_reconnect=False)
            try:
                kv = await client.jetstream().key_value(Names("e2echat").nicks_bucket)
                await kv.put(nick_key("alice"), encode_claim(hostile.node, forged))
            finally:
                await client.close()
            await bob.next(KeyChanged, lambda e: e.nick == "alice")
            # (alice's own relay hangs up on her: her nick is someone else's now. Denial of
            # service, which a hostile single relay has too.)
        finally:
            await alice.connection.close()
            await bob.connection.close()


async def _in_room(room: str, *people: Peer) -> None:
    """Until each of ``people`` sees all the others in ``room``."""
    for person in people:
        others = {p.nick for p in people} - {person.nick}
        while not others <= set(getattr(person.connection.core.room(room), "others", [])):
            await person.next_any_event()


async def test_a_reader_a_hostile_member_adds_for_its_client_splits_the_room_s_number(
    nats_server: NatsServer,
) -> None:
    async with (
        running(ClusterRelay(LOOPBACK, 0, cluster=nats_server.url)) as honest,
        running(HostileMember(None, cluster=nats_server.url)) as hostile,
    ):
        alice = await connect(honest, "alice", rooms=("#ops",))
        bob = await connect(hostile, "bob", rooms=("#ops",))
        mallory = await connect(honest, "mallory", rooms=("#elsewhere",))
        try:
            await _in_room("#ops", alice, bob)
            numbers = {p.connection.core.room_safety_number("#ops") for p in (alice, bob)}
            assert len(numbers) == 1  # one room across the relays: one number
            hostile.inject("bob", m.Entered("#ops", announced(mallory)))
            await bob.next(RoomChanged, lambda e: e.room == "#ops")
            assert bob.connection.core.room_safety_number("#ops") not in numbers
            bob.connection.send_room("#ops", "who is here?")
            assert await alice.next_delivery() == SplitView("bob", "#ops")
        finally:
            for peer in (alice, bob, mallory):
                await peer.connection.close()


async def test_a_membership_a_hostile_member_puts_in_the_bucket_is_said(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        running(ClusterRelay(LOOPBACK, 0, cluster=nats_server.url)) as honest,
        running(HostileMember(None, cluster=nats_server.url)) as hostile,
    ):
        alice, bob = Profile("alice", tmp_path), Profile("bob", tmp_path)
        async with bob.run(honest, rooms=("#ops",)) as b:
            async with alice.run(honest, rooms=("#ops",)) as a:
                await _in_room("#ops", a, b)
            # The hostile member says, cluster-wide, that "mallory" (its key) is in #ops.
            fake = Membership(
                "#ops", "mallory", bytes(PrivateKey.generate().public_key), time.time(), hostile.node
            )
            client = await nats.connect(nats_server.url, connect_timeout=WAIT, allow_reconnect=False)
            try:
                kv = await client.jetstream().key_value(rooms_bucket("e2echat"))
                await kv.put(member_key("#ops", "mallory"), encode_membership(fake))
            finally:
                await client.close()
            # bob, online, is sent #ops's list again (mallory never shows up online) and
            # told it changed; whoever lists #ops next is told a reader came.
            await b.next(RoomChanged, lambda e: e.why == "the relay's list of its members changed")
            assert "mallory" in b.connection.core.away_in("#ops")
            async with alice.run(honest, rooms=("#ops",)) as a:
                changed = await a.next(RoomChanged, lambda e: "away" in e.why)
                assert changed.why == "while you were away, mallory joined"
                assert "mallory" in a.connection.core.away_in("#ops")


async def test_another_key_for_a_room_member_shown_by_a_hostile_member_is_caught(
    nats_server: NatsServer,
) -> None:
    async with victims(nats_server, None) as (hostile, alice, bob):
        alice.connection.join("#ops")
        bob.connection.join("#ops")
        await _in_room("#ops", alice, bob)
        # bob has pinned alice's key: the hostile relay shows him another, in #ops's list.
        hostile.tamper = substitute_keys("bob", "alice", identity_key=PrivateKey.generate().public_key)
        bob.connection.part("#ops")
        bob.connection.join("#ops")
        await bob.next(KeyChanged, lambda e: e.nick == "alice")

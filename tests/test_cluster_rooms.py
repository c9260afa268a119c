"""Rooms across the relays of a cluster on a real NATS server: the members a client sees,
who joins and parts, presence only to contacts, room lines and their receipts, and a
member away on another relay whose copy waits in its mailbox there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey
from test_chaos import _kill as _kill_sockets
from test_mailbox_e2e import Profile

from e2echat.client.core import MessageReceived
from e2echat.client.events import (
    MailReceived,
    MessageQueued,
    PeerJoined,
    RoomEntered,
    RoomParted,
    SecurityWarning,
)
from e2echat.client.receipts import DeliveryReport
from e2echat.relay.cluster.relay import ClusterRelay
from e2echat.relay.sqlite_store import SqliteStore
from e2echat.ui.chat import Chat
from e2echat.ui.roomlist import RoomList

import nats_support
from nats_support import NatsServer
from support import LOOPBACK, WAIT, Peer, connect, running, text_into

KEY = PrivateKey.generate()


def cluster(
    server: NatsServer, count: int, **options: Any
) -> AbstractAsyncContextManager[list[ClusterRelay]]:
    """``count`` relays of one cluster on ``server`` (one key, as a cluster has)."""
    return nats_support.cluster(server, count, key=KEY, **options)


async def _members(peer: Peer, room: str, *nicks: str, away: tuple[str, ...] = ()) -> None:
    """Until ``peer`` sees exactly ``nicks`` in ``room`` (and ``away`` among them away)."""

    def seen() -> bool:
        joined = peer.connection.core.room(room)
        others = set(getattr(joined, "others", ()))
        return others == set(nicks) and set(peer.connection.core.away_in(room)) == set(away)

    async def until() -> None:
        while not seen():
            await peer.next_any_event()

    try:
        await asyncio.wait_for(until(), WAIT)
    except TimeoutError:
        joined = peer.connection.core.room(room)
        raise AssertionError((peer.nick, room, getattr(joined, "others", None))) from None


async def test_three_relays_one_room_same_members_same_safety_number_lines_and_receipts(
    nats_server: NatsServer,
) -> None:
    async with cluster(nats_server, 3) as relays:
        nicks = ("alice", "bob", "carol")
        people = [await connect(relay, nick) for relay, nick in zip(relays, nicks, strict=True)]
        try:
            for peer in people:
                await _members(peer, "#lobby", *(set(nicks) - {peer.nick}))
            numbers = {peer.connection.core.room_safety_number("#lobby") for peer in people}
            assert len(numbers) == 1  # /verify #lobby agrees on every relay
            for peer in people:  # and /names, /rooms say the same room
                lines: list[str] = []
                chat = Chat(peer.connection, text_into(lines), rooms=RoomList(["#lobby"], "#lobby"))
                chat.handle_line("/names #lobby")
                assert "#lobby, 3 members:" in lines[-1]
                assert all(nick in lines[-1] for nick in set(nicks) - {peer.nick})
                chat.handle_line("/rooms")
                assert lines[-1].split() == ["*", "1", "#lobby", "3/3"]
            alice, bob, carol = people
            message_id = alice.connection.send_room("#lobby", "to the room, across relays")
            for other in (bob, carol):
                got = await other.next(MessageReceived, lambda e: e.sender == "alice")
                assert (got.text, got.room) == ("to the room, across relays", "#lobby")
            report = await alice.next(DeliveryReport, lambda e: e.message_id == message_id)
            while set(report.delivered) != {"bob", "carol"}:
                report = await alice.next(DeliveryReport, lambda e: e.message_id == message_id)
            assert not report.failed
        finally:
            for peer in people:
                await peer.connection.close()


async def test_joins_and_parts_are_seen_across_relays(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2) as (one, other):
        alice = await connect(one, "alice", rooms=("#ops",))
        bob = await connect(other, "bob", rooms=("#lobby",))
        try:
            bob.connection.join("#ops")
            entered = await alice.next(RoomEntered)
            assert (entered.room, entered.nick) == ("#ops", "bob")
            await _members(bob, "#ops", "alice")
            await _members(alice, "#ops", "bob")
            bob.connection.send_room("#ops", "hello ops")
            got = await alice.next(MessageReceived, lambda e: e.sender == "bob")
            assert (got.text, got.room) == ("hello ops", "#ops")
            bob.connection.part("#ops")
            parted = await alice.next(RoomParted)
            assert (parted.room, parted.nick) == ("#ops", "bob")
            await _members(alice, "#ops")
        finally:
            await alice.connection.close()
            await bob.connection.close()


async def test_presence_across_relays_goes_only_to_contacts(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2) as (one, other):
        alice = await connect(one, "alice", rooms=("#a",))
        bob = await connect(other, "bob", rooms=("#b",))
        people = [alice, bob]
        try:
            carol = await connect(other, "carol", rooms=("#a",))
            people.append(carol)
            await _members(alice, "#a", "carol")
            # dave, on alice's relay, shares a room with bob only.
            dave = await connect(one, "dave", rooms=("#b",))
            people.append(dave)
            await _members(bob, "#b", "dave")
            assert "dave" in bob.connection.core.peers
            await dave.connection.close()
            await carol.connection.close()
            await _members(alice, "#a", "carol", away=("carol",))
            await _members(bob, "#b", "dave", away=("dave",))
            # Not contacts: never announced, and the welcomes listed no stranger.
            assert "carol" not in bob.connection.core.peers and "dave" not in alice.connection.core.peers
            assert not [e for e in alice.seen if isinstance(e, PeerJoined) and e.nick in ("bob", "dave")]
            assert not [e for e in bob.seen if isinstance(e, PeerJoined) and e.nick in ("alice", "carol")]
        finally:
            for peer in people:
                await peer.connection.close()


async def test_a_member_away_on_another_relay_gets_a_room_line_when_back(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with cluster(nats_server, 2) as (one, other):
        for back_on, name in ((other, "carol"), (one, "erin")):
            away, alice = Profile(name, tmp_path), Profile(f"alice{name}", tmp_path)
            room = f"#ops-{name}"
            async with away.run(other, rooms=(room,)):
                pass  # a member of the room, kept by the second relay, and away now
            async with alice.run(one, rooms=(room,)) as a:
                await _members(a, room, name, away=(name,))
                a.connection.send_room(room, "while you were out")
                queued = await a.next(MessageQueued)
                assert queued.nicks == (name,)
            # Back on the relay that kept it, or on another (its mailbox is handed over).
            async with away.run(back_on, rooms=(room,)) as c:
                shown = await c.next(MailReceived)
                assert (shown.sender, shown.text, shown.room) == (f"alice{name}", "while you were out", room)


async def test_a_line_sent_right_after_a_join_reaches_the_other_relay_after_the_join(
    nats_server: NatsServer,
) -> None:
    """The join crosses NATS through the rooms bucket, the line through a request: the
    line waits for the bucket to be read that far, so the member on the other relay knows
    the sender is in the room when it comes (else its client drops it, and says so)."""
    async with cluster(nats_server, 2) as (one, other):
        rooms = tuple(f"#r{number}" for number in range(10))
        alice = await connect(one, "alice", rooms=rooms)
        bob = await connect(other, "bob", rooms=("#lobby",))
        # The first relay reads the bucket late (as a loaded machine might): each change
        # is handled a while after it came.
        link = one._rooms
        changed = link._changed

        def late(*change: Any) -> None:
            asyncio.get_running_loop().call_later(0.2, changed, *change)

        link._changed = late  # type: ignore[method-assign,assignment]
        try:
            for room in rooms:
                bob.connection.join(room)
                await _members(bob, room, "alice")  # its list came: alice is in it
                bob.connection.send_room(room, f"first words in {room}")
            for room in rooms:
                got = await alice.next(MessageReceived, lambda e: e.sender == "bob")
                assert (got.text, got.room) == (f"first words in {room}", room)
            assert not [e for e in alice.seen if isinstance(e, SecurityWarning)]
        finally:
            await alice.connection.close()
            await bob.connection.close()


async def _kill(relay: ClusterRelay) -> None:
    """As ``kill -9`` would: its sockets and its link to NATS gone at once, nothing given
    up (its nicks and memberships stay in the buckets), no heartbeat from now on."""
    await _kill_sockets(relay)
    tasks = list(relay._tasks)
    for task in tasks:
        task.cancel()
    # Bounded: a cancel that lands as a nats-py wait_for completes can be swallowed
    # (Python 3.11), and such a task then idles; with no NATS link it does nothing.
    await asyncio.wait(tasks, timeout=1.0)
    nc, relay._nc = relay._nc, None
    assert nc is not None
    await nc.close()


@pytest.mark.parametrize("own_store", [False, True])
async def test_a_relay_killed_its_members_away_stay_and_a_line_for_them_is_not_lost(
    nats_server: NatsServer, tmp_path: Path, own_store: bool
) -> None:
    """The memberships a killed relay kept stay the cluster's; a room line for its member
    away is queued in the cluster's store (JetStream, the default) and shown when she is
    back, or, if that relay kept her mailbox in a store of its own (``--store``),
    reported NOT delivered: never silently lost."""
    async with cluster(nats_server, 1) as (survivor,):
        options: dict[str, Any] = {"store": SqliteStore(tmp_path / "relay.db")} if own_store else {}
        doomed = ClusterRelay(LOOPBACK, 0, cluster=nats_server.url, key=KEY, **options)
        await doomed.start()
        carol, alice = Profile("carol", tmp_path), Profile("alice", tmp_path)
        async with carol.run(doomed, rooms=("#ops",)):
            pass  # a member of #ops, kept by the relay about to die, and away now
        await _kill(doomed)
        async with alice.run(survivor, rooms=("#ops",)) as a:
            await _members(a, "#ops", "carol", away=("carol",))  # still a member
            message_id = a.connection.send_room("#ops", "for carol, whose relay died")
            if own_store:
                report = await a.next(DeliveryReport, lambda e: e.message_id == message_id)
                assert [nick for nick, _ in report.failed] == ["carol"] and not report.delivered
            else:
                queued = await a.next(MessageQueued)
                assert queued.nicks == ("carol",)
        # carol back, on the relay that lives: she takes her memberships along.
        async with carol.run(survivor, rooms=("#ops",)) as c, alice.run(survivor, rooms=("#ops",)) as a:
            if not own_store:
                shown = await c.next(MailReceived)
                assert (shown.sender, shown.text) == ("alice", "for carol, whose relay died")
            await _members(c, "#ops", "alice")
            await _members(a, "#ops", "carol")
            assert survivor.cluster_core.kept.rooms.is_member("carol", "#ops")
        if own_store and doomed._journal is not None:
            await doomed._journal.close()


async def test_a_relay_restarted_with_its_store_keeps_its_members_away_in_the_cluster(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A restarted relay is a new node: it puts the memberships its store kept under its
    new id, and a line for a member away there is queued there again."""
    path = tmp_path / "relay.db"
    async with cluster(nats_server, 1) as (survivor,):
        doomed = ClusterRelay(LOOPBACK, 0, cluster=nats_server.url, key=KEY, store=SqliteStore(path))
        await doomed.start()
        carol, alice = Profile("carol", tmp_path), Profile("alice", tmp_path)
        async with carol.run(doomed, rooms=("#ops",)):
            pass  # a member of #ops, kept (and stored) by that relay, away now
        await _kill(doomed)
        assert doomed._journal is not None
        await doomed._journal.close()  # the process is gone: so is its hold on the file
        async with running(
            ClusterRelay(LOOPBACK, 0, cluster=nats_server.url, key=KEY, store=SqliteStore(path))
        ) as back:
            assert back.node != doomed.node
            await asyncio.wait_for(
                _until(lambda: survivor.cluster_core.remote_rooms.node_of("carol") == back.node), WAIT
            )
            async with alice.run(survivor, rooms=("#ops",)) as a:
                await _members(a, "#ops", "carol", away=("carol",))
                a.connection.send_room("#ops", "for carol, kept again")
                queued = await a.next(MessageQueued)
                assert queued.nicks == ("carol",)
            async with carol.run(survivor, rooms=("#ops",)) as c:  # her mail follows her
                shown = await c.next(MailReceived)
                assert (shown.sender, shown.text) == ("alice", "for carol, kept again")


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)

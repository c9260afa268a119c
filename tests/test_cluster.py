"""Relays in a cluster on a real NATS server (``e2echat relay --cluster``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nacl.public import PrivateKey
from nats.aio.msg import Msg

from e2echat.client.core import MessageReceived, Registered
from e2echat.client.events import ConnectionLost, Disconnected, MessageQueued, PeerJoined, PeerLeft
from e2echat.client.receipts import DeliveryReport
from e2echat.client.reconnect import Client
from e2echat.client.relays import parse_relays
from e2echat.errors import RegistrationRefused
from e2echat.relay.cluster.relay import HELD_AT_MOST, ClusterRelay
from e2echat.relay.cluster.rooms import ORDERED
from e2echat.relay.cluster.wire import DEAD_AFTER, HEARTBEAT, new_node_id
from e2echat.store.keyfile import load_or_create_relay_key
from e2echat.wire import messages as m
from e2echat.wire.objects import Envelope

from nats_support import NatsServer, cluster
from support import (
    LOOPBACK,
    REPO,
    WAIT,
    Listening,
    Peer,
    RawClient,
    connect,
    meet,
    run_cli,
    start_relay_process,
)


async def test_the_nats_fixture_serves_jetstream(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
    try:
        kv = await client.jetstream().create_key_value(bucket="probe")
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
    finally:
        await asyncio.wait_for(client.close(), 5)


async def test_clients_on_two_relays_see_and_write_to_each_other(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2) as (one, other):
        alice = await connect(one, "alice")
        bob = await connect(other, "bob")
        try:
            await meet(alice, bob)  # a private message each way, across the relays
        finally:
            await alice.connection.close()
            await bob.connection.close()


async def test_of_two_relays_racing_on_a_nick_exactly_one_lets_it_in(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2) as (one, other):
        for round_ in range(5):
            nick = f"carol{round_}"
            # "Carol" on the other relay: a nick that looks the same is the same nick.
            attempts = [connect(one, nick), connect(other, nick.capitalize())]
            results = await asyncio.gather(*attempts, return_exceptions=True)
            winners = [result for result in results if isinstance(result, Peer)]
            losers = [result for result in results if isinstance(result, RegistrationRefused)]
            assert len(winners) == 1 and len(losers) == 1, results
            assert losers[0].code in ("nick_taken", "nick_confusable")
            for winner in winners:
                await winner.connection.close()


async def test_a_nick_online_on_one_relay_is_refused_on_another(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2) as (one, other):
        alice = await connect(one, "alice")
        try:
            loop = asyncio.get_running_loop()
            asked = loop.time()
            with pytest.raises(RegistrationRefused) as refused:
                await connect(other, "alice")
            assert refused.value.code == "nick_taken"
            # At its relay's next heartbeat, not held until a dead relay would be taken so.
            assert loop.time() - asked < DEAD_AFTER
        finally:
            await alice.connection.close()
        # Gone from the first relay: free on the second.
        again = await asyncio.wait_for(_registered_when_free(other, "alice"), 3 * WAIT)
        await again.connection.close()


async def _registered_when_free(relay: ClusterRelay, nick: str, **options: Any) -> Peer:
    """Register ``nick`` on ``relay`` as soon as the cluster lets it (its release travels
    through NATS)."""
    while True:
        try:
            return await connect(relay, nick, **options)
        except RegistrationRefused:
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_the_relay_says_in_one_line_that_nats_is_out_of_reach() -> None:
    code, _, err = await run_cli(
        "relay", "--host", LOOPBACK, "--port", "0", "--no-announce", "--cluster", "nats://127.0.0.1:1"
    )
    assert code != 0
    assert err.strip().splitlines() == [err.strip()], err
    assert "cannot reach the cluster's NATS server at nats://127.0.0.1:1" in err


async def test_the_relay_says_in_one_line_that_the_nats_client_is_missing() -> None:
    # As if nats-py were not installed: an import of it fails.
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "from e2echat.cli import main\n"
        f"sys.exit(main(['relay', '--host', '{LOOPBACK}', '--port', '0', '--cluster', 'nats://{LOOPBACK}:1']))\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO
    )
    _, err = await asyncio.wait_for(process.communicate(), 3 * WAIT)
    assert process.returncode != 0
    assert (
        err.decode().strip()
        == "e2echat: --cluster needs the NATS client: pip install 'e2echat[cluster]' (nats-py)"
    )


async def test_three_relays_messages_with_receipts_and_presence(nats_server: NatsServer) -> None:
    # Private messages: room memberships are each relay's own (not yet kept in JetStream),
    # so a room's member list names only the members on the same relay.
    async with cluster(nats_server, 3) as relays:
        alice, bob, carol = [await connect(relay, nick) for relay, nick in zip(relays, NICKS, strict=True)]
        try:
            for one in (alice, bob, carol):
                await asyncio.wait_for(_sees(one, set(NICKS) - {one.nick}), WAIT)
            for other in (bob, carol):
                message_id = alice.connection.send_private(other.nick, "to you, on another relay")
                got = await other.next(MessageReceived, lambda e: e.sender == "alice")
                assert got.text == "to you, on another relay"
                # The read receipt comes back across the relays.
                report = await alice.next(DeliveryReport, _report_of(message_id))
                assert report.delivered == (other.nick,) and not report.failed
            # Presence crosses the relays both ways.
            await carol.connection.close()
            for other in (alice, bob):
                await other.next(PeerLeft, lambda e: e.nick == "carol")
            dave = await connect(relays[2], "dave")
            for other in (alice, bob):
                await other.next(PeerJoined, lambda e: e.nick == "dave")
            await dave.connection.close()
        finally:
            for peer in (alice, bob, carol):
                await peer.connection.close()


async def test_a_send_crosses_nats_once_per_relay_with_recipients(nats_server: NatsServer) -> None:
    watcher = await nats.connect(nats_server.url, connect_timeout=WAIT, allow_reconnect=False)
    seen: list[bytes] = []

    async def count(msg: Msg) -> None:
        seen.append(msg.data)

    async with cluster(nats_server, 2) as (one, other):
        # What reaches the second relay (the answers going back to the first are not counted).
        await watcher.subscribe(f"e2echat.e2echat.node.{other.node}", cb=count)
        alice, bob, carol = (
            await RawClient.open(one),
            await RawClient.open(other),
            await RawClient.open(other),
        )
        try:
            await alice.register("alice")
            await bob.register("bob")
            await carol.register("carol")
            await asyncio.wait_for(
                _until(lambda: {"bob", "carol"} <= set(one.cluster_core.remote.peers)), WAIT
            )
            items = (Envelope("bob", b"opaque ciphertext 1"), Envelope("carol", b"opaque ciphertext 2"))
            alice.send(m.Send(1, items))
            routed = await alice.receive_kind(m.Routed)
            assert sorted(routed.delivered) == ["bob", "carol"]
            for peer, body in ((bob, b"opaque ciphertext 1"), (carol, b"opaque ciphertext 2")):
                delivered = await peer.receive_kind(m.Deliver)
                assert (delivered.sender, delivered.body) == ("alice", body)  # as sent: unopened
            await watcher.flush()
            forwards = [data for data in seen if data[:1] == ORDERED]  # a send's copies
            assert len(forwards) == 1  # one request for both copies
        finally:
            for peer in (alice, bob, carol):
                peer.close()
            await watcher.close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


async def _sees(peer: Peer, nicks: set[str]) -> None:
    while not set(peer.connection.core.peers) >= nicks:
        peer.seen.append(await peer.connection.events.get())


NICKS = ("alice", "bob", "carol")


@contextlib.asynccontextmanager
async def relay_process(
    server: NatsServer, *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Listening]]:
    """``e2echat relay --cluster`` in a process of its own (to be killed), and its port."""
    process, port, _ = await start_relay_process(
        "--port", "0", "--no-announce", "--cluster", server.url, *args
    )
    try:
        yield process, _Port(port)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@dataclass
class _Port:
    port: int


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_killed_relays_clients_leave_within_seconds_and_may_register_elsewhere(
    nats_server: NatsServer,
) -> None:
    async with cluster(nats_server, 1) as (survivor,), relay_process(nats_server) as (process, doomed):
        bob = await connect(survivor, "bob")
        alice = await connect(doomed, "alice")
        try:
            await asyncio.wait_for(_sees(bob, {"alice"}), WAIT)
            process.kill()  # kill -9: no goodbye, no release
            loop = asyncio.get_running_loop()
            killed = loop.time()
            await asyncio.wait_for(bob.next(PeerLeft, lambda e: e.nick == "alice"), 2 * WAIT)
            assert loop.time() - killed < DEAD_AFTER + 3
            # Its nick is free: alice registers on the relay that is left.
            again = await asyncio.wait_for(_registered_when_free(survivor, "alice"), 2 * WAIT)
            await again.connection.close()
        finally:
            await bob.connection.close()
            await alice.connection.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_killed_relays_clients_register_elsewhere_on_their_first_try(
    nats_server: NatsServer,
) -> None:
    async with cluster(nats_server, 1) as (survivor,), relay_process(nats_server) as (process, doomed):
        alice = await connect(doomed, "alice")
        bob = await connect(survivor, "bob")
        try:
            await asyncio.wait_for(_sees(bob, {"alice"}), WAIT)
            (node,) = survivor._heard  # the doomed relay
            process.kill()
            loop = asyncio.get_running_loop()
            killed = loop.time()
            # Its nick still claimed by the killed relay: held until that relay is taken
            # for dead, then let in (no refusal, so no backoff).
            again = await asyncio.wait_for(connect(survivor, "alice"), DEAD_AFTER + 2 * WAIT)
            assert loop.time() - killed < DEAD_AFTER + 3
            await again.connection.close()
            # Taken for dead: a claim on another nick it held, its key not freed yet, is
            # not held DEAD_AFTER anew.
            assert not await asyncio.wait_for(survivor._alive(node), HEARTBEAT)
        finally:
            await bob.connection.close()
            await alice.connection.close()


async def test_claims_held_for_a_relay_not_heard_are_bounded(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 1) as (relay,):
        relay._held = HELD_AT_MOST  # as many registers held as may be
        try:
            # One more is not held: its nick counts as taken at once.
            assert await asyncio.wait_for(relay._alive(new_node_id()), HEARTBEAT)
        finally:
            relay._held = 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_client_fails_over_to_the_next_relay_when_its_own_is_killed(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # One key for the cluster: the client answers the next relay as the same relay.
    key_path = tmp_path / "relay.key"
    key, _ = load_or_create_relay_key(key_path)
    async with (
        cluster(nats_server, 1, key=key) as (survivor,),
        relay_process(nats_server, "--key", str(key_path)) as (process, doomed),
    ):
        alice = await connect(doomed, "alice", reconnecting=True, fallbacks=[(LOOPBACK, survivor.port)])
        bob = await connect(survivor, "bob")
        try:
            await meet(alice, bob)
            process.kill()
            loop = asyncio.get_running_loop()
            killed = loop.time()
            await alice.next(ConnectionLost)
            await asyncio.wait_for(alice.next(Registered), 3 * WAIT)
            assert isinstance(alice.connection, Client) and alice.connection.port == survivor.port
            assert loop.time() - killed < DEAD_AFTER + 3
            alice.connection.send_private("bob", "from the relay that is left")
            got = await bob.next(MessageReceived, lambda e: e.sender == "alice")
            assert got.text == "from the relay that is left"
        finally:
            await alice.connection.close()
            await bob.connection.close()


async def test_a_client_tries_the_relays_in_order_until_one_answers(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 1) as (relay,):
        with socket.socket() as unused:  # a port nobody listens on
            unused.bind((LOOPBACK, 0))
            closed = unused.getsockname()[1]
        alice = await connect(_Port(closed), "alice", reconnecting=True, fallbacks=[(LOOPBACK, relay.port)])
        try:
            assert isinstance(alice.connection, Client) and alice.connection.port == relay.port
        finally:
            await alice.connection.close()


@pytest.mark.parametrize(
    ("text", "relays"),
    [
        ("a", [("a", 8000)]),
        ("a:1,b", [("a", 1), ("b", 8000)]),
        (" a , b:2 ", [("a", 8000), ("b", 2)]),
        ("[::1]:7,[fe80::1]", [("::1", 7), ("fe80::1", 8000)]),
        ("a,a:8000", [("a", 8000)]),  # the same relay once
    ],
)
def test_the_relays_to_try_are_read_from_host(text: str, relays: list[tuple[str, int]]) -> None:
    assert parse_relays(text, 8000) == relays


@pytest.mark.parametrize("text", ["", "a,", "a:0", "a:65536", "a:x", "[::1]x", "a b"])
def test_a_host_list_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_relays(text, 8000)


async def test_a_client_does_not_fail_over_to_a_relay_with_another_key(nats_server: NatsServer) -> None:
    # Not the cluster's key: perhaps an impostor at that address. It gets nothing.
    async with cluster(nats_server, 1) as (impostor,), cluster(nats_server, 1) as (first,):
        assert impostor.core.key.public_key != first.core.key.public_key
        alice = await connect(first, "alice", reconnecting=True, fallbacks=[(LOOPBACK, impostor.port)])
        try:
            await first.stop("going")
            lost = await alice.next(Disconnected)
            assert "another key" in lost.detail
            assert "alice" not in impostor.core.online
        finally:
            await alice.connection.close()


async def test_mail_queued_via_one_relay_is_drained_via_another(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2) as (one, other):
        key = PrivateKey.generate()
        alice, dave = await connect(one, "alice"), await connect(one, "dave", identity=key)
        try:
            await meet(alice, dave)
            keyring, pins = dave.connection.core.keyring, dave.connection.core.known_peers
            await dave.connection.close()
            await alice.next(PeerLeft, lambda e: e.nick == "dave")
            for text in ("while you were away", "and one more"):
                alice.connection.send_private("dave", text)
                await alice.next(MessageQueued)
            # dave comes back on the other relay, with its sessions: the mail follows it.
            back = await asyncio.wait_for(
                _registered_when_free(other, "dave", identity=key, keyring=keyring, known_peers=pins), WAIT
            )
            try:
                for text in ("while you were away", "and one more"):
                    await back.next(MessageReceived, _text_is(text))
            finally:
                await back.connection.close()
            # Handed over: the first relay drops it once told it is kept (a message of its own).
            await asyncio.wait_for(_until(lambda: not one.core.kept.mailboxes.items("dave")), WAIT)
        finally:
            await alice.connection.close()


async def test_mail_is_not_handed_to_another_key_of_the_nick(nats_server: NatsServer) -> None:
    async with cluster(nats_server, 2) as (one, other):
        alice, dave = await connect(one, "alice"), await connect(one, "dave")
        try:
            await meet(alice, dave)
            await dave.connection.close()
            await alice.next(PeerLeft, lambda e: e.nick == "dave")
            alice.connection.send_private("dave", "for the real dave")
            await alice.next(MessageQueued)
            # Someone else registers "dave" on the other relay with a key of its own.
            impostor = await asyncio.wait_for(_registered_when_free(other, "dave"), WAIT)
            try:
                await asyncio.sleep(1.0)  # time enough for a hand-over, were there one
                assert len(one.core.kept.mailboxes.items("dave")) == 1
                assert not other.core.kept.mailboxes.items("dave")
            finally:
                await impostor.connection.close()
        finally:
            await alice.connection.close()


def _text_is(text: str) -> Callable[[MessageReceived], bool]:
    return lambda event: event.text == text


def _report_of(message_id: int) -> Callable[[DeliveryReport], bool]:
    return lambda report: report.message_id == message_id

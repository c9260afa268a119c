"""The relay keeps serving everyone while some clients misbehave; clients survive the
relay going away; no message is lost without its sender knowing. Real sockets throughout."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from nacl.public import PrivateKey

from e2echat.client.connection import Connection
from e2echat.client.core import MessageReceived, PeerJoined, PeerLeft, Registered, RelayError
from e2echat.client.events import ConnectionLost, Disconnected, NotSent, Queued, Reconnecting
from e2echat.client.receipts import LEFT, NOT_KNOWN, REFUSED, TIMED_OUT, DeliveryReport
from e2echat.client.reconnect import Backoff
from e2echat.errors import RegistrationRefused
from e2echat.relay.server import Relay
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m
from e2echat.wire.objects import Envelope

from hostile import HostileRelay, deliveries
from relay_frames import Outgoing
from support import LOOPBACK, WAIT, RawClient, connect, peers, running, running_relay, text_into

# -- delivery receipts --------------------------------------------------------------------------


async def test_receipts_confirm_each_recipient() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol") as (alice, _, _):
        room_id = alice.connection.send_room("#lobby", "hello both")
        private_id = alice.connection.send_private("carol", "hello you")
        assert room_id is not None and private_id is not None  # online: sent at once
        reports: dict[int, DeliveryReport] = {}
        while len(reports) < 2:
            report = await alice.next(DeliveryReport)
            reports[report.message_id] = report
        assert sorted(reports[room_id].delivered) == ["bob", "carol"] and reports[room_id].complete
        assert reports[private_id].delivered == ("carol",) and reports[private_id].private


async def test_receipt_withheld_by_the_relay_is_reported_as_missing() -> None:
    """The relay forwards the message but swallows bob's receipt: alice is told bob never
    confirmed. (It cannot forge the receipt: it is encrypted and authenticated.)"""

    def drop_receipts(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        return [] if relay.nick(action.conn) == "alice" else [action]

    hostile = HostileRelay(deliveries(drop_receipts))
    async with running(hostile) as relay, peers(relay, "alice", "bob", receipt_timeout=0.3) as (alice, bob):
        alice.connection.send_private("bob", "did you get this?")
        assert (await bob.next(MessageReceived)).text == "did you get this?"
        report = await alice.next(DeliveryReport)
        assert report.delivered == () and report.failed == (("bob", TIMED_OUT),)


async def test_forged_receipt_is_not_accepted() -> None:
    """The relay drops the message and answers with a receipt of its own making."""

    def swallow(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        if relay.nick(action.conn) != "bob":
            return [action]
        forged = m.Deliver("bob", b"\x01" + (0).to_bytes(8, "big") + bytes(80))
        return [Outgoing(relay.conn("alice"), forged)]

    hostile = HostileRelay(deliveries(swallow))
    async with running(hostile) as relay, peers(relay, "alice", "bob", receipt_timeout=0.3) as (alice, _):
        alice.connection.send_private("bob", "important")
        report = await alice.next(DeliveryReport)
        assert report.failed == (("bob", TIMED_OUT),)


async def test_recipient_gone_offline_is_reported() -> None:
    """The relay keeps alice from hearing that mallory left, and has forgotten mallory
    since (away past its time to live: no mailbox to keep a message in); the relay's own
    answer says mallory is missing, and alice's report says so. (Someone the relay still
    knows gets a mailbox: see test_mailboxes.)"""

    def hide_departures(relay: HostileRelay, action: Outgoing) -> list[Outgoing]:
        hidden = isinstance(action.message, m.PeerLeft | m.Parted) and relay.nick(action.conn) == "alice"
        return [] if hidden else [action]

    forgetful = HostileRelay(hide_departures, mailbox_ttl=0.2, identity_ttl=0.2)
    async with running(forgetful) as relay, peers(relay, "alice", "bob") as (alice, bob):
        raw = await RawClient.open(relay)
        await raw.register("mallory")
        await alice.next(PeerJoined, lambda e: e.nick == "mallory")
        alice.connection.send_room("#lobby", "hello all")  # a session with mallory from now on
        await raw.receive_kind(m.Deliver)
        raw.close()
        await bob.next(PeerLeft, lambda e: e.nick == "mallory")  # the relay has noticed
        async with asyncio.timeout(WAIT):
            while relay.core.kept.knows("mallory"):
                await asyncio.sleep(0.05)
        message_id = alice.connection.send_room("#lobby", "who is still here?")
        report = await alice.next(DeliveryReport, lambda r: r.message_id == message_id)
        assert report.delivered == ("bob",) and report.failed == (("mallory", NOT_KNOWN),)


async def test_recipient_leaving_before_confirming_is_reported() -> None:
    def drop_bobs_receipts(relay: HostileRelay, action: Outgoing, deliver: m.Deliver) -> list[Outgoing]:
        return [] if deliver.sender == "bob" else [action]

    hostile = HostileRelay(deliveries(drop_bobs_receipts))
    async with running(hostile) as relay, peers(relay, "alice", "bob") as (alice, bob):
        message_id = alice.connection.send_private("bob", "last words")
        assert (await bob.next(MessageReceived)).text == "last words"
        await bob.connection.close()
        report = await alice.next(DeliveryReport, lambda r: r.message_id == message_id)
        assert report.failed == (("bob", LEFT),)


async def test_what_was_read_before_quitting_is_confirmed() -> None:
    """Receipts wait up to a second and a half to be batched; quitting sends what is owed,
    so a message read just before /quit is not reported as never confirmed."""
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        first = alice.connection.send_private("bob", "one")
        assert (await bob.next(MessageReceived)).text == "one"
        await alice.next(DeliveryReport, lambda r: r.message_id == first)  # bob's batch went
        second = alice.connection.send_private("bob", "two")
        assert (await bob.next(MessageReceived)).text == "two"
        assert bob.connection.core._outbox.acks_due  # the point: owed, and not yet due
        await bob.connection.close()
        report = await alice.next(DeliveryReport, lambda r: r.message_id == second)
        assert report.delivered == ("bob",) and report.failed == ()


# -- a client that floods, a client that never reads, a client that says nothing ------------------


async def test_flooding_client_is_limited_then_disconnected_others_unaffected() -> None:
    async with (
        running_relay(rate=20.0, burst=10.0) as relay,
        peers(relay, "alice", "bob", "mallory") as (alice, bob, mallory),
    ):
        # mallory ignores the rate the relay advertised (a real client paces itself to it)
        mallory.connection.core._pacer.limit(1e9, 1e9, 1e12, 1e12, time.monotonic())
        for i in range(40):
            mallory.connection.send_private("bob", f"spam {i}")
        error = await mallory.next(RelayError)
        assert "too many messages" in error.text
        refused = await mallory.next(DeliveryReport, lambda r: bool(r.failed))
        assert refused.failed == (("bob", REFUSED),)
        assert (await alice.next(PeerLeft)).nick == "mallory"  # it kept flooding: dropped
        alice.connection.send_private("bob", "are we fine?")
        got = await bob.next(MessageReceived, lambda e: e.sender == "alice")
        assert got.text == "are we fine?"


async def _stalled_client(relay: Relay, nick: str, identity: PrivateKey | None = None) -> RawClient:
    """A client that registers and then never reads again, with a small receive window."""
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, quickly full
    stalled.setblocking(False)
    await asyncio.get_running_loop().sock_connect(stalled, (LOOPBACK, relay.port))
    reader, writer = await asyncio.open_connection(sock=stalled)
    raw = RawClient(reader, writer)
    await raw.register(nick, identity)
    return raw


async def _pinging(client: RawClient) -> None:
    """Keep ``client`` lively: a ping every half second until cancelled."""
    while True:
        client.send(m.Ping())
        await asyncio.sleep(0.5)


async def test_a_client_hung_up_on_leaves_the_directory_at_once_though_it_never_reads() -> None:
    """The relay hangs up on a client that has stopped reading (here: it also went silent).
    Its socket cannot close while bytes are queued for it, but it is out of the directory
    at once: the others hear that it left, a message to it is queued rather than
    delivered, its nick is free again, and the socket is aborted after close_grace."""
    options = {"idle_timeout": 1.0, "write_buffer": 64 * 2**20, "close_grace": 0.3}
    options |= {"rate": 1e9, "burst": 1e9, "byte_rate": 2**40, "byte_burst": 2**40}
    async with running_relay(**options) as relay:
        identity = PrivateKey.generate()
        alice = await RawClient.open(relay)
        await alice.register("alice")
        stalled = await _stalled_client(relay, "stalled", identity)
        transport = relay.transport(relay.core.online["stalled"])
        assert transport is not None
        sent, deadline = 0, time.monotonic() + WAIT
        while transport.get_write_buffer_size() == 0:  # until bytes wait for it at the relay
            assert time.monotonic() < deadline, "the relay's socket buffer never filled"
            stalled.send(m.Ping())  # not idle yet, however long filling takes on a busy machine
            for _ in range(8):  # a few at a time: the buffer fills in few round trips
                alice.send(m.Send(sent, (Envelope("stalled", b"x" * 100_000),)))
                sent += 1
            for _ in range(8):
                await alice.receive_kind(m.Routed)
        lively = asyncio.create_task(_pinging(alice))  # "stalled" says nothing and is hung up on
        left = await alice.receive_kind(m.PeerLeft)
        lively.cancel()
        assert left.nick == "stalled" and "stalled" not in relay.core.online
        alice.send(m.Send(10**6, (Envelope("stalled", b"anyone there?"),)))
        routed = await alice.receive_kind(m.Routed)
        assert routed.queued == ("stalled",) and routed.delivered == ()  # it is away now
        again = await RawClient.open(relay)
        await again.register("stalled", identity)  # the same person, back: the nick is free
        deadline = time.monotonic() + WAIT
        while relay._closing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # bounded: the sweeper aborts it after close_grace
        assert not relay._closing
        for client in (stalled, alice, again):
            client.close()


async def test_client_that_never_reads_is_dropped_and_relay_memory_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the soft mark messages to it are refused (its senders are told), and after
    ``stall_timeout`` of that it is dropped; everyone else gets every message."""
    limit = 256 * 1024
    caplog.set_level(logging.WARNING, logger="e2echat.relay")
    lifted = {"rate": 1e9, "burst": 1e9, "byte_rate": 2**40, "byte_burst": 2**40}
    async with (
        running_relay(write_buffer=limit, stall_timeout=0.5, **lifted) as relay,
        peers(relay, "alice", "bob") as (alice, bob),
    ):
        raw = await _stalled_client(relay, "stalled")
        await alice.next(PeerJoined, lambda e: e.nick == "stalled")

        text = "x" * 8000
        sent = 0
        # A bound in time, not in messages: a faster client sends more before the relay's
        # tick sees the stall.
        deadline = asyncio.get_running_loop().time() + 10
        while "stalled" in alice.connection.core.peers:
            alice.connection.send_room("#lobby", f"{sent} {text}")
            sent += 1
            transports = [relay.transport(conn) for conn in relay.core.online.values()]
            buffered = [t.get_write_buffer_size() for t in transports if t is not None]
            assert max(buffered) <= limit + 64 * 1024  # never more than the limit and one frame
            if sent % 10 == 0:
                await alice.next_any_event()
            assert asyncio.get_running_loop().time() < deadline, "the stalled client was never dropped"
        for i in range(sent):
            assert (await bob.next(MessageReceived)).text.startswith(f"{i} ")
        assert any("not reading" in record.getMessage() for record in caplog.records)
        raw.close()


async def test_idle_connection_is_closed_and_keepalive_prevents_it() -> None:
    async with running_relay(idle_timeout=0.4) as relay:
        silent = await RawClient.open(relay)
        await silent.register("silent")
        error = await silent.receive_kind(m.Error)
        assert error.code == "idle"
        assert await silent.closed()

        lively = await connect(relay, "lively", keepalive=0.1)
        await asyncio.sleep(1.0)  # the point: time passes, and the relay must not drop it
        assert not lively.connection.closed
        assert relay.core.online.get("lively") is not None
        await lively.connection.close()


async def test_a_client_that_only_listens_is_not_dropped_as_idle() -> None:
    """The relay drops connections it hears nothing from; a listener hears plenty but says
    nothing, so it must ping on its own account."""
    # Pings every 0.2 s against an idle limit of 1 s: a margin a busy machine keeps, while
    # the 2.5 s of listening below would still see a listener that never pings dropped.
    async with running_relay(idle_timeout=1.0) as relay:
        listener = await connect(relay, "listener", keepalive=0.2)
        talker = await connect(relay, "talker", keepalive=0.2)
        await listener.next(PeerJoined)
        for i in range(25):
            talker.connection.send_room("#lobby", f"news {i}")
            await listener.next(MessageReceived)
            await asyncio.sleep(0.1)  # the point: time passes while only one side talks
        assert relay.core.online.keys() == {"listener", "talker"}
        for peer in (listener, talker):
            await peer.connection.close()


async def test_full_relay_refuses_newcomers_clearly() -> None:
    async with running_relay(max_connections=2) as relay, peers(relay, "alice", "bob"):
        reader, writer = await asyncio.open_connection(LOOPBACK, relay.port)
        raw = RawClient(reader, writer)
        error = await raw.receive()
        assert isinstance(error, m.Error) and error.code == "busy"
        assert await raw.closed()


async def test_sockets_use_tcp_nodelay() -> None:
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        assert isinstance(alice.connection, Connection)  # not reconnecting: one connection
        transport = alice.connection._transport
        assert transport is not None  # registered, so connected
        client_socket = transport.get_extra_info("socket")
        assert client_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        relay_transport = relay.transport(relay.core.online["alice"])
        assert relay_transport is not None
        assert relay_transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# -- the relay goes away and comes back -----------------------------------------------------------


async def test_relay_restarted_mid_chat_clients_reconnect_and_chat_again() -> None:
    identities = {nick: PrivateKey.generate() for nick in ("alice", "bob")}
    first = Relay(LOOPBACK, 0)
    async with running(first):
        port = first.port
        alice = await connect(first, "alice", identities["alice"], reconnecting=True)
        bob = await connect(first, "bob", identities["bob"], reconnecting=True)
        await alice.next(PeerJoined)
        alice.connection.send_room("#lobby", "before the restart")
        assert (await bob.next(MessageReceived)).text == "before the restart"
    # The relay is gone: both notice and start reconnecting.
    for peer in (alice, bob):
        await peer.next(ConnectionLost)
        await peer.next(Reconnecting)
    alice.connection.send_room("#lobby", "typed while the relay was down")
    assert (await alice.next(Queued)).preview == "typed while the relay was down"

    async with running(Relay(LOOPBACK, port, key=first.core.key)):  # restarted, with its key
        for peer in (alice, bob):
            await peer.next(Registered)
        # The queued message goes out once alice is back and waits (a grace period) for
        # bob if she is back first. Then they chat as before.
        report = await alice.next(DeliveryReport)
        assert report.delivered == ("bob",)
        assert (await bob.next(MessageReceived)).text == "typed while the relay was down"
        while "alice" not in bob.connection.core.peers:
            await bob.next_any_event()
        bob.connection.send_private("alice", "after the restart")
        assert (await alice.next(MessageReceived)).text == "after the restart"
        for peer in (alice, bob):
            await peer.connection.close()


async def test_queued_message_waits_for_its_recipient_to_be_back() -> None:
    bob_identity = PrivateKey.generate()
    first = Relay(LOOPBACK, 0)
    async with running(first):
        port = first.port
        alice = await connect(first, "alice", reconnecting=True)
        bob = await connect(first, "bob", bob_identity)
        await alice.next(PeerJoined)
    await alice.next(ConnectionLost)
    alice.connection.send_private("bob", "for when you are back")
    async with running(Relay(LOOPBACK, port, key=first.core.key)) as second:  # restarted, with its key
        await alice.next(Registered)  # alice is back first: bob is not online yet
        assert "bob" not in alice.connection.core.peers
        bob = await connect(second, "bob", bob_identity)
        assert (await bob.next(MessageReceived)).text == "for when you are back"
        assert (await alice.next(DeliveryReport)).delivered == ("bob",)
        for peer in (alice, bob):
            await peer.connection.close()


async def test_message_typed_while_disconnected_is_reported_if_the_relay_never_returns() -> None:
    async with running_relay() as relay:
        alice = await connect(relay, "alice", reconnecting=True)
    await alice.next(ConnectionLost)
    message_id = alice.connection.send_room("#lobby", "into the void")
    assert (await alice.next(Queued)).message_id == message_id
    assert not await alice.connection.wait_settled(0.3)
    alice.connection.give_up("leaving")
    not_sent = await alice.next(NotSent)
    assert (not_sent.previews, not_sent.message_id) == (("into the void",), message_id)
    await alice.connection.close()


# -- password -------------------------------------------------------------------------------------


async def test_relay_password_accepted_and_refused() -> None:
    async with running_relay(password=b"open sesame") as relay:
        alice = await connect(relay, "alice", password=b"open sesame")
        for wrong, code in ((b"open barley", "bad_password"), (None, "password_required")):
            with pytest.raises(RegistrationRefused) as refused:
                await connect(relay, "mallory", password=wrong)
            assert refused.value.code == code
        assert relay.core.online.keys() == {"alice"}
        await alice.connection.close()


async def test_relay_password_never_crosses_the_network_in_the_clear() -> None:
    from test_e2e import RecordingProxy

    secret = "correct horse battery staple"
    async with (
        running_relay(password=secret.encode()) as relay,
        RecordingProxy(relay.port).running() as proxy,
    ):
        peer = await connect(_AtPort(proxy.port), "alice", password=secret.encode())
        await peer.connection.close()
    recorded = b"".join(proxy.streams)
    assert b"register" in recorded  # the recording did see the registration
    assert secret.encode() not in recorded and secret[:10].encode() not in recorded


class _AtPort:
    def __init__(self, port: int) -> None:
        self.port = port


# -- scale ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_thousand_concurrent_connections() -> None:
    count = 1000
    started = time.monotonic()
    # All on loopback, so one address: lift the per-address limits (as the benchmarks do).
    one_machine = {"connections_per_address": 2000, "connect_rate": 1e9, "connect_burst": 1e9}
    async with running_relay(**one_machine) as relay, peers(relay, "alice", "bob") as (alice, bob):
        crowd: list[RawClient] = []
        for batch in range(0, count, 100):
            opened = await asyncio.gather(*(RawClient.open(relay) for _ in range(100)))
            await asyncio.gather(*(raw.register(f"n{batch + i}") for i, raw in enumerate(opened)))
            crowd.extend(opened)
        assert len(relay.core.online) == count + 2
        while len(alice.connection.core.peers) < count + 1:
            await alice.next_any_event()
        bob.connection.send_private("alice", "still quick?")
        assert (await alice.next(MessageReceived)).text == "still quick?"
        for raw in crowd:
            raw.close()
        while relay.core.online.keys() != {"alice", "bob"}:
            await alice.next(PeerLeft)
    assert time.monotonic() - started < 170


async def test_a_bug_in_handling_the_relay_ends_the_connection_in_one_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever handling a frame raises, asyncio never gets it (it would print a traceback
    and keep a connection whose state is broken): the connection ends, saying why."""
    async with running_relay() as relay:
        alice = await connect(relay, "alice")

        def broken(data: bytes) -> list[object]:
            raise KeyError(("erin", -1))

        alice.connection.core.receive_data = broken  # type: ignore[method-assign,assignment]
        with caplog.at_level(logging.ERROR):
            bob = await connect(relay, "bob")  # alice hears of him, and fails
            gone = await alice.next(Disconnected)
        assert "internal error: KeyError: ('erin', -1)" in gone.detail
        assert not caplog.records
        await bob.connection.close()
        await alice.connection.close()


async def test_leaving_in_an_outage_names_the_lines_not_yet_sent() -> None:
    async with running_relay() as relay:
        alice = await connect(relay, "alice", reconnecting=True)
    await alice.next(ConnectionLost)
    lines: list[str] = []
    chat = Chat(alice.connection, text_into(lines))
    chat.handle_line("into the void")
    await chat.finish(0.3)
    chat.show_queued()
    waiting = 'waiting up to 0.3s for 1 message to be confirmed: "into the void" (the room)'
    assert any(waiting in line for line in lines), lines
    assert any('NOT sent (no connection to the relay): "into the void"' in line for line in lines), lines
    await alice.connection.close()


def test_reconnects_are_spread_with_jitter_around_a_capped_doubling() -> None:
    """After a relay restart everyone reconnects: with one schedule for all, they would
    all knock at once, at every step."""
    firsts = set()
    for _ in range(200):
        delays = Backoff(first=1.0, cap=30.0).delays()
        steps = [next(delays) for _ in range(8)]
        for step, (delay, base) in enumerate(zip(steps, (1, 2, 4, 8, 16, 30, 30, 30), strict=True)):
            assert 0.5 * base * 0.99 <= delay <= 1.5 * base * 1.01, (step, delay)
        firsts.add(steps[0])
    assert len(firsts) > 20  # spread, not one instant
    assert min(firsts) < 0.7 and max(firsts) > 1.3
    assert next(Backoff(first=2.0, jitter=0.0).delays()) == 2.0

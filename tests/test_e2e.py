"""End to end over loopback: a real relay, real clients, real sockets, real crypto."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from nacl.public import PrivateKey

from e2echat.client.connection import Connection
from e2echat.client.core import (
    MessageReceived,
    PeerJoined,
    PeerLeft,
    RelayClosing,
    SecurityWarning,
    SendReport,
)
from e2echat.client.events import DeliveryReport, Disconnected
from e2echat.client.receipts import NOT_KNOWN
from e2echat.errors import CommandError, RegistrationRefused, RelayUnreachable
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message
from e2echat.wire.framing import FrameDecoder
from e2echat.wire.objects import Envelope

from support import LOOPBACK, WAIT, RawClient, connect, peers, running_relay, text_into


async def test_room_message_reaches_both_others() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        alice.connection.send_room("#lobby", "hello, room")
        for receiver in (bob, carol):
            got = await receiver.next(MessageReceived)
            assert (got.sender, got.text, got.private) == ("alice", "hello, room", False)
        report = await alice.next(SendReport)
        assert sorted(report.delivered) == ["bob", "carol"]
        assert report.missing == ()


async def test_private_message_reaches_only_its_target() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        alice.connection.send_private("bob", "for bob alone")
        got = await bob.next(MessageReceived)
        assert (got.sender, got.text, got.private) == ("alice", "for bob alone", True)
        report = await alice.next(SendReport)
        assert report.delivered == ("bob",)
        # The relay writes to carol in the order it handles alice's frames. So if carol's
        # very next event is the room message sent after the private one, no frame for the
        # private message reached her (any frame at all would have produced an event).
        alice.connection.send_room("#lobby", "marker")
        assert await carol.next_delivery() == MessageReceived("alice", "marker", private=False)


async def test_messages_flow_both_ways_many_times() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        for i in range(50):
            alice.connection.send_room("#lobby", f"a{i}")
            bob.connection.send_private("alice", f"b{i}")
        assert [(await bob.next(MessageReceived)).text for _ in range(50)] == [f"a{i}" for i in range(50)]
        assert [(await alice.next(MessageReceived)).text for _ in range(50)] == [f"b{i}" for i in range(50)]
        assert not any(isinstance(e, SecurityWarning) for e in alice.seen + bob.seen)


async def test_who_lists_everyone_online() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol") as (alice, _, _):
        lines: list[str] = []
        Chat(alice.connection, text_into(lines)).handle_line("/who")
        assert len(lines) == 1
        assert lines[0].endswith("-- you are alice; online: bob (unverified), carol (unverified)")


async def test_join_and_leave_are_announced_with_keys() -> None:
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        bob_identity = PrivateKey.generate()
        bob = await connect(relay, "bob", bob_identity)
        assert (await alice.next(PeerJoined)).nick == "bob"
        assert alice.connection.core.directory["bob"].identity_key == bob_identity.public_key
        await bob.connection.close()
        assert (await alice.next(PeerLeft)).nick == "bob"
        assert alice.connection.core.peers == []


async def test_newcomer_gets_the_whole_directory() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob", "carol"):
        dave = await connect(relay, "dave")
        try:
            assert dave.connection.core.peers == ["alice", "bob", "carol"]
        finally:
            await dave.connection.close()


async def test_taken_nick_is_refused_clearly() -> None:
    async with running_relay() as relay, peers(relay, "alice"):
        with pytest.raises(RegistrationRefused, match="already online"):
            await connect(relay, "alice")
        # The relay kept serving: a different nick still gets in.
        carol = await connect(relay, "carol")
        await carol.connection.close()


async def test_unknown_recipient_is_reported_not_known_to_the_relay() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, _):
        message_id = alice.connection.send_private("ghost", "hello?")
        report = await alice.next(DeliveryReport, lambda r: r.message_id == message_id)
        assert report.failed == (("ghost", NOT_KNOWN),) and not report.delivered
        assert not alice.connection.core.deliveries.pending


async def test_offline_recipient_is_reported_by_the_relay() -> None:
    async with running_relay() as relay, peers(relay, "bob"):
        raw = await RawClient.open(relay)
        await raw.register("mallory")
        raw.send(m.Send(7, (Envelope("ghost", b"\x01" * 64), Envelope("bob", b"\x02" * 64))))
        routed = await raw.receive_kind(m.Routed)
        assert routed == m.Routed(7, delivered=("bob",), missing=("ghost",))
        raw.close()


async def test_nobody_online_means_not_sent() -> None:
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        with pytest.raises(CommandError, match="nobody else is in #lobby"):
            alice.connection.send_room("#lobby", "anyone?")


async def test_relay_stopped_mid_chat_is_reported() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        alice.connection.send_room("#lobby", "before")
        await bob.next(MessageReceived)
        await relay.stop("maintenance")
        for peer in (alice, bob):
            closing = await peer.next(RelayClosing)
            assert closing.reason == "maintenance"
            assert isinstance(await peer.next(Disconnected), Disconnected)
            with pytest.raises(CommandError, match="not connected"):
                peer.connection.send_room("#lobby", "after")


async def test_unreachable_relay_is_a_clear_error() -> None:
    async with running_relay() as relay:
        port = relay.port
    connection = Connection(LOOPBACK, port, "alice", PrivateKey.generate())
    with pytest.raises(RelayUnreachable, match=rf"cannot reach relay at 127.0.0.1:{port}"):
        await connection.open(timeout=WAIT)


# -- what the relay sees ----------------------------------------------------------------------


class RecordingProxy:
    """Sits between clients and the relay and keeps every byte in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.streams: list[bytearray] = []
        self.server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        record = bytearray()
        self.streams.append(record)
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                record += data
                sink.write(data)
        sink.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RecordingProxy]:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        try:
            yield self
        finally:
            self.server.close()

    def messages(self) -> list[m.Message]:
        decoded: list[m.Message] = []
        for stream in self.streams:
            decoder = FrameDecoder()
            decoded.extend(decode_message(frame) for frame in decoder.receive_data(bytes(stream)))
        return decoded


async def _connect_via(proxy: RecordingProxy, nick: str) -> Connection:
    connection = Connection(LOOPBACK, proxy.port, nick, PrivateKey.generate())
    await connection.open(timeout=WAIT)
    return connection


async def test_relay_never_sees_plaintext() -> None:
    secrets = ["the eagle lands at dawn", "private: my PIN is 4711", "ünïcödé sécret ✓"]
    async with running_relay() as relay, RecordingProxy(relay.port).running() as proxy:
        alice, bob, carol = [await _connect_via(proxy, nick) for nick in ("alice", "bob", "carol")]
        try:

            async def received(connection: Connection, count: int) -> list[str]:
                texts: list[str] = []
                while len(texts) < count:
                    event = await asyncio.wait_for(connection.events.get(), WAIT)
                    if isinstance(event, MessageReceived):
                        texts.append(event.text)
                return texts

            while set(alice.core.peers) != {"bob", "carol"}:
                await asyncio.wait_for(alice.events.get(), WAIT)
            alice.send_room("#lobby", secrets[0])
            alice.send_private("carol", secrets[1])
            carol.send_room("#lobby", secrets[2])
            assert await received(bob, 2) == [secrets[0], secrets[2]]
            assert await received(carol, 2) == [secrets[0], secrets[1]]
            assert await received(alice, 1) == [secrets[2]]
        finally:
            for connection in (alice, bob, carol):
                await connection.close()

    everything = b"".join(proxy.streams)
    bodies: list[bytes] = []
    for message in proxy.messages():
        if isinstance(message, m.Send):
            bodies.extend(envelope.body for envelope in message.items)
        elif isinstance(message, m.Deliver):
            bodies.append(message.body)
    # 5 envelopes sent (2 + 1 + 2), each delivered once; then the receipts, each a ciphertext too
    assert len(bodies) >= 10
    for secret in secrets:
        for needle in (secret.encode("utf-8"), secret.encode("utf-8")[:8]):
            assert needle not in everything
            assert not any(needle in body for body in bodies)
    # Each recipient's copy of a room message is its own ciphertext.
    room_send = next(msg for msg in proxy.messages() if isinstance(msg, m.Send) and len(msg.items) == 2)
    assert room_send.items[0].body != room_send.items[1].body

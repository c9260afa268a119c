"""Attacks found in review, each mounted and required to fail."""

from __future__ import annotations

import asyncio
import json
import struct
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from nacl.public import PrivateKey, PublicKey
from test_cores import FakeClock, FakeWire, _frame, _receipt_frames

from e2echat.client import outbox
from e2echat.client.connection import Connection
from e2echat.client.core import RECEIPT_INTERVAL, MessageReceived
from e2echat.client.events import Reconnecting
from e2echat.client.receipts import LEFT, DeliveryReport
from e2echat.errors import RelayGone
from e2echat.ui.cells import wrap_cells
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m
from e2echat.wire.codec import encode_message, printable_reason
from e2echat.wire.framing import encode_frame
from e2echat.wire.objects import Envelope, PeerInfo

from support import LOOPBACK, WAIT, RawClient, peers, run_cli, running_relay, spawn_cli, text_into


def test_receipt_from_a_replaced_session_confirms_nothing() -> None:
    """The relay holds alice's message for bob, then shows alice its own keys as "bob" and
    answers with a receipt for counter 0 under them. No "delivered" may come of it."""
    wire = FakeWire()
    alice, _bob = wire.connect("alice"), wire.connect("bob")
    wire.take_all()
    message_id = wire.clients[alice].send_private("bob", "wire the money?")
    wire.clients[alice].data_to_send()  # the relay holds it back: bob never gets it
    impostor = PeerInfo("bob", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
    wire.deliver(alice, _frame(m.PeerJoined(impostor)))
    reports = [e for e in wire.take(alice, receipts=True) if isinstance(e, DeliveryReport)]
    assert reports == [DeliveryReport(message_id, True, (), (("bob", LEFT),), "wire the money?")]


def test_acknowledgements_do_not_cross_into_a_new_session() -> None:
    clock = FakeClock()
    wire = FakeWire()
    alice_identity = PrivateKey.generate()  # alice comes back with the same identity key
    alice, bob = wire.connect("alice", alice_identity, clock=clock), wire.connect("bob", clock=clock)
    wire.clients[alice].send_private("bob", "one")  # bob's first receipt goes at once
    wire.pump()
    wire.clients[alice].send_private("bob", "two")  # this one waits for bob's next tick
    wire.pump()
    assert len(_receipt_frames(wire, bob)) == 1
    # alice goes and comes back with a new session before bob's tick.
    wire.hang_up(alice)
    wire.connect("alice", alice_identity, clock=clock)  # a new session, same trusted key
    clock.now += 1.5 * RECEIPT_INTERVAL  # past any receipt interval
    wire.clients[bob].tick()
    wire.pump()
    assert len(_receipt_frames(wire, bob)) == 1  # the old acknowledgement was dropped


@asynccontextmanager
async def fake_relay(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(script, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_relay_offering_a_low_order_key_is_a_clean_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(encode_message(m.Challenge(PublicKey(bytes(32)), b"\x01" * 32))))
        await reader.read()

    async with fake_relay(script) as port:
        connection = Connection(LOOPBACK, port, "alice", PrivateKey.generate())
        with pytest.raises(RelayGone, match="key is invalid"):
            await connection.open(timeout=WAIT)


async def test_relay_error_text_cannot_drive_the_terminal() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        evil = m.Error("nick_taken", "\x1b]0;owned\x07\ne2echat: connected, all fine")
        writer.write(
            encode_frame(encode_message(m.Challenge(PrivateKey.generate().public_key, b"\x01" * 32)))
        )
        await reader.read(65536)
        writer.write(encode_frame(encode_message(evil)))
        await writer.drain()
        writer.close()

    async with fake_relay(script) as port:
        code, _, err = await run_cli("connect", "--nick", "alice", "--port", str(port))
    assert code == 5
    assert "\x1b" not in err and "\x07" not in err
    assert len(err.strip().splitlines()) == 1  # no second, forged line
    assert "\\x1b]0;owned\\x07" in err


async def test_strangers_cannot_make_the_relay_buffer_big_frames() -> None:
    async with running_relay() as relay:
        raw = await RawClient.open(relay)
        assert isinstance(await raw.receive(), m.Challenge)
        raw.send_bytes(struct.pack(">I", 100_000) + b"x" * 10)  # before registering
        error = await raw.receive()
        assert isinstance(error, m.Error) and error.code == "too_large"
        assert await raw.closed()


async def test_one_send_cannot_name_a_recipient_twice() -> None:
    async with running_relay() as relay, peers(relay, "bob") as (bob,):
        raw = await RawClient.open(relay)
        await raw.register("mallory")
        body = b"\x01" + bytes(80)
        raw.send(m.Send(1, tuple(Envelope("bob", body) for _ in range(1000))))
        error = await raw.receive_kind(m.Error)
        assert error.code == "protocol" and "twice" in error.text
        assert await raw.closed()
        assert not [e for e in bob.seen if type(e).__name__ == "SecurityWarning"]


def test_receipts_are_split_across_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    wire = FakeWire()
    listener = wire.connect("listener", clock=clock)
    talkers = [wire.connect(f"t{i}", clock=clock) for i in range(5)]
    monkeypatch.setattr(outbox, "MAX_ITEMS", 2)  # the item limit, made small
    wire.clients[talkers[0]].send_room("#lobby", "first")  # the listener's first receipt goes at once
    wire.pump()
    for talker in talkers:
        wire.clients[talker].send_private("listener", "hello")
    wire.pump()
    clock.now += 1.5 * RECEIPT_INTERVAL  # past any receipt interval
    wire.clients[listener].tick()
    wire.pump()
    frames = _receipt_frames(wire, listener)[1:]
    assert [len(frame.items) for frame in frames] == [2, 2, 1]


@pytest.mark.parametrize(
    ("nick_padding", "budget"),
    [
        (0, 2_000),  # short nicks: about three envelopes of the message below
        # Nicks of 32 characters, the longest: the bodies alone (5 x 656 bytes) fit the
        # budget, the whole frame (3,475 bytes) does not.
        (30, 3_300),
    ],
)
def test_a_room_message_too_big_for_one_frame_goes_in_several(
    monkeypatch: pytest.MonkeyPatch, nick_padding: int, budget: int
) -> None:
    wire = FakeWire()
    talker = wire.connect("talker")
    names = [f"l{i}" + "x" * nick_padding for i in range(5)]
    listeners = [wire.connect(name) for name in names]
    wire.clients[talker].send_room("#lobby", "first contact")
    wire.pump()
    monkeypatch.setattr(outbox, "FRAME_BUDGET", budget)
    message_id = wire.clients[talker].send_room("#lobby", "x" * 500)
    wire.pump()
    frames = [s for s in wire.sent[talker] if isinstance(s, m.Send) and s.id == message_id]
    assert {len(e.body) for frame in frames for e in frame.items} == {656}
    assert len(frames) == 2
    assert all(len(encode_message(frame)) <= budget for frame in frames)
    assert sorted(e.to for frame in frames for e in frame.items) == names
    for listener in listeners:
        assert [e.text for e in wire.events[listener] if isinstance(e, MessageReceived)][-1] == "x" * 500


def test_nothing_to_send_writes_nothing() -> None:
    # as send_receipts may, if every owed sender is skipped
    assert outbox.send_frames(0, []) == b""


def test_wide_characters_cannot_forge_a_line_of_their_own() -> None:
    line = "12:00:00 <mallory ?> " + "中" * 29 + "12:00:00 <alice ✓> pay 5000 to mallory"
    rows = wrap_cells(line, width=79, indent=11)
    assert len(rows) > 1 and all(row.startswith(" " * 11) for row in rows[1:])


def test_relay_reasons_are_printable() -> None:
    reason = printable_reason("bad field 'x\nINFO fake log line\x1b[2J'")
    assert "\n" not in reason and "\x1b" not in reason and "\\n" in reason


async def test_a_terminal_that_is_not_utf8_still_gets_every_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")  # inherited by the client process
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        async with spawn_cli("connect", "--nick", "latin", "--port", str(relay.port)) as latin:
            while "latin" not in alice.connection.core.peers:
                await alice.next_any_event()
            alice.connection.send_room("#lobby", "party 🎉 time")
            line = await latin.line_with("party")
            assert "\\U0001f389" in line
            latin.stdin.close()
            assert await latin.exit_code() == 0


def test_many_acknowledgements_for_one_sender_never_name_it_twice_in_a_frame() -> None:
    from e2echat.crypto.session import MAX_ACKS

    clock = FakeClock()
    wire = FakeWire()
    listener, talker = wire.connect("listener", clock=clock), wire.connect("talker", clock=clock)
    wire.clients[talker].send_private("listener", "first")
    wire.pump()  # the listener's first receipt goes at once; the rest wait for a tick
    for i in range(MAX_ACKS + 5):
        wire.clients[talker].send_private("listener", f"#{i}")
    wire.pump()
    clock.now += 1.5 * RECEIPT_INTERVAL  # past any receipt interval
    wire.clients[listener].tick()
    wire.pump()
    assert wire.is_open(listener)  # the relay did not refuse a frame
    frames = _receipt_frames(wire, listener)
    assert all(len({e.to for e in frame.items}) == len(frame.items) for frame in frames)
    assert len(frames) == 3  # the first, then MAX_ACKS + 5 acknowledgements in two frames


async def test_json_output_is_ascii_and_safe_on_a_terminal(tmp_path: object) -> None:
    async with running_relay() as relay, peers(relay, "alice") as (alice,):
        args = ("connect", "--nick", "bot", "--port", str(relay.port), "--json")
        async with spawn_cli(*args) as bot:
            while "bot" not in alice.connection.core.peers:
                await alice.next_any_event()
            alice.connection.send_room("#lobby", "csi\x9b2J del\x7f rlo\u202e done")
            line = await bot.line_with("done")
            assert line.isascii() and "\x7f" not in line
            assert json.loads(line)["text"] == "csi\x9b2J del\x7f rlo\u202e done"
            bot.stdin.close()
            assert await bot.exit_code() == 0


def test_relay_supplied_reasons_are_neutralized_in_the_chat() -> None:
    """Reconnect reasons and lost-connection details quote what the relay said."""
    lines: list[str] = []
    relay = types.SimpleNamespace(address="127.0.0.1:7777")  # all a chat reads here
    chat = Chat(relay, text_into(lines))
    chat.show(Reconnecting(1.0, 2, "it refused us: \x1b]0;owned\x07\x1b[2J"))
    chat.problem("lost: \x1b[31mred\u202e")
    assert lines and all("\x1b" not in line and "\u202e" not in line for line in lines)
    assert "\\x1b]0;owned" in lines[0]

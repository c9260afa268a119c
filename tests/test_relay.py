"""The relay over real sockets: bad input closes only the offender, with an error frame."""

from __future__ import annotations

import struct

import pytest
from nacl.public import PrivateKey

from e2echat.client.core import MessageReceived, PeerJoined
from e2echat.crypto.identity import registration_proof
from e2echat.relay.server import connect_hint
from e2echat.wire import messages as m
from e2echat.wire.codec import encode_message
from e2echat.wire.framing import MAX_FRAME, encode_frame

from support import RawClient, connect, peers, running_relay

BAD_INPUTS = {
    "garbage": encode_frame(b"\x00\xffnot json at all"),
    "oversize-prefix": struct.pack(">I", MAX_FRAME + 1),
    "giant-prefix": b"\xff\xff\xff\xff",
    "zero-length": b"\x00\x00\x00\x00",
    "unknown-type": encode_frame(b'{"v":1,"type":"teleport"}'),
    "old-version": encode_frame(b'{"v":0,"type":"register"}'),
    "send-before-register": encode_frame(encode_message(m.Send(1, (m.Envelope("bob", b"\x00" * 48),)))),
}


@pytest.mark.parametrize("payload", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_bad_input_closes_only_the_offender(payload: bytes) -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        offender = await RawClient.open(relay)
        assert isinstance(await offender.receive(), m.Challenge)
        offender.send_bytes(payload)
        error = await offender.receive()
        assert isinstance(error, m.Error)
        assert error.code in {"protocol", "not_registered", "too_large"}
        assert await offender.closed()
        # Everyone else is still served.
        alice.connection.send_room("still here?")
        assert (await bob.next(MessageReceived)).text == "still here?"


async def test_bad_input_after_registration_closes_only_the_offender() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        offender = await RawClient.open(relay)
        await offender.register("mallory")
        await alice.next(PeerJoined, lambda e: e.nick == "mallory")
        offender.send(
            m.Register("mallory", PrivateKey.generate().public_key, PrivateKey.generate().public_key, b"x")
        )
        error = await offender.receive_kind(m.Error)
        assert error.code == "protocol"
        assert await offender.closed()
        bob.connection.send_room("carry on")
        assert (await alice.next(MessageReceived)).text == "carry on"


async def test_forged_registration_proof_is_refused() -> None:
    """Registering someone else's identity key without its private half fails."""
    async with running_relay() as relay:
        raw = await RawClient.open(relay)
        challenge = await raw.receive()
        assert isinstance(challenge, m.Challenge)
        victim = PrivateKey.generate().public_key
        mallory = PrivateKey.generate()
        proof = registration_proof(mallory, challenge, bytes(mallory.public_key))
        raw.send(m.Register("victim", victim, mallory.public_key, proof))
        error = await raw.receive()
        assert error == m.Error("bad_proof", "registration proof did not verify")
        assert await raw.closed()


async def test_silent_client_is_dropped_after_the_handshake_timeout() -> None:
    async with running_relay(handshake_timeout=0.2) as relay:
        raw = await RawClient.open(relay)
        assert isinstance(await raw.receive(), m.Challenge)
        error = await raw.receive()
        assert isinstance(error, m.Error) and error.code == "timeout"
        assert await raw.closed()


async def test_half_frame_then_close_does_not_disturb_others() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        raw = await RawClient.open(relay)
        raw.send_bytes(b'\x00\x00\x01\x00{"v":1')
        await raw.writer.drain()
        raw.close()
        alice.connection.send_room("fine")
        assert (await bob.next(MessageReceived)).text == "fine"


def test_connect_hint_names_a_concrete_address() -> None:
    assert connect_hint("127.0.0.1", 8000) == "e2echat connect --nick YOUR_NAME --host 127.0.0.1 --port 8000"
    hint = connect_hint("0.0.0.0", 8000)
    assert "--host 0.0.0.0" not in hint
    assert hint.endswith("--port 8000")


async def test_a_big_directory_arrives_in_several_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands online would not fit one frame: the relay splits the directory, and the
    newcomer is registered only once it has every part."""
    import e2echat.relay.core

    monkeypatch.setattr(e2echat.relay.core, "DIRECTORY_CHUNK", 3)
    nicks = [f"p{i}" for i in range(8)]
    async with running_relay() as relay, peers(relay, *nicks):
        newcomer = await connect(relay, "newcomer")
        assert newcomer.connection.core.peers == sorted(nicks)
        watcher = await RawClient.open(relay)
        registered = await watcher.register("watcher")
        assert len(registered.peers) == 9
        watcher.close()
        await newcomer.connection.close()

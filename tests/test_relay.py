"""The relay over real sockets: bad input closes only the offender, with an error frame."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from nacl.public import Box, PrivateKey, PublicKey

from e2echat.client.core import MessageReceived, PeerJoined, PeerLeft, SecurityWarning
from e2echat.crypto.identity import registration_proof
from e2echat.relay.server import Relay, connect_hint
from e2echat.wire import messages as m
from e2echat.wire.codec import encode_message
from e2echat.wire.framing import MAX_FRAME, encode_frame
from e2echat.wire.grammar import SESSION_PROOF_SIZE
from e2echat.wire.objects import Envelope

from hostile import HostileRelay
from relay_frames import any_signed_prekey
from support import RawClient, connect, peers, running, running_relay

BAD_INPUTS = {
    "garbage": encode_frame(b"\x00\xffnot json at all"),
    "oversize-prefix": struct.pack(">I", MAX_FRAME + 1),
    "giant-prefix": b"\xff\xff\xff\xff",
    "zero-length": b"\x00\x00\x00\x00",
    "unknown-type": encode_frame(b'{"v":2,"type":"teleport"}'),
    "old-version": encode_frame(b'{"v":1,"type":"register"}'),
    "send-before-register": encode_frame(encode_message(m.Send(1, (Envelope("bob", b"\x00" * 48),)))),
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
        alice.connection.send_room("#lobby", "still here?")
        assert (await bob.next(MessageReceived)).text == "still here?"


async def test_bad_input_after_registration_closes_only_the_offender() -> None:
    async with running_relay() as relay, peers(relay, "alice", "bob") as (alice, bob):
        offender = await RawClient.open(relay)
        await offender.register("mallory")
        await alice.next(PeerJoined, lambda e: e.nick == "mallory")
        offender.send(
            m.Register(
                "mallory",
                PrivateKey.generate().public_key,
                PrivateKey.generate().public_key,
                b"x",
                bytes(SESSION_PROOF_SIZE),
                any_signed_prekey(),
            )
        )
        error = await offender.receive_kind(m.Error)
        assert error.code == "protocol"
        assert await offender.closed()
        bob.connection.send_room("#lobby", "carry on")
        assert (await alice.next(MessageReceived)).text == "carry on"


async def test_forged_registration_proof_is_refused() -> None:
    """Registering someone else's identity key without its private half fails."""
    async with running_relay() as relay:
        raw = await RawClient.open(relay)
        challenge = await raw.receive()
        assert isinstance(challenge, m.Challenge)
        victim = PrivateKey.generate().public_key
        mallory = PrivateKey.generate()
        proofs = registration_proof(mallory, mallory, challenge)
        raw.send(m.Register("victim", victim, mallory.public_key, *proofs, any_signed_prekey()))
        error = await raw.receive()
        assert error == m.Error("bad_proof", "registration proof did not verify")
        assert await raw.closed()


async def _mallory_registers_with(
    relay: Relay, session_key: PublicKey, session_proof: Callable[[PrivateKey, m.Challenge], bytes]
) -> RawClient:
    """Mallory registers her own identity with ``session_key``: an identity proof as good
    as can be (hers, over that session key), and ``session_proof(her identity key, the
    challenge)``, the best she can make without the session key's private half."""
    raw = await RawClient.open(relay)
    challenge = await raw.receive()
    assert isinstance(challenge, m.Challenge)
    mallory = PrivateKey.generate()
    proof = bytes(Box(mallory, challenge.relay_key).encrypt(challenge.challenge + bytes(session_key)))
    raw.send(
        m.Register(
            "mallory",
            mallory.public_key,
            session_key,
            proof,
            session_proof(mallory, challenge),
            any_signed_prekey(),
        )
    )
    return raw


@pytest.mark.parametrize("forged", ["her-own-session-key", "alices-proof-replayed"])
async def test_registering_someone_elses_session_key_is_refused(forged: str) -> None:
    """Issue 16: mallory registers alice's session key (she read it in the directory)
    under her own identity. Before the session key had to prove itself, the relay took
    it, and bob, who had seen alice's key retire, cried "replay attempt?", blaming the
    relay. Mallory can neither box the challenge with alice's session key, nor reuse the
    session proof alice sent (it answers another connection's challenge)."""
    async with running(HostileRelay()) as relay, peers(relay, "alice", "bob", "carol") as (alice, bob, carol):
        alice_ek = bob.connection.core.directory["alice"].session_key
        (alices,) = [msg for _, msg in relay.received if isinstance(msg, m.Register) and msg.nick == "alice"]
        await alice.connection.close()
        await bob.next(PeerLeft, lambda e: e.nick == "alice")
        bob.seen.clear()

        def session_proof(mallory: PrivateKey, challenge: m.Challenge) -> bytes:
            if forged == "alices-proof-replayed":
                return alices.session_proof
            return registration_proof(mallory, PrivateKey.generate(), challenge)[1]

        mallory = await _mallory_registers_with(relay, alice_ek, session_proof)
        error = await mallory.receive()
        assert error == m.Error("bad_session_proof", "registration proof for the session key did not verify")
        assert await mallory.closed()
        assert "mallory" not in relay.core.online
        # Nobody was told of her; what comes after her attempt still arrives, unalarmed.
        carol.connection.send_private("bob", "after mallory")
        assert (await bob.next(MessageReceived)).text == "after mallory"
        assert not [e for e in bob.seen if isinstance(e, SecurityWarning | PeerJoined)]


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
        raw.send_bytes(b'\x00\x00\x01\x00{"v":2')
        await raw.writer.drain()
        raw.close()
        alice.connection.send_room("#lobby", "fine")
        assert (await bob.next(MessageReceived)).text == "fine"


def test_connect_hint_names_a_concrete_address() -> None:
    assert connect_hint("127.0.0.1", 8000) == "e2echat connect --nick YOUR_NAME --host 127.0.0.1 --port 8000"
    hint = connect_hint("0.0.0.0", 8000)
    assert "--host 0.0.0.0" not in hint
    assert hint.endswith("--port 8000")


async def test_a_big_directory_arrives_in_several_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands online would not fit one frame: the relay splits the directory, and the
    newcomer is registered only once it has every part."""
    import e2echat.relay.registration

    monkeypatch.setattr(e2echat.relay.registration, "DIRECTORY_CHUNK", 3)
    nicks = [f"p{i}" for i in range(8)]
    async with running_relay() as relay, peers(relay, *nicks):
        newcomer = await connect(relay, "newcomer")
        assert newcomer.connection.core.peers == sorted(nicks)
        watcher = await RawClient.open(relay)
        registered = await watcher.register("watcher")
        assert len(registered.peers) == 9
        watcher.close()
        await newcomer.connection.close()

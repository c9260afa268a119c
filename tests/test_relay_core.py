"""RelayCore on its own: bytes and time in, Write and Close out, no sockets, no sleeping.

Tests with whole clients pair it with ClientCores over test_cores' FakeWire; the rest
speak to it frame by frame, as a client (or an attacker) would.
"""

from __future__ import annotations

import struct

import pytest
from nacl.public import PrivateKey
from test_cores import FakeWire, _frame, _three

from e2echat.crypto.identity import registration_proof
from e2echat.errors import RemoteProtocolError
from e2echat.relay.core import Close, ConnId, RelayCore
from e2echat.wire import messages as m

from relay_frames import Outgoing, spelled_out


def _join(relay: RelayCore, conn: ConnId, nick: str, now: float = 0.0) -> list[Outgoing | Close]:
    """Connect and register ``nick`` as a client would; what the relay wrote back."""
    (challenge,) = spelled_out(relay.connect(conn, now))
    assert isinstance(challenge, Outgoing) and isinstance(challenge.message, m.Challenge)
    identity, session = PrivateKey.generate(), PrivateKey.generate()
    proof = registration_proof(identity, challenge.message, bytes(session.public_key))
    register = m.Register(nick, identity.public_key, session.public_key, proof)
    return spelled_out(relay.receive_data(conn, _frame(register), now))


def _send(message_id: int, *to: str) -> bytes:
    return _frame(m.Send(message_id, tuple(m.Envelope(nick, b"\x01" + bytes(40)) for nick in to)))


def _error(conn: ConnId, actions: list[Outgoing | Close]) -> m.Error:
    """The error frame ``actions`` write to ``conn`` just before hanging up on it."""
    error, close = actions[:2]
    assert isinstance(error, Outgoing) and error.conn == conn and isinstance(error.message, m.Error)
    assert isinstance(close, Close) and close.conn == conn
    return error.message


# -- registration and refusals ----------------------------------------------------------------


def test_register_replayed_on_another_connection_is_refused() -> None:
    """A proof answers one connection's challenge; a captured one is useless elsewhere."""
    wire = FakeWire()
    alice = wire.connect("alice")
    (captured,) = wire.sent[alice]
    assert isinstance(captured, m.Register)
    wire.hang_up(alice)
    (fresh,) = spelled_out(wire.relay.connect(99, wire.now))  # its own challenge
    assert isinstance(fresh, Outgoing) and isinstance(fresh.message, m.Challenge)
    actions = spelled_out(wire.relay.receive_data(99, _frame(captured), wire.now))
    assert _error(99, actions).code == "bad_proof"
    assert len(actions) == 2
    assert "alice" not in wire.relay.online


def test_message_before_registration_is_refused() -> None:
    relay = RelayCore()
    relay.connect(7, 0.0)
    actions = spelled_out(relay.receive_data(7, _send(1, "bob"), 0.0))
    assert len(actions) == 2
    assert _error(7, actions).code == "not_registered"
    assert not relay.is_registered(7)


# Regression: decode errors echo what the peer sent (field names, nicks); the relay must
# still be able to answer with an Error frame, so the text is clipped and made UTF-8 safe.
_HOSTILE_FRAMES = {
    "long-unknown-field": b'{"v":1,"type":"bye","reason":"x","' + b"z" * 2000 + b'":1}',
    "surrogate-unknown-field": b'{"v":1,"type":"bye","reason":"x","\\ud800":1}',
    "long-invalid-nick": b'{"v":1,"type":"left","nick":"' + b"a" * 2000 + b'"}',
    "long-duplicate-key": b'{"v":1,"' + b"k" * 2000 + b'":1,"' + b"k" * 2000 + b'":2}',
}


@pytest.mark.parametrize("registered", [False, True], ids=["handshake", "registered"])
@pytest.mark.parametrize("payload", _HOSTILE_FRAMES.values(), ids=_HOSTILE_FRAMES.keys())
def test_any_decode_error_is_refused_with_an_error_frame(payload: bytes, registered: bool) -> None:
    with pytest.raises(RemoteProtocolError):
        m.decode_message(payload)
    relay = RelayCore()
    if registered:
        _join(relay, 1, "mallory")
    else:
        relay.connect(1, 0.0)
    actions = spelled_out(relay.receive_data(1, struct.pack(">I", len(payload)) + payload, 0.0))
    # spelled_out decodes the error frame strictly: it is a valid message.
    assert _error(1, actions).code == "protocol"
    assert len(actions) == 2


def test_registered_client_may_not_register_again() -> None:
    wire, alice, bob, carol = _three()
    (register,) = wire.sent[alice]
    actions = spelled_out(wire.relay.receive_data(alice, _frame(register), wire.now))
    assert _error(alice, actions).code == "protocol"
    # She is hung up on, so the others hear that she left.
    assert actions[2:] == [Outgoing(bob, m.PeerLeft("alice")), Outgoing(carol, m.PeerLeft("alice"))]


def test_unknown_connection_is_ignored() -> None:
    relay = RelayCore()
    assert relay.receive_data(5, _frame(m.Bye("x")), 0.0) == []
    assert relay.disconnect(5) == []
    assert relay.tick(1e9) == []


def test_send_to_self_is_reported_missing_by_the_relay() -> None:
    """A client that addresses itself gets nothing back (the relay does not echo)."""
    wire, alice, _, _ = _three()
    actions = wire.relay.receive_data(alice, _send(42, "alice"), wire.now)
    assert spelled_out(actions) == [Outgoing(alice, m.Routed(42, (), ("alice",)))]


def test_client_error_makes_the_relay_hang_up() -> None:
    wire, alice, bob, carol = _three()
    actions = spelled_out(
        wire.relay.receive_data(alice, _frame(m.Error("protocol", "you broke it")), wire.now)
    )
    assert actions == [
        Close(alice, "client reported error protocol"),
        Outgoing(bob, m.PeerLeft("alice")),
        Outgoing(carol, m.PeerLeft("alice")),
    ]

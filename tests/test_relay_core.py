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
from e2echat.relay import intake
from e2echat.relay.core import Close, ConnId, Persist, RelayCore, Write
from e2echat.relay.limits import Flow, Limits, Verdict
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message
from e2echat.wire.fastpath import deliver_head, encode_send
from e2echat.wire.objects import Envelope

from relay_frames import Outgoing, any_signed_prekey, decode_frame, spelled_out


def _join(relay: RelayCore, conn: ConnId, nick: str, now: float = 0.0) -> list[Outgoing | Close]:
    """Connect and register ``nick`` as a client would; what the relay wrote back."""
    (challenge,) = spelled_out(relay.connect(conn, now))
    assert isinstance(challenge, Outgoing) and isinstance(challenge.message, m.Challenge)
    identity, session = PrivateKey.generate(), PrivateKey.generate()
    proofs = registration_proof(identity, session, challenge.message)
    register = m.Register(nick, identity.public_key, session.public_key, *proofs, any_signed_prekey())
    return spelled_out(relay.receive_data(conn, _frame(register), now))


def _send(message_id: int, *to: str) -> bytes:
    return _frame(m.Send(message_id, tuple(Envelope(nick, b"\x01" + bytes(40)) for nick in to)))


def _error(conn: ConnId, actions: list[Outgoing | Close]) -> m.Error:
    """The error frame ``actions`` write to ``conn`` just before hanging up on it."""
    error, close = actions[:2]
    assert isinstance(error, Outgoing) and error.conn == conn and isinstance(error.message, m.Error)
    assert isinstance(close, Close) and close.conn == conn
    return error.message


# -- registration and refusals ----------------------------------------------------------------


def test_every_challenge_carries_the_relays_long_term_key_and_a_new_challenge() -> None:
    """The key is the relay's own, the same on every connection (clients pin it); what
    makes a proof good for one connection only is the challenge, new on each."""
    key = PrivateKey.generate()
    relay = RelayCore(key=key)
    challenges = [spelled_out(relay.connect(conn, 0.0))[0] for conn in (1, 2)]
    first, second = (item.message for item in challenges if isinstance(item, Outgoing))
    assert isinstance(first, m.Challenge) and isinstance(second, m.Challenge)
    assert first.relay_key == second.relay_key == key.public_key
    assert first.challenge != second.challenge


def test_register_replayed_on_another_connection_is_refused() -> None:
    """A proof answers one connection's challenge; a captured one is useless elsewhere."""
    wire = FakeWire()
    alice = wire.connect("alice")
    captured = wire.sent[alice][0]  # then her publish
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
    "long-unknown-field": b'{"v":2,"type":"bye","reason":"x","' + b"z" * 2000 + b'":1}',
    "surrogate-unknown-field": b'{"v":2,"type":"bye","reason":"x","\\ud800":1}',
    "long-invalid-nick": b'{"v":2,"type":"left","nick":"' + b"a" * 2000 + b'"}',
    "long-duplicate-key": b'{"v":2,"' + b"k" * 2000 + b'":1,"' + b"k" * 2000 + b'":2}',
}


@pytest.mark.parametrize("registered", [False, True], ids=["handshake", "registered"])
@pytest.mark.parametrize("payload", _HOSTILE_FRAMES.values(), ids=_HOSTILE_FRAMES.keys())
def test_any_decode_error_is_refused_with_an_error_frame(payload: bytes, registered: bool) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(payload)
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
    register = wire.sent[alice][0]
    assert isinstance(register, m.Register)
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
    assert spelled_out(actions) == [Outgoing(alice, m.Routed(42, (), missing=("alice",)))]


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


def test_frames_in_any_split_and_several_at_once() -> None:
    relay = RelayCore()
    _join(relay, 1, "alice")
    pings = _frame(m.Ping()) * 3
    assert spelled_out(relay.receive_data(1, pings + pings[:5], 0.0)) == [Outgoing(1, m.Pong())] * 3
    written: list[Outgoing | Close] = []
    for i in range(5, len(pings)):  # the rest of the fourth, then two more, byte by byte
        written += spelled_out(relay.receive_data(1, pings[i : i + 1], 0.0))
    assert written == [Outgoing(1, m.Pong())] * 3


def test_a_stranger_may_send_only_small_frames() -> None:
    """Before registering, a length above ``handshake_frame`` is refused on the prefix; once
    registered, frames up to ``max_frame`` are taken, and a longer prefix is refused."""
    limits = Limits()
    relay = RelayCore(limits)
    relay.connect(1, 0.0)
    actions = spelled_out(relay.receive_data(1, struct.pack(">I", limits.handshake_frame + 1), 0.0))
    assert _error(1, actions).code == "too_large"
    _join(relay, 2, "alice")
    assert relay.receive_data(2, struct.pack(">I", limits.handshake_frame + 1), 0.0) == []
    relay.disconnect(2)
    _join(relay, 3, "alice")
    actions = spelled_out(relay.receive_data(3, struct.pack(">I", limits.max_frame + 1), 0.0))
    assert _error(3, actions).code == "too_large"


def test_a_full_relay_turns_newcomers_away_until_a_socket_is_gone() -> None:
    relay = RelayCore(Limits(max_connections=2))
    relay.connect(1, 0.0)
    relay.connect(2, 0.0)
    turned_away = spelled_out(relay.connect(3, 0.0))
    assert _error(3, turned_away).code == "busy"
    # A connection hung up on still holds its slot until the shell says its socket is gone.
    relay.receive_data(2, b"\x00\x00\x00\x00", 0.0)
    assert _error(4, spelled_out(relay.connect(4, 0.0))).code == "busy"
    relay.disconnect(2)
    (challenge,) = spelled_out(relay.connect(5, 0.0))
    assert isinstance(challenge, Outgoing) and isinstance(challenge.message, m.Challenge)


# -- time ------------------------------------------------------------------------------------------


def test_registration_must_finish_within_the_handshake_timeout() -> None:
    """Counted from the connection's start: bytes that never make a registration do not
    extend it (slowloris)."""
    limits = Limits(handshake_timeout=10.0)
    relay = RelayCore(limits)
    relay.connect(1, 100.0)
    relay.receive_data(1, b"\x00\x00\x01", 109.0)  # half a prefix
    assert relay.tick(110.0) == []
    actions = spelled_out(relay.tick(110.5))
    assert _error(1, actions).code == "timeout" and len(actions) == 2
    assert relay.tick(200.0) == []  # once


def test_a_silent_client_is_hung_up_on_and_anything_it_says_keeps_it() -> None:
    limits = Limits(idle_timeout=60.0)
    relay = RelayCore(limits)
    _join(relay, 1, "alice", now=0.0)
    _join(relay, 2, "bob", now=0.0)
    relay.receive_data(1, _frame(m.Ping()), 50.0)
    actions = spelled_out(relay.tick(61.0))
    assert _error(2, actions).code == "idle"
    assert actions[2:] == [Outgoing(1, m.PeerLeft("bob"))]
    assert relay.tick(110.0) == []
    assert _error(1, spelled_out(relay.tick(110.5))).code == "idle"


# -- the rate limit ----------------------------------------------------------------------------------


def test_the_welcome_tells_each_client_the_rate_it_is_held_to() -> None:
    """So that clients pace themselves to it rather than find it by being refused."""
    relay = RelayCore(Limits(rate=12.5, burst=30, byte_rate=5000, byte_burst=70_000))
    welcome, away = _join(relay, 1, "alice")
    assert isinstance(away, Outgoing) and away.message == m.Members("#lobby", (), ())
    assert isinstance(welcome, Outgoing) and isinstance(welcome.message, m.Welcome)
    message = welcome.message
    assert (message.rate, message.burst) == (12.5, 30.0)
    assert (message.byte_rate, message.byte_burst) == (5000.0, 70_000.0)


def test_over_the_rate_the_sender_is_told_then_disconnected() -> None:
    """burst 2: two sends pass; the next are refused with a routed naming each recipient
    (the first refusal also with an error, at most one a second); more than ``burst``
    refusals in one episode and the sender is disconnected."""
    relay = RelayCore(Limits(rate=1.0, burst=2.0))
    _join(relay, 1, "alice")
    _join(relay, 2, "bob")
    for message_id in (1, 2):
        delivered = spelled_out(relay.receive_data(1, _send(message_id, "bob"), 0.0))
        assert delivered[-1] == Outgoing(1, m.Routed(message_id, ("bob",)))
    refused = m.Routed(3, (), refused=("bob",))
    first = spelled_out(relay.receive_data(1, _send(3, "bob"), 0.0))
    assert first[0] == Outgoing(1, refused)
    assert isinstance(first[1], Outgoing) and isinstance(first[1].message, m.Error)
    assert first[1].message.code == "rate_limited" and len(first) == 2
    assert spelled_out(relay.receive_data(1, _send(3, "bob"), 0.5)) == [Outgoing(1, refused)]
    actions = spelled_out(relay.receive_data(1, _send(4, "bob"), 0.9))
    assert _error(1, actions).code == "rate_limited"
    assert actions[2:] == [Outgoing(2, m.PeerLeft("alice"))]


def test_a_sender_back_within_the_rate_is_served_again() -> None:
    relay = RelayCore(Limits(rate=1.0, burst=1.0))
    _join(relay, 1, "alice")
    _join(relay, 2, "bob")
    relay.receive_data(1, _send(1, "bob"), 0.0)
    assert spelled_out(relay.receive_data(1, _send(2, "bob"), 0.0))[0] == Outgoing(
        1, m.Routed(2, (), refused=("bob",))
    )
    later = spelled_out(relay.receive_data(1, _send(3, "bob"), 1.0))  # a token came back
    assert later[-1] == Outgoing(1, m.Routed(3, ("bob",)))


def test_refusals_far_apart_are_separate_episodes() -> None:
    """Only a sender that keeps going after being told is disconnected: refusals more than
    ``flood_episode`` apart start the count again."""
    limits = Limits(rate=0.01, burst=2.0, flood_episode=5.0)  # hardly a token comes back
    flow = Flow(limits, 0.0)
    assert [flow.admit(limits, 0.0) for _ in range(2)] == [Verdict.PASS, Verdict.PASS]
    for start in (0.0, 5.2, 10.4):  # six refusals in all, more than burst, but two at a time
        assert flow.admit(limits, start) is Verdict.WARN
        assert flow.admit(limits, start + 0.1) is Verdict.REFUSE  # told less than a second ago
    assert flow.admit(limits, 10.6) is Verdict.DISCONNECT  # a third in one episode


# -- what is written, and how ----------------------------------------------------------------------


def test_presence_is_encoded_once_for_everyone() -> None:
    relay = RelayCore()
    for conn, nick in enumerate(("alice", "bob", "carol"), start=1):
        _join(relay, conn, nick)
    relay.connect(4, 0.0)  # a stranger, not registered: not told about anyone
    (write, kept) = relay.disconnect(3)  # at once: carol's last seen is kept meanwhile
    assert isinstance(kept, Persist) and not kept.frames
    assert isinstance(write, Write) and [conn for conn, _ in write.frames] == [1, 2]
    assert write.frames[0][1] is write.frames[1][1]
    assert decode_frame(write.frames[0][1]) == m.PeerLeft("carol")
    (kept, bye, *closes) = relay.shutdown("maintenance")
    assert isinstance(kept, Persist) and not kept.frames
    assert isinstance(bye, Write) and len({id(data) for _, data in bye.frames}) == 1
    assert [conn for conn, _ in bye.frames] == [1, 2, 4]
    assert closes == [Close(conn, "relay shutting down") for conn in (1, 2, 4)]
    assert relay.online == {} and relay.receive_data(1, _frame(m.Ping()), 0.0) == []


def test_bodies_are_copied_unopened_and_both_readings_of_a_send_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send is read by the fast path, or (should it ever decline one) by the strict
    decoder; either way each body reaches its recipient as the very bytes it came in."""
    relay = RelayCore()
    for conn, nick in enumerate(("alice", "bob", "carol"), start=1):
        _join(relay, conn, nick)
    canonical = encode_send(7, [("bob", b"\x01" * 50), ("carol", b"\x02" * 60), ("dave", b"\x03" * 5)])
    written = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(intake, "fast_routes", lambda payload: None)
        (write,) = relay.receive_data(1, struct.pack(">I", len(canonical)) + canonical, 0.0)
        assert isinstance(write, Write)
        written.append(write.frames)
    assert written[0] == written[1]
    head, body = deliver_head("alice"), b"\x01" * 50
    assert written[0][0] == (2, struct.pack(">I", len(head) + len(body)) + head + body)
    assert [Outgoing(conn, decode_frame(data)) for conn, data in written[0]] == [
        Outgoing(2, m.Deliver("alice", b"\x01" * 50)),
        Outgoing(3, m.Deliver("alice", b"\x02" * 60)),
        Outgoing(1, m.Routed(7, ("bob", "carol"), missing=("dave",))),
    ]

"""RelayCore and ClientCores paired over a fake in-memory wire."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from nacl.public import Box, PrivateKey, PublicKey

from e2echat.client import fileparts as fp
from e2echat.client.core import (
    RECEIPT_INTERVAL,
    ClientCore,
    ClientState,
    Event,
    KeyChanged,
    KeyPinned,
    MessageQueued,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    PeerLeft,
    Registered,
    RegistrationFailed,
    RelayClosing,
    RelayError,
    RoomChanged,
    RoomEntered,
    SecurityWarning,
    SendReport,
    receipt_gap,
)
from e2echat.client.files import Transfers
from e2echat.client.outbox import BAD_BUNDLE
from e2echat.client.receipts import NOT_KNOWN, DeliveryReport
from e2echat.client.trust import Trust
from e2echat.crypto.identity import opened_identity_proof, registration_proof, session_proof_verifies
from e2echat.crypto.x3dh import signed_prekey_message
from e2echat.crypto.xeddsa import xeddsa_sign
from e2echat.errors import CommandError, LocalProtocolError, RemoteProtocolError
from e2echat.relay.core import Action, Close, ConnId, Persist, RelayCore, Write
from e2echat.relay.limits import Limits
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import SESSION_PROOF_SIZE
from e2echat.wire.objects import Bundle, PeerInfo, SignedPrekey

from relay_frames import Outgoing, any_signed_prekey, decode_frame

UNLIMITED = Limits(rate=1e9, burst=1e9)


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


def _chunks(data: bytes, byte_by_byte: bool) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]


@dataclass
class FakeWire:
    """What relay/server.py and client/connection.py do with sockets, done with lists.

    Client bytes go to RelayCore.receive_data as they are (whole, or byte by byte); the
    frames of each Write go to the client's receive_data as they are; a Close hangs up
    (and, as the relay's shell does once the socket is gone, tells the core). What each
    side wrote is also kept decoded, for assertions.
    """

    byte_by_byte: bool = False
    #: its clock stands still while tests send hundreds of frames, so without a rate limit
    #: (test_relay_core tests that one)
    relay: RelayCore = field(default_factory=lambda: RelayCore(UNLIMITED))
    clients: dict[ConnId, ClientCore] = field(default_factory=dict)
    events: dict[ConnId, list[Event]] = field(default_factory=dict)
    #: what the relay wrote, decoded
    outgoing: list[Outgoing] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)
    #: what each client sent the relay, decoded
    sent: dict[ConnId, list[m.Message]] = field(default_factory=dict)
    #: rewrite a client's messages on their way to the relay (a tampering network)
    tamper: dict[ConnId, Callable[[m.Message], m.Message]] = field(default_factory=dict)
    #: the relay's clock
    now: float = 1000.0
    _decoders: dict[ConnId, FrameDecoder] = field(default_factory=dict)
    _open: set[ConnId] = field(default_factory=set)
    _next: ConnId = 1

    def connect(
        self, nick: str, identity: PrivateKey | None = None, *, pump: bool = True, **options: Any
    ) -> ConnId:
        """A client connected, and (unless not ``pump``) registered: without, its answer to
        the relay's challenge waits in it, unsent."""
        conn, self._next = self._next, self._next + 1
        self.clients[conn] = ClientCore(
            nick, identity or PrivateKey.generate(), PrivateKey.generate(), **options
        )
        self.events[conn], self.sent[conn] = [], []
        self._decoders[conn] = FrameDecoder()
        self._open.add(conn)
        self.apply(self.relay.connect(conn, self.now))
        if pump:
            self.pump()
        return conn

    def is_open(self, conn: ConnId) -> bool:
        return conn in self._open

    def pump(self) -> None:
        """Carry client bytes to the relay until nobody has anything left to send."""
        busy = True
        while busy:
            busy = False
            for conn, client in self.clients.items():
                data = client.data_to_send()
                if not data or conn not in self._open:
                    continue
                busy = True
                self._to_relay(conn, data)

    def _to_relay(self, conn: ConnId, data: bytes) -> None:
        messages = [decode_message(frame) for frame in self._decoders[conn].receive_data(data)]
        tamper = self.tamper.get(conn)
        if tamper is not None:
            messages = [tamper(message) for message in messages]
            data = b"".join(_frame(message) for message in messages)
        self.sent[conn].extend(messages)
        self.to_relay(conn, data)

    def to_relay(self, conn: ConnId, data: bytes) -> None:
        """Bytes to the relay from ``conn`` (or from anyone who can write to the socket)."""
        for chunk in _chunks(data, self.byte_by_byte):
            self.apply(self.relay.receive_data(conn, chunk, self.now))
            if conn not in self._open:
                return

    def apply(self, actions: list[Action]) -> None:
        closed: list[ConnId] = []
        for action in actions:
            if isinstance(action, Write | Persist):
                for conn, data in action.frames:
                    self.outgoing.append(Outgoing(conn, decode_frame(data)))
                    if conn in self._open:
                        self.deliver(conn, data)
                continue
            self.closes.append(action)
            if action.conn in self._open:
                self._open.discard(action.conn)
                closed.append(action.conn)
        for conn in closed:
            self.apply(self.relay.disconnect(conn))

    def deliver(self, conn: ConnId, data: bytes) -> None:
        """Bytes from the relay (or from anyone who can write to the socket) to a client."""
        for chunk in _chunks(data, self.byte_by_byte):
            self.events[conn].extend(self.clients[conn].receive_data(chunk))

    def hang_up(self, conn: ConnId) -> None:
        """The client's connection drops."""
        self._open.discard(conn)
        self.apply(self.relay.disconnect(conn))

    def take(self, conn: ConnId, *, receipts: bool = False, pins: bool = False) -> list[Event]:
        """Events since the last take. End-to-end DeliveryReports and first-contact
        KeyPinned notices are left out unless asked for: most tests here are about routing,
        and have their own for receipts and pins."""
        events, self.events[conn] = self.events[conn], []
        return [
            e
            for e in events
            if (receipts or not isinstance(e, DeliveryReport)) and (pins or not isinstance(e, KeyPinned))
        ]

    def meet(self, first: ConnId, second: ConnId) -> None:
        """``first`` and ``second`` exchange a message each way, which pins each one's key
        for the other (first contact); the events it causes are dropped."""
        self.clients[first].send_private(self.clients[second].nick, "hello")
        self.clients[second].send_private(self.clients[first].nick, "hello to you")
        self.pump()
        self.take(first)
        self.take(second)

    def take_all(self) -> None:
        for conn in self.events:
            self.take(conn)


def _three(byte_by_byte: bool = False) -> tuple[FakeWire, ConnId, ConnId, ConnId]:
    wire = FakeWire(byte_by_byte=byte_by_byte)
    alice, bob, carol = wire.connect("alice"), wire.connect("bob"), wire.connect("carol")
    return wire, alice, bob, carol


BOTH_WAYS = pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "byte-by-byte"])


# -- registration -------------------------------------------------------------------------


@BOTH_WAYS
def test_three_clients_register_and_see_each_other(byte_by_byte: bool) -> None:
    wire, alice, bob, carol = _three(byte_by_byte)
    # Seeing someone in the directory pins nothing: the first message exchanged does.
    # New, each joins #lobby as they register: in it with the others from then on.
    joined = [PeerJoined("bob"), RoomEntered("#lobby", "bob"), RoomChanged("#lobby", "bob joined")]
    joined += [PeerJoined("carol"), RoomEntered("#lobby", "carol"), RoomChanged("#lobby", "carol joined")]
    assert wire.take(alice, pins=True) == [Registered("alice", ()), *joined]
    assert wire.take(bob, pins=True) == [Registered("bob", ("alice",)), *joined[3:]]
    assert wire.take(carol, pins=True) == [Registered("carol", ("alice", "bob"))]
    for conn, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        client = wire.clients[conn]
        assert client.state is ClientState.ONLINE
        assert client.peers == sorted({"alice", "bob", "carol"} - {nick})
        assert wire.relay.nick_of(conn) == nick
        assert wire.relay.is_registered(conn)
    assert wire.closes == []
    # The directory carries each client's real keys.
    assert wire.clients[alice].directory["bob"].identity_key == wire.clients[bob]._identity.public_key


def test_nick_taken_refuses_only_the_newcomer() -> None:
    wire, alice, bob, _ = _three()
    wire.take_all()
    second = wire.connect("alice")
    assert [type(e) for e in wire.take(second)] == [RegistrationFailed]
    assert wire.events[second] == []
    failed = wire.outgoing[-1]
    assert failed.conn == second and isinstance(failed.message, m.Error)
    assert failed.message.code == "nick_taken"
    assert [c.conn for c in wire.closes] == [second]
    assert wire.clients[second].state is ClientState.CLOSED
    # The first alice is still online, and nobody was told she left or joined.
    assert wire.relay.online["alice"] == alice
    assert wire.take(alice) == [] and wire.take(bob) == []
    wire.clients[alice].send_private("bob", "still here")
    wire.pump()
    assert wire.take(bob) == [MessageReceived("alice", "still here", private=True)]


def test_registration_failed_event_carries_the_code() -> None:
    wire = FakeWire()
    wire.connect("alice")
    second = wire.connect("alice")
    (event,) = wire.take(second)
    assert isinstance(event, RegistrationFailed)
    assert event.code == "nick_taken"


def _flip_proof(message: m.Message) -> m.Message:
    if isinstance(message, m.Register):
        proof = bytearray(message.proof)
        proof[len(proof) // 2] ^= 0x01
        return dataclasses.replace(message, proof=bytes(proof))
    return message


def _swap_session_key(message: m.Message) -> m.Message:
    if isinstance(message, m.Register):
        return dataclasses.replace(message, session_key=PrivateKey.generate().public_key)
    return message


def _swap_identity_key(message: m.Message) -> m.Message:
    if isinstance(message, m.Register):
        return dataclasses.replace(message, identity_key=PrivateKey.generate().public_key)
    return message


@pytest.mark.parametrize("tamper", [_flip_proof, _swap_session_key, _swap_identity_key])
def test_tampered_registration_is_refused(tamper: Callable[[m.Message], m.Message]) -> None:
    wire = FakeWire()
    alice = wire.connect("alice")
    wire.take_all()
    wire.tamper[2] = tamper  # the next connection
    bob = wire.connect("bob")
    assert bob == 2
    (event,) = wire.take(bob)
    assert event == RegistrationFailed("bad_proof", "registration proof did not verify")
    assert [c.conn for c in wire.closes] == [bob]
    assert "bob" not in wire.relay.online
    assert wire.take(alice) == []  # no PeerJoined for a failed registration


def test_registration_proofs_are_boxes_from_each_key_over_the_challenge_and_the_other() -> None:
    identity, relay_key, session_key = (PrivateKey.generate() for _ in range(3))
    challenge = m.Challenge(relay_key.public_key, b"\x05" * 32)
    nonces = (b"\x09" * 24, b"\x0a" * 24)
    proof, session_proof = registration_proof(identity, session_key, challenge, b"pw", nonces=nonces)
    assert (proof, session_proof) == registration_proof(
        identity, session_key, challenge, b"pw", nonces=nonces
    )
    opened = Box(relay_key, identity.public_key).decrypt(proof)
    assert opened == challenge.challenge + bytes(session_key.public_key) + b"pw"
    opened = Box(relay_key, session_key.public_key).decrypt(session_proof)
    assert opened == challenge.challenge + bytes(identity.public_key)  # no password in this one
    assert len(session_proof) == SESSION_PROOF_SIZE


def test_each_proof_answers_one_challenge_one_relay_and_the_pair_of_keys() -> None:
    """What the relay checks (crypto/identity.py), one thing at a time: a proof is good
    for this connection's challenge only, opens for this relay's key only, and names the
    other key of the pair; a low-order key is refused, not a crash."""
    identity, session, relay = (PrivateKey.generate() for _ in range(3))
    challenge = m.Challenge(relay.public_key, b"\x05" * 32)
    register = m.Register(
        "alice",
        identity.public_key,
        session.public_key,
        *registration_proof(identity, session, challenge, b"pw"),
        any_signed_prekey(),
    )
    assert opened_identity_proof(relay, challenge.challenge, register) == b"pw"
    assert session_proof_verifies(relay, challenge.challenge, register)
    other = PrivateKey.generate().public_key
    low_order = PublicKey(bytes(32))
    for wrong_relay, wrong_challenge, wrong_register in [
        (relay, b"\x06" * 32, register),  # another connection's challenge
        (PrivateKey.generate(), challenge.challenge, register),  # another relay
        (relay, challenge.challenge, dataclasses.replace(register, identity_key=other)),
        (relay, challenge.challenge, dataclasses.replace(register, session_key=other)),
        (relay, challenge.challenge, dataclasses.replace(register, identity_key=low_order)),
        (relay, challenge.challenge, dataclasses.replace(register, session_key=low_order)),
    ]:
        assert opened_identity_proof(wrong_relay, wrong_challenge, wrong_register) is None
        assert not session_proof_verifies(wrong_relay, wrong_challenge, wrong_register)


def _flip_session_proof(message: m.Message) -> m.Message:
    if isinstance(message, m.Register):
        proof = bytearray(message.session_proof)
        proof[len(proof) // 2] ^= 0x01
        return dataclasses.replace(message, session_proof=bytes(proof))
    return message


def test_tampered_session_proof_is_refused() -> None:
    wire = FakeWire()
    alice = wire.connect("alice")
    wire.take_all()
    wire.tamper[2] = _flip_session_proof
    bob = wire.connect("bob")
    (event,) = wire.take(bob)
    assert event == RegistrationFailed(
        "bad_session_proof", "registration proof for the session key did not verify"
    )
    assert "bob" not in wire.relay.online
    assert wire.take(alice) == []


# -- messages -----------------------------------------------------------------------------


@BOTH_WAYS
def test_room_message_reaches_both_others(byte_by_byte: bool) -> None:
    wire, alice, bob, carol = _three(byte_by_byte)
    wire.take_all()
    message_id = wire.clients[alice].send_room("#lobby", "hello, room")
    wire.pump()
    assert wire.take(bob) == [MessageReceived("alice", "hello, room", private=False)]
    assert wire.take(carol) == [MessageReceived("alice", "hello, room", private=False)]
    assert wire.take(alice) == [SendReport(message_id, False, ("bob", "carol"), ())]
    assert wire.clients[alice].pending == {}


@BOTH_WAYS
def test_private_message_reaches_only_its_target(byte_by_byte: bool) -> None:
    wire, alice, bob, carol = _three(byte_by_byte)
    wire.take_all()
    before = len(wire.outgoing)
    message_id = wire.clients[alice].send_private("bob", "just for you")
    wire.pump()
    assert wire.take(bob) == [MessageReceived("alice", "just for you", private=True)]
    assert wire.take(alice) == [SendReport(message_id, True, ("bob",), ())]
    assert wire.take(carol) == []
    # Not even a ciphertext, nor any sign that a message was sent, went to Carol: bob's
    # bundle to alice, the message to bob, the relay's answer to alice, bob's receipt to
    # alice, the answer to bob.
    assert [a.conn for a in wire.outgoing[before:]] == [alice, bob, alice, alice, bob]
    assert all(a.conn != carol for a in wire.outgoing[before:])
    (send,) = [s for s in wire.sent[alice] if isinstance(s, m.Send)]
    assert [e.to for e in send.items] == ["bob"]
    assert [f.nicks for f in wire.sent[alice] if isinstance(f, m.Fetch)] == [("bob",)]


def test_conversation_both_ways_keeps_working() -> None:
    wire, alice, bob, carol = _three()
    wire.take_all()
    for round_ in range(5):
        wire.clients[alice].send_room("#lobby", f"a{round_}")
        wire.clients[bob].send_private("carol", f"b{round_}")
        wire.clients[carol].send_private("alice", f"c{round_}")
        wire.pump()
    texts = {
        conn: [e.text for e in wire.take(conn) if isinstance(e, MessageReceived)]
        for conn in (alice, bob, carol)
    }
    assert texts[alice] == [f"c{i}" for i in range(5)]
    assert texts[bob] == [f"a{i}" for i in range(5)]
    assert texts[carol] == [t for i in range(5) for t in (f"a{i}", f"b{i}")]


def test_deliver_carries_the_true_sender() -> None:
    wire, _, bob, carol = _three()
    before = len(wire.outgoing)
    wire.clients[bob].send_private("carol", "from bob")
    wire.pump()
    delivers = [a for a in wire.outgoing[before:] if isinstance(a.message, m.Deliver)]
    assert len(delivers) == 2  # the message, then carol's receipt for it
    assert delivers[0].conn == carol
    assert isinstance(delivers[0].message, m.Deliver) and delivers[0].message.sender == "bob"
    assert delivers[1].conn == bob
    assert isinstance(delivers[1].message, m.Deliver) and delivers[1].message.sender == "carol"


def _captured_body(wire: FakeWire, conn: ConnId, recipient: str, text: str) -> bytes:
    """Encrypt for ``recipient`` and intercept the ciphertext before it leaves. What else
    the client writes goes to the relay: a fetch of the recipient's bundle, say."""
    client = wire.clients[conn]
    client.send_private(recipient, text)
    while True:
        decoder = FrameDecoder()
        for frame in decoder.receive_data(client.data_to_send()):
            message = decode_message(frame)
            if isinstance(message, m.Send):
                (envelope,) = message.items
                return envelope.body
            wire.to_relay(conn, _frame(message))


def test_relay_relabelling_the_sender_is_detected() -> None:
    wire, _, bob, carol = _three()
    wire.take_all()
    body = _captured_body(wire, bob, "carol", "from bob")
    wire.deliver(carol, _frame(m.Deliver("alice", body)))
    events = wire.take(carol)
    assert len(events) == 1 and isinstance(events[0], SecurityWarning)
    # Delivered under the right name, it is still good: the failure left no trace.
    wire.deliver(carol, _frame(m.Deliver("bob", body)))
    assert wire.take(carol) == [MessageReceived("bob", "from bob", private=True)]


def test_relay_replaying_a_deliver_is_detected() -> None:
    wire, _, bob, carol = _three()
    wire.take_all()
    body = _captured_body(wire, bob, "carol", "pay 10")
    wire.deliver(carol, _frame(m.Deliver("bob", body)))
    assert wire.take(carol) == [MessageReceived("bob", "pay 10", private=True)]
    wire.deliver(carol, _frame(m.Deliver("bob", body)))
    (event,) = wire.take(carol)
    assert isinstance(event, SecurityWarning)


def test_relay_holding_back_a_message_is_reported() -> None:
    wire, _, bob, carol = _three()
    wire.take_all()
    held = _captured_body(wire, bob, "carol", "first")
    later = _captured_body(wire, bob, "carol", "second")
    wire.deliver(carol, _frame(m.Deliver("bob", later)))
    assert wire.take(carol) == [MessagesMissing("bob", 1), MessageReceived("bob", "second", private=True)]
    wire.deliver(carol, _frame(m.Deliver("bob", held)))
    assert wire.take(carol) == [MessageReceived("bob", "first", private=True, late=True)]


def _captured_part(wire: FakeWire, conn: ConnId, recipient: str, part: bytes) -> bytes:
    """``_captured_body`` for a part of a file transfer."""
    client = wire.clients[conn]
    assert client.send_file_part(recipient, part)
    for frame in FrameDecoder().receive_data(client.data_to_send()):
        message = decode_message(frame)
        if isinstance(message, m.Send):
            (envelope,) = message.items
            return envelope.body
    raise AssertionError("no part was sent")


def _taking_a_file(chunks: int) -> tuple[FakeWire, ConnId, ConnId, list[bytes]]:
    """alice and bob, bob taking a file of ``chunks`` chunks from alice; and the parts
    (each chunk) alice has for him, not yet sent."""
    theirs, ours = Transfers(), Transfers()
    wire = FakeWire()
    alice, bob = wire.connect("alice", files=theirs), wire.connect("bob", files=ours)
    wire.meet(alice, bob)
    data = b"f" * (chunks * fp.CHUNK_SIZE)
    sent = theirs.offer("bob", "f", len(data), hashlib.blake2b(data, digest_size=32).digest(), "/f", 0.0)
    for _, part in theirs.messages:
        wire.deliver(bob, _frame(m.Deliver("alice", _captured_part(wire, alice, "bob", part))))
    taken = ours.accept(None)
    ours.landed(taken, 0, 0.0)
    wire.take_all()
    size = fp.CHUNK_SIZE
    parts = [
        fp.encode(fp.Chunk(sent.transfer_id, n * size, data[n * size : (n + 1) * size]))
        for n in range(chunks)
    ]
    return wire, alice, bob, parts


def test_chunks_a_relay_lost_are_not_messages_missing() -> None:
    wire, alice, bob, parts = _taking_a_file(4)
    bodies = [_captured_part(wire, alice, "bob", part) for part in parts]
    for body in (bodies[0], bodies[3]):  # the two between lost (a relay restarted)
        wire.deliver(bob, _frame(m.Deliver("alice", body)))
    assert not [event for event in wire.take(bob) if isinstance(event, MessagesMissing)]


def test_a_chat_message_lost_between_chunks_is_missing() -> None:
    """Chunk, chunk, line, line, chunk; the relay drops the second chunk and the second
    line: both gaps are told, though the second is one message before a chunk."""
    wire, alice, bob, parts = _taking_a_file(3)
    first, _ = (_captured_part(wire, alice, "bob", part) for part in parts[:2])
    line = _captured_body(wire, alice, "bob", "a line")
    _captured_body(wire, alice, "bob", "dropped")
    third = _captured_part(wire, alice, "bob", parts[2])
    for body in (first, line, third):
        wire.deliver(bob, _frame(m.Deliver("alice", body)))
    assert [event.count for event in wire.take(bob) if isinstance(event, MessagesMissing)] == [1, 1]


def test_deliver_from_someone_without_a_session_is_dropped() -> None:
    wire, alice, _, _ = _three()
    wire.take_all()
    wire.deliver(alice, _frame(m.Deliver("mallory", b"x" * 80)))
    (event,) = wire.take(alice)
    assert isinstance(event, SecurityWarning)


# -- leaving ------------------------------------------------------------------------------


def test_disconnect_tells_the_others_and_keeps_the_session() -> None:
    """bob leaves: everyone is told; alice, who talked with him, keeps their session for
    when he is back (the keyring outlives presence), and he is a member away now."""
    wire, alice, bob, carol = _three()
    wire.meet(alice, bob)
    wire.take_all()
    kept = wire.clients[alice].keyring.peers["bob"].to_bytes()
    wire.hang_up(bob)
    assert wire.take(alice) == [PeerLeft("bob")]
    assert wire.take(carol) == [PeerLeft("bob")]
    assert "bob" not in wire.relay.online
    for conn in (alice, carol):
        client = wire.clients[conn]
        assert "bob" not in client.peers
        assert client.away == ["bob"]
    assert wire.clients[alice].keyring.peers["bob"].to_bytes() == kept
    assert "bob" not in wire.clients[carol].keyring.peers  # they never talked


def _received(wire: FakeWire, conn: ConnId) -> list[MessageReceived]:
    return [e for e in wire.take(conn) if isinstance(e, MessageReceived)]


def _base_keys(client: ClientCore, nick: str) -> list[bytes]:
    """The sessions ``client`` has with ``nick``, by the base key that names each."""
    return [session.base_key for session in client.keyring.peers[nick]._sessions]


def test_a_rejoining_peer_keeps_the_session_and_a_replay_stays_refused() -> None:
    """bob reconnects with his identity and his keyring (as his profile keeps it): the
    conversation goes on in the same session, with no new key agreement either way, and
    the relay cannot replay to alice what bob sent on his earlier connection."""
    wire = FakeWire()
    alice = wire.connect("alice")
    bob_identity = PrivateKey.generate()
    bob = wire.connect("bob", identity=bob_identity)
    wire.meet(alice, bob)
    body_old = _captured_body(wire, bob, "alice", "old connection")
    wire.pump()
    wire.deliver(alice, _frame(m.Deliver("bob", body_old)))
    assert wire.take(alice) == [MessageReceived("bob", "old connection", private=True)]
    sessions = _base_keys(wire.clients[alice], "bob")
    alice_sent_before = len(wire.sent[alice])
    wire.hang_up(bob)
    new_bob = wire.connect("bob", identity=bob_identity, keyring=wire.clients[bob].keyring)
    wire.take_all()
    wire.deliver(alice, _frame(m.Deliver("bob", body_old)))
    (event,) = wire.take(alice)
    assert isinstance(event, SecurityWarning) and "replay" in event.text
    wire.clients[new_bob].send_private("alice", "new connection")
    wire.clients[alice].send_private("bob", "welcome back")
    wire.pump()
    assert _received(wire, alice) == [MessageReceived("bob", "new connection", private=True)]
    assert _received(wire, new_bob) == [MessageReceived("alice", "welcome back", private=True)]
    assert _base_keys(wire.clients[alice], "bob") == sessions
    sent_since = wire.sent[alice][alice_sent_before:] + wire.sent[new_bob]
    assert not [message for message in sent_since if isinstance(message, m.Fetch)]


def test_a_peer_back_with_another_identity_key_gets_a_new_session() -> None:
    """bob comes back with another identity key (the relay's, or a reinstall): alice is
    warned, and the newcomer's message is read and shown flagged. Its session is held
    apart: the sessions with the key alice pinned stay (a relay that announces its own
    key under bob's nick cannot make her drop them), until she accepts the new key; then
    the newcomer's session replaces them, and what was sent under the old key is read no
    more."""
    wire = FakeWire()
    alice, bob = wire.connect("alice"), wire.connect("bob")
    wire.meet(alice, bob)
    body_old = _captured_body(wire, bob, "alice", "old key")
    wire.pump()
    wire.take_all()
    old_sessions = _base_keys(wire.clients[alice], "bob")
    wire.hang_up(bob)
    new_bob = wire.connect("bob")  # another identity key
    assert [type(e) for e in wire.take(alice)] == [PeerLeft, PeerJoined, KeyChanged, RoomChanged]
    wire.clients[new_bob].send_private("alice", "new key")
    wire.pump()
    (shown,) = _received(wire, alice)
    assert (shown.text, shown.trust) == ("new key", Trust.CHANGED)
    assert _base_keys(wire.clients[alice], "bob") == old_sessions  # held apart, not kept
    wire.clients[alice].accept_key("bob", wire.clients[alice].key_fingerprint("bob"))
    wire.clients[new_bob].send_private("alice", "accepted")
    wire.pump()
    (shown,) = _received(wire, alice)
    assert (shown.text, shown.trust) == ("accepted", Trust.UNVERIFIED)
    new_sessions = _base_keys(wire.clients[alice], "bob")
    assert len(new_sessions) == 1 and not set(new_sessions) & set(old_sessions)
    wire.deliver(alice, _frame(m.Deliver("bob", body_old)))
    (event,) = wire.take(alice)
    assert isinstance(event, SecurityWarning)


def test_rejoin_with_another_identity_key_is_flagged_and_blocks_sending() -> None:
    """What a relay impersonating Bob looks like: same nick, different identity key."""
    wire, alice, bob, carol = _three()
    wire.meet(alice, bob)  # alice has talked with the real bob: his key is pinned
    wire.hang_up(bob)
    wire.take_all()
    impostor = wire.connect("bob")  # a new identity key
    events = wire.take(alice)
    assert events[0] == PeerJoined("bob")
    assert [type(e) for e in events[1:]] == [KeyChanged, RoomChanged]
    wire.take_all()
    client = wire.clients[alice]
    assert client.withheld() == ["bob"]
    with pytest.raises(CommandError, match="changed"):
        client.send_private("bob", "secret")
    # A room message still reaches Carol, but nothing at all goes to the new "bob".
    before = len(wire.outgoing)
    message_id = client.send_room("#lobby", "for the room")
    wire.pump()
    assert all(a.conn != impostor for a in wire.outgoing[before:])
    assert wire.take(impostor) == []
    assert wire.take(carol) == [MessageReceived("alice", "for the room", private=False)]
    assert wire.take(alice) == [SendReport(message_id, False, ("carol",), ())]


def test_a_copy_waiting_for_keys_goes_to_no_one_else_under_the_nick() -> None:
    """alice writes bob, whom she has no session with: the copy waits for his bundle.
    Before the relay answers, bob is gone and someone else has his nick (another
    identity key). The bundle the relay then hands out is the newcomer's, and true to
    them: still the copy is not sent, for it was meant for the bob alice wrote to."""
    wire = FakeWire()
    alice, bob = wire.connect("alice"), wire.connect("bob")
    wire.take_all()
    message_id = wire.clients[alice].send_private("bob", "for the bob I saw")
    fetch = wire.clients[alice].data_to_send()  # on its way
    wire.hang_up(bob)
    newcomer = wire.connect("bob")
    wire.to_relay(alice, fetch)
    wire.pump()
    assert _received(wire, newcomer) == []
    assert not [s for s in wire.sent[alice] if isinstance(s, m.Send)]
    reports = [e for e in wire.take(alice, receipts=True) if isinstance(e, DeliveryReport)]
    assert [(r.message_id, r.delivered, [nick for nick, _ in r.failed]) for r in reports] == [
        (message_id, (), ["bob"])
    ]


def test_recipient_gone_between_encrypt_and_route_is_queued_for_her() -> None:
    wire, alice, bob, carol = _three()
    wire.take_all()
    message_id = wire.clients[alice].send_room("#lobby", "anyone there?")  # encrypted for bob and carol
    wire.hang_up(carol)  # ... who leaves before the relay routes it: it keeps her copy
    wire.pump()
    assert wire.take(alice) == [
        PeerLeft("carol"),
        SendReport(message_id, False, ("bob", "carol"), ()),
        MessageQueued(message_id, False, ("carol",), "anyone there?"),
    ]
    assert wire.take(bob) == [PeerLeft("carol"), MessageReceived("alice", "anyone there?", private=False)]
    assert wire.clients[alice].pending == {}


def test_relay_shutdown_says_bye_to_everyone() -> None:
    wire, alice, bob, carol = _three()
    wire.take_all()
    wire.apply(wire.relay.shutdown("maintenance"))
    for conn in (alice, bob, carol):
        assert wire.take(conn) == [RelayClosing("maintenance")]
        assert wire.clients[conn].state is ClientState.CLOSED
    assert sorted(c.conn for c in wire.closes) == [alice, bob, carol]


def test_relay_error_while_online_is_an_event() -> None:
    wire, alice, _, _ = _three()
    wire.take_all()
    wire.deliver(alice, _frame(m.Error("slow_down", "too many messages")))
    assert wire.take(alice) == [RelayError("slow_down", "too many messages")]
    assert wire.clients[alice].state is ClientState.ONLINE


# -- refusals on the client side ----------------------------------------------------------


def test_send_private_to_a_nick_the_relay_never_knew_is_reported_and_nothing_kept() -> None:
    """dave is not online: he may be away (the relay keeps what is sent to him), so his
    bundle is asked for; the relay knows no dave, and the message is reported NOT
    delivered for that, with nothing left waiting."""
    wire, alice, _, _ = _three()
    wire.take_all()
    message_id = wire.clients[alice].send_private("dave", "hi")
    wire.pump()
    reports = [e for e in wire.take(alice, receipts=True) if isinstance(e, DeliveryReport)]
    assert reports == [DeliveryReport(message_id, True, (), (("dave", NOT_KNOWN),), "hi")]
    assert wire.clients[alice].settled and not wire.clients[alice].deliveries.pending


def test_send_private_to_self_raises() -> None:
    wire, alice, _, _ = _three()
    with pytest.raises(CommandError, match="you"):
        wire.clients[alice].send_private("alice", "hi")
    assert wire.clients[alice].data_to_send() == b""


def test_send_room_with_nobody_online_raises() -> None:
    wire = FakeWire()
    alice = wire.connect("alice")
    with pytest.raises(CommandError, match="nobody"):
        wire.clients[alice].send_room("#lobby", "hello?")
    assert wire.clients[alice].data_to_send() == b""
    assert wire.clients[alice].pending == {}


def test_empty_message_is_not_sent() -> None:
    wire, alice, _, _ = _three()
    with pytest.raises(CommandError):
        wire.clients[alice].send_room("#lobby", "")
    assert wire.clients[alice].data_to_send() == b""


def test_sending_before_registration_raises() -> None:
    client = ClientCore("alice", PrivateKey.generate(), PrivateKey.generate())
    with pytest.raises(CommandError):
        client.send_room("#lobby", "too early")
    with pytest.raises(CommandError):
        client.send_private("bob", "too early")


def test_invalid_own_nick_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        ClientCore("not a nick", PrivateKey.generate(), PrivateKey.generate())


# -- a hostile relay ----------------------------------------------------------------------


def test_client_rejects_garbage_from_the_relay() -> None:
    client = ClientCore("alice", PrivateKey.generate(), PrivateKey.generate())
    with pytest.raises(RemoteProtocolError):
        client.receive_data(encode_frame(b"\xff not json"))


def test_client_rejects_messages_out_of_order() -> None:
    client = ClientCore("alice", PrivateKey.generate(), PrivateKey.generate())
    with pytest.raises(RemoteProtocolError):
        client.receive_data(_frame(m.Welcome("alice", 50.0, 200.0, 1e6, 4e6, 0, ())))


def test_client_rejects_a_welcome_for_another_nick() -> None:
    relay = PrivateKey.generate()
    client = ClientCore("alice", PrivateKey.generate(), PrivateKey.generate())
    assert client.receive_data(_frame(m.Challenge(relay.public_key, b"\x00" * 32))) == []
    assert client.state is ClientState.AWAIT_WELCOME
    with pytest.raises(RemoteProtocolError):
        client.receive_data(_frame(m.Welcome("mallory", 50.0, 200.0, 1e6, 4e6, 0, ())))


def signed_bundle(nick: str, identity: PrivateKey, signed_prekey: PublicKey, prekey_id: int = 1) -> Bundle:
    """A bundle whose signed prekey the holder of ``identity`` really signed."""
    signature = xeddsa_sign(identity, signed_prekey_message(prekey_id, signed_prekey))
    return Bundle(nick, identity.public_key, SignedPrekey(prekey_id, signed_prekey, signature), ())


def test_client_warns_about_a_peer_with_unusable_keys() -> None:
    """eve's bundle holds a signed prekey she really signed, but it is a low-order point:
    no key agreement can come of it. alice is warned, nothing is sent, and the copy is
    reported NOT delivered."""
    wire, alice, _, _ = _three()
    wire.take_all()
    eve = PrivateKey.generate()
    wire.deliver(alice, _frame(m.PeerJoined(PeerInfo("eve", eve.public_key, PublicKey(bytes(32))))))
    assert wire.take(alice, pins=True) == [PeerJoined("eve")]
    client = wire.clients[alice]
    message_id = client.send_private("eve", "hi")  # the session is started when her keys come
    assert [decode_frame(client.data_to_send())] == [m.Fetch(("eve",))]
    wire.deliver(alice, _frame(m.Bundles((signed_bundle("eve", eve, PublicKey(bytes(32))),), ())))
    warning, *reports = wire.take(alice, receipts=True)
    assert warning == SecurityWarning(
        "the relay gave keys for eve that are not theirs (a key is not a valid curve point): "
        "it is lying or broken; nothing was sent to eve"
    )
    assert reports == [
        SendReport(message_id, True, (), ("eve",)),
        DeliveryReport(message_id, True, (), (("eve", BAD_BUNDLE),), "hi"),
    ]
    assert client.data_to_send() == b""
    assert not client.keyring.peers["eve"].can_send


# -- receipts ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _receipt_frames(wire: FakeWire, conn: ConnId) -> list[m.Send]:
    return [s for s in wire.sent[conn] if isinstance(s, m.Send) and s.id == 0]


def test_receipts_are_coalesced_into_a_few_frames() -> None:
    """However many messages arrive, a client sends at most one receipt frame per
    RECEIPT_INTERVAL, each acknowledging every sender: receipts must not trip the relay's
    rate limit in a busy room."""
    clock = FakeClock()
    wire = FakeWire()
    listener = wire.connect("listener", clock=clock)
    talkers = [wire.connect(f"talker{i}", clock=clock) for i in range(4)]
    for round_ in range(10):
        for talker in talkers:
            wire.clients[talker].send_room("#lobby", f"message {round_}")
        wire.pump()
    frames = _receipt_frames(wire, listener)
    assert len(frames) == 1  # the first went at once; the rest wait for the next tick
    clock.now += 1.5 * RECEIPT_INTERVAL  # the longest an interval can be
    for client in wire.clients.values():
        client.tick()
    wire.pump()
    frames = _receipt_frames(wire, listener)
    assert len(frames) == 2
    acked = {envelope.to for envelope in frames[1].items}
    assert acked == {f"talker{i}" for i in range(4)}  # one frame, a receipt for each sender
    for talker in talkers:
        reports = [e for e in wire.take(talker, receipts=True) if isinstance(e, DeliveryReport)]
        assert len(reports) == 10 and all("listener" in r.delivered for r in reports)


def test_no_receipt_goes_to_a_nick_whose_key_changed() -> None:
    wire = FakeWire()
    alice = wire.connect("alice")
    old_bob = wire.connect("bob")
    wire.meet(alice, old_bob)
    wire.hang_up(old_bob)
    receipts_before = len(_receipt_frames(wire, alice))
    new_bob = wire.connect("bob")  # another identity key: alice's pin no longer matches
    wire.take_all()
    wire.clients[new_bob].send_private("alice", "it's me, honest")
    wire.pump()
    (shown,) = [e for e in wire.take(alice) if isinstance(e, MessageReceived)]
    assert shown.trust is Trust.CHANGED
    # Not even a receipt until alice accepts the key.
    assert len(_receipt_frames(wire, alice)) == receipts_before


def test_nothing_is_owed_for_what_arrived_under_a_key_not_accepted() -> None:
    """A receipt batch is held back for a while; a message from a changed key that
    arrives meanwhile must not be acknowledged when the batch goes, even if the key has
    been accepted by then."""
    wire = FakeWire()
    alice, carol = wire.connect("alice"), wire.connect("carol")
    old_bob = wire.connect("bob")
    wire.meet(alice, old_bob)
    wire.hang_up(old_bob)
    receipts_before = len(_receipt_frames(wire, alice))
    new_bob = wire.connect("bob")  # another identity key
    wire.clients[carol].send_private("alice", "hi")  # alice's next receipt batch goes at once ...
    wire.pump()
    wire.clients[new_bob].send_private("alice", "it's me, honest")  # ... so this one would wait
    wire.pump()
    wire.clients[alice].accept_key("bob", wire.clients[alice].key_fingerprint("bob"))
    wire.clients[alice].flush_receipts()
    wire.pump()
    acknowledged = {e.to for frame in _receipt_frames(wire, alice)[receipts_before:] for e in frame.items}
    assert acknowledged == {"carol"}


def test_receipt_gaps_spread_between_half_and_one_and_a_half_intervals() -> None:
    gaps = [receipt_gap() / RECEIPT_INTERVAL for _ in range(2000)]
    assert all(0.5 <= gap < 1.5 for gap in gaps)
    assert min(gaps) < 0.6 and max(gaps) > 1.4  # spread, not fixed: clients fall out of step


def test_a_relay_cannot_replay_a_conversation_by_announcing_its_own_key_first() -> None:
    """The relay records alice's first messages to bob (sent without a one-time prekey,
    which it held back), announces "alice" with a key of its own and has that key write
    bob a valid first message, then announces the real alice again and replays what it
    recorded. Nothing of it is read again: the impostor's session was held apart (bob
    never accepted that key), and the base keys of first messages read are remembered
    with bob's prekeys anyway."""
    from test_session import NOW, bundle_of

    from e2echat.client.directory import Directory
    from e2echat.client.events import MessageReceived as Received
    from e2echat.client.receipts import DeliveryTracker
    from e2echat.client.rooms import Rooms
    from e2echat.client.sessions import Sessions
    from e2echat.client.trust import KnownPeers
    from e2echat.crypto.keyring import Keyring
    from e2echat.crypto.session import Kind

    bob_identity = PrivateKey.generate()
    bob_keyring = Keyring.fresh("bob", bob_identity, NOW)
    directory = Directory(KnownPeers())
    rooms = Rooms("bob", bob_identity.public_key, lambda: 0.0)
    bob = Sessions(
        "bob", bob_keyring, directory, DeliveryTracker(), PrivateKey.generate().public_key, time.time, rooms
    )
    alice_identity = PrivateKey.generate()
    bob.add(PeerInfo("alice", alice_identity.public_key, PrivateKey.generate().public_key))
    to_bob = Keyring.fresh("alice", alice_identity, NOW).peer("bob", bob_identity.public_key)
    to_bob.start(bundle_of(bob_keyring, one_time=False))
    recorded = [to_bob.encrypt(f"hello {i}", Kind.PRIVATE) for i in range(3)]
    assert sum(isinstance(e, Received) for body in recorded for e in bob.deliver("alice", body)) == 3

    impostor = PrivateKey.generate()
    bob.add(PeerInfo("alice", impostor.public_key, PrivateKey.generate().public_key))
    fake = Keyring.fresh("alice", impostor, NOW).peer("bob", bob_identity.public_key)
    fake.start(bundle_of(bob_keyring, one_time=False))
    (shown,) = [e for e in bob.deliver("alice", fake.encrypt("x", Kind.PRIVATE)) if isinstance(e, Received)]
    assert shown.trust is Trust.CHANGED

    bob.add(PeerInfo("alice", alice_identity.public_key, PrivateKey.generate().public_key))
    replayed = [e for body in recorded for e in bob.deliver("alice", body)]
    assert not any(isinstance(e, Received) for e in replayed)

"""Checks that could be removed without any test noticing (issue 16), each mounted here
so that it fails when its check is gone. Each test names the check it guards."""

from __future__ import annotations

import dataclasses

import pytest
from nacl.public import Box, PrivateKey, PublicKey
from test_client_fast import _frames
from test_cores import FakeClock, FakeWire, _base_keys, _frame, _receipt_frames, signed_bundle

from e2echat.client.core import (
    RECEIPT_INTERVAL,
    ClientCore,
    Event,
    KeyChanged,
    MessageReceived,
    SecurityWarning,
    SendReport,
)
from e2echat.client.receipts import NOT_KNOWN, RECEIPT_TIMEOUT, TIMED_OUT, DeliveryReport, DeliveryTracker
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.session import MAX_TEXT
from e2echat.errors import CommandError, RemoteProtocolError
from e2echat.relay.core import ConnId
from e2echat.ui.chat import Chat
from e2echat.wire import messages as m
from e2echat.wire.grammar import CHALLENGE_SIZE
from e2echat.wire.objects import PeerInfo

from support import connect, meet, running_relay, text_into


def _reports(wire: FakeWire, conn: ConnId) -> list[DeliveryReport]:
    return [e for e in wire.take(conn, receipts=True) if isinstance(e, DeliveryReport)]


def _shown(wire: FakeWire, conn: ConnId) -> list[Event]:
    """What ``conn`` was shown of what arrived: messages, and warnings about the rest."""
    return [e for e in wire.take(conn) if isinstance(e, MessageReceived | SecurityWarning)]


def _receipts_to(wire: FakeWire, conn: ConnId, nick: str) -> int:
    """How many receipts ``conn`` has sent to ``nick`` so far."""
    return sum(1 for frame in _receipt_frames(wire, conn) for e in frame.items if e.to == nick)


def _pass_on_only(wire: FakeWire, conn: ConnId, nick: str) -> None:
    """The relay passes on only the envelopes for ``nick`` of what ``conn`` has written
    (and answers its fetches, after which it writes the copies that waited for them)."""
    while data := wire.clients[conn].data_to_send():
        for message in _frames(data):
            if isinstance(message, m.Send):
                kept = tuple(e for e in message.items if e.to == nick)
                if not kept:
                    continue
                message = m.Send(message.id, kept)
            wire.to_relay(conn, _frame(message))


def _past_the_receipt_timeout(wire: FakeWire, conn: ConnId, clock: FakeClock) -> list[DeliveryReport]:
    clock.now += RECEIPT_TIMEOUT
    return [e for e in wire.clients[conn].tick() if isinstance(e, DeliveryReport)]


# -- receipts: whose copy, and only once (client/receipts.py, DeliveryTracker.acknowledged) --


def test_a_receipt_confirms_only_a_copy_its_sender_was_sent() -> None:
    tracker = DeliveryTracker(timeout=10.0)
    tracker.sent(7, False, {"bob": 3, "carol": 5}, now=100.0, preview="hello")
    assert tracker.acknowledged("carol", [3]) == []  # bob's counter, in carol's receipt
    assert tracker.acknowledged("carol", [5]) == []
    assert tracker.expire(now=110.0) == [DeliveryReport(7, False, ("carol",), (("bob", TIMED_OUT),), "hello")]


def test_carols_receipt_does_not_confirm_the_copy_the_relay_kept_from_bob() -> None:
    """Both copies go under counter 0 (each session's first message): the relay holds
    bob's back, and carol's receipt for her own counter 0 must not say bob got his."""
    clock = FakeClock()
    wire = FakeWire()
    alice = wire.connect("alice", clock=clock)
    wire.connect("bob", clock=clock)
    wire.connect("carol", clock=clock)
    wire.take_all()
    for_bob = wire.clients[alice].send_private("bob", "for bob")
    wire.clients[alice].data_to_send()  # the relay never passes it on
    for_carol = wire.clients[alice].send_private("carol", "for carol")
    wire.pump()
    assert _reports(wire, alice) == [DeliveryReport(for_carol, True, ("carol",), (), "for carol")]
    assert _past_the_receipt_timeout(wire, alice, clock) == [
        DeliveryReport(for_bob, True, (), (("bob", TIMED_OUT),), "for bob")
    ]


def test_a_receipt_cannot_settle_a_copy_twice_before_the_others_are_in() -> None:
    tracker = DeliveryTracker(timeout=10.0)
    tracker.sent(7, False, {"bob": 3, "carol": 5}, now=100.0, preview="hello")
    assert tracker.acknowledged("carol", [5, 5]) == []
    assert tracker.acknowledged("carol", [5]) == []
    assert tracker.acknowledged("bob", [3]) == [DeliveryReport(7, False, ("carol", "bob"), (), "hello")]


def test_a_peer_acknowledging_again_is_counted_once() -> None:
    """carol's client (buggy, or hostile) acknowledges alice's room message a second
    time while bob's copy is still open: the report names carol once."""
    clock = FakeClock()
    wire = FakeWire()
    alice = wire.connect("alice", clock=clock)
    wire.connect("bob", clock=clock)
    carol = wire.connect("carol", clock=clock)
    wire.take_all()
    message_id = wire.clients[alice].send_room("#lobby", "for the room")  # counter 0 for each
    _pass_on_only(wire, alice, "carol")
    wire.pump()
    assert _reports(wire, alice) == []  # carol's receipt is in, bob's copy open
    wire.clients[carol]._outbox.acks_due["alice"] = [0]  # carol acknowledges it again
    wire.clients[carol].flush_receipts()
    wire.pump()
    assert _receipts_to(wire, carol, "alice") == 2
    assert _past_the_receipt_timeout(wire, alice, clock) == [
        DeliveryReport(message_id, False, ("carol",), (("bob", TIMED_OUT),), "for the room")
    ]


# -- a peer who leaves and comes back keeps the session (client/sessions.py, Sessions.add) --


def test_a_peer_who_comes_back_keeps_the_session_both_ways() -> None:
    """alice and bob have talked; bob reconnects (same identity and keyring, new session
    key). The directory entry is replaced, the session is not: both go on in it, with no
    new key agreement on either side (which would cost a fetch and a first message, and
    drop what the old session still had to read)."""
    wire = FakeWire()
    bob_identity = PrivateKey.generate()
    alice, bob = wire.connect("alice"), wire.connect("bob", bob_identity)
    wire.clients[alice].send_private("bob", "before")
    wire.clients[bob].send_private("alice", "before, too")
    wire.pump()
    assert _shown(wire, bob) == [MessageReceived("alice", "before", private=True)]
    sessions = {nick: _base_keys(wire.clients[conn], nick) for conn, nick in ((alice, "bob"), (bob, "alice"))}
    wire.hang_up(bob)
    new_bob = wire.connect("bob", bob_identity, keyring=wire.clients[bob].keyring)
    wire.take_all()
    fetches = len([s for s in wire.sent[alice] if isinstance(s, m.Fetch)])
    wire.clients[alice].send_private("bob", "after")
    wire.clients[new_bob].send_private("alice", "after, too")
    wire.pump()
    assert _shown(wire, new_bob) == [MessageReceived("alice", "after", private=True)]
    assert _shown(wire, alice) == [MessageReceived("bob", "after, too", private=True)]
    assert len([s for s in wire.sent[alice] if isinstance(s, m.Fetch)]) == fetches
    assert not [s for s in wire.sent[new_bob] if isinstance(s, m.Fetch)]
    for conn, nick in ((alice, "bob"), (new_bob, "alice")):
        assert set(_base_keys(wire.clients[conn], nick)) == set(sessions[nick])  # none new


# -- nothing to and nothing from a key not accepted (client/outbox.py, client/core.py) -------


def test_receipts_owed_before_a_key_changed_are_not_sent_after() -> None:
    """bob's second message waits in alice's receipt batch; meanwhile bob's pin changes
    under alice (another process of hers accepted another key for bob). The batch then
    goes without a receipt for bob: nothing goes to a key alice does not accept."""
    clock = FakeClock()
    wire = FakeWire()
    alice, bob = wire.connect("alice", clock=clock), wire.connect("bob", clock=clock)
    wire.clients[bob].send_private("alice", "one")  # alice's first receipt goes at once
    wire.pump()
    wire.clients[bob].send_private("alice", "two")  # this one waits for her next batch
    wire.pump()
    assert _receipts_to(wire, alice, "bob") == 1
    wire.clients[alice].known_peers.accept("bob", PrivateKey.generate().public_key)
    assert wire.clients[alice].trust("bob") is Trust.CHANGED
    wire.clients[alice].flush_receipts()
    wire.pump()
    assert _receipts_to(wire, alice, "bob") == 1


def test_a_receipt_from_a_key_no_longer_accepted_confirms_nothing() -> None:
    """alice's message to bob is on its way when bob's pin changes under her; bob's
    receipt then comes from a key she does not accept, and must not count."""
    clock = FakeClock()
    wire = FakeWire()
    alice, bob = wire.connect("alice", clock=clock), wire.connect("bob", clock=clock)
    wire.take_all()
    message_id = wire.clients[alice].send_private("bob", "are you still you?")
    wire.clients[alice].known_peers.accept("bob", PrivateKey.generate().public_key)
    wire.pump()
    assert _receipts_to(wire, bob, "alice") == 1  # bob did acknowledge it
    assert _reports(wire, alice) == []
    assert _past_the_receipt_timeout(wire, alice, clock) == [
        DeliveryReport(message_id, True, (), (("bob", TIMED_OUT),), "are you still you?")
    ]


# -- verifying a changed key (client/directory.py, Directory.set_verified) -------------------


def _with_a_changed_key() -> tuple[FakeWire, ConnId]:
    wire = FakeWire()
    alice, old_bob = wire.connect("alice"), wire.connect("bob")
    wire.meet(alice, old_bob)
    wire.hang_up(old_bob)
    wire.connect("bob")  # another identity key
    assert any(isinstance(e, KeyChanged) for e in wire.take(alice))
    return wire, alice


@pytest.mark.parametrize("verified", [True, False])
def test_a_changed_key_cannot_be_marked_until_accepted(verified: bool) -> None:
    wire, alice = _with_a_changed_key()
    client = wire.clients[alice]
    pinned = client.known_peers.get("bob")
    with pytest.raises(CommandError, match="/trust bob"):
        client.set_verified("bob", verified)
    assert client.known_peers.get("bob") == pinned
    assert client.trust("bob") is Trust.CHANGED


async def test_commands_on_a_changed_key_answer_in_words() -> None:
    """``/untrust``, ``/verify`` with a wrong number, then with the right one, on bob's
    changed key: each a line for the user, none a traceback."""
    async with running_relay() as relay:
        alice = await connect(relay, "alice", known_peers=KnownPeers())
        old_bob = await connect(relay, "bob")
        await meet(alice, old_bob)
        await old_bob.connection.close()
        new_bob = await connect(relay, "bob")
        await alice.next(KeyChanged)
        lines: list[str] = []
        chat = Chat(alice.connection, text_into(lines))
        core = alice.connection.core
        assert chat.handle_line("/untrust bob")
        assert "key changed" in lines[-1] and "/trust bob" in lines[-1]
        assert chat.handle_line("/verify bob " + "12345" * 12)
        assert "does NOT match" in lines[-1]
        assert core.trust("bob") is Trust.CHANGED
        assert chat.handle_line(f"/verify bob {core.safety_number('bob')}")
        assert lines[-1].endswith("bob is now verified")
        assert core.trust("bob") is Trust.VERIFIED
        for peer in (new_bob, alice):
            await peer.connection.close()


# -- found by removing the client's other checks in turn ----------------------------------------


def _password_in_proof(password_required: bool) -> bytes:
    """What of alice's relay password her registration proof carries, as the relay opens it."""
    relay, identity = PrivateKey.generate(), PrivateKey.generate()
    core = ClientCore("alice", identity, PrivateKey.generate(), password=b"hunter2")
    challenge = m.Challenge(relay.public_key, b"\x05" * CHALLENGE_SIZE, password_required)
    core.receive_data(_frame(challenge))
    (register,) = _frames(core.data_to_send())
    assert isinstance(register, m.Register)
    opened = Box(relay, identity.public_key).decrypt(register.proof)
    assert opened[:CHALLENGE_SIZE] == challenge.challenge
    return opened[CHALLENGE_SIZE + PublicKey.SIZE :]


def test_the_relay_password_goes_only_to_a_relay_that_asks_for_it() -> None:
    """A relay that does not ask (another one, or one posing as ours) must not learn it."""
    assert _password_in_proof(password_required=True) == b"hunter2"
    assert _password_in_proof(password_required=False) == b""


def test_a_relay_listing_us_among_the_peers_is_a_protocol_error() -> None:
    wire = FakeWire()
    alice, _ = wire.connect("alice"), wire.connect("bob")
    us = PeerInfo("alice", PrivateKey.generate().public_key, PrivateKey.generate().public_key)
    with pytest.raises(RemoteProtocolError, match="our own nick"):
        wire.deliver(alice, _frame(m.PeerJoined(us)))


def test_a_refused_reannouncement_is_not_shown_as_a_join() -> None:
    """The relay replays bob's old entry after he left: a warning, and no "bob joined"."""
    wire = FakeWire()
    alice, bob = wire.connect("alice"), wire.connect("bob")
    wire.meet(alice, bob)  # a session with that key: its messages could be replayed
    old_entry = wire.clients[alice].directory["bob"]
    wire.hang_up(bob)
    wire.take_all()
    wire.deliver(alice, _frame(m.PeerJoined(old_entry)))
    assert [type(e) for e in wire.take(alice)] == [SecurityWarning]
    assert wire.clients[alice].peers == []


def test_a_peer_whose_bundle_was_refused_is_reached_with_the_next_good_one() -> None:
    """The relay hands alice a bundle for eve with a signed prekey of its own: refused,
    nothing sent. The refusal leaves nothing half made (client/outbox.py, Outbox.bundles):
    alice's next message fetches eve's bundle again, and with the relay honest again it
    reaches her."""
    wire = FakeWire()
    eve_identity, mallory = PrivateKey.generate(), PrivateKey.generate()
    alice, eve = wire.connect("alice"), wire.connect("eve", eve_identity)
    wire.take_all()
    client = wire.clients[alice]
    client.send_private("eve", "hi")
    assert _frames(client.data_to_send()) == [m.Fetch(("eve",))]  # the relay answers it itself:
    forged = signed_bundle("eve", mallory, PrivateKey.generate().public_key)
    forged = dataclasses.replace(forged, identity_key=eve_identity.public_key)
    wire.deliver(alice, _frame(m.Bundles((forged,), ())))
    assert [type(e) for e in _shown(wire, alice)] == [SecurityWarning]
    assert client.data_to_send() == b""
    client.send_private("eve", "hi again")
    wire.pump()
    assert _shown(wire, eve) == [MessageReceived("alice", "hi again", private=True)]


def test_a_receipt_goes_once() -> None:
    clock = FakeClock()
    wire = FakeWire()
    alice, bob = wire.connect("alice", clock=clock), wire.connect("bob", clock=clock)
    wire.clients[bob].send_private("alice", "one")
    wire.pump()
    assert _receipts_to(wire, alice, "bob") == 1
    clock.now += 1.5 * RECEIPT_INTERVAL
    wire.clients[alice].tick()
    wire.clients[alice].flush_receipts()
    wire.pump()
    assert _receipts_to(wire, alice, "bob") == 1


def test_a_new_known_peers_object_is_noticed_even_at_the_same_generation() -> None:
    """Trust states are cached per KnownPeers object and generation: a replacement that
    happens to have the cached generation must still not be read as the old one."""
    wire = FakeWire()
    alice, _ = wire.connect("alice"), wire.connect("bob")
    client = wire.clients[alice]
    assert client.trust("bob") is Trust.UNVERIFIED  # cached now
    other = KnownPeers()
    other.see("bob", PrivateKey.generate().public_key)
    other.generation = client.known_peers.generation
    client.known_peers = other
    assert client.trust("bob") is Trust.CHANGED
    with pytest.raises(CommandError, match="key changed"):
        client.send_private("bob", "still you?")


def test_the_relays_answers_cannot_rewrite_the_reports() -> None:
    """The relay answers for a room message with names that were no recipients, and calls
    bob, whose receipt is in, missing: the reports name the recipients only, and bob as
    delivered."""
    wire = FakeWire()
    alice, _, _ = wire.connect("alice"), wire.connect("bob"), wire.connect("carol")
    wire.take_all()
    message_id = wire.clients[alice].send_room("#lobby", "hello")
    _pass_on_only(wire, alice, "bob")  # carol's copy is held back, unanswered for
    wire.pump()
    assert wire.take(alice, receipts=True) == []  # bob's receipt is in; carol is open
    lie = m.Routed(message_id, ("mallory",), missing=("bob", "mallory"), refused=("mallory",))
    wire.deliver(alice, _frame(lie))
    assert wire.take(alice, receipts=True) == []
    wire.deliver(alice, _frame(m.Routed(message_id, (), missing=("carol",))))
    assert wire.take(alice, receipts=True) == [
        SendReport(message_id, False, ("bob",), ("carol",)),
        DeliveryReport(message_id, False, ("bob",), (("carol", NOT_KNOWN),), "hello"),
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [("x" * (MAX_TEXT + 1), "too long"), ("a lone surrogate \udcff", "not valid Unicode")],
    ids=["too-long", "not-unicode"],
)
def test_a_text_that_cannot_be_sent_is_refused_in_words_before_anything_goes(text: str, why: str) -> None:
    """Typed text can be anything (line mode reads undecodable bytes as surrogates): the
    user gets a CommandError to read, not an error from deeper down, and nothing is sent."""
    wire = FakeWire()
    alice, _ = wire.connect("alice"), wire.connect("bob")
    client = wire.clients[alice]
    with pytest.raises(CommandError, match=why):
        client.send_room("#lobby", text)
    with pytest.raises(CommandError, match=why):
        client.send_private("bob", text)
    assert client.data_to_send() == b""
    assert client.settled

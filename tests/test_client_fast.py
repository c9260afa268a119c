"""The client's fast paths (one JSON encoding per room message, cached trust states and
recipients, the direct deliver decoder) behave exactly as the general ones: real crypto,
cores fed the relay's frames directly."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
from nacl.public import PrivateKey

from benchmarks.client_cost import bundle_of
from e2echat.client.core import ClientCore, DeliveryReport, KeyChanged, MessageReceived, SecurityWarning
from e2echat.client.trust import KnownPeers, Trust
from e2echat.errors import CommandError, RemoteProtocolError
from e2echat.wire import messages as m
from e2echat.wire.codec import decode_message, encode_message
from e2echat.wire.fastpath import decode_deliver
from e2echat.wire.framing import FrameDecoder, encode_frame
from e2echat.wire.grammar import CHALLENGE_SIZE
from e2echat.wire.objects import PeerInfo

RELAY_KEY = PrivateKey.generate()


def _frame(message: m.Message) -> bytes:
    return encode_frame(encode_message(message))


def _frames(data: bytes) -> list[m.Message]:
    return [decode_message(payload) for payload in FrameDecoder().receive_data(data)]


def _register(core: ClientCore) -> PeerInfo:
    core.receive_data(_frame(m.Challenge(RELAY_KEY.public_key, os.urandom(CHALLENGE_SIZE))))
    (register,) = _frames(core.data_to_send())
    assert isinstance(register, m.Register)
    return PeerInfo(register.nick, register.identity_key, register.session_key)


def _online(*nicks: str) -> dict[str, ClientCore]:
    cores = {nick: ClientCore(nick, PrivateKey.generate(), PrivateKey.generate()) for nick in nicks}
    entries = {nick: _register(core) for nick, core in cores.items()}
    for nick, core in cores.items():
        others = tuple(e for n, e in entries.items() if n != nick)
        core.receive_data(_frame(m.Welcome(nick, 50.0, 200.0, 1e6, 4e6, 0, others)))
        core.receive_data(_frame(m.Members("#lobby", others, ())))  # everyone is in #lobby
        core.data_to_send()  # its prekeys, published: _bundle hands them out
    return cores


def _sends(sender: ClientCore, cores: dict[str, ClientCore]) -> list[m.Send]:
    """What the sender writes, each ``fetch`` answered (from ``cores``) as a relay would."""
    sends: list[m.Send] = []
    while data := sender.data_to_send():
        for message in _frames(data):
            if isinstance(message, m.Fetch):
                bundles = tuple(bundle_of(cores[nick]) for nick in message.nicks)
                events = sender.receive_data(_frame(m.Bundles(bundles, ())))
                assert not [e for e in events if isinstance(e, SecurityWarning | DeliveryReport)]
            else:
                assert isinstance(message, m.Send)
                sends.append(message)
    return sends


def _relay(sender: ClientCore, cores: dict[str, ClientCore]) -> dict[str, list[object]]:
    """Hand each envelope of the sender's frames to its recipient as the relay would."""
    events: dict[str, list[object]] = {}
    for message in _sends(sender, cores):
        for envelope in message.items:
            got = cores[envelope.to].receive_data(_frame(m.Deliver(sender.nick, envelope.body)))
            events.setdefault(envelope.to, []).extend(got)
    return events


def _texts(events: Sequence[object]) -> list[str]:
    return [event.text for event in events if isinstance(event, MessageReceived)]


def test_a_room_message_reaches_everyone_and_each_copy_only_its_recipient() -> None:
    cores = _online("alice", "bob", "carol", "dave")
    alice = cores["alice"]
    for round_ in range(3):
        alice.send_room("#lobby", f'hello {round_} "quoted" ✓')
        (send,) = _sends(alice, cores)  # the first one once the bundles are in
        assert [e.to for e in send.items] == ["bob", "carol", "dave"]
        bodies = {e.to: e.body for e in send.items}
        # Each copy opens for its recipient only: carol's copy given to bob is dropped.
        warned = cores["bob"].receive_data(_frame(m.Deliver("alice", bodies["carol"])))
        assert any(isinstance(e, SecurityWarning) for e in warned) and not _texts(warned)
        for nick in ("bob", "carol", "dave"):
            got = cores[nick].receive_data(_frame(m.Deliver("alice", bodies[nick])))
            assert _texts(got) == [f'hello {round_} "quoted" ✓']


def test_a_key_change_blocks_room_sends_until_accepted_and_the_cache_follows() -> None:
    cores = _online("alice", "bob", "carol")
    alice = cores["alice"]
    alice.send_room("#lobby", "first")  # fills the caches
    _relay(alice, cores)
    assert alice.trust("bob") is Trust.UNVERIFIED
    # bob comes back with another identity key: nothing may go to him.
    impostor = ClientCore("bob", PrivateKey.generate(), PrivateKey.generate())
    events = alice.receive_data(_frame(m.PeerLeft("bob")) + _frame(m.PeerJoined(_register(impostor))))
    assert any(isinstance(e, KeyChanged) for e in events)
    assert alice.trust("bob") is Trust.CHANGED
    alice.send_room("#lobby", "second")
    assert alice.left_out == ["bob"]
    cores["bob"] = impostor
    assert [[e.to for e in send.items] for send in _sends(alice, cores)] == [["carol"]]
    alice.accept_key("bob", alice.key_fingerprint("bob"))
    assert alice.trust("bob") is Trust.UNVERIFIED
    alice.send_room("#lobby", "third")
    assert alice.left_out == []
    # carol's copy at once, then the newcomer's once its bundle is in (a new session)
    assert [[e.to for e in send.items] for send in _sends(alice, cores)] == [["carol"], ["bob"]]


def test_trust_follows_changes_made_to_the_known_peers_directly() -> None:
    cores = _online("alice", "bob", "carol")
    alice = cores["alice"]
    assert alice.trust("bob") is Trust.UNVERIFIED  # cached now
    bob_key = alice.directory["bob"].identity_key
    alice.known_peers.see("bob", bob_key)
    alice.known_peers.set_verified("bob", bob_key, True)
    assert alice.trust("bob") is Trust.VERIFIED
    alice.known_peers.accept("bob", PrivateKey.generate().public_key)  # as another process might
    assert alice.trust("bob") is Trust.CHANGED
    with pytest.raises(CommandError):
        alice.send_private("bob", "no")
    alice.send_room("#lobby", "only carol")
    assert alice.left_out == ["bob"]
    # A new KnownPeers object altogether (generation 0 again) is noticed too.
    alice.known_peers = KnownPeers()
    alice.known_peers.see("bob", bob_key)
    alice.known_peers.set_verified("bob", bob_key, True)
    fresh = KnownPeers()
    fresh.see("bob", PrivateKey.generate().public_key)
    fresh.generation = alice.known_peers.generation
    alice.known_peers = fresh
    assert alice.trust("bob") is Trust.CHANGED


def test_a_deliver_has_one_form_and_the_fast_path_reads_it() -> None:
    cores = _online("alice", "bob")
    alice, bob = cores["alice"], cores["bob"]
    alice.send_room("#lobby", "one")
    (first,) = (s.items[0].body for s in _sends(alice, cores))
    canonical = encode_message(m.Deliver("alice", first))
    assert decode_deliver(canonical) == ("alice", first)
    assert _texts(bob.receive_data(encode_frame(canonical))) == ["one"]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":2,"type":"deliver","from":"alice","body":""}',
        b'{"v":2,"type":"deliver","from":"alice","body":"QUI"}',
        b'{"v":2,"type":"deliver","from":"al ice","body":"QUJD"}',
        b'{"v":2,"type":"deliver","from":"alice","from":"bob","body":"QUJD"}',
        b'{"v":2,"type":"deliver","from":"alice","body":"QUJD","x":0}',
        b"\x02\x02\x05alice",
        b"\x02\x02\x06al iceABC",
        b"\x02\x02\x09aliceABC",
        b"\x02\x01\x05aliceABC",
    ],
    ids=[
        "json-empty-body",
        "json-bad-base64",
        "json-bad-nick",
        "json-duplicate-field",
        "json-extra-field",
        "empty-body",
        "bad-nick",
        "nick-past-the-end",
        "version-1",
    ],
)
def test_a_malformed_deliver_is_a_protocol_error_as_before(payload: bytes) -> None:
    bob = _online("alice", "bob")["bob"]
    with pytest.raises(RemoteProtocolError):
        bob.receive_data(encode_frame(payload))


def test_a_canonical_deliver_before_registration_is_still_refused() -> None:
    bob = ClientCore("bob", PrivateKey.generate(), PrivateKey.generate())
    with pytest.raises(RemoteProtocolError):
        bob.receive_data(_frame(m.Deliver("alice", b"\x01" * 60)))


def test_receipts_confirm_room_messages_through_the_fast_paths() -> None:
    cores = _online("alice", "bob", "carol")
    alice = cores["alice"]
    alice.send_room("#lobby", "confirm me")
    _relay(alice, cores)  # each recipient's first receipt batch goes as the message arrives
    reports = []
    for nick in ("bob", "carol"):
        for message in _frames(cores[nick].data_to_send()):
            assert isinstance(message, m.Send) and message.id == 0
            for envelope in message.items:
                reports += alice.receive_data(_frame(m.Deliver(nick, envelope.body)))
    delivered = [r for r in reports if isinstance(r, DeliveryReport)]
    assert len(delivered) == 1 and sorted(delivered[0].delivered) == ["bob", "carol"]


def test_a_reach_out_whose_fetch_goes_unanswered_does_not_hold_later_messages() -> None:
    """alice reaches out to bob (he wrote in a session she lost): a fetch for his bundle,
    and an empty receipt waits for it. The relay never answers. Her next message to bob
    asks again instead of joining a queue that waits for ever."""
    cores = _online("alice", "bob")
    alice = cores["alice"]
    alice._sessions.lost.add("bob")
    alice.tick()
    asked = [msg for msg in _frames(alice.data_to_send()) if isinstance(msg, m.Fetch)]
    assert [fetch.nicks for fetch in asked] == [("bob",)]
    alice.send_private("bob", "hello?")
    asked = [msg for msg in _frames(alice.data_to_send()) if isinstance(msg, m.Fetch)]
    assert [fetch.nicks for fetch in asked] == [("bob",)]

"""Per-peer sessions: agreement, and a negative twin for every property (tampering, wrong
recipient, reflection, replay, reordering limits, key substitution, cross-session replay)."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey, PublicKey
from nacl.secret import SecretBox

from e2echat.crypto.session import (
    BODY_VERSION,
    MAX_SKIP,
    MAX_TEXT,
    Kind,
    Party,
    PeerSession,
    Plaintext,
    chain_step,
    hkdf_sha256,
    prepare,
    random_nonces,
)
from e2echat.errors import DecryptionError, LocalProtocolError, ReplayError
from e2echat.wire.grammar import MAX_BODY

VECTORS = Path(__file__).parent / "vectors"


@dataclass
class Person:
    nick: str
    identity: PrivateKey
    session_key: PrivateKey

    @classmethod
    def new(cls, nick: str, identity: PrivateKey | None = None) -> Person:
        return cls(nick, identity or PrivateKey.generate(), PrivateKey.generate())

    @property
    def party(self) -> Party:
        return Party(self.nick, self.identity.public_key, self.session_key.public_key)

    def session_with(self, other: Person | Party) -> PeerSession:
        their = other.party if isinstance(other, Person) else other
        return PeerSession(self.nick, self.identity, self.session_key, their)

    def reconnected(self) -> Person:
        """Same identity, a fresh session key: what every new connection gets."""
        return Person(self.nick, self.identity, PrivateKey.generate())


def _pair(first: Person | None = None, second: Person | None = None) -> tuple[PeerSession, PeerSession]:
    alice, bob = first or Person.new("alice"), second or Person.new("bob")
    return alice.session_with(bob), bob.session_with(alice)


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


# -- agreement ----------------------------------------------------------------------------


def test_messages_decrypt_both_ways() -> None:
    alice, bob = _pair()
    assert bob.decrypt(alice.encrypt("hello bob", Kind.ROOM)) == Plaintext(
        "alice", "bob", Kind.ROOM, 0, "hello bob"
    )
    assert alice.decrypt(bob.encrypt("hi alice 👋", Kind.PRIVATE)) == Plaintext(
        "bob", "alice", Kind.PRIVATE, 0, "hi alice 👋"
    )
    for counter in range(1, 5):
        got = bob.decrypt(alice.encrypt(f"#{counter}", Kind.PRIVATE))
        assert (got.counter, got.text, got.kind, got.skipped, got.late) == (
            counter,
            f"#{counter}",
            Kind.PRIVATE,
            0,
            False,
        )
    assert alice.peer == "bob" and bob.peer == "alice"


def _people_in_order(alice_first: bool) -> tuple[Person, Person]:
    while True:
        alice, bob = Person.new("alice"), Person.new("bob")
        if (alice.party.sort_key() < bob.party.sort_key()) == alice_first:
            return alice, bob


@pytest.mark.parametrize("alice_first", [True, False], ids=["alice-first", "bob-first"])
def test_agreement_does_not_depend_on_who_is_first(alice_first: bool) -> None:
    alice_person, bob_person = _people_in_order(alice_first)
    alice, bob = _pair(alice_person, bob_person)
    for round_ in range(3):
        assert bob.decrypt(alice.encrypt(f"a{round_}", Kind.ROOM)).text == f"a{round_}"
        assert alice.decrypt(bob.encrypt(f"b{round_}", Kind.ROOM)).text == f"b{round_}"


def test_agreement_for_many_random_pairs() -> None:
    orders = set()
    for _ in range(20):
        alice_person, bob_person = Person.new("alice"), Person.new("bob")
        orders.add(alice_person.party.sort_key() < bob_person.party.sort_key())
        alice, bob = _pair(alice_person, bob_person)
        assert bob.decrypt(alice.encrypt("x", Kind.ROOM)).sender == "alice"
        assert alice.decrypt(bob.encrypt("y", Kind.ROOM)).sender == "bob"
    assert orders == {True, False}  # 2**-19 chance of flaking: both orders were tried


def test_the_two_directions_use_different_keys() -> None:
    """Same counter, same text, same nonce: the two directions still differ."""
    alice, bob = _pair()
    nonce = b"\x07" * SecretBox.NONCE_SIZE
    to_bob = alice.encrypt("same", Kind.ROOM, nonce=nonce)
    to_alice = bob.encrypt("same", Kind.ROOM, nonce=nonce)
    assert to_bob[9:] != to_alice[9:]


# -- tampering ----------------------------------------------------------------------------


def test_every_flipped_byte_is_rejected_and_leaves_state_untouched() -> None:
    alice, bob = _pair()
    for counter in range(2):
        body = alice.encrypt("hi", Kind.ROOM)
        for index in range(len(body)):
            for mask in (0x01, 0x80):
                with pytest.raises(DecryptionError):
                    bob.decrypt(_flip(body, index, mask))
        assert bob.missing == 0
        got = bob.decrypt(body)
        assert (got.counter, got.text, got.skipped, got.late) == (counter, "hi", 0, False)


def test_flipped_late_message_is_rejected_and_can_still_arrive() -> None:
    alice, bob = _pair()
    first, second = alice.encrypt("1", Kind.ROOM), alice.encrypt("2", Kind.ROOM)
    assert bob.decrypt(second).skipped == 1
    for index in range(len(first)):
        with pytest.raises(DecryptionError):
            bob.decrypt(_flip(first, index))
    assert bob.missing == 1
    assert bob.decrypt(first).late is True
    assert bob.missing == 0


def test_truncated_body_is_rejected() -> None:
    alice, bob = _pair()
    body = alice.encrypt("hello", Kind.ROOM)
    for length in (0, 1, 9, 9 + 24 + 15, len(body) - 1):
        with pytest.raises(DecryptionError):
            bob.decrypt(body[:length])
    with pytest.raises(DecryptionError):
        bob.decrypt(body + b"\x00")
    assert bob.decrypt(body).text == "hello"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_body_version_is_rejected(version: int) -> None:
    alice, bob = _pair()
    body = alice.encrypt("hi", Kind.ROOM)
    assert body[0] == BODY_VERSION
    with pytest.raises(DecryptionError, match="version"):
        bob.decrypt(bytes([version]) + body[1:])
    assert bob.decrypt(body).text == "hi"


# -- wrong parties ------------------------------------------------------------------------


def test_wrong_recipient_cannot_decrypt() -> None:
    alice, bob, carol = Person.new("alice"), Person.new("bob"), Person.new("carol")
    body = alice.session_with(bob).encrypt("for bob only", Kind.PRIVATE)
    carol_from_alice = carol.session_with(alice)
    with pytest.raises(DecryptionError):
        carol_from_alice.decrypt(body)
    # Carol's own session with Alice is unharmed.
    assert carol_from_alice.decrypt(alice.session_with(carol).encrypt("hi", Kind.ROOM)).text == "hi"


def test_recipient_posing_as_someone_else_cannot_decrypt() -> None:
    """Carol has Bob's name but not his keys."""
    alice, bob = Person.new("alice"), Person.new("bob")
    body = alice.session_with(bob).encrypt("for bob only", Kind.PRIVATE)
    impostor = Person.new("bob")
    with pytest.raises(DecryptionError):
        impostor.session_with(alice).decrypt(body)


def test_reflection_is_rejected() -> None:
    alice, bob = _pair()
    body = alice.encrypt("to bob", Kind.ROOM)
    with pytest.raises(DecryptionError):
        alice.decrypt(body)
    assert bob.decrypt(body).text == "to bob"


def test_sender_relabelled_by_relay_is_rejected() -> None:
    """Bob's message to Carol, passed to Carol as if from Alice."""
    alice, bob, carol = Person.new("alice"), Person.new("bob"), Person.new("carol")
    body = bob.session_with(carol).encrypt("from bob", Kind.ROOM)
    with pytest.raises(DecryptionError):
        carol.session_with(alice).decrypt(body)


@pytest.mark.parametrize("victim", ["recipient", "sender"])
def test_relay_substituted_session_key_cannot_decrypt(victim: str) -> None:
    alice, bob, mallory = Person.new("alice"), Person.new("bob"), Person.new("mallory")
    if victim == "recipient":  # Bob is told Alice's session key is Mallory's
        fake_alice = Party("alice", alice.identity.public_key, mallory.session_key.public_key)
        sender, receiver = alice.session_with(bob), bob.session_with(fake_alice)
    else:  # Alice is told Bob's session key is Mallory's
        fake_bob = Party("bob", bob.identity.public_key, mallory.session_key.public_key)
        sender, receiver = alice.session_with(fake_bob), bob.session_with(alice)
    with pytest.raises(DecryptionError):
        receiver.decrypt(sender.encrypt("secret", Kind.PRIVATE))
    # ... and neither can Mallory, who holds that session key but not Alice's identity.
    as_mallory = PeerSession("bob", mallory.identity, mallory.session_key, alice.party)
    with pytest.raises(DecryptionError):
        as_mallory.decrypt(alice.session_with(bob).encrypt("secret", Kind.PRIVATE))


def test_relay_substituted_identity_key_cannot_decrypt() -> None:
    alice, bob, mallory = Person.new("alice"), Person.new("bob"), Person.new("mallory")
    fake_alice = Party("alice", mallory.identity.public_key, alice.session_key.public_key)
    with pytest.raises(DecryptionError):
        bob.session_with(fake_alice).decrypt(alice.session_with(bob).encrypt("secret", Kind.ROOM))


@pytest.mark.parametrize("bad_key", [bytes(32), b"\x01" + bytes(31)], ids=["zero", "order-1"])
def test_low_order_peer_key_is_refused(bad_key: bytes) -> None:
    alice, bob = Person.new("alice"), Person.new("bob")
    with pytest.raises(DecryptionError):
        alice.session_with(Party("bob", bob.identity.public_key, PublicKey(bad_key)))
    with pytest.raises(DecryptionError):
        alice.session_with(Party("bob", PublicKey(bad_key), bob.session_key.public_key))


# -- replay and reordering ----------------------------------------------------------------


def test_replay_is_rejected() -> None:
    alice, bob = _pair()
    body = alice.encrypt("once", Kind.ROOM)
    assert bob.decrypt(body).text == "once"
    with pytest.raises(ReplayError):
        bob.decrypt(body)
    assert bob.decrypt(alice.encrypt("twice", Kind.ROOM)).counter == 1


def test_reordering_within_bound_is_accepted_and_flagged() -> None:
    alice, bob = _pair()
    bodies = [alice.encrypt(f"m{i}", Kind.ROOM) for i in range(4)]

    got = bob.decrypt(bodies[2])
    assert (got.text, got.skipped, got.late) == ("m2", 2, False)
    assert bob.missing == 2
    got = bob.decrypt(bodies[0])
    assert (got.text, got.counter, got.skipped, got.late) == ("m0", 0, 0, True)
    got = bob.decrypt(bodies[3])
    assert (got.text, got.skipped, got.late) == ("m3", 0, False)
    got = bob.decrypt(bodies[1])
    assert (got.text, got.late) == ("m1", True)
    assert bob.missing == 0
    for body in bodies:  # a late message is still only accepted once
        with pytest.raises(ReplayError):
            bob.decrypt(body)


def test_gap_larger_than_max_skip_is_rejected() -> None:
    alice, bob = _pair()
    bodies = [alice.encrypt(str(i), Kind.ROOM) for i in range(MAX_SKIP + 2)]
    with pytest.raises(DecryptionError) as caught:
        bob.decrypt(bodies[MAX_SKIP + 1])  # MAX_SKIP + 1 messages skipped
    assert not isinstance(caught.value, ReplayError)
    assert bob.missing == 0
    # State untouched: a gap of exactly MAX_SKIP is still allowed.
    got = bob.decrypt(bodies[MAX_SKIP])
    assert (got.skipped, bob.missing) == (MAX_SKIP, MAX_SKIP)
    assert bob.decrypt(bodies[0]).late is True


def test_skipped_key_store_is_bounded() -> None:
    alice, bob = _pair()
    bodies = [alice.encrypt(str(i), Kind.ROOM) for i in range(2 * MAX_SKIP + 2)]
    bob.decrypt(bodies[MAX_SKIP])  # skips 0 .. MAX_SKIP-1
    assert bob.missing == MAX_SKIP
    bob.decrypt(bodies[2 * MAX_SKIP + 1])  # skips MAX_SKIP+1 .. 2*MAX_SKIP more
    assert bob.missing == MAX_SKIP
    # The oldest keys were forgotten; the newest are kept.
    for old in (0, MAX_SKIP - 1):
        with pytest.raises(ReplayError):
            bob.decrypt(bodies[old])
    assert bob.decrypt(bodies[MAX_SKIP + 1]).late is True
    assert bob.decrypt(bodies[2 * MAX_SKIP]).late is True


def test_body_from_an_earlier_session_is_rejected() -> None:
    alice, bob = Person.new("alice"), Person.new("bob")
    old_alice, old_bob = _pair(alice, bob)
    old_bodies = [old_alice.encrypt(f"old {i}", Kind.ROOM) for i in range(3)]
    assert old_bob.decrypt(old_bodies[0]).text == "old 0"

    new_alice, new_bob = _pair(alice.reconnected(), bob.reconnected())
    for body in old_bodies:  # counters 0, 1, 2 are all fresh in the new session
        with pytest.raises(DecryptionError):
            new_bob.decrypt(body)
    assert new_bob.missing == 0
    got = new_bob.decrypt(new_alice.encrypt("new 0", Kind.ROOM))
    assert (got.text, got.counter, got.skipped) == ("new 0", 0, 0)


def test_only_one_side_reconnecting_still_changes_the_keys() -> None:
    alice, bob = Person.new("alice"), Person.new("bob")
    old_alice, _ = _pair(alice, bob)
    body = old_alice.encrypt("old", Kind.ROOM)
    with pytest.raises(DecryptionError):
        bob.reconnected().session_with(alice).decrypt(body)


# -- encryption details -------------------------------------------------------------------


def test_encrypt_with_explicit_nonce_is_deterministic() -> None:
    alice, bob = Person.new("alice"), Person.new("bob")
    nonce = bytes(range(SecretBox.NONCE_SIZE))
    first = alice.session_with(bob).encrypt("hi", Kind.ROOM, nonce=nonce)
    second = alice.session_with(bob).encrypt("hi", Kind.ROOM, nonce=nonce)
    assert first == second
    assert first[:9] == struct.pack(">BQ", BODY_VERSION, 0)
    assert first[9 : 9 + SecretBox.NONCE_SIZE] == nonce
    assert bob.session_with(alice).decrypt(first).text == "hi"
    # The twin: a different (or random) nonce gives a different body.
    other = alice.session_with(bob).encrypt("hi", Kind.ROOM, nonce=b"\xff" * SecretBox.NONCE_SIZE)
    assert other != first
    random_nonces = {alice.session_with(bob).encrypt("hi", Kind.ROOM) for _ in range(2)}
    assert len(random_nonces) == 2


def test_text_length_limit() -> None:
    alice, bob = _pair()
    assert bob.decrypt(alice.encrypt("é" * (MAX_TEXT // 2), Kind.ROOM)).text == "é" * (MAX_TEXT // 2)
    with pytest.raises(LocalProtocolError):
        alice.encrypt("x" * (MAX_TEXT + 1), Kind.ROOM)
    # The refused message did not use up a counter.
    assert bob.decrypt(alice.encrypt("next", Kind.ROOM)).skipped == 0


def _seal_as(sender: PeerSession, plaintext: bytes) -> bytes:
    """A body carrying arbitrary plaintext, as a hostile but keyed peer could make.

    Reaches into the sender's chain: the public API only ever encrypts well-formed JSON.
    """
    counter = sender._send_counter
    sender._send_chain, message_key = chain_step(sender._send_chain)
    sender._send_counter += 1
    return struct.pack(">BQ", BODY_VERSION, counter) + bytes(SecretBox(message_key).encrypt(plaintext))


def _inner(**changes: Any) -> bytes:
    inner = {"from": "alice", "to": "bob", "kind": "room", "n": 0, "text": "hi"}
    inner.update(changes)
    return json.dumps(inner).encode("utf-8")


@pytest.mark.parametrize(
    "plaintext",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        _inner(kind="shout"),
        _inner(kind=["room"]),
        _inner(text=5),
        _inner(text="lone \ud800 surrogate"),
        _inner(**{"from": "carol"}),
        _inner(to="carol"),
        _inner(n=1),
        json.dumps({"from": "alice", "to": "bob", "kind": "room", "n": 0}).encode(),
        _inner(sent="12:00"),
        _inner(sent=1.5),
        _inner(sent=True),
        _inner(sent=-1),
        _inner(sent=2**53),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "array",
        "string",
        "bad-kind",
        "kind-list",
        "text-int",
        "text-lone-surrogate",
        "wrong-from",
        "wrong-to",
        "wrong-counter",
        "no-text",
        "sent-string",
        "sent-float",
        "sent-bool",
        "sent-negative",
        "sent-huge",
    ],
)
def test_authentic_but_malformed_plaintext_is_rejected(plaintext: bytes) -> None:
    alice, bob = _pair()
    with pytest.raises(DecryptionError):
        bob.decrypt(_seal_as(alice, plaintext))
    assert bob.missing == 0
    # The refusal left no trace: the next message reports counter 0 as skipped.
    got = bob.decrypt(_seal_as(alice, _inner(n=1)))
    assert (got.counter, got.skipped) == (1, 1)


# json.loads raises RecursionError on deep nesting: it must come out as DecryptionError,
# not escape decrypt() and ClientCore.receive_data() and kill the recipient's connection.
def test_deeply_nested_plaintext_raises_decryption_error() -> None:
    alice, bob = _pair()
    body = _seal_as(alice, b"[" * 30_000)
    assert len(body) <= MAX_BODY  # fits in one Deliver
    with pytest.raises(DecryptionError):
        bob.decrypt(body)


# -- primitives: known answers ------------------------------------------------------------


def _hkdf_vectors() -> list[Any]:
    document = json.loads((VECTORS / "hkdf_sha256.json").read_text(encoding="utf-8"))
    return [pytest.param(vector, id=vector["name"]) for vector in document["vectors"]]


@pytest.mark.parametrize("vector", _hkdf_vectors())
def test_hkdf_sha256_known_answers(vector: dict[str, Any]) -> None:
    okm = hkdf_sha256(
        bytes.fromhex(vector["ikm"]),
        salt=bytes.fromhex(vector["salt"]),
        info=bytes.fromhex(vector["info"]),
        length=vector["length"],
    )
    assert okm.hex() == vector["okm"]
    assert len(okm) == vector["length"]


def test_hkdf_vectors_include_rfc5869_case_1() -> None:
    names = [param.id for param in _hkdf_vectors()]
    assert "rfc5869-case-1" in names


def test_hkdf_info_and_salt_matter() -> None:
    ikm = b"\x0b" * 22
    base = hkdf_sha256(ikm, info=b"a", length=32)
    assert hkdf_sha256(ikm, info=b"b", length=32) != base
    assert hkdf_sha256(ikm, info=b"a", length=32, salt=b"s") != base
    assert hkdf_sha256(ikm, info=b"a", length=64)[:32] == base


def test_chain_step_is_hmac_sha256_with_one_and_two() -> None:
    chain = bytes(range(32))
    next_chain, message_key = chain_step(chain)
    assert message_key == hmac.new(chain, b"\x01", hashlib.sha256).digest()
    assert next_chain == hmac.new(chain, b"\x02", hashlib.sha256).digest()
    assert next_chain != message_key
    assert chain_step(next_chain)[1] != message_key


# -- the shared-plaintext send path (one JSON encoding per message, not per recipient) ----


@pytest.mark.parametrize(
    ("text", "kind", "directory_hash", "acks"),
    [
        ("hello", Kind.ROOM, "ab" * 32, ()),
        ('quotes " and \\ backslashes, \n newlines, \x00 \x1f controls', Kind.PRIVATE, "", ()),
        ("unicode é 👋 \u2028 \u2029 </script>", Kind.ROOM, "00" * 32, ()),
        ("", Kind.RECEIPT, "cd" * 32, (0, 1, 2**64 - 1)),
    ],
    ids=["plain", "escapes", "unicode", "receipt"],
)
def test_sealed_plaintext_is_exactly_the_json_of_the_fields(
    text: str, kind: Kind, directory_hash: str, acks: tuple[int, ...]
) -> None:
    """``seal`` assembles the plaintext from parts encoded once per message; it must be the
    very bytes json.dumps gives for the documented fields, and open with plain SecretBox."""
    alice, bob = _pair(Person.new("a.l-i_ce"), Person.new("Bob9"))
    sent = None if acks else 1_700_000_000  # receipts go without one
    outgoing = prepare(text, kind, directory_hash=directory_hash, acks=acks, sent=sent)
    for counter in range(3):
        chain = alice._send_chain
        body = alice.seal(outgoing, random_nonces(1)[0])
        _, message_key = chain_step(chain)
        fields: dict[str, Any] = {
            "from": "a.l-i_ce",
            "to": "Bob9",
            "kind": kind.value,
            "n": counter,
            "text": text,
            "dir": directory_hash,
        }
        if sent is not None:
            fields["sent"] = sent
        if acks:
            fields["acks"] = list(acks)
        expected = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert body[:9] == struct.pack(">BQ", BODY_VERSION, counter)
        assert SecretBox(message_key).decrypt(body[9:]) == expected
        got = bob.decrypt(body)
        assert (got.text, got.kind, got.counter, got.directory_hash, got.acks, got.sent) == (
            text,
            kind,
            counter,
            directory_hash,
            acks,
            sent,
        )


def test_the_send_time_travels_inside_the_encryption() -> None:
    alice, bob = _pair()
    assert bob.decrypt(alice.encrypt("when?", Kind.ROOM, sent=1_700_000_000)).sent == 1_700_000_000
    assert bob.decrypt(alice.encrypt("an older client", Kind.ROOM)).sent is None
    assert bob.decrypt(_seal_as(alice, _inner(n=2, sent=0))).sent == 0
    with pytest.raises(LocalProtocolError):
        prepare("hi", Kind.ROOM, sent=-1)


def test_one_prepared_message_seals_differently_for_each_recipient() -> None:
    alice = Person.new("alice")
    bob, carol = Person.new("bob"), Person.new("carol")
    to_bob, to_carol = alice.session_with(bob), alice.session_with(carol)
    outgoing = prepare("to both", Kind.ROOM)
    nonce_bob, nonce_carol = random_nonces(2)
    body_bob, body_carol = to_bob.seal(outgoing, nonce_bob), to_carol.seal(outgoing, nonce_carol)
    assert bob.session_with(alice).decrypt(body_bob).text == "to both"
    assert carol.session_with(alice).decrypt(body_carol).text == "to both"
    # The negative twins: neither copy opens for the other recipient.
    with pytest.raises(DecryptionError):
        carol.session_with(alice).decrypt(body_bob)
    with pytest.raises(DecryptionError):
        bob.session_with(alice).decrypt(body_carol)


def test_prepare_refuses_what_encrypt_refuses() -> None:
    with pytest.raises(LocalProtocolError):
        prepare("x" * (MAX_TEXT + 1), Kind.ROOM)
    with pytest.raises(UnicodeEncodeError):
        prepare("lone \ud800", Kind.ROOM)


def test_random_nonces_are_24_random_bytes_each() -> None:
    nonces = random_nonces(50)
    assert len(nonces) == 50
    assert all(len(nonce) == SecretBox.NONCE_SIZE for nonce in nonces)
    assert len(set(nonces)) == 50
    assert random_nonces(3) != random_nonces(3)

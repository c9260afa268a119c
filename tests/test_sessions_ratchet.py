"""Attacks on the session layer as a whole (issue 17): replays of first messages, one-time
prekeys handed out twice, substituted bundles, expired prekeys, simultaneous starts,
post-compromise security, forward secrecy, tampering, skipped-key exhaustion across many
peers, and what survives a restart (``Keyring.rows`` -> ``Keyring.from_rows``).

Each attack test fails if the attack works; where an attack could fail for a reason the
test does not mean, a positive control shows that it would otherwise have worked.
"""

from __future__ import annotations

import gc
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import replace

import pytest
from nacl.public import PrivateKey
from nacl.utils import random
from test_session import NOW, bundle_of, flip, keyrings_and_bundle, started, talked, with_peer

from e2echat.crypto import session, x3dh
from e2echat.crypto.keyring import NICK_ROW, PEER_ROW, PREKEYS_ROW, Keyring
from e2echat.crypto.prekeys import (
    DAY,
    MAX_ONE_TIME,
    SIGNED_PREKEY_GRACE,
    SIGNED_PREKEY_LIFETIME,
    OurPrekeys,
)
from e2echat.crypto.ratchet import MAX_SKIP
from e2echat.crypto.session import MAX_SESSIONS, PREKEY_HEADER_SIZE, Kind, PeerSession
from e2echat.crypto.skipped import MAX_SKIPPED_TOTAL, SkippedKeys
from e2echat.crypto.xeddsa import xeddsa_sign, xeddsa_verify
from e2echat.errors import BadPrekeyBundle, BadPrekeySignature, BadRatchetState, DecryptionError, ReplayError

ONE_TIME = pytest.mark.parametrize("one_time", [True, False], ids=["one-time-prekey", "signed-prekey-only"])


def restarted(keyring: Keyring, now: float = NOW) -> Keyring:
    """The keyring as a restarted client loads it from what it saved."""
    return Keyring.from_rows(keyring.nick, keyring.identity, keyring.rows(), now)


def refused_untouched(
    keyring: Keyring,
    receiver: PeerSession,
    body: bytes,
    error: type[DecryptionError],
    match: str | None = None,
) -> None:
    """``receiver`` (one of ``keyring``'s) refuses ``body`` with ``error``, and nothing
    it keeps (sessions, base keys, prekeys, skipped keys) changes, nor is marked to save."""
    keyring.changes()
    before, keys = keyring.rows(), len(keyring.budget)
    with pytest.raises(error, match=match) as refused:
        receiver.decrypt(body)
    assert error is not DecryptionError or not isinstance(refused.value, ReplayError)
    assert keyring.rows() == before
    assert len(keyring.budget) == keys
    assert not keyring.changed


def current_session(peer: PeerSession) -> bytes:
    """The base key that names the current session with the peer."""
    return peer._sessions[0].base_key


def new_sessions(alice: Keyring, bob: Keyring, count: int) -> None:
    """Alice starts ``count`` more sessions with bob, each with one first message that
    bob reads (signed prekey only: bob's one-time prekeys stay as they are)."""
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    for _ in range(count):
        to_bob.start(bundle_of(bob, one_time=False))
        assert to_alice.decrypt(to_bob.encrypt("again", Kind.ROOM)).text == "again"


# -- first contact: the one-time prekey, and replays of the first message ------------------


@ONE_TIME
def test_the_one_time_prekey_is_deleted_at_first_use(one_time: bool) -> None:
    alice, bob, bundle = keyrings_and_bundle(one_time=one_time)
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    to_bob.start(bundle)
    unused = bob.prekeys.unused
    if one_time:
        assert bundle.one_time_prekey_id is not None
        assert bob.prekeys.one_time(bundle.one_time_prekey_id) is not None
    assert to_alice.decrypt(to_bob.encrypt("first", Kind.ROOM)).text == "first"
    if one_time:
        assert bundle.one_time_prekey_id is not None
        assert bob.prekeys.one_time(bundle.one_time_prekey_id) is None
        assert PREKEYS_ROW in bob.changes()
    assert bob.prekeys.unused == unused - one_time
    assert bob.prekeys.signed(bundle.signed_prekey_id) is not None  # that one stays


@ONE_TIME
def test_a_replayed_first_message_is_rejected_while_its_session_lives(one_time: bool) -> None:
    _, bob, to_bob, to_alice = started(one_time=one_time)
    first = to_bob.encrypt("first", Kind.ROOM)
    to_alice.decrypt(first)
    refused_untouched(bob, to_alice, first, ReplayError)
    to_bob.decrypt(to_alice.encrypt("reply", Kind.ROOM))
    to_alice.decrypt(to_bob.encrypt("established", Kind.ROOM))
    refused_untouched(bob, to_alice, first, ReplayError)


@ONE_TIME
def test_a_replayed_first_message_is_rejected_after_a_restart(one_time: bool) -> None:
    alice, bob, to_bob, to_alice = started(one_time=one_time)
    first = to_bob.encrypt("first", Kind.ROOM)
    to_alice.decrypt(first)
    bob = restarted(bob)
    refused_untouched(bob, with_peer(bob, alice), first, ReplayError)


@ONE_TIME
def test_a_replayed_first_message_is_rejected_after_its_session_is_dropped(one_time: bool) -> None:
    """The session it started has been pushed out by newer ones: its base key, kept
    apart, still says it was read."""
    alice, bob, to_bob, to_alice = started(one_time=one_time)
    first = to_bob.encrypt("first", Kind.ROOM)
    base_key = first[33:65]
    to_alice.decrypt(first)
    new_sessions(alice, bob, MAX_SESSIONS)
    assert base_key not in [kept.base_key for kept in to_alice._sessions]
    refused_untouched(bob, to_alice, first, ReplayError)
    bob = restarted(bob)
    refused_untouched(bob, with_peer(bob, alice), first, ReplayError)


@ONE_TIME
def test_a_replayed_first_message_with_its_base_key_re_encoded_is_rejected(one_time: bool) -> None:
    """X25519 ignores a public key's top bit: with it set, the base key names the same
    point, and the replay would be a new first message to the base-key memory."""
    alice, bob, to_bob, to_alice = started(one_time=one_time)
    first = to_bob.encrypt("first", Kind.ROOM)
    to_alice.decrypt(first)
    re_encoded = flip(first, 64, 0x80)  # the base key's last byte
    for keyring in (bob, restarted(bob)):
        refused_untouched(keyring, with_peer(keyring, alice), re_encoded, DecryptionError)


def test_a_replayed_first_message_is_refused_by_its_deleted_one_time_prekey(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Session and base key both forgotten (the base-key memory made tiny to get there
    quickly): the one-time prekey it used is gone, so it cannot start a session again.
    (Without a one-time prekey, only the base-key memory stands between a replay and a
    second session while the signed prekey lives: hence MAX_BASE_KEYS and the prekeys'
    MAX_SEEN are large.)"""
    monkeypatch.setattr(session, "MAX_BASE_KEYS", 2)
    monkeypatch.setattr("e2echat.crypto.prekeys.MAX_SEEN", 2)
    alice, bob, to_bob, to_alice = started(one_time=True)
    first = to_bob.encrypt("first", Kind.ROOM)
    to_alice.decrypt(first)
    new_sessions(alice, bob, MAX_SESSIONS)
    assert first[33:65] not in to_alice._base_keys
    assert len(to_alice._base_keys) == 2
    for keyring in (bob, restarted(bob)):
        refused_untouched(keyring, with_peer(keyring, alice), first, DecryptionError, "used already")


def test_the_base_keys_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "MAX_BASE_KEYS", 3)
    alice, bob, _, _ = started()
    new_sessions(alice, bob, 10)
    assert len(with_peer(bob, alice)._base_keys) == 3
    assert len(with_peer(restarted(bob), alice)._base_keys) == 3


def test_sessions_pushed_out_return_their_skipped_keys() -> None:
    alice, bob, to_bob, to_alice = started()
    to_bob.encrypt("lost", Kind.ROOM)
    to_alice.decrypt(to_bob.encrypt("overtakes", Kind.ROOM))
    assert len(bob.budget) == 1
    new_sessions(alice, bob, MAX_SESSIONS - 1)
    assert len(bob.budget) == 1  # still one of the MAX_SESSIONS kept
    new_sessions(alice, bob, 1)
    assert len(to_alice._sessions) == MAX_SESSIONS
    assert len(bob.budget) == 0


# -- the relay hands out a one-time prekey twice, or a bundle not signed by its owner ------


def test_a_one_time_prekey_handed_out_twice_serves_only_the_first_to_use_it() -> None:
    bob, carol, dave = (Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("bob", "carol", "dave"))
    bundle = bundle_of(bob)
    carol_to_bob, dave_to_bob = with_peer(carol, bob), with_peer(dave, bob)
    bob_from_carol, bob_from_dave = with_peer(bob, carol), with_peer(bob, dave)
    carol_to_bob.start(bundle)
    dave_to_bob.start(bundle)
    assert bob_from_carol.decrypt(carol_to_bob.encrypt("carol's first", Kind.ROOM)).text == "carol's first"
    dave_first = dave_to_bob.encrypt("dave's first", Kind.ROOM)
    refused_untouched(bob, bob_from_dave, dave_first, DecryptionError, "used already")
    refused_untouched(bob, bob_from_dave, dave_to_bob.encrypt("again", Kind.ROOM), DecryptionError)
    assert not bob_from_dave.can_send
    # Carol's session is unharmed, both ways.
    for _ in range(2):
        assert carol_to_bob.decrypt(bob_from_carol.encrypt("to carol", Kind.ROOM)).text == "to carol"
        assert bob_from_carol.decrypt(carol_to_bob.encrypt("to bob", Kind.ROOM)).text == "to bob"


def test_a_first_message_under_another_identity_key_is_rejected() -> None:
    """Mallory, with her own identity key, writes to bob as "alice"; and the relay tells
    bob that alice's identity key is mallory's."""
    alice, bob, bundle = keyrings_and_bundle()
    mallory = Keyring.fresh("alice", PrivateKey.generate(), NOW)
    as_alice = with_peer(mallory, bob)
    as_alice.start(bundle)
    from_alice = with_peer(bob, alice)
    refused_untouched(
        bob, from_alice, as_alice.encrypt("it's me", Kind.ROOM), DecryptionError, "another identity key"
    )
    to_bob = with_peer(alice, bob)
    to_bob.start(bundle)  # the one-time prekey is still there for the real alice
    first = to_bob.encrypt("it's really me", Kind.ROOM)
    fooled = Keyring.fresh("bob", bob.identity, NOW)
    fooled.prekeys = bob.prekeys
    from_fake_alice = fooled.peer("alice", mallory.identity.public_key)
    refused_untouched(fooled, from_fake_alice, first, DecryptionError, "another identity key")
    assert from_alice.decrypt(first).text == "it's really me"


def _substituted_bundles(bundle: x3dh.PrekeyBundle, relay: PrivateKey) -> dict[str, x3dh.PrekeyBundle]:
    relay_prekey = PrivateKey.generate().public_key
    bundles = {
        "relay's prekey": replace(bundle, signed_prekey=relay_prekey),
        "relay's prekey, relay's signature": replace(
            bundle,
            signed_prekey=relay_prekey,
            signed_prekey_signature=xeddsa_sign(
                relay, x3dh.signed_prekey_message(bundle.signed_prekey_id, relay_prekey)
            ),
        ),
        "relabelled": replace(bundle, signed_prekey_id=bundle.signed_prekey_id + 1),
    }
    for index in range(len(bundle.signed_prekey_signature)):
        bundles[f"signature byte {index}"] = replace(
            bundle, signed_prekey_signature=flip(bundle.signed_prekey_signature, index, 1 << index % 8)
        )
    return bundles


def test_a_substituted_signed_prekey_is_detected_and_nothing_is_started() -> None:
    alice, bob, bundle = keyrings_and_bundle()
    to_bob = with_peer(alice, bob)
    alice.changes()
    before = alice.rows()
    for name, substituted in _substituted_bundles(bundle, PrivateKey.generate()).items():
        with pytest.raises(BadPrekeySignature):
            to_bob.start(substituted)
        assert not to_bob.can_send, name
        assert alice.rows() == before and not alice.changed, name
    to_bob.start(bundle)  # the control: the bundle as bob made it
    assert with_peer(bob, alice).decrypt(to_bob.encrypt("hi", Kind.ROOM)).text == "hi"


def test_a_bundle_for_another_identity_key_is_refused() -> None:
    """The relay hands out mallory's bundle, signed by her, as bob's."""
    alice, bob, _ = keyrings_and_bundle()
    mallory = Keyring.fresh("bob", PrivateKey.generate(), NOW)
    to_bob = with_peer(alice, bob)
    alice.changes()
    before = alice.rows()
    with pytest.raises(BadPrekeyBundle, match="another identity key") as refused:
        to_bob.start(bundle_of(mallory))
    assert not isinstance(refused.value, BadPrekeySignature)
    assert not to_bob.can_send
    assert alice.rows() == before and not alice.changed


def test_a_substituted_one_time_prekey_gets_nothing_read() -> None:
    """A one-time prekey is not signed (as in X3DH): one the relay made passes start,
    but bob cannot read what alice sends under it, and it changes nothing of his."""
    alice, bob, bundle = keyrings_and_bundle()
    assert bundle.one_time_prekey_id is not None
    substituted = x3dh.PrekeyBundle(
        bundle.identity_key,
        bundle.signed_prekey,
        bundle.signed_prekey_id,
        bundle.signed_prekey_signature,
        PrivateKey.generate().public_key,
        bundle.one_time_prekey_id,
    )
    to_bob = with_peer(alice, bob)
    to_bob.start(substituted)
    refused_untouched(bob, with_peer(bob, alice), to_bob.encrypt("hi", Kind.ROOM), DecryptionError)
    assert bob.prekeys.one_time(bundle.one_time_prekey_id) is not None


# -- signed prekeys we do not have, or no longer ------------------------------------------


def test_a_first_message_under_an_unknown_signed_prekey_is_rejected() -> None:
    alice, bob, _ = keyrings_and_bundle()
    prekey = PrivateKey.generate()
    signature = xeddsa_sign(bob.identity, x3dh.signed_prekey_message(77, prekey.public_key))
    to_bob = with_peer(alice, bob)
    to_bob.start(x3dh.PrekeyBundle(bob.identity.public_key, prekey.public_key, 77, signature))
    refused_untouched(
        bob,
        with_peer(bob, alice),
        to_bob.encrypt("hi", Kind.ROOM),
        DecryptionError,
        "unknown signed prekey #77",
    )


@ONE_TIME
def test_a_first_message_under_an_expired_signed_prekey_is_rejected(one_time: bool) -> None:
    alice, bob, to_bob, _ = started(one_time=one_time)
    first = to_bob.encrypt("sent before the weekly rotation, delivered after", Kind.ROOM)
    old = bob.prekeys.current.prekey_id
    assert bob.prekeys.rotate_if_due(bob.identity, NOW + SIGNED_PREKEY_LIFETIME + 1)
    assert bob.prekeys.current.prekey_id != old
    # The control: during the grace period it is still read.
    in_grace = restarted(bob)
    assert with_peer(in_grace, alice).decrypt(first).text.startswith("sent before")
    bob.prekeys.rotate_if_due(bob.identity, NOW + SIGNED_PREKEY_LIFETIME + SIGNED_PREKEY_GRACE + 2)
    assert bob.prekeys.signed(old) is None
    refused_untouched(bob, with_peer(bob, alice), first, DecryptionError, f"unknown signed prekey #{old}")


# -- both sides start at once ---------------------------------------------------------------


def test_a_simultaneous_start_reads_everything_and_converges() -> None:
    alice, bob = (Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("alice", "bob"))
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    to_bob.start(bundle_of(bob))
    to_alice.start(bundle_of(alice))
    assert current_session(to_bob) != current_session(to_alice)
    # Twice both write before either reads.
    for round_ in range(2):
        from_alice, from_bob = (
            to_bob.encrypt(f"a{round_}", Kind.ROOM),
            to_alice.encrypt(f"b{round_}", Kind.ROOM),
        )
        assert to_alice.decrypt(from_alice).text == f"a{round_}"
        assert to_bob.decrypt(from_bob).text == f"b{round_}"
    # Then they take turns: the first to answer the other's current session settles it.
    for turn in range(3):
        assert to_alice.decrypt(to_bob.encrypt(f"alice {turn}", Kind.ROOM)).text == f"alice {turn}"
        assert to_bob.decrypt(to_alice.encrypt(f"bob {turn}", Kind.ROOM)).text == f"bob {turn}"
    assert current_session(to_bob) == current_session(to_alice)
    assert to_bob.confirmed and to_alice.confirmed
    # ... and it is kept across a restart of both.
    alice, bob = restarted(alice), restarted(bob)
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    assert to_alice.decrypt(to_bob.encrypt("after", Kind.ROOM)).text == "after"
    assert current_session(to_bob) == current_session(to_alice)


# -- post-compromise security and forward secrecy ------------------------------------------


def test_post_compromise_security_after_one_round_trip() -> None:
    """The thief copies all alice keeps (identity key, prekeys, every session) once, and
    then only listens. One round trip later (a DH ratchet step each way, with key pairs
    the thief never saw) it reads nothing new."""
    alice, bob, to_bob, to_alice = talked()  # alice wrote last: bob's next message turns
    stolen = alice.rows()

    def thief() -> PeerSession:
        return Keyring.from_rows("alice", alice.identity, stolen, NOW).peer("bob", bob.identity.public_key)

    before = to_alice.encrypt("before", Kind.PRIVATE)
    assert thief().decrypt(before).text == "before"  # the positive control
    assert to_bob.decrypt(before).text == "before"
    assert to_alice.decrypt(to_bob.encrypt("alice turns", Kind.PRIVATE)).text == "alice turns"
    after = [to_alice.encrypt(f"after {n}", Kind.PRIVATE) for n in range(3)]
    for body in after:
        with pytest.raises(DecryptionError):
            thief().decrypt(body)
    # Nor can a thief that keeps up by reading with its copy everything alice receives.
    keeping_up = thief()
    keeping_up.decrypt(before)
    for body in after:
        with pytest.raises(DecryptionError):
            keeping_up.decrypt(body)
    assert [to_bob.decrypt(body).text for body in after] == ["after 0", "after 1", "after 2"]


def test_forward_secrecy_of_recorded_messages() -> None:
    """The relay records everything; later the thief gets all both sides keep, identity
    keys included. What was read before the theft stays secret; what was still awaited
    (its key held for a late arrival) is the one thing it reads."""
    alice, bob, to_bob, to_alice = started(one_time=True)
    recorded_for_bob, recorded_for_alice = [], []
    for turn in range(3):
        recorded_for_bob.append(to_bob.encrypt(f"to bob {turn}", Kind.PRIVATE))
        to_alice.decrypt(recorded_for_bob[-1])
        recorded_for_alice.append(to_alice.encrypt(f"to alice {turn}", Kind.PRIVATE))
        to_bob.decrypt(recorded_for_alice[-1])
    awaited = to_bob.encrypt("held back by the relay", Kind.PRIVATE)
    to_alice.decrypt(to_bob.encrypt("overtakes", Kind.PRIVATE))
    to_bob.decrypt(to_alice.encrypt("later", Kind.PRIVATE))

    leaked_bob = with_peer(restarted(bob), alice)
    leaked_alice = with_peer(restarted(alice), bob)
    # The thief can also run X3DH again from bob's leaked keys, with no memory of base keys.
    rerun = PeerSession(
        "bob",
        bob.identity,
        "alice",
        alice.identity.public_key,
        budget=SkippedKeys(),
        prekeys=restarted(bob).prekeys,
    )
    for body in recorded_for_bob:
        for thief in (leaked_bob, rerun):
            with pytest.raises(DecryptionError):
                thief.decrypt(body)
    for body in recorded_for_alice:
        with pytest.raises(DecryptionError):
            leaked_alice.decrypt(body)
    assert leaked_bob.decrypt(awaited).text == "held back by the relay"  # the control


def test_forward_secrecy_of_a_first_message_without_a_one_time_prekey() -> None:
    """Without a one-time prekey, a first message is as secret as bob's signed prekey:
    whoever steals bob's keys while it lives can run X3DH again (the control); once it
    is forgotten, no one can."""
    alice, bob, to_bob, to_alice = started(one_time=False)
    first = to_bob.encrypt("first", Kind.PRIVATE)
    to_alice.decrypt(first)

    def rerun(now: float) -> PeerSession:
        leaked = restarted(bob, now)
        leaked.prekeys._seen.clear()  # the thief's copy: no replay memory of ours stops it
        return PeerSession(
            "bob",
            bob.identity,
            "alice",
            alice.identity.public_key,
            budget=SkippedKeys(),
            prekeys=leaked.prekeys,
        )

    assert rerun(NOW).decrypt(first).text == "first"
    bob.prekeys.rotate_if_due(bob.identity, NOW + SIGNED_PREKEY_LIFETIME + 1)
    bob.prekeys.rotate_if_due(bob.identity, NOW + SIGNED_PREKEY_LIFETIME + SIGNED_PREKEY_GRACE + 2)
    with pytest.raises(DecryptionError, match="unknown signed prekey"):
        rerun(NOW + SIGNED_PREKEY_LIFETIME + SIGNED_PREKEY_GRACE + 2).decrypt(first)


# -- tampering --------------------------------------------------------------------------------


def _flip_every_byte(keyring: Keyring, receiver: PeerSession, body: bytes) -> None:
    keyring.changes()
    before, keys = keyring.rows(), len(keyring.budget)
    for index in range(len(body)):
        for mask in (0x01, 0x80):
            with pytest.raises(DecryptionError):
                receiver.decrypt(flip(body, index, mask))
            assert keyring.rows() == before, f"byte {index} ^ {mask:#x} changed the state"
    assert len(keyring.budget) == keys
    assert not keyring.changed


def test_every_flipped_byte_of_a_first_message_is_rejected_and_changes_nothing() -> None:
    _, bob, to_bob, to_alice = started()
    for _ in range(2):
        to_bob.encrypt("lost", Kind.ROOM)  # had a flip got through, it would keep keys
    first = to_bob.encrypt("first to arrive", Kind.ROOM)
    assert first[0] == session.PREKEY_MESSAGE
    _flip_every_byte(bob, to_alice, first)
    got = to_alice.decrypt(first)  # the control
    assert (got.text, got.skipped) == ("first to arrive", 2)


def test_every_flipped_byte_of_a_ratchet_message_is_rejected_and_changes_nothing() -> None:
    alice, bob, to_bob, to_alice = talked()
    late = to_bob.encrypt("late", Kind.ROOM)
    in_chain = to_bob.encrypt("in the current chain", Kind.ROOM)
    assert in_chain[0] == session.RATCHET_MESSAGE
    _flip_every_byte(bob, to_alice, in_chain)
    assert to_alice.decrypt(in_chain).skipped == 1
    _flip_every_byte(bob, to_alice, late)
    assert to_alice.decrypt(late).late
    new_ratchet_key = to_alice.encrypt("the direction changes", Kind.ROOM)
    _flip_every_byte(alice, to_bob, new_ratchet_key)
    assert to_bob.decrypt(new_ratchet_key).text == "the direction changes"


def test_a_flood_of_forged_first_messages_leaves_nothing_behind() -> None:
    """What anyone can forge from public keys (alice's identity key, bob's signed prekey
    id, a base key of its own) takes bob through X3DH and into a new ratchet, where it
    fails: nothing of that ratchet may stay, not even an empty place in the budget."""
    _, _, to_bob, to_alice = started(one_time=False)
    genuine = to_bob.encrypt("genuine", Kind.ROOM)
    header = bytearray(genuine[:PREKEY_HEADER_SIZE])

    def forged() -> bytes:
        header[33:65] = bytes(PrivateKey.generate().public_key)  # a fresh base key
        return bytes(header) + genuine[PREKEY_HEADER_SIZE:]

    for _ in range(10):  # warm up: caches, interned objects
        with pytest.raises(DecryptionError):
            to_alice.decrypt(forged())
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(500):
            with pytest.raises(DecryptionError, match="does not authenticate"):
                to_alice.decrypt(forged())
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 20_000, f"{grown} bytes kept after 500 forged first messages"
    assert to_alice.decrypt(genuine).text == "genuine"


# -- skipped-key exhaustion across many peers -------------------------------------------------


@pytest.mark.slow
def test_skipped_keys_of_many_peers_stay_within_the_total_and_its_memory() -> None:
    """60 peers, each leaving two gaps of MAX_SKIP messages: 120,000 keys to keep, more
    than twice the total. The budget keeps the newest MAX_SKIPPED_TOTAL, oldest out
    first, in about 27 MB (skipped.py: at most about 540 bytes a key)."""
    bob = Keyring.fresh("bob", PrivateKey.generate(), NOW)
    deliveries = []
    for number in range(60):
        peer = Keyring.fresh(f"peer{number}", PrivateKey.generate(), NOW)
        to_bob = with_peer(peer, bob)
        to_bob.start(bundle_of(bob, one_time=False))
        ratchet = to_bob._sessions[0].ratchet
        lost = to_bob.encrypt("lost", Kind.ROOM)
        for _ in range(MAX_SKIP - 1):
            ratchet.encrypt(b"")  # lost on the way: only the chain's position matters
        first = to_bob.encrypt("after a gap", Kind.ROOM)
        for _ in range(MAX_SKIP):
            ratchet.encrypt(b"")
        deliveries.append((peer, lost, first, to_bob.encrypt("after another gap", Kind.ROOM)))
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for peer, _, first, second in deliveries:
            from_peer = with_peer(bob, peer)
            assert from_peer.decrypt(first).skipped == MAX_SKIP
            assert from_peer.decrypt(second).skipped == MAX_SKIP
            assert len(bob.budget) <= MAX_SKIPPED_TOTAL
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert len(bob.budget) == MAX_SKIPPED_TOTAL
    assert grown < MAX_SKIPPED_TOTAL * 560, f"{grown / 1e6:.1f} MB for {len(bob.budget)} skipped keys"
    # Oldest out first: the first peer's lost message can no longer be read, the last's can.
    first_peer, first_lost, _, _ = deliveries[0]
    with pytest.raises(ReplayError):
        with_peer(bob, first_peer).decrypt(first_lost)
    last_peer, last_lost, _, _ = deliveries[-1]
    assert with_peer(bob, last_peer).decrypt(last_lost).late


def test_sessions_whose_keys_were_pushed_out_give_their_memory_back() -> None:
    """200 sessions, each keeping 1000 keys in turn, under a total of 10,000: the older
    sessions' keys are all pushed out, and what they held with them."""
    budget = SkippedKeys(total=10_000)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            owner, ratchet_key, header_key = budget.register(), random(32), random(32)
            budget.add(owner, [(ratchet_key, number, header_key, random(32)) for number in range(1000)])
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert len(budget) == 10_000
    assert grown < 10_000 * 560, f"{grown / 1e6:.1f} MB for {len(budget)} skipped keys"


def test_sessions_whose_late_messages_all_came_give_their_memory_back() -> None:
    budget = SkippedKeys()
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            owner, ratchet_key, header_key = budget.register(), random(32), random(32)
            budget.add(owner, [(ratchet_key, number, header_key, random(32)) for number in range(2000)])
            for number in range(2000):
                budget.discard(owner, ratchet_key, number)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert len(budget) == 0
    # Left: the empty dicts, and the shared order's table (bounded by the total).
    assert grown < 500_000, f"{grown / 1e6:.1f} MB kept for no keys"


# -- what survives a restart ------------------------------------------------------------------


def test_a_keyring_round_trip_keeps_every_session() -> None:
    alice, bob, carol = (
        Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("alice", "bob", "carol")
    )
    to_bob, to_carol = with_peer(alice, bob), with_peer(alice, carol)
    to_bob.start(bundle_of(bob))
    with_peer(carol, alice).start(bundle_of(alice))  # carol started that one
    with_peer(alice, carol).decrypt(with_peer(carol, alice).encrypt("hi alice", Kind.ROOM))
    with_peer(bob, alice).decrypt(to_bob.encrypt("hi bob", Kind.ROOM))
    held = [to_bob.encrypt(f"held {n}", Kind.ROOM) for n in range(3)]
    assert with_peer(bob, alice).decrypt(held[2]).skipped == 2
    to_carol.encrypt("lost", Kind.ROOM)
    unanswered = to_carol.encrypt("unanswered", Kind.ROOM)

    alice, bob, carol = restarted(alice), restarted(bob), restarted(carol)
    assert sorted(alice.peers) == ["bob", "carol"]
    to_bob, from_alice = with_peer(alice, bob), with_peer(bob, alice)
    assert [from_alice.decrypt(held[n]).late for n in (1, 0)] == [True, True]
    for body in held:
        with pytest.raises(ReplayError):
            from_alice.decrypt(body)
    for _ in range(2):
        got = to_bob.decrypt(from_alice.encrypt("to alice", Kind.ROOM))
        assert (got.text, got.skipped) == ("to alice", 0)
        got = from_alice.decrypt(to_bob.encrypt("to bob", Kind.ROOM))
        assert (got.text, got.skipped) == ("to bob", 0)
    assert got.counter == 5  # numbering went on: "hi bob", three held, then 4 and 5
    carol_from_alice = with_peer(carol, alice)
    assert carol_from_alice.decrypt(unanswered).skipped == 1
    assert with_peer(alice, carol).decrypt(carol_from_alice.encrypt("back", Kind.ROOM)).text == "back"


@pytest.mark.parametrize(
    "damage",
    [
        lambda row: row[:-1],
        lambda row: row + b"\x00",
        lambda row: b"\x09" + row[1:],
        lambda row: row[:40],
        lambda row: b"",
        lambda row: bytes(len(row)),
    ],
    ids=["truncated", "extended", "unknown-format", "head-only", "empty", "zeros"],
)
def test_a_damaged_peer_row_is_dropped_not_fatal(damage: Callable[[bytes], bytes]) -> None:
    alice, bob, carol = (
        Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("alice", "bob", "carol")
    )
    for peer in (bob, carol):
        to_peer = with_peer(alice, peer)
        to_peer.start(bundle_of(peer))
        with_peer(peer, alice).decrypt(to_peer.encrypt("hi", Kind.ROOM))
    rows = alice.rows()
    rows[PEER_ROW + "bob"] = damage(rows[PEER_ROW + "bob"])
    loaded = Keyring.from_rows("alice", alice.identity, rows, NOW)
    assert sorted(loaded.peers) == ["carol"]
    assert loaded.changes()[PEER_ROW + "bob"] is None  # the damaged row goes
    assert (
        with_peer(carol, alice).decrypt(with_peer(loaded, carol).encrypt("still", Kind.ROOM)).text == "still"
    )
    # Bob's next first message starts over, with no warning needed.
    to_alice = with_peer(bob, alice)
    to_alice.start(bundle_of(loaded))
    assert with_peer(loaded, bob).decrypt(to_alice.encrypt("anew", Kind.ROOM)).text == "anew"


def test_a_damaged_peer_row_takes_all_its_skipped_keys_with_it() -> None:
    """A row is read session by session, each putting its skipped keys into the budget
    every peer shares: when a later one is damaged, the earlier ones' keys go too."""
    alice, bob = (Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("alice", "bob"))
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    to_bob.start(bundle_of(bob))  # alice's own session: the second in her row
    to_alice.start(bundle_of(alice))
    to_alice.encrypt("lost", Kind.ROOM)
    to_bob.decrypt(to_alice.encrypt("overtakes", Kind.ROOM))  # bob's session: the first
    assert len(to_bob._sessions) == 2 and len(alice.budget) == 1
    rows = alice.rows()
    row = rows[PEER_ROW + "bob"]
    assert len(Keyring.from_rows("alice", alice.identity, rows, NOW).budget) == 1  # the control
    for length in range(len(row)):
        loaded = Keyring.from_rows("alice", alice.identity, {**rows, PEER_ROW + "bob": row[:length]}, NOW)
        assert (loaded.peers, len(loaded.budget)) == ({}, 0), f"cut at {length} of {len(row)}"


def test_a_keyring_saved_under_another_nick_drops_its_peers() -> None:
    """Every session binds our nick (X3DH's AD): under a new one they cannot serve."""
    alice, _, to_bob, to_alice = started()
    to_alice.decrypt(to_bob.encrypt("hi", Kind.ROOM))
    renamed = Keyring.from_rows("alicia", alice.identity, alice.rows(), NOW)
    assert renamed.peers == {}
    assert renamed.prekeys.to_bytes() == alice.prekeys.to_bytes()
    assert renamed.changes() == {PEER_ROW + "bob": None, NICK_ROW: b"alicia"}
    again = Keyring.from_rows("alice", alice.identity, alice.rows(), NOW)  # the control
    assert sorted(again.peers) == ["bob"]


def test_our_prekeys_round_trip() -> None:
    alice, bob, bundle = keyrings_and_bundle()
    bob.prekeys.new_one_time(30)
    bob.prekeys.rotate_if_due(bob.identity, NOW + SIGNED_PREKEY_LIFETIME + 1)  # two signed now
    saved = bob.prekeys.to_bytes()
    loaded = OurPrekeys.from_bytes(saved)
    assert loaded.to_bytes() == saved
    assert loaded.current == bob.prekeys.current
    assert loaded.unused == bob.prekeys.unused == 31
    assert bundle.one_time_prekey_id is not None
    for got, kept in (
        (loaded.signed(bundle.signed_prekey_id), bob.prekeys.signed(bundle.signed_prekey_id)),
        (loaded.one_time(bundle.one_time_prekey_id), bob.prekeys.one_time(bundle.one_time_prekey_id)),
    ):
        assert got is not None and kept is not None and bytes(got) == bytes(kept)
    assert not loaded.changed
    # A first message under the bundle from before the save opens after it.
    to_bob = with_peer(alice, bob)
    to_bob.start(bundle)
    assert with_peer(restarted(bob), alice).decrypt(to_bob.encrypt("hi", Kind.ROOM)).text == "hi"
    for damaged in (saved[:-1], saved + b"\x00", b"\x03" + saved[1:], saved[:10], saved[:1] + bytes(10)):
        with pytest.raises(BadRatchetState):
            OurPrekeys.from_bytes(damaged)


def test_changes_hands_out_only_what_changed() -> None:
    alice, bob, to_bob, to_alice = started()
    assert set(bob.changes()) == {PREKEYS_ROW, NICK_ROW}  # the first save
    assert bob.changes() == {}
    first = to_bob.encrypt("first", Kind.ROOM)
    to_alice.decrypt(first)
    assert set(bob.changes()) == {PEER_ROW + "alice", PREKEYS_ROW}  # a one-time prekey went
    with pytest.raises(ReplayError):
        to_alice.decrypt(first)
    with pytest.raises(DecryptionError):
        to_alice.decrypt(flip(to_bob.encrypt("x", Kind.ROOM), 60))
    assert bob.changes() == {}  # refusals change nothing
    alice.changes()
    to_bob.decrypt(to_alice.encrypt("reply", Kind.ROOM))
    assert set(bob.changes()) == {PEER_ROW + "alice"}  # bob sent
    assert set(alice.changes()) == {PEER_ROW + "bob"}  # alice received
    assert restarted(bob).changes() == {}  # loading is no change
    bob.prekeys.new_one_time(5)
    assert set(bob.changes()) == {PREKEYS_ROW}
    bob.forget("alice")
    assert bob.changes() == {PEER_ROW + "alice": None}
    assert bob.changes() == {}


def test_sessions_under_an_old_identity_key_leave_the_disk() -> None:
    """Bob's identity key changes: the sessions with him under the old key are dropped,
    and their saved row with them, before anything happens under the new key."""
    alice, bob, to_bob, to_alice = started()
    to_alice.decrypt(to_bob.encrypt("hi", Kind.ROOM))
    disk = alice.rows()  # what the store holds
    alice.changes()
    new_bob = Keyring.fresh("bob", PrivateKey.generate(), NOW)
    assert not with_peer(alice, new_bob).can_send
    for name, row in alice.changes().items():
        if row is None:
            disk.pop(name, None)
        else:
            disk[name] = row
    loaded = Keyring.from_rows("alice", alice.identity, disk, NOW)
    assert loaded.get("bob", bob.identity.public_key) is None
    # Once there are sessions under the new key, theirs is the row saved.
    to_new_bob = with_peer(alice, new_bob)
    to_new_bob.start(bundle_of(new_bob))
    assert alice.changes()[PEER_ROW + "bob"] == to_new_bob.to_bytes()


# -- our prekeys ------------------------------------------------------------------------------


def test_prekey_ids_are_unique_and_skip_those_in_use_when_they_wrap() -> None:
    identity = PrivateKey.generate()
    prekeys = OurPrekeys.fresh(identity, NOW)
    ids = [prekeys.current.prekey_id] + [prekey_id for prekey_id, _ in prekeys.new_one_time(50)]
    prekeys.rotate_if_due(identity, NOW + SIGNED_PREKEY_LIFETIME + 1)
    ids.append(prekeys.current.prekey_id)
    assert len(set(ids)) == len(ids)
    # Ids wrap round after 2**32 - 1; those still in use are skipped.
    saved = bytearray(prekeys.to_bytes())
    saved[1:5] = struct.pack(">I", x3dh.MAX_PREKEY_ID - 1)
    wrapped = OurPrekeys.from_bytes(bytes(saved))
    made = [prekey_id for prekey_id, _ in wrapped.new_one_time(4)]
    assert made[:2] == [x3dh.MAX_PREKEY_ID - 1, x3dh.MAX_PREKEY_ID]
    assert not set(made) & set(ids)
    assert all(1 <= prekey_id <= x3dh.MAX_PREKEY_ID for prekey_id in made)


def test_fresh_prekeys_start_their_ids_at_a_random_point() -> None:
    """A profile made again from the same identity (sessions.db lost) must not count its
    ids from where the lost one did: the relay keeps the old one-time prekeys, ignores a
    publish of ids it holds, and would go on handing out keys whose private halves are
    gone."""
    starts = [OurPrekeys.fresh(PrivateKey.generate(), NOW).current.prekey_id for _ in range(8)]
    assert len(set(starts)) == len(starts)  # the same twice: about 1 in 150 million
    assert all(1 <= start <= x3dh.MAX_PREKEY_ID for start in starts)


def test_unused_one_time_prekeys_are_bounded() -> None:
    prekeys = OurPrekeys.fresh(PrivateKey.generate(), NOW)
    made = [prekey_id for prekey_id, _ in prekeys.new_one_time(MAX_ONE_TIME + 30)]
    assert prekeys.unused == MAX_ONE_TIME
    assert all(prekeys.one_time(prekey_id) is None for prekey_id in made[:30])  # oldest out
    assert all(prekeys.one_time(prekey_id) is not None for prekey_id in made[30:])
    prekeys.use_one_time(made[-1])
    assert prekeys.unused == MAX_ONE_TIME - 1
    assert prekeys.one_time(made[-1]) is None


def test_the_signed_prekey_rotates_on_schedule() -> None:
    identity = PrivateKey.generate()
    prekeys = OurPrekeys.fresh(identity, NOW)
    first = prekeys.current
    assert xeddsa_verify(
        identity.public_key,
        x3dh.signed_prekey_message(first.prekey_id, first.private.public_key),
        first.signature,
    )
    prekeys.changed = False
    assert not prekeys.rotate_if_due(identity, NOW + SIGNED_PREKEY_LIFETIME - 1)
    assert prekeys.current == first and not prekeys.changed
    assert prekeys.rotate_if_due(identity, NOW + SIGNED_PREKEY_LIFETIME + 1)
    second = prekeys.current
    assert second.prekey_id != first.prekey_id and prekeys.changed
    assert bytes(second.private) != bytes(first.private)
    assert xeddsa_verify(
        identity.public_key,
        x3dh.signed_prekey_message(second.prekey_id, second.private.public_key),
        second.signature,
    )
    # The old one is kept through its grace, for first messages on their way, then forgotten.
    replaced = NOW + SIGNED_PREKEY_LIFETIME + 1
    assert not prekeys.rotate_if_due(identity, replaced + SIGNED_PREKEY_GRACE - SIGNED_PREKEY_LIFETIME)
    assert prekeys.signed(first.prekey_id) is not None
    prekeys.rotate_if_due(identity, replaced + SIGNED_PREKEY_GRACE + 1)
    assert prekeys.signed(first.prekey_id) is None
    assert prekeys.signed(second.prekey_id) is not None  # replaced just now: in its grace


def test_a_clock_jumping_back() -> None:
    """A clock set back a little changes nothing; set back by more than a day, the
    signed prekey (dated in the future) is replaced, so that it cannot outlive its
    lifetime by however far the clock jumped."""
    identity = PrivateKey.generate()
    prekeys = OurPrekeys.fresh(identity, NOW)
    first = prekeys.current
    assert not prekeys.rotate_if_due(identity, NOW - DAY / 2)
    assert prekeys.current == first
    assert prekeys.rotate_if_due(identity, NOW - 30 * DAY)
    assert prekeys.current.created == NOW - 30 * DAY
    assert not prekeys.rotate_if_due(identity, NOW - 30 * DAY + 1)
    assert prekeys.signed(first.prekey_id) is not None
    # The one dated in the future gets its grace by the clock as it is now, not a day more.
    prekeys.rotate_if_due(identity, NOW - 30 * DAY + SIGNED_PREKEY_GRACE + 1)
    assert prekeys.signed(first.prekey_id) is None


def test_a_signed_prekey_replaced_late_still_gets_its_grace() -> None:
    """Bob was away for a month: his client replaces the signed prekey when it next runs.
    The relay handed out the old one meanwhile, so first messages under it are read for
    the whole grace after the replacement, not dropped at the next check."""
    alice, bob, to_bob, _ = started(one_time=False)
    first = to_bob.encrypt("sent while bob was away", Kind.ROOM)
    back = NOW + 30 * DAY
    assert bob.prekeys.rotate_if_due(bob.identity, back)
    bob.prekeys.rotate_if_due(bob.identity, back + 3600)  # the next check, an hour on
    assert with_peer(restarted(bob), alice).decrypt(first).text == "sent while bob was away"
    bob.prekeys.rotate_if_due(bob.identity, back + SIGNED_PREKEY_GRACE + 1)
    refused_untouched(bob, with_peer(bob, alice), first, DecryptionError, "unknown signed prekey")


@pytest.mark.parametrize("restart", [False, True])
def test_a_replayed_first_message_is_refused_after_its_peer_is_forgotten(restart: bool) -> None:
    """The memory of first messages read lives with our prekeys, not with the peer's
    sessions: a relay that makes us forget alice (pushed out of the peers kept, or her key
    replaced) cannot then replay her first message (no one-time prekey: nothing else
    stops it) to start her session again. It holds across a restart too."""
    alice, bob = (
        Keyring.fresh("alice", PrivateKey.generate(), NOW),
        Keyring.fresh("bob", PrivateKey.generate(), NOW),
    )
    to_bob = with_peer(alice, bob)
    to_bob.start(bundle_of(bob, one_time=False))
    first = to_bob.encrypt("hello", Kind.PRIVATE)
    assert with_peer(bob, alice).decrypt(first).text == "hello"
    bob.forget("alice")
    if restart:
        bob = Keyring.from_rows("bob", bob.identity, bob.rows(), NOW)
    with pytest.raises(ReplayError):
        with_peer(bob, alice).decrypt(first)


def test_a_session_given_up_as_unanswered_still_reads_a_late_answer() -> None:
    """alice's first message got no receipt in time: she gives the session up for sending
    (her next message starts a new one), but bob may have read it and answer late: that
    answer is read, and the session serves again. An answered session is never given up."""
    _, _, to_bob, to_alice = started()
    to_alice.decrypt(to_bob.encrypt("first", Kind.PRIVATE))
    assert to_bob.drop_unanswered() and not to_bob.can_send
    assert to_bob.decrypt(to_alice.encrypt("late answer", Kind.PRIVATE)).text == "late answer"
    assert to_bob.can_send and not to_bob.drop_unanswered()
    assert to_alice.decrypt(to_bob.encrypt("on we go", Kind.PRIVATE)).text == "on we go"


def test_a_peer_forgotten_and_met_again_is_numbered_on_not_from_zero() -> None:
    """Receipts acknowledge our numbers for a nick. A peer pushed out of the keyring (more
    people than it keeps) and met again, or replaced under another key, goes on from the
    number we had reached: a receipt for an old copy cannot confirm a new one."""
    alice, bob = (
        Keyring.fresh("alice", PrivateKey.generate(), NOW),
        Keyring.fresh("bob", PrivateKey.generate(), NOW),
    )
    alice.max_peers = 1
    for _ in range(5):
        alice.peer("bob", bob.identity.public_key).take_counter()
    alice.peer("carol", PrivateKey.generate().public_key)  # pushes bob out
    assert "bob" not in alice.peers
    assert alice.peer("bob", bob.identity.public_key).take_counter() == 5
    alice.peer("bob", PrivateKey.generate().public_key)  # bob under another key
    assert alice.peer("bob", alice.peers["bob"].identity_key).take_counter() == 6


def test_senders_answers_as_get_does_for_each_nick() -> None:
    alice = Keyring.fresh("alice", PrivateKey.generate(), NOW)
    others = {
        nick: Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("bob", "carol", "dave", "erin")
    }
    for nick in ("bob", "carol", "dave"):
        with_peer(alice, others[nick]).start(bundle_of(others[nick]))
    with_peer(alice, others["erin"])  # kept, but no session to send in yet
    # The directory: carol shown under another key than her sessions'; frank unknown to
    # the keyring; dave not shown at all.
    shown = {nick: _Shown(others[nick]) for nick in ("bob", "erin")}
    shown["carol"] = _Shown(Keyring.fresh("carol", PrivateKey.generate(), NOW))
    shown["frank"] = _Shown(Keyring.fresh("frank", PrivateKey.generate(), NOW))
    nicks = ["carol", "bob", "dave", "erin", "frank"]
    found = alice.senders(nicks, shown)
    expected = [alice.get(nick, shown[nick].identity_key) if nick in shown else None for nick in nicks]
    expected = [peer if peer is not None and peer.can_send else None for peer in expected]
    assert found == expected == [None, alice.peers["bob"], None, None, None]
    # Used, as get counts it: bob (and erin, asked again by get above) most recently.
    alice.senders(["bob"], shown)
    assert list(alice.peers)[-1] == "bob"
    alice.senders(["carol"], shown)  # under another key: not a use
    assert list(alice.peers)[-1] == "bob"


class _Shown:
    """What a directory shows for a keyring's owner."""

    def __init__(self, keyring: Keyring) -> None:
        self.identity_key = keyring.identity.public_key

"""The Double Ratchet: agreement, direction changes, gaps and their bounds, the cost of a
forgery, post-compromise security, forward secrecy, replays, tampering, persistence."""

from __future__ import annotations

import ast
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey

from e2echat.crypto import kdf, ratchet, steps, x3dh
from e2echat.crypto.ratchet import MAX_SKIP, Ratchet
from e2echat.crypto.skipped import SkippedKeys
from e2echat.errors import BadRatchetState, DecryptionError, LocalProtocolError, ReplayError, SkippedTooMany

CRYPTO = Path(ratchet.__file__).parent


class Pair:
    """Alice and Bob after X3DH, with their long-term and prekey secrets kept for the
    tests that leak them."""

    def __init__(self, budget: SkippedKeys | None = None, *, one_time: bool = True) -> None:
        self.budget = budget if budget is not None else SkippedKeys()
        self.alice_identity, self.bob_identity = PrivateKey.generate(), PrivateKey.generate()
        self.signed_prekey = PrivateKey.generate()
        self.one_time_prekey = PrivateKey.generate() if one_time else None
        bundle = x3dh.PrekeyBundle(
            self.bob_identity.public_key,
            self.signed_prekey.public_key,
            1,
            bytes(64),
            None if self.one_time_prekey is None else self.one_time_prekey.public_key,
            None if self.one_time_prekey is None else 1,
        )
        self.initiation = x3dh.initiate(
            self.alice_identity, bundle, lambda *_: True, our_nick="alice", their_nick="bob"
        )
        self.alice = Ratchet.initiator(
            self.initiation.shared_key,
            self.initiation.associated_data,
            self.signed_prekey.public_key,
            self.budget,
            peer="bob",
        )
        shared_key, ad = self.bob_respond(self.one_time_prekey, self.signed_prekey)
        self.bob = Ratchet.responder(shared_key, ad, self.signed_prekey, self.budget, peer="alice")

    def bob_respond(self, one_time: PrivateKey | None, signed: PrivateKey) -> tuple[bytes, bytes]:
        return x3dh.respond(
            self.bob_identity,
            signed,
            one_time,
            their_identity=self.alice_identity.public_key,
            their_ephemeral=self.initiation.ephemeral_key,
            our_nick="bob",
            their_nick="alice",
        )


def exchange(sender: Ratchet, receiver: Ratchet, text: bytes) -> None:
    assert receiver.decrypt(sender.encrypt(text)).plaintext == text


def established() -> Pair:
    """A pair that has done a round trip and a half: both can send, and alice's next
    message is in the chain bob receives on now (no DH ratchet step)."""
    pair = Pair()
    exchange(pair.alice, pair.bob, b"hello bob")
    exchange(pair.bob, pair.alice, b"hello alice")
    exchange(pair.alice, pair.bob, b"how are you")
    return pair


def fails_untouched(receiver: Ratchet, message: bytes, error: type[Exception] = DecryptionError) -> None:
    before = receiver.to_bytes()
    with pytest.raises(error):
        receiver.decrypt(message)
    assert receiver.to_bytes() == before


# -- agreement and direction changes ------------------------------------------------------


@pytest.mark.parametrize("one_time", [True, False])
def test_first_message_and_reply(one_time: bool) -> None:
    pair = Pair(one_time=one_time)
    opened = pair.bob.decrypt(pair.alice.encrypt(b"hi"))
    assert opened == ratchet.Opened(b"hi", 0, 0, False)
    exchange(pair.bob, pair.alice, b"")


def test_the_responder_cannot_send_first() -> None:
    pair = Pair()
    assert not pair.bob.can_send
    with pytest.raises(LocalProtocolError):
        pair.bob.encrypt(b"too early")


def test_a_copy_is_the_message_encrypt_makes_of_its_plaintext() -> None:
    pair, nonce = established(), bytes(range(24))
    twin = Ratchet.from_bytes(pair.alice.to_bytes(), SkippedKeys(), peer="bob")
    seal_copy = steps.copy_sealer(b"the rest", nonce * 3)
    for number in (0, 7, 2**64 - 1):
        copy = pair.alice.seal_copy(seal_copy, number)
        assert copy == twin.encrypt(number.to_bytes(8, "big") + b"the rest", nonce)
        assert pair.alice.to_bytes() == twin.to_bytes()
        assert pair.bob.decrypt(copy).plaintext == number.to_bytes(8, "big") + b"the rest"


def test_a_copy_that_cannot_be_sealed_changes_nothing() -> None:
    pair, seal_copy = established(), steps.copy_sealer(b"text", bytes(24))
    with pytest.raises(LocalProtocolError):
        Pair().bob.seal_copy(seal_copy, 0)  # no sending chain yet
    before = pair.alice.to_bytes()
    with pytest.raises(struct.error):
        pair.alice.seal_copy(seal_copy, 2**64)  # a number out of range
    with pytest.raises(CryptoError, match="no nonce left"):
        pair.alice.seal_copy(seal_copy, 0)  # the nonces used up (the failure took one)
    assert pair.alice.to_bytes() == before
    pair.alice._ns = ratchet.MAX_COUNTER
    with pytest.raises(LocalProtocolError, match="exhausted"):
        pair.alice.seal_copy(steps.copy_sealer(b"text", bytes(24)), 0)
    assert pair.alice._ns == ratchet.MAX_COUNTER


def test_the_ratchet_key_changes_exactly_when_the_direction_does() -> None:
    pair, rng = established(), random.Random(1)
    seen: set[bytes] = set()
    previous_sender = None
    previous_key = b""
    for index in range(300):
        alice_speaks = rng.random() < 0.5
        sender, receiver = (pair.alice, pair.bob) if alice_speaks else (pair.bob, pair.alice)
        message = sender.encrypt(b"line %d" % index)
        key = message[1:33]
        if alice_speaks == previous_sender:
            assert key == previous_key
        else:
            assert key not in seen  # a fresh key pair for every turn
            seen.add(key)
        previous_sender, previous_key = alice_speaks, key
        assert receiver.decrypt(message).plaintext == b"line %d" % index


def test_ad_mismatch_fails() -> None:
    pair = Pair()
    shared_key, ad = pair.bob_respond(pair.one_time_prekey, pair.signed_prekey)
    wrong_ad = ad.replace(b"alice", b"alicf")
    bob = Ratchet.responder(shared_key, wrong_ad, pair.signed_prekey, SkippedKeys(), peer="alice")
    fails_untouched(bob, pair.alice.encrypt(b"hi"))
    assert pair.bob.decrypt(pair.alice.encrypt(b"hi")).plaintext == b"hi"  # the control


# -- out of order, dropped, and the bounds -------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=120))
def test_any_delivery_order_with_drops_decrypts_each_message_once(rng: random.Random, steps: int) -> None:
    pair = Pair()
    in_flight: dict[str, list[tuple[bytes, bytes]]] = {"alice": [], "bob": []}
    can_send = {"alice": True, "bob": False}
    sessions = {"alice": pair.alice, "bob": pair.bob}
    for step in range(steps):
        who = rng.choice(["alice", "bob"])
        other = "bob" if who == "alice" else "alice"
        action = rng.random()
        if action < 0.45 and can_send[who]:
            text = b"%s %d" % (who.encode(), step)
            in_flight[other].append((text, sessions[who].encrypt(text)))
        elif in_flight[who]:
            text, message = in_flight[who].pop(rng.randrange(len(in_flight[who])))
            if action > 0.9:
                continue  # dropped by the relay
            assert sessions[who].decrypt(message).plaintext == text
            can_send[who] = True
            # A replay from the current or previous chain is named as one; from an older
            # chain it is just a message that does not authenticate. Refused either way.
            fails_untouched(sessions[who], message)


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=120))
def test_open_in_chain_agrees_with_decrypt(rng: random.Random, steps: int) -> None:
    """The fused step opens just the messages next in the current receiving chain, as
    ``decrypt`` would (the same plaintext, the same state after), and leaves the state
    untouched for anything else."""
    pair = Pair()
    in_flight: dict[str, list[bytes]] = {"alice": [], "bob": []}
    can_send = {"alice": True, "bob": False}
    sessions = {"alice": pair.alice, "bob": pair.bob}
    for step in range(steps):
        who = rng.choice(["alice", "bob"])
        other = "bob" if who == "alice" else "alice"
        if rng.random() < 0.5 and can_send[who]:
            in_flight[other].append(sessions[who].encrypt(b"%d" % step))
        elif in_flight[who]:
            message = in_flight[who].pop(rng.randrange(len(in_flight[who])))
            receiver = sessions[who]
            before = receiver.to_bytes()
            twin = Ratchet.from_bytes(before, SkippedKeys(), peer=receiver.peer)
            fused = twin.open_in_chain(message)
            opened = receiver.decrypt(message)
            can_send[who] = True
            if fused is None:
                assert twin.to_bytes() == before
                # late, after a gap, or under a new ratchet key (a DH step: our key pair
                # changes, the state's bytes 2 to 34)
                assert opened.late or opened.skipped or receiver.to_bytes()[2:34] != before[2:34]
            else:
                assert (fused, 0, False) == (opened.plaintext, opened.skipped, opened.late)
                assert twin.to_bytes() == receiver.to_bytes()
            assert receiver.open_in_chain(message) is None  # a replay: not in the chain
            twin.close()


def test_open_in_chain_refuses_every_tampered_byte_and_changes_nothing() -> None:
    pair = established()
    message = pair.alice.encrypt(b"in the current chain")
    before = pair.bob.to_bytes()
    for index in range(len(message)):
        tampered = bytearray(message)
        tampered[index] ^= 0x01 if index % 2 else 0x80
        assert pair.bob.open_in_chain(bytes(tampered)) is None
        assert pair.bob.to_bytes() == before, f"byte {index} changed the state"
    for broken in (message[:-1], message + b"\x00", message[: ratchet.MIN_MESSAGE - 1], b""):
        assert pair.bob.open_in_chain(broken) is None
    assert pair.bob.to_bytes() == before
    assert pair.bob.open_in_chain(message) == b"in the current chain"  # the control
    assert pair.bob.to_bytes() != before


def test_a_gap_within_the_bound_is_filled_late() -> None:
    pair = established()
    messages = [pair.alice.encrypt(b"%d" % n) for n in range(MAX_SKIP + 1)]
    opened = pair.bob.decrypt(messages[-1])
    assert opened.skipped == MAX_SKIP and not opened.late
    assert pair.bob.missing == MAX_SKIP
    for n in (500, 0, 999):
        # alice had sent one message in this chain already: messages[n] is number n + 1
        assert pair.bob.decrypt(messages[n]) == ratchet.Opened(b"%d" % n, n + 1, 0, True)
    assert pair.bob.missing == MAX_SKIP - 3


def test_a_gap_beyond_the_bound_is_a_clear_error_and_changes_nothing() -> None:
    pair = established()
    messages = [pair.alice.encrypt(b"%d" % n) for n in range(MAX_SKIP + 2)]
    before = pair.bob.to_bytes()
    with pytest.raises(SkippedTooMany) as caught:
        pair.bob.decrypt(messages[-1])
    assert caught.value.skipped == MAX_SKIP + 1 and caught.value.limit == MAX_SKIP
    assert pair.bob.to_bytes() == before
    assert pair.bob.decrypt(messages[0]).plaintext == b"0"  # still in step


def test_the_bound_counts_both_chains_of_a_new_ratchet_key() -> None:
    pair = established()
    old = [pair.alice.encrypt(b"old") for _ in range(600)]  # none arrive
    assert old
    exchange(pair.bob, pair.alice, b"turn")
    new = [pair.alice.encrypt(b"new %d" % n) for n in range(500)]
    fails_untouched(pair.bob, new[-1], SkippedTooMany)  # 600 + 499 skipped > MAX_SKIP
    assert pair.bob.decrypt(new[300]).skipped == 600 + 300


def test_the_bound_holds_for_the_first_chain_too() -> None:
    pair = Pair()
    messages = [pair.alice.encrypt(b"%d" % n) for n in range(MAX_SKIP + 2)]
    fails_untouched(pair.bob, messages[-1], SkippedTooMany)
    assert pair.bob.decrypt(messages[-2]).skipped == MAX_SKIP


def test_a_peer_lying_about_pn_cannot_stretch_the_bound() -> None:
    """PN below what we have received would make the old chain's gap negative and let
    the new chain's N run past MAX_SKIP: refused (only the peer can write this header)."""
    pair = established()
    for _ in range(500):
        exchange(pair.alice, pair.bob, b"many")
    exchange(pair.bob, pair.alice, b"turn")
    pair.alice._pn = 0  # a lying (or broken) peer
    messages = [pair.alice.encrypt(b"%d" % n) for n in range(MAX_SKIP + 100)]
    fails_untouched(pair.bob, messages[-1])


class CountingKdf:
    """Counts chain steps (``open_next`` is one, fused with its AEAD) and root KDFs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.chain = self.root = 0
        real_chain, real_root, real_open_next = kdf.kdf_chain, kdf.kdf_root, steps.open_next

        def chain(key: bytes) -> tuple[bytes, bytes]:
            self.chain += 1
            return real_chain(key)

        def root(key: bytes, dh: bytes) -> tuple[bytes, bytes]:
            self.root += 1
            return real_root(key, dh)

        def open_next(key: bytes, message: bytes, size: int) -> tuple[bytes, bytes]:
            self.chain += 1
            return real_open_next(key, message, size)

        monkeypatch.setattr(ratchet, "kdf_chain", chain)
        monkeypatch.setattr(ratchet, "kdf_root", root)
        monkeypatch.setattr(ratchet, "open_next", open_next)


def _with_counters(message: bytes, previous: int, counter: int) -> bytes:
    return message[:33] + previous.to_bytes(4, "big") + counter.to_bytes(4, "big") + message[41:]


@pytest.mark.parametrize("counter", [5, MAX_SKIP, MAX_SKIP + 1, 2**32 - 1])
@pytest.mark.parametrize("new_ratchet_key", [False, True])
def test_a_forged_jump_costs_no_chain_step(
    monkeypatch: pytest.MonkeyPatch, counter: int, new_ratchet_key: bool
) -> None:
    """A forger without the header key makes us do at most 1 DH, 1 root KDF and no
    chain step, whatever counters it writes."""
    pair = established()
    genuine = pair.alice.encrypt(b"x")
    if new_ratchet_key:
        genuine = genuine[:1] + bytes(PrivateKey.generate().public_key) + genuine[33:]
    forged = _with_counters(genuine, counter, counter)
    counting = CountingKdf(monkeypatch)
    fails_untouched(pair.bob, forged)
    assert counting.chain == 0
    assert counting.root == (1 if new_ratchet_key else 0)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: _with_counters(m, 7, int.from_bytes(m[37:41], "big")),  # PN only
        lambda m: m[:41] + bytes([m[41] ^ 1]) + m[42:],  # the header tag
        lambda m: m[:-1] + bytes([m[-1] ^ 1]),  # the body
    ],
    ids=["pn", "tag", "body"],
)
def test_the_next_message_is_authenticated_by_the_aead_alone(
    monkeypatch: pytest.MonkeyPatch, tamper: Callable[[bytes], bytes]
) -> None:
    """The message that comes next in the receiving chain skips the tag check: its header
    and tag are the AEAD's associated data, so a forgery costs the one chain step any
    message costs, and is refused."""
    pair = established()
    genuine = pair.alice.encrypt(b"next")
    counting = CountingKdf(monkeypatch)
    fails_untouched(pair.bob, tamper(genuine))
    assert (counting.chain, counting.root) == (1, 0)
    assert pair.bob.decrypt(genuine).plaintext == b"next"  # the control


def test_a_genuine_jump_costs_at_most_max_skip_plus_one(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = established()
    messages = [pair.alice.encrypt(b"%d" % n) for n in range(MAX_SKIP + 5)]
    counting = CountingKdf(monkeypatch)
    with pytest.raises(SkippedTooMany):
        pair.bob.decrypt(messages[-1])
    assert counting.chain == 0
    pair.bob.decrypt(messages[MAX_SKIP])
    assert counting.chain == MAX_SKIP + 1


# -- post-compromise security and forward secrecy ----------------------------------------


def test_post_compromise_security_after_one_round_trip() -> None:
    pair = established()
    stolen = pair.alice.to_bytes()

    def attacker_reads(message: bytes) -> bool:
        thief = Ratchet.from_bytes(stolen, SkippedKeys(), peer="bob")
        try:
            thief.decrypt(message)
        except DecryptionError:
            return False
        return True

    # Positive control: with the stolen state, the next message to alice is readable.
    before = pair.bob.encrypt(b"before")
    assert attacker_reads(before)
    assert pair.alice.decrypt(before).plaintext == b"before"
    # One round trip: a DH ratchet step each way, with key pairs the thief never saw.
    exchange(pair.alice, pair.bob, b"alice turns")
    exchange(pair.bob, pair.alice, b"bob turns")
    after = [pair.bob.encrypt(b"after %d" % n) for n in range(3)]
    assert not any(attacker_reads(message) for message in after)
    # Nor can a thief that kept up by feeding its copy everything alice received.
    thief = Ratchet.from_bytes(stolen, SkippedKeys(), peer="bob")
    thief.decrypt(before)
    for message in after:
        with pytest.raises(DecryptionError):
            thief.decrypt(message)
    assert pair.alice.decrypt(after[0]).plaintext == b"after 0"


def test_forward_secrecy_when_identity_keys_and_state_leak_later() -> None:
    pair = Pair()
    recorded = [pair.alice.encrypt(b"secret %d" % n) for n in range(3)]
    for message in recorded:
        pair.bob.decrypt(message)
    recorded.append(pair.bob.encrypt(b"reply"))
    pair.alice.decrypt(recorded[-1])
    for _ in range(2):
        exchange(pair.alice, pair.bob, b"later")
        exchange(pair.bob, pair.alice, b"later")
    pair.one_time_prekey = None  # deleted after first use, as respond() asks

    # Leaked now: both identity keys, the signed prekey, and both current states.
    leaked_bob = Ratchet.from_bytes(pair.bob.to_bytes(), SkippedKeys(), peer="alice")
    leaked_alice = Ratchet.from_bytes(pair.alice.to_bytes(), SkippedKeys(), peer="bob")
    rebuilt_key, ad = pair.bob_respond(None, pair.signed_prekey)  # without OPK_B
    rebuilt = Ratchet.responder(rebuilt_key, ad, pair.signed_prekey, SkippedKeys(), peer="alice")
    for message in recorded[:3]:
        for victim in (leaked_bob, rebuilt):
            with pytest.raises(DecryptionError):
                victim.decrypt(message)
    with pytest.raises(DecryptionError):
        leaked_alice.decrypt(recorded[3])
    # The control: with the one-time prekey (had it not been deleted) it would be readable.
    control = Pair()
    first = control.alice.encrypt(b"first")
    again = Ratchet.responder(
        *control.bob_respond(control.one_time_prekey, control.signed_prekey),
        control.signed_prekey,
        SkippedKeys(),
        peer="alice",
    )
    assert again.decrypt(first).plaintext == b"first"


# -- replays and tampering ----------------------------------------------------------------


def test_replays_are_rejected_in_every_chain() -> None:
    pair = established()
    current = pair.alice.encrypt(b"a")
    skipped_over = pair.alice.encrypt(b"b")
    latest = pair.alice.encrypt(b"c")
    for message in (current, latest, skipped_over):
        pair.bob.decrypt(message)
    for message in (current, latest, skipped_over):
        fails_untouched(pair.bob, message, ReplayError)
    exchange(pair.bob, pair.alice, b"turn")
    exchange(pair.alice, pair.bob, b"turn")  # latest's chain is now the previous one
    fails_untouched(pair.bob, latest, ReplayError)


def _flip_every_byte(receiver: Ratchet, message: bytes) -> None:
    before = receiver.to_bytes()
    for index in range(len(message)):
        tampered = bytearray(message)
        tampered[index] ^= 0x01 if index % 2 else 0x80
        with pytest.raises(DecryptionError):
            receiver.decrypt(bytes(tampered))
        assert receiver.to_bytes() == before, f"byte {index} changed the state"
    for broken in (message[:-1], message + b"\x00", message[: ratchet.MIN_MESSAGE - 1], b""):
        with pytest.raises(DecryptionError):
            receiver.decrypt(broken)
    assert receiver.to_bytes() == before


def test_tampering_with_any_byte_fails_and_changes_nothing() -> None:
    pair = established()
    in_chain = pair.alice.encrypt(b"in the current chain")
    _flip_every_byte(pair.bob, in_chain)
    assert pair.bob.decrypt(in_chain).plaintext == b"in the current chain"  # the control
    late = pair.alice.encrypt(b"late")
    pair.bob.decrypt(pair.alice.encrypt(b"overtakes"))
    _flip_every_byte(pair.bob, late)
    assert pair.bob.decrypt(late).late
    late_in_old_chain = pair.alice.encrypt(b"late, old chain")
    pair.bob.decrypt(pair.alice.encrypt(b"overtakes too"))
    exchange(pair.bob, pair.alice, b"turn")
    exchange(pair.alice, pair.bob, b"turn")
    _flip_every_byte(pair.bob, late_in_old_chain)
    assert pair.bob.decrypt(late_in_old_chain).late
    new_key = [pair.bob.encrypt(b"new ratchet key %d" % n) for n in range(3)][-1]
    _flip_every_byte(pair.alice, new_key)
    assert pair.alice.decrypt(new_key).plaintext == b"new ratchet key 2"


def test_an_unknown_message_version_is_named() -> None:
    pair = established()
    message = pair.alice.encrypt(b"x")
    with pytest.raises(DecryptionError, match="unsupported message version 2"):
        pair.bob.decrypt(b"\x02" + message[1:])


# -- the budget of skipped keys -------------------------------------------------------------


def test_skipped_keys_across_many_sessions_stay_within_the_total() -> None:
    budget = SkippedKeys(per_session=2000, total=5000)
    pairs, firsts = [], []
    for _ in range(8):
        pair = Pair(budget)
        exchange(pair.alice, pair.bob, b"hi")
        first = pair.alice.encrypt(b"first")
        for _ in range(998):
            pair.alice.encrypt(b"skipped")
        pair.bob.decrypt(pair.alice.encrypt(b"last"))
        pairs.append(pair)
        firsts.append(first)
        assert len(budget) <= 5000
    assert len(budget) == 5000
    # Oldest first: the first sessions' keys went, the last session's are all there.
    with pytest.raises(ReplayError):
        pairs[0].bob.decrypt(firsts[0])
    assert pairs[-1].bob.decrypt(firsts[-1]).plaintext == b"first"


def test_one_session_keeps_at_most_its_own_share() -> None:
    budget = SkippedKeys(per_session=1500)
    pair, other = Pair(budget), Pair(budget)
    exchange(other.alice, other.bob, b"x")
    kept = other.alice.encrypt(b"kept")
    other.bob.decrypt(other.alice.encrypt(b"overtakes"))
    exchange(pair.alice, pair.bob, b"x")
    oldest = pair.alice.encrypt(b"oldest")
    for _ in range(2):
        for _ in range(MAX_SKIP - 1):
            pair.alice.encrypt(b"skipped")
        pair.bob.decrypt(pair.alice.encrypt(b"end"))
    assert pair.bob.missing == 1500
    fails_untouched(pair.bob, oldest, ReplayError)  # evicted: too old to wait for
    assert other.bob.decrypt(kept).plaintext == b"kept"  # another peer's keys untouched


def test_closing_a_session_returns_its_keys() -> None:
    budget = SkippedKeys()
    pair = Pair(budget)
    pair.alice.encrypt(b"lost")
    pair.bob.decrypt(pair.alice.encrypt(b"arrives"))
    assert len(budget) == 1
    pair.bob.close()
    assert len(budget) == 0


# -- persistence ------------------------------------------------------------------------------


def test_state_round_trips_mid_conversation() -> None:
    pair = established()
    late = [pair.alice.encrypt(b"late %d" % n) for n in range(3)]
    pair.bob.decrypt(pair.alice.encrypt(b"overtakes"))
    exchange(pair.bob, pair.alice, b"turn")
    saved_alice, saved_bob = pair.alice.to_bytes(), pair.bob.to_bytes()
    budget = SkippedKeys()
    alice = Ratchet.from_bytes(saved_alice, budget, peer="bob")
    bob = Ratchet.from_bytes(saved_bob, budget, peer="alice")
    assert alice.to_bytes() == saved_alice and bob.to_bytes() == saved_bob
    assert bob.decrypt(late[1]).late
    for index in range(20):
        sender, receiver = (alice, bob) if index % 3 else (bob, alice)
        exchange(sender, receiver, b"%d" % index)


def _state(kind: str) -> bytes:
    if kind == "no chains yet":
        return Pair().bob.to_bytes()
    pair = established()
    pair.alice.encrypt(b"skipped")
    pair.bob.decrypt(pair.alice.encrypt(b"x"))
    return pair.bob.to_bytes() if kind == "with a skipped key" else pair.alice.to_bytes()


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda s: s[:-1],
    "extended": lambda s: s + b"\x00",
    "unknown version": lambda s: bytes([ratchet.STATE_VERSION + 1]) + s[1:],
    "version 1 (it kept AD's digest)": lambda s: b"\x01" + s[1:],
    "unknown flag": lambda s: s[:1] + bytes([s[1] | 0x10]) + s[2:],
    "flag without its fields": lambda s: s[:1] + bytes([s[1] ^ 0x04]) + s[2:],
    "cut in the middle": lambda s: s[:50],
    "empty": lambda s: b"",
}


@pytest.mark.parametrize("kind", ["no chains yet", "mid-conversation", "with a skipped key"])
@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_state_is_refused(kind: str, damage: Callable[[bytes], bytes]) -> None:
    state = _state(kind)
    Ratchet.from_bytes(state, SkippedKeys(), peer="p")  # the control
    with pytest.raises(BadRatchetState):
        Ratchet.from_bytes(damage(state), SkippedKeys(), peer="p")


@given(st.binary(max_size=400))
def test_random_bytes_are_a_bad_state_or_a_state(data: bytes) -> None:
    try:
        state = Ratchet.from_bytes(data, SkippedKeys(), peer="p")
    except BadRatchetState:
        return
    assert state.to_bytes() == data


# -- the modules stay pure ----------------------------------------------------------------------


@pytest.mark.parametrize("module", ["kdf", "x3dh", "ratchet", "skipped", "steps"])
def test_the_new_modules_do_no_io(module: str) -> None:
    tree = ast.parse((CRYPTO / f"{module}.py").read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in names}
    assert not roots & {"os", "pathlib", "asyncio", "socket", "io", "prompt_toolkit"}
    calls = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert "open" not in calls


# -- known answers: what a compatible client must produce -------------------------------------


def test_known_answer_x3dh_and_first_messages() -> None:
    vector = json.loads((Path(__file__).parent / "vectors" / "ratchet.json").read_text(encoding="utf-8"))

    def private(name: str) -> PrivateKey:
        return PrivateKey(bytes.fromhex(vector[name]))

    bob_identity, signed, one_time = (
        private("bob_identity_private"),
        private("bob_signed_prekey_private"),
        private("bob_one_time_prekey_private"),
    )
    bundle = x3dh.PrekeyBundle(
        bob_identity.public_key, signed.public_key, 1, bytes(64), one_time.public_key, 2
    )
    initiation = x3dh.initiate(
        private("alice_identity_private"),
        bundle,
        lambda *_: True,
        our_nick=vector["alice_nick"],
        their_nick=vector["bob_nick"],
        ephemeral=private("alice_ephemeral_private"),
    )
    assert initiation.shared_key.hex() == vector["shared_key"]
    assert initiation.associated_data.hex() == vector["associated_data"]
    alice = Ratchet.initiator(
        initiation.shared_key,
        initiation.associated_data,
        signed.public_key,
        SkippedKeys(),
        peer="bob",
        our_ratchet_key=private("alice_ratchet_private"),
    )
    bob = Ratchet.responder(
        initiation.shared_key, initiation.associated_data, signed, SkippedKeys(), peer="alice"
    )
    for expected in vector["messages"]:
        plaintext = bytes.fromhex(expected["plaintext"])
        message = alice.encrypt(plaintext, bytes.fromhex(expected["nonce"]))
        assert message.hex() == expected["message"]
        assert bob.decrypt(message).plaintext == plaintext

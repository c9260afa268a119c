"""Our sessions with one peer (``PeerSession``): first contact over X3DH, the message
format inside the ratchet, and a negative twin for each property (wrong recipient,
reflection, relabelled sender, replay, reordering bounds, malformed plaintext).

The attacks on the session layer as a whole (post-compromise security, forward secrecy,
prekey substitution, replays across restarts, skipped-key exhaustion) are in
test_sessions_ratchet.py; the ratchet and X3DH alone in test_ratchet.py and test_x3dh.py.
"""

from __future__ import annotations

import struct

import pytest
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey

from e2echat.client.fileparts import CHUNK_SIZE
from e2echat.crypto import x3dh
from e2echat.crypto.keyring import Keyring
from e2echat.crypto.prekeys import OurPrekeys
from e2echat.crypto.primitives import NONCE_SIZE
from e2echat.crypto.ratchet import MAX_SKIP, Ratchet
from e2echat.crypto.session import (
    MAX_DATA,
    MAX_TEXT,
    PREKEY_HEADER_SIZE,
    PREKEY_MESSAGE,
    RATCHET_MESSAGE,
    Kind,
    Party,
    PeerSession,
    Plaintext,
    directory_digest,
    prepare,
    prepare_data,
    random_nonces,
    seal_all,
)
from e2echat.crypto.skipped import SkippedKeys
from e2echat.errors import DecryptionError, LocalProtocolError, ReplayError, SkippedTooMany
from e2echat.wire.grammar import MAX_BODY

#: our clock in these tests (Unix time, seconds)
NOW = 1_700_000_000.0
# Where a ratchet message keeps its nonce: version, ratchet key, PN, N (41), header tag (16).
NONCE_AT = 41 + 16


# -- helpers: two keyrings and a bundle ---------------------------------------------------


def keyrings_and_bundle(
    *, one_time: bool = True, nicks: tuple[str, str] = ("alice", "bob")
) -> tuple[Keyring, Keyring, x3dh.PrekeyBundle]:
    """Alice's keyring, Bob's, and Bob's prekey bundle as a relay that works hands it to
    Alice: his current signed prekey and (with ``one_time``) a fresh one-time prekey."""
    alice, bob = (Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in nicks)
    return alice, bob, bundle_of(bob, one_time=one_time)


def bundle_of(owner: Keyring, *, one_time: bool = True) -> x3dh.PrekeyBundle:
    signed = owner.prekeys.current
    one_time_id, one_time_key = owner.prekeys.new_one_time(1)[0] if one_time else (None, None)
    return x3dh.PrekeyBundle(
        owner.identity.public_key,
        signed.private.public_key,
        signed.prekey_id,
        signed.signature,
        one_time_key,
        one_time_id,
    )


def with_peer(ours: Keyring, theirs: Keyring) -> PeerSession:
    """Our sessions with ``theirs`` (made empty on first use, as the client does)."""
    return ours.peer(theirs.nick, theirs.identity.public_key)


def started(*, one_time: bool = True) -> tuple[Keyring, Keyring, PeerSession, PeerSession]:
    """(alice, bob, alice's sessions with bob, bob's with alice): alice has started a
    session from bob's bundle; bob has none until her first message arrives."""
    alice, bob, bundle = keyrings_and_bundle(one_time=one_time)
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    to_bob.start(bundle)
    return alice, bob, to_bob, to_alice


def talked() -> tuple[Keyring, Keyring, PeerSession, PeerSession]:
    """``started``, then alice -> bob, bob -> alice, alice -> bob: both sides are
    established and alice's next message is in the chain bob receives on now."""
    alice, bob, to_bob, to_alice = started()
    for sender, receiver in ((to_bob, to_alice), (to_alice, to_bob), (to_bob, to_alice)):
        assert receiver.decrypt(sender.encrypt("hi", Kind.ROOM)).text == "hi"
    return alice, bob, to_bob, to_alice


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def seal_as(sender: PeerSession, plaintext: bytes) -> bytes:
    """A body carrying any plaintext at all, as a hostile but keyed peer could make one
    (the public API only ever seals well-formed JSON): reaches into the current session."""
    session = sender._sessions[0]
    return session.prekey_header + session.ratchet.encrypt(plaintext)


def opened_raw(receiver: PeerSession, body: bytes) -> bytes:
    """The plaintext bytes of ``body``, opened in a copy of the receiver's current
    session (the receiver itself is untouched)."""
    copy = Ratchet.from_bytes(receiver._sessions[0].ratchet.to_bytes(), SkippedKeys(), peer="copy")
    return copy.decrypt(body[PREKEY_HEADER_SIZE:] if body[0] == PREKEY_MESSAGE else body).plaintext


# -- first contact and agreement ----------------------------------------------------------


@pytest.mark.parametrize("one_time", [True, False], ids=["one-time-prekey", "signed-prekey-only"])
def test_first_message_and_replies_both_ways(one_time: bool) -> None:
    _, _, to_bob, to_alice = started(one_time=one_time)
    assert to_bob.can_send and not to_bob.confirmed
    assert not to_alice.can_send
    assert to_alice.decrypt(to_bob.encrypt("hello bob", Kind.ROOM)) == Plaintext(
        "alice", "bob", Kind.ROOM, 0, "hello bob"
    )
    assert to_alice.can_send and to_alice.confirmed
    assert to_bob.decrypt(to_alice.encrypt("hi alice 👋", Kind.PRIVATE)) == Plaintext(
        "bob", "alice", Kind.PRIVATE, 0, "hi alice 👋"
    )
    assert to_bob.confirmed
    for counter in range(1, 5):
        sender, receiver = (to_bob, to_alice) if counter % 2 else (to_alice, to_bob)
        got = receiver.decrypt(sender.encrypt(f"#{counter}", Kind.PRIVATE))
        assert (got.text, got.kind, got.skipped, got.late) == (f"#{counter}", Kind.PRIVATE, 0, False)
    assert to_bob.peer == "bob" and to_alice.peer == "alice"


def test_bodies_carry_the_prekey_header_until_the_peer_answers() -> None:
    alice, bob, bundle = keyrings_and_bundle()
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    to_bob.start(bundle)
    firsts = [to_bob.encrypt(f"first {n}", Kind.ROOM) for n in range(2)]
    for body in firsts:
        kind, identity, _base_key, signed_id, has_one_time, one_time_id = struct.unpack_from(
            ">B32s32sIBI", body
        )
        assert (kind, identity, signed_id, has_one_time, one_time_id) == (
            PREKEY_MESSAGE,
            bytes(alice.identity.public_key),
            bundle.signed_prekey_id,
            1,
            bundle.one_time_prekey_id,
        )
        assert body[PREKEY_HEADER_SIZE] == RATCHET_MESSAGE
    assert firsts[0][:PREKEY_HEADER_SIZE] == firsts[1][:PREKEY_HEADER_SIZE]  # one session
    assert [to_alice.decrypt(body).text for body in firsts] == ["first 0", "first 1"]
    assert to_alice.encrypt("reply", Kind.ROOM)[0] == RATCHET_MESSAGE
    to_bob.decrypt(to_alice.encrypt("reply", Kind.ROOM))
    assert to_bob.encrypt("answered", Kind.ROOM)[0] == RATCHET_MESSAGE


def test_no_sending_before_a_session() -> None:
    _, _, _, to_alice = started()
    with pytest.raises(LocalProtocolError):
        to_alice.encrypt("too early", Kind.ROOM)
    with pytest.raises(DecryptionError, match="no session"):
        to_alice.decrypt(bytes([RATCHET_MESSAGE]) + bytes(200))


def test_our_numbers_keep_counting_across_sessions() -> None:
    _, bob, to_bob, to_alice = started()
    for counter in range(3):
        assert to_alice.decrypt(to_bob.encrypt("old", Kind.ROOM)).counter == counter
    to_bob.start(bundle_of(bob))  # a second session with the same peer
    got = to_alice.decrypt(to_bob.encrypt("new session", Kind.ROOM))
    assert (got.counter, got.text, got.skipped) == (3, "new session", 0)


# -- tampering ----------------------------------------------------------------------------


def test_truncated_or_extended_bodies_are_rejected() -> None:
    _, bob, to_bob, to_alice = started()
    first = to_bob.encrypt("first", Kind.ROOM)
    before = bob.rows()
    for broken in (b"", first[:1], first[: PREKEY_HEADER_SIZE - 1], first[:PREKEY_HEADER_SIZE], first[:-1]):
        with pytest.raises(DecryptionError):
            to_alice.decrypt(broken)
    with pytest.raises(DecryptionError):
        to_alice.decrypt(first + b"\x00")
    assert bob.rows() == before
    assert to_alice.decrypt(first).text == "first"
    body = to_alice.encrypt("reply", Kind.ROOM)
    for broken in (body[:1], body[:NONCE_AT], body[:-1], body + b"\x00"):
        with pytest.raises(DecryptionError):
            to_bob.decrypt(broken)
    assert to_bob.decrypt(body).text == "reply"


@pytest.mark.parametrize("kind", [0, 3, 255])
def test_unknown_body_version_is_rejected(kind: int) -> None:
    _, _, to_bob, to_alice = started()
    body = to_bob.encrypt("hi", Kind.ROOM)
    with pytest.raises(DecryptionError, match=f"unsupported message type {kind}"):
        to_alice.decrypt(bytes([kind]) + body[1:])
    assert to_alice.decrypt(body).text == "hi"


# -- wrong parties ------------------------------------------------------------------------


def test_wrong_recipient_cannot_decrypt() -> None:
    alice, bob, bundle = keyrings_and_bundle()
    carol = Keyring.fresh("carol", PrivateKey.generate(), NOW)
    to_bob = with_peer(alice, bob)
    to_bob.start(bundle)
    first = to_bob.encrypt("for bob only", Kind.PRIVATE)
    carol_from_alice = with_peer(carol, alice)
    before = carol.rows()
    with pytest.raises(DecryptionError):
        carol_from_alice.decrypt(first)
    assert carol.rows() == before
    # Later bodies, without the prekey header, do not open for her either.
    assert with_peer(bob, alice).decrypt(first).text == "for bob only"
    with pytest.raises(DecryptionError):
        carol_from_alice.decrypt(with_peer(bob, alice).encrypt("for alice only", Kind.PRIVATE))
    # Carol's own sessions with Alice are unharmed.
    to_carol = with_peer(alice, carol)
    to_carol.start(bundle_of(carol))
    assert carol_from_alice.decrypt(to_carol.encrypt("hi carol", Kind.ROOM)).text == "hi carol"


def test_recipient_posing_as_someone_else_cannot_decrypt() -> None:
    """Mallory registered as "bob" somewhere, with her own keys: the same nick and even
    the same prekey ids are not enough."""
    alice, bob, bundle = keyrings_and_bundle()
    mallory = PrivateKey.generate()
    # Her prekey ids match bob's: the same signed prekey id, the same one-time one.
    impostor = Keyring("bob", mallory, OurPrekeys.fresh(mallory, NOW, first_id=bundle.signed_prekey_id))
    impostor.prekeys.new_one_time(1)
    assert impostor.prekeys.one_time(bundle.one_time_prekey_id or 0) is not None
    to_bob = with_peer(alice, bob)
    to_bob.start(bundle)
    with pytest.raises(DecryptionError):
        with_peer(impostor, alice).decrypt(to_bob.encrypt("for bob only", Kind.PRIVATE))


def test_reflection_is_rejected() -> None:
    _, bob, to_bob, to_alice = started()
    first = to_bob.encrypt("to bob", Kind.ROOM)
    with pytest.raises(DecryptionError, match="another identity key"):
        to_bob.decrypt(first)
    # The relay rewrites the identity key in the header to bob's: it names alice's own
    # session, in which her own message does not open.
    rewritten = first[:1] + bytes(bob.identity.public_key) + first[33:]
    before = to_bob.to_bytes()
    with pytest.raises(DecryptionError):
        to_bob.decrypt(rewritten)
    assert to_bob.to_bytes() == before
    assert to_alice.decrypt(first).text == "to bob"
    reply = to_alice.encrypt("to alice", Kind.ROOM)
    with pytest.raises(DecryptionError):
        to_alice.decrypt(reply)
    assert to_bob.decrypt(reply).text == "to alice"
    later = to_bob.encrypt("to bob again", Kind.ROOM)
    with pytest.raises(DecryptionError):
        to_bob.decrypt(later)
    assert to_alice.decrypt(later).text == "to bob again"


def test_sender_relabelled_by_relay_is_rejected() -> None:
    """Bob's messages to Carol, passed to Carol as if from Alice."""
    alice, bob, carol = (
        Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("alice", "bob", "carol")
    )
    bob_to_carol, carol_from_bob, carol_from_alice = (
        with_peer(bob, carol),
        with_peer(carol, bob),
        with_peer(carol, alice),
    )
    bob_to_carol.start(bundle_of(carol))
    first = bob_to_carol.encrypt("from bob", Kind.ROOM)
    with pytest.raises(DecryptionError):
        carol_from_alice.decrypt(first)
    assert carol_from_bob.decrypt(first).text == "from bob"
    # Alice and Carol have a session too; Bob's later bodies do not open in it.
    alice_to_carol = with_peer(alice, carol)
    alice_to_carol.start(bundle_of(carol))
    carol_from_alice.decrypt(alice_to_carol.encrypt("from alice", Kind.ROOM))
    for body in (bob_to_carol.encrypt("from bob", Kind.ROOM), with_peer(carol, bob).encrypt("x", Kind.ROOM)):
        with pytest.raises(DecryptionError):
            carol_from_alice.decrypt(body)


def test_a_nick_relabelled_by_the_relay_is_rejected_under_the_same_key() -> None:
    """The relay announces alice's identity key under another nick, "mallory", and passes
    alice's messages to bob as mallory's. No plaintext field names the sender: the
    session's AD (both nicks, bound into every key) is what refuses them."""
    alice, bob, bundle = keyrings_and_bundle()
    to_bob, from_alice = with_peer(alice, bob), with_peer(bob, alice)
    from_mallory = bob.peer("mallory", alice.identity.public_key)
    to_bob.start(bundle)
    first = to_bob.encrypt("from alice", Kind.ROOM)
    before = bob.rows()
    with pytest.raises(DecryptionError):
        from_mallory.decrypt(first)
    assert bob.rows() == before  # nothing started, the one-time prekey kept
    assert from_alice.decrypt(first).text == "from alice"  # the control


# -- replay and reordering ----------------------------------------------------------------


def test_replay_is_rejected() -> None:
    _, _, to_bob, to_alice = talked()
    body = to_bob.encrypt("once", Kind.ROOM)
    counter = to_alice.decrypt(body).counter
    before = to_alice.to_bytes()
    with pytest.raises(ReplayError):
        to_alice.decrypt(body)
    assert to_alice.to_bytes() == before
    assert to_alice.decrypt(to_bob.encrypt("twice", Kind.ROOM)).counter == counter + 1


def test_reordering_within_bound_is_accepted_and_flagged() -> None:
    _, _, to_bob, to_alice = talked()
    bodies = [to_bob.encrypt(f"m{i}", Kind.ROOM) for i in range(4)]
    got = to_alice.decrypt(bodies[2])
    assert (got.text, got.skipped, got.late) == ("m2", 2, False)
    assert to_alice.missing == 2
    got = to_alice.decrypt(bodies[0])
    assert (got.text, got.skipped, got.late) == ("m0", 0, True)
    got = to_alice.decrypt(bodies[3])
    assert (got.text, got.skipped, got.late) == ("m3", 0, False)
    assert (to_alice.decrypt(bodies[1]).late, to_alice.missing) == (True, 0)
    for body in bodies:  # a late message is still only accepted once
        with pytest.raises(ReplayError):
            to_alice.decrypt(body)


def test_first_messages_out_of_order() -> None:
    """The first message is lost; the second, also a prekey message, starts the session."""
    _, _, to_bob, to_alice = started()
    first, second = to_bob.encrypt("1", Kind.ROOM), to_bob.encrypt("2", Kind.ROOM)
    got = to_alice.decrypt(second)
    assert (got.text, got.skipped, to_alice.missing) == ("2", 1, 1)
    assert to_alice.decrypt(first).late
    with pytest.raises(ReplayError):
        to_alice.decrypt(first)


def test_gap_larger_than_max_skip_is_rejected() -> None:
    _, _, to_bob, to_alice = talked()
    bodies = [to_bob.encrypt(str(i), Kind.ROOM) for i in range(MAX_SKIP + 2)]
    before = to_alice.to_bytes()
    with pytest.raises(SkippedTooMany):
        to_alice.decrypt(bodies[MAX_SKIP + 1])  # MAX_SKIP + 1 messages skipped
    assert to_alice.to_bytes() == before
    got = to_alice.decrypt(bodies[MAX_SKIP])  # exactly MAX_SKIP is still allowed
    assert (got.skipped, to_alice.missing) == (MAX_SKIP, MAX_SKIP)
    assert to_alice.decrypt(bodies[0]).late


# -- the plaintext ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "directory_hash", "acks"),
    [
        ("hello", Kind.ROOM, "ab" * 32, ()),
        ('quotes " and \\ backslashes, \n newlines, \x00 \x1f controls', Kind.PRIVATE, "", ()),
        ("unicode é 👋 \u2028 \u2029 </script>", Kind.ROOM, "00" * 32, ()),
        ("", Kind.RECEIPT, "cd" * 32, (0, 1, 2**64 - 1)),
        ("ef" * 32 + "at lunch", Kind.STATUS, "ab" * 32, ()),
    ],
    ids=["plain", "escapes", "unicode", "receipt", "status"],
)
def test_sealed_plaintext_is_exactly_the_documented_layout(
    text: str, kind: Kind, directory_hash: str, acks: tuple[int, ...]
) -> None:
    """``seal`` writes n into a plaintext packed once per message; it must be the very
    bytes of the documented layout."""
    alice, bob, bundle = keyrings_and_bundle(nicks=("a.l-i_ce", "Bob9"))
    to_bob, to_alice = with_peer(alice, bob), with_peer(bob, alice)
    to_bob.start(bundle)
    to_alice.decrypt(to_bob.encrypt("first", Kind.ROOM))
    sent = None if acks else 1_700_000_000  # receipts go without one
    outgoing = prepare(text, kind, directory_hash=directory_hash, acks=acks, sent=sent)
    for counter in range(1, 4):
        body = to_bob.seal(outgoing, random_nonces(1)[0])
        assert opened_raw(to_alice, body) == _inner(
            n=counter, kind=kind, text=text, directory=directory_hash, sent=sent, acks=acks
        )
        got = to_alice.decrypt(body)
        assert (got.sender, got.recipient) == ("a.l-i_ce", "Bob9")  # the session's parties
        assert (got.text, got.kind, got.counter, got.directory_hash, got.acks, got.sent) == (
            text,
            kind,
            counter,
            directory_hash,
            acks,
            sent,
        )


def test_the_room_travels_inside_the_encryption() -> None:
    """A room message names its room inside the encryption (or none: the receiver drops it);
    a private message or a receipt naming one is refused, locally and when received."""
    _, _, to_bob, to_alice = talked()
    assert to_alice.decrypt(to_bob.encrypt("hi ops", Kind.ROOM, room="#ops")).room == "#ops"
    assert to_alice.decrypt(to_bob.encrypt("hi all", Kind.ROOM)).room == ""
    for kind in (Kind.PRIVATE, Kind.RECEIPT, Kind.STATUS):
        with pytest.raises(LocalProtocolError):
            prepare("x", kind, room="#ops")
    with pytest.raises(LocalProtocolError):
        prepare("x", Kind.ROOM, room="r" * 256)


def test_the_send_time_travels_inside_the_encryption() -> None:
    _, _, to_bob, to_alice = talked()
    assert to_alice.decrypt(to_bob.encrypt("when?", Kind.ROOM, sent=1_700_000_000)).sent == 1_700_000_000
    assert to_alice.decrypt(to_bob.encrypt("no time", Kind.ROOM)).sent is None
    assert to_alice.decrypt(seal_as(to_bob, _inner(n=9, sent=0))).sent == 0
    with pytest.raises(LocalProtocolError):
        prepare("hi", Kind.ROOM, sent=-1)


_KIND_NUMBER = {Kind.ROOM: 0, Kind.PRIVATE: 1, Kind.RECEIPT: 2, Kind.STATUS: 3}


def _inner(
    *,
    n: int = 0,
    kind: Kind = Kind.ROOM,
    text: str = "hi",
    directory: str = "",
    sent: int | None = None,
    acks: tuple[int, ...] = (),
    kind_number: int | None = None,
    flags: int | None = None,
    room: str = "",
    room_size: int | None = None,
) -> bytes:
    """A plaintext as session.py documents it, written out here independently:
    n || kind || flags || sent || directory hash || ack count || room length || acks ||
    room || text."""
    if flags is None:
        flags = (sent is not None) | (bool(directory) << 1)
    number = _KIND_NUMBER[kind] if kind_number is None else kind_number
    head = struct.pack(">QBBQ", n, number, flags, sent or 0)
    raw_directory = bytes.fromhex(directory) if directory else bytes(32)
    packed_acks = b"".join(ack.to_bytes(8, "big") for ack in acks)
    named = room.encode("utf-8")
    return (
        head
        + raw_directory
        + struct.pack(">HB", len(acks), len(named) if room_size is None else room_size)
        + packed_acks
        + named
        + text.encode("utf-8", "surrogatepass")
    )


# What ``decrypt`` says of an authentic message whose contents it refuses.
REFUSED = r"malformed plaintext"
MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(_inner()[:52], id="short-head"),
    pytest.param(_inner(kind=Kind.PRIVATE, room="ops"), id="room-in-a-private-message"),
    pytest.param(_inner(room="ops", room_size=200, text=""), id="room-cut-short"),
    pytest.param(_inner(room="x", text="")[:-1] + b"\xff", id="room-not-utf8"),
    pytest.param(_inner(kind_number=5), id="bad-kind"),
    pytest.param(_inner(kind_number=255), id="kind-255"),
    pytest.param(_inner(flags=0b100), id="unknown-flag"),
    pytest.param(_inner(text="lone \ud800 surrogate"), id="text-lone-surrogate"),
    pytest.param(_inner(text="") + b"\xff\xfe", id="text-not-utf8"),
    pytest.param(_inner(sent=2**53), id="sent-huge"),
    # the usual message's flags (send time and directory hash), read the short way
    pytest.param(_inner(sent=2**53, directory="ab" * 32), id="usual-sent-huge"),
    pytest.param(_inner(sent=5, directory="ab" * 32, text="") + b"\xff", id="usual-text-not-utf8"),
    pytest.param(_inner(sent=5, directory="ab" * 32, kind_number=5), id="usual-bad-kind"),
    pytest.param(
        _inner(sent=5, directory="ab" * 32, room="#ops", room_size=200, text=""), id="usual-room-cut-short"
    ),
    pytest.param(
        _inner(sent=5, directory="ab" * 32, room="#o", text="")[:-1] + b"\xff", id="usual-room-not-utf8"
    ),
    pytest.param(_inner(kind_number=4, room="ops"), id="room-in-a-file-part"),
    pytest.param(_inner(sent=5, flags=0), id="sent-without-its-flag"),
    pytest.param(_inner(directory="ab" * 32, flags=0), id="directory-without-its-flag"),
    pytest.param(_inner(acks=tuple(range(1001))), id="acks-too-many"),
    pytest.param(_inner(acks=(1, 2), text="")[:-1], id="acks-cut-short"),
    pytest.param(b"[" * 30_000, id="large-garbage"),
]


@pytest.mark.parametrize("plaintext", MALFORMED)
def test_malformed_plaintext_in_a_first_message_starts_nothing(plaintext: bytes) -> None:
    _, bob, to_bob, to_alice = started()
    before = bob.rows()
    with pytest.raises(DecryptionError, match=REFUSED):
        to_alice.decrypt(seal_as(to_bob, plaintext))
    assert bob.rows() == before  # no session, no base key, the one-time prekey kept
    assert len(bob.budget) == 0
    # The refusal left no trace: the next first message reports that one as skipped.
    got = to_alice.decrypt(seal_as(to_bob, _inner(n=1)))
    assert (got.counter, got.skipped) == (1, 1)


@pytest.mark.parametrize("plaintext", MALFORMED)
def test_authentic_but_malformed_plaintext_is_rejected(plaintext: bytes) -> None:
    """Inside an established session the AEAD has opened: the message is the peer's and
    counts as read (a replay of it is a replay), but its contents are refused."""
    _, _, to_bob, to_alice = talked()
    body = to_bob.encrypt("alice -> bob", Kind.ROOM)
    to_alice.decrypt(body)
    body = seal_as(to_bob, plaintext)
    with pytest.raises(DecryptionError, match=REFUSED):
        to_alice.decrypt(body)
    with pytest.raises(ReplayError):
        to_alice.decrypt(body)
    assert to_alice.decrypt(to_bob.encrypt("next", Kind.ROOM)).skipped == 0


@pytest.mark.parametrize(
    "plaintext",
    [
        pytest.param(_inner(n=3, sent=5, directory="ab" * 32, room="#ops", text="usual"), id="usual"),
        pytest.param(_inner(n=3, sent=5, directory="ab" * 32, room="#ops", acks=(1, 2)), id="room-with-acks"),
        pytest.param(_inner(n=3, sent=5, room="#ops"), id="room-without-a-view"),
        pytest.param(_inner(n=3, directory="ab" * 32, room="#ops"), id="room-without-a-send-time"),
        pytest.param(_inner(n=3, kind=Kind.PRIVATE, sent=5, directory="ab" * 32), id="private-with-a-view"),
        pytest.param(_inner(n=3, sent=5, directory="ab" * 32, room="#ops", text="\u00e9t\u00e9"), id="utf8"),
    ],
)
def test_the_usual_read_and_the_general_one_agree(plaintext: bytes) -> None:
    """``read`` reads the usual plaintext (a room's, next in the chain) itself: whatever
    opens that way reads as ``_parse`` reads it, acks, room and all."""
    _, _, to_bob, to_alice = talked()
    to_alice.decrypt(to_bob.encrypt("alice -> bob", Kind.ROOM))
    body = seal_as(to_bob, plaintext)
    expected = to_alice._parse(opened_raw(to_alice, body), 0, False)
    assert to_alice.read(body) == expected


def test_a_file_part_carries_bytes_not_text() -> None:
    """Any bytes at all, not UTF-8 (a chunk of a file), come back as ``data``."""
    _, _, to_bob, to_alice = talked()
    data = bytes(range(256)) * 4 + b"\xff\xfe"
    got = to_alice.decrypt(to_bob.seal(prepare_data(data), random_nonces(1)[0]))
    assert (got.kind, got.text, got.data) == (Kind.FILE, "", data)
    assert to_alice.decrypt(to_bob.seal(prepare_data(b""), random_nonces(1)[0])).data == b""
    # ... and a text message carries none
    assert to_alice.decrypt(to_bob.encrypt("hi", Kind.PRIVATE)).data == b""


def test_a_file_part_has_a_size_limit_and_only_bytes() -> None:
    _, _, to_bob, to_alice = talked()
    longest = b"\x00" * MAX_DATA
    assert to_alice.decrypt(to_bob.seal(prepare_data(longest), random_nonces(1)[0])).data == longest
    with pytest.raises(LocalProtocolError):
        prepare_data(longest + b"x")
    with pytest.raises(LocalProtocolError):
        prepare("text", Kind.FILE)


def test_the_longest_file_part_fits_in_one_body_even_with_a_prekey_header() -> None:
    """A chunk as large as a transfer sends, in the first message of a session (the
    largest header), is a body the relay takes."""
    _, _, to_bob, _ = started()
    body = to_bob.seal(prepare_data(b"\x00" * MAX_DATA), random_nonces(1)[0])
    assert len(body) <= MAX_BODY
    assert MAX_DATA >= CHUNK_SIZE + 64  # a chunk and its part's head


def test_text_length_limit() -> None:
    _, _, to_bob, to_alice = started()
    longest = "é" * (MAX_TEXT // 2)
    assert to_alice.decrypt(to_bob.encrypt(longest, Kind.ROOM)).text == longest
    with pytest.raises(LocalProtocolError):
        to_bob.encrypt("x" * (MAX_TEXT + 1), Kind.ROOM)
    # The refused message used up neither a number nor a message key.
    got = to_alice.decrypt(to_bob.encrypt("next", Kind.ROOM))
    assert (got.counter, got.skipped) == (1, 0)


# -- encryption details and the shared-plaintext send path ---------------------------------


def test_an_explicit_nonce_goes_where_the_format_says() -> None:
    _, _, to_bob, to_alice = talked()
    nonce = bytes(range(NONCE_SIZE))
    body = to_bob.encrypt("hi", Kind.ROOM, nonce=nonce)
    assert body[NONCE_AT : NONCE_AT + NONCE_SIZE] == nonce
    assert to_alice.decrypt(body).text == "hi"
    # The twin: by default every body gets its own random nonce.
    nonces = {to_bob.encrypt("hi", Kind.ROOM)[NONCE_AT : NONCE_AT + NONCE_SIZE] for _ in range(2)}
    assert len(nonces) == 2 and nonce not in nonces


def test_one_prepared_message_seals_differently_for_each_recipient() -> None:
    alice, bob, carol = (
        Keyring.fresh(nick, PrivateKey.generate(), NOW) for nick in ("alice", "bob", "carol")
    )
    to_bob, to_carol = with_peer(alice, bob), with_peer(alice, carol)
    to_bob.start(bundle_of(bob))
    to_carol.start(bundle_of(carol))
    sealed = seal_all([(to_bob, prepare("to both", Kind.ROOM)), (to_carol, prepare("to both", Kind.ROOM))])
    assert [peer for peer, _ in sealed] == ["bob", "carol"]
    (_, body_bob), (_, body_carol) = sealed
    # The negative twins: neither copy opens for the other recipient.
    with pytest.raises(DecryptionError):
        with_peer(carol, alice).decrypt(body_bob)
    with pytest.raises(DecryptionError):
        with_peer(bob, alice).decrypt(body_carol)
    assert with_peer(bob, alice).decrypt(body_bob).text == "to both"
    assert with_peer(carol, alice).decrypt(body_carol).text == "to both"


@pytest.mark.parametrize("answered", [False, True], ids=["prekey-header", "established"])
def test_a_copy_is_the_body_seal_numbered_makes(answered: bool) -> None:
    alice, _, to_bob, to_alice = started()
    if answered:
        to_alice.decrypt(to_bob.encrypt("hi", Kind.ROOM))
        to_bob.decrypt(to_alice.encrypt("hi", Kind.ROOM))
    twin = PeerSession.from_bytes(
        to_bob.to_bytes(),
        our_nick="alice",
        our_identity=alice.identity,
        their_nick="bob",
        budget=SkippedKeys(),
        prekeys=alice.prekeys,
    )
    prepared, nonce = prepare("to everyone", Kind.ROOM, sent=1234), bytes(range(NONCE_SIZE))
    seal_copy = prepared.copies(2, nonce * 2)
    for _ in range(2):
        counter, body = to_bob.seal_copy(seal_copy)
        assert counter == twin.take_counter()
        assert body == twin.seal_numbered(prepared, counter, nonce)
        assert body[0] == (RATCHET_MESSAGE if answered else PREKEY_MESSAGE)
        assert to_alice.decrypt(body) == Plaintext(
            "alice", "bob", Kind.ROOM, counter, "to everyone", sent=1234
        )
    assert to_bob.to_bytes() == twin.to_bytes()


def test_a_copy_without_a_session_changes_nothing() -> None:
    _, _, _, to_alice = started()
    before = to_alice.to_bytes()
    with pytest.raises(LocalProtocolError):
        to_alice.seal_copy(prepare("hi", Kind.ROOM).copies(1))
    assert to_alice.to_bytes() == before and to_alice.next_counter == 0


def test_the_copies_of_a_message_each_get_a_nonce_of_their_own() -> None:
    _, _, to_bob, to_alice = talked()
    seal_copy = prepare("hi", Kind.ROOM).copies(3)
    bodies = [to_bob.seal_copy(seal_copy)[1] for _ in range(3)]
    assert len({body[NONCE_AT : NONCE_AT + NONCE_SIZE] for body in bodies}) == 3
    assert [to_alice.decrypt(body).text for body in bodies] == ["hi"] * 3
    # The twin: a fourth copy has no nonce left, and changes nothing.
    before = to_bob.to_bytes()
    with pytest.raises(CryptoError, match="no nonce left"):
        to_bob.seal_copy(seal_copy)
    assert to_bob.to_bytes() == before


def test_prepare_refuses_what_encrypt_refuses() -> None:
    with pytest.raises(LocalProtocolError):
        prepare("x" * (MAX_TEXT + 1), Kind.ROOM)
    with pytest.raises(UnicodeEncodeError):
        prepare("lone \ud800", Kind.ROOM)
    with pytest.raises(LocalProtocolError):
        prepare("hi", Kind.ROOM, sent=2**53)
    for directory_hash in ("ab" * 31, "ab" * 33, "zz" * 32):
        with pytest.raises(LocalProtocolError):
            prepare("hi", Kind.ROOM, directory_hash=directory_hash)
    for acks in ((2**64,), (-1,), tuple(range(1001))):
        with pytest.raises(LocalProtocolError):
            prepare("", Kind.RECEIPT, acks=acks)


def test_random_nonces_are_32_random_bytes_each() -> None:
    nonces = random_nonces(50)
    assert len(nonces) == 50
    assert all(len(nonce) == NONCE_SIZE for nonce in nonces)
    assert len(set(nonces)) == 50
    assert random_nonces(3) != random_nonces(3)


def test_directory_digest_is_order_free_and_binds_every_key() -> None:
    people = [
        Party(nick, PrivateKey.generate().public_key, PrivateKey.generate().public_key)
        for nick in ("alice", "bob", "carol")
    ]
    digest = directory_digest(people)
    assert directory_digest(people[::-1]) == digest
    alice = people[0]
    for changed in (
        Party(alice.nick, PrivateKey.generate().public_key, alice.session_key),
        Party(alice.nick, alice.identity_key, PrivateKey.generate().public_key),
        Party("alicf", alice.identity_key, alice.session_key),
    ):
        assert directory_digest([changed, *people[1:]]) != digest
    assert directory_digest(people[:2]) != digest

"""Identity: fingerprints, Signal-compatible safety numbers, fresh session keys and the
registration proofs. Pure: no I/O.

The identity key (IK) is a long-term X25519 key pair per profile; the session key (EK)
is made fresh for every connection by ``new_session_key`` and never touches the disk.
The relay's key (RK) is the relay's long-term X25519 key pair, which clients pin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.hashlib
from nacl.public import Box, PrivateKey, PublicKey

from e2echat.wire.messages import Challenge, Register


def new_session_key() -> PrivateKey:
    """A fresh per-connection key pair; libsodium's randomness."""
    return PrivateKey.generate()


def registration_proof(
    our_identity: PrivateKey,
    our_session_key: PrivateKey,
    challenge: Challenge,
    password: bytes = b"",
    *,
    nonces: tuple[bytes, bytes] | None = None,
) -> tuple[bytes, bytes]:
    """What a client sends to prove it holds both keys it registers: ``(proof,
    session_proof)``, the two proofs of a ``Register`` (made by the client core).

    - ``proof``: a Box from IK to the relay's key (RK, ``challenge.relay_key``) over the
      challenge, EK and the relay password, if any. Only the holder of IK's private half
      can make it: IK vouches for EK, and the password never crosses the network in the
      clear.
    - ``session_proof``: a Box from EK to RK over the challenge and IK. Only the holder
      of EK's private half can make it: EK vouches for IK, so nobody can register a
      session key that is someone else's (which would make their peers cry "replay").

    The challenge is new on every connection and checked inside both, so neither proof
    is worth anything on another connection. Only the holder of RK's private half can
    open them: a relay with another key learns nothing from them, the password included.
    The password goes in ``proof`` alone. ``nonces`` are for tests.
    """
    identity_nonce, session_nonce = nonces or (None, None)
    session_public, identity_public = bytes(our_session_key.public_key), bytes(our_identity.public_key)
    proof = Box(our_identity, challenge.relay_key).encrypt(
        challenge.challenge + session_public + password, identity_nonce
    )
    session_proof = Box(our_session_key, challenge.relay_key).encrypt(
        challenge.challenge + identity_public, session_nonce
    )
    return bytes(proof), bytes(session_proof)


def _open(our_key: PrivateKey, their_key: PublicKey, box: bytes) -> bytes | None:
    try:
        return Box(our_key, their_key).decrypt(box)
    except nacl.exceptions.CryptoError:  # forged, damaged, or a low-order key
        return None


def opened_identity_proof(relay_key: PrivateKey, challenge: bytes, register: Register) -> bytes | None:
    """The relay's check of ``register.proof``: the password inside it (empty if none),
    or None if it does not verify (not made with ``register.identity_key`` for this
    ``challenge`` and ``register.session_key``)."""
    expected = challenge + bytes(register.session_key)
    opened = _open(relay_key, register.identity_key, register.proof) or b""
    if not hmac.compare_digest(opened[: len(expected)], expected):
        return None
    return opened[len(expected) :]


def session_proof_verifies(relay_key: PrivateKey, challenge: bytes, register: Register) -> bool:
    """The relay's check of ``register.session_proof``: made with ``register.session_key``
    for this ``challenge`` and ``register.identity_key``, and holding nothing else."""
    expected = challenge + bytes(register.identity_key)
    opened = _open(relay_key, register.session_key, register.session_proof) or b""
    return hmac.compare_digest(opened, expected)


def fingerprint(key: PublicKey) -> str:
    """A short, readable digest of a public key: 8 groups of 4 hex digits of SHA-256."""
    digest = hashlib.sha256(b"e2echat fingerprint v1" + bytes(key)).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


_HEX_DIGITS = re.compile(r"[0-9a-f]{32}\Z")


def parse_fingerprint(text: str) -> str | None:
    """A fingerprint as a person may type it (any case, with or without spaces or
    colons), written the way ``fingerprint`` writes it; None if it is not one."""
    digits = re.sub(r"[\s:]", "", text).lower()
    if not _HEX_DIGITS.match(digits):
        return None
    return " ".join(digits[i : i + 4] for i in range(0, 32, 4))


def same_fingerprint(shown: str, typed: str) -> bool:
    """Whether two fingerprints are one, however spaced, cased or colon-separated."""
    ours = parse_fingerprint(shown)
    return ours is not None and ours == parse_fingerprint(typed)


# -- safety numbers -----------------------------------------------------------------------

SAFETY_ITERATIONS = 5200
_FINGERPRINT_VERSION = b"\x00\x00"
_DJB_TYPE = b"\x05"  # how Signal serializes a Curve25519 public key


def _safety_half(key: PublicKey, nick: str) -> str:
    serialized = _DJB_TYPE + bytes(key)
    digest = _FINGERPRINT_VERSION + serialized + nick.encode("utf-8")
    for _ in range(SAFETY_ITERATIONS):
        digest = hashlib.sha512(digest + serialized).digest()
    # Six chunks of 5 bytes, each a big-endian number mod 100000: 30 digits.
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(our_key: PublicKey, our_nick: str, their_key: PublicKey, their_nick: str) -> str:
    """The 60-digit safety number for a pair, exactly as Signal's numeric fingerprint
    (version 0, 5200 iterations of SHA-512, the nick as stable identifier): both sides
    compute the same number because the smaller half comes first."""
    ours = _safety_half(our_key, our_nick)
    theirs = _safety_half(their_key, their_nick)
    return ours + theirs if ours <= theirs else theirs + ours


def format_safety_number(number: str) -> str:
    """12 groups of 5 digits, easy to read aloud."""
    return " ".join(number[i : i + 5] for i in range(0, len(number), 5))


# -- rooms ------------------------------------------------------------------------------------

# Each derived value has its own key (habit 4): the number people compare, the view a room
# message carries, its buckets, and where a nick falls among them, are never the same bytes.
_ROOM_SAFETY_LABEL = b"e2echat room safety number v1"
_ROOM_VIEW_LABEL = b"e2echat room view v2"
_ROOM_BUCKET_LABEL = b"e2echat room bucket v2"
_ROOM_PLACE_LABEL = b"e2echat room bucket place v2"
#: a room view's size in bytes: the plaintext's directory hash field
ROOM_VIEW_SIZE = 32
#: how many buckets a room's view hashes its members into (one byte of a hash chooses)
ROOM_BUCKETS = 256


def encode_member(nick: str, identity_key: PublicKey) -> bytes:
    """One member as a room's digests take it: nick length (1) || nick || identity key."""
    named = nick.encode("utf-8")
    return bytes([len(named)]) + named + bytes(identity_key)


def room_digest_input(room: str, encoded_members: dict[str, bytes]) -> bytes:
    """What a room's safety number is made from: the room's name (length prefixed), then
    every member's ``encode_member`` in nick order (ours included)."""
    named = room.encode("utf-8")
    return bytes([len(named)]) + named + b"".join(encoded_members[nick] for nick in sorted(encoded_members))


def room_safety_number(digest_input: bytes) -> str:
    """The room's safety number (60 digits, as the pairwise one) from ``room_digest_input``:
    everyone who sees the same members with the same keys gets the same number, so one
    comparison checks the whole room. Twelve chunks of 5 bytes of a keyed BLAKE2b, each a
    big-endian number mod 100000."""
    digest = nacl.hashlib.blake2b(digest_input, digest_size=64, key=_ROOM_SAFETY_LABEL).digest()
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 60, 5))


# The view is a hash tree of fixed shape, so that a join or part re-hashes one bucket (a
# 256th of the room) and the root, not the whole room: every member falls in the bucket
# a keyed hash of their nick chooses, each bucket is hashed over its members, and the view
# over the buckets' hashes. Keyed by a public label, the hash spreads nicks, it does not
# hide them: someone who picks many nicks for one bucket makes that bucket's re-hash as
# long as the whole room's was before, no longer.


def _blake2b_256(data: bytes, label: bytes) -> bytes:
    # The one-shot call: a join makes three, and nacl.hashlib's object costs more than
    # hashing a bucket does.
    return nacl.hash.blake2b(data, digest_size=32, key=label, encoder=nacl.encoding.RawEncoder)


def room_bucket(nick: str) -> int:
    """The bucket (0 to ROOM_BUCKETS - 1) ``nick`` falls in: the first byte of a keyed
    BLAKE2b-256 of the nick."""
    return _blake2b_256(nick.encode("utf-8"), _ROOM_PLACE_LABEL)[0]


def room_bucket_hash(encoded_members: Iterable[bytes]) -> bytes:
    """One bucket's hash: keyed BLAKE2b-256 over its members' ``encode_member``, which the
    caller gives in nick order (none: the hash of nothing)."""
    return _blake2b_256(b"".join(encoded_members), _ROOM_BUCKET_LABEL)


#: the hash of a bucket nobody falls in
EMPTY_BUCKET = room_bucket_hash(())


def room_view(room: str, member_count: int, bucket_hashes: Sequence[bytes]) -> bytes:
    """The view of a room a room message carries: keyed BLAKE2b-256 over the room's name
    (length prefixed), its number of members (4 bytes, big-endian) and the ROOM_BUCKETS
    ``room_bucket_hash``es in bucket order. Two members whose views differ see different
    people, or different keys, in the room."""
    if len(bucket_hashes) != ROOM_BUCKETS:
        raise ValueError(f"a room view takes {ROOM_BUCKETS} bucket hashes, not {len(bucket_hashes)}")
    named = room.encode("utf-8")
    head = bytes([len(named)]) + named + member_count.to_bytes(4, "big")
    return _blake2b_256(head + b"".join(bucket_hashes), _ROOM_VIEW_LABEL)

"""Identity: fingerprints, Signal-compatible safety numbers, fresh session keys and the
registration proof. Pure: no I/O.

The identity key (IK) is a long-term X25519 key pair per profile; the session key (EK)
is made fresh for every connection by ``new_session_key`` and never touches the disk.
"""

from __future__ import annotations

import hashlib

from nacl.public import Box, PrivateKey, PublicKey

from e2echat.wire.messages import Challenge


def new_session_key() -> PrivateKey:
    """A fresh per-connection key pair; libsodium's randomness."""
    return PrivateKey.generate()


def registration_proof(
    our_identity: PrivateKey,
    challenge: Challenge,
    session_key: bytes,
    password: bytes = b"",
    *,
    nonce: bytes | None = None,
) -> bytes:
    """What a client sends to prove it holds its identity key (used by the client core).

    A Box from the identity key to the relay's per-connection key over the challenge, the
    session key being registered and the relay password, if any: only the holder of the
    identity key can make it, it is useless on any other connection, it binds the session
    key to the identity, and the password never crosses the network in the clear.
    """
    box = Box(our_identity, challenge.relay_key)
    return bytes(box.encrypt(challenge.challenge + session_key + password, nonce))


def fingerprint(key: PublicKey) -> str:
    """A short, readable digest of a public key: 8 groups of 4 hex digits of SHA-256."""
    digest = hashlib.sha256(b"e2echat fingerprint v1" + bytes(key)).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


def same_fingerprint(shown: str, typed: str) -> bool:
    """Whether two fingerprints are one, however spaced or cased (as shown, as typed)."""
    return "".join(shown.split()).lower() == "".join(typed.split()).lower()


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

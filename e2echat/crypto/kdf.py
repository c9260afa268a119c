"""The key derivation functions of X3DH and the Double Ratchet, on keyed BLAKE2b.

Pure (no I/O). Every derivation is one call of libsodium's ``crypto_generichash``
(BLAKE2b, RFC 7693) with the parent key as the BLAKE2b key and its own 16-byte
personalization: an ASCII purpose label, zero-padded, exactly as libsodium pads it (and
as libsodium's own ``crypto_kdf`` puts its context there). The labels and byte layouts
are in docs/RATCHET.md.

The two KDFs that make a pair of keys, ``kdf_chain`` and ``kdf_root``, make both in one
call: a 64-byte output split in two. Sound because keyed BLAKE2b is a PRF (its output
length is part of its parameter block, so a 64-byte output is not an extension of a
32-byte one): to anyone without the parent key its 64 bytes are uniformly random, so the
two halves are two independent keys, and knowing one (a message key kept for a late
message, say) tells nothing about the other or about the parent. That is how HKDF's
expand output is split into keys, and how Signal's KDF_RK splits HKDF's 64 bytes into a
root and a chain key. A room message makes a chain step per recipient: one call costs
a third less than two.

Why BLAKE2b and not Signal's HMAC-SHA256: keyed BLAKE2b is a PRF in one compression
(HMAC needs four), libsodium has it, and each derivation gets a label of its own.

Speed: a room message makes one ``kdf_chain`` per recipient. ``nacl.bindings``'s
``crypto_generichash_blake2b_salt_personal`` spends about 5 µs per call in Python
(allocating and copying its padded salt and personalization); the C function itself
takes a fraction of that. So, as ``primitives`` does for the AEAD, ``_blake2b``
calls that same C function through PyNaCl's own cffi module, with the labels stored
already padded. A self-check at import holds it to the public binding, and the public
binding is used if the private module is missing or disagrees: slower, never wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nacl.bindings

PERSONAL_SIZE = nacl.bindings.crypto_generichash_PERSONALBYTES  # 16
KEY_SIZE = 32
TAG_SIZE = 16  # a header tag: 128 bits, as Poly1305's
# X3DH spec, section 2.2: 32 0xFF bytes before the DH outputs, so that the key material
# can never equal an XEdDSA input (a curve25519 private scalar is never all 0xFF).
X3DH_PREFIX = b"\xff" * 32


def _label(text: bytes) -> bytes:
    assert len(text) <= PERSONAL_SIZE, text
    return text.ljust(PERSONAL_SIZE, b"\x00")


LABEL_CHAIN = _label(b"e2echat ck")
LABEL_CHAIN_HEADER = _label(b"e2echat ck hdr")
LABEL_ROOT = _label(b"e2echat rk")
LABEL_X3DH = _label(b"e2echat x3dh sk")
LABEL_HEADER_TAG = _label(b"e2echat hdr tag")
LABEL_SESSION = _label(b"e2echat sk ad")
LABEL_STORE = _label(b"e2echat store")
LABEL_HISTORY = _label(b"e2echat history")
LABEL_HISTORY_TAG = _label(b"e2echat hist tag")
_NO_SALT = bytes(nacl.bindings.crypto_generichash_SALTBYTES)


def _public_blake2b(data: bytes, size: int, key: bytes, person: bytes) -> bytes:
    return nacl.bindings.crypto_generichash_blake2b_salt_personal(
        data, digest_size=size, key=key, person=person
    )


try:
    import nacl._sodium as _sodium  # type: ignore[import-not-found]

    _ffi: Any = _sodium.ffi
    _lib: Any = _sodium.lib
except (ImportError, AttributeError):  # a PyNaCl laid out differently
    _ffi = _lib = None


def _direct_blake2b(data: bytes, size: int, key: bytes, person: bytes) -> bytes:
    # libsodium reads exactly 16 bytes of salt and personalization: never pass fewer.
    # Sizes and key lengths are the callers' constants (16..64 and 0..64), which
    # libsodium accepts; it returns -1, not undefined behaviour, for anything else.
    if len(person) != PERSONAL_SIZE:
        raise ValueError("the personalization must be 16 bytes")
    out = _ffi.new("unsigned char[]", size)
    if _lib.crypto_generichash_blake2b_salt_personal(
        out, size, data, len(data), key, len(key), _NO_SALT, person
    ):
        raise ValueError("crypto_generichash refused its arguments")
    result: bytes = _ffi.buffer(out, size)[:]
    return result


def _direct_split(data: bytes, key: bytes, label: bytes) -> tuple[bytes, bytes]:
    """The two halves of a 64-byte BLAKE2b output. Only called with 32-byte keys and the
    16-byte labels above."""
    out = _ffi.new("unsigned char[64]")
    if _lib.crypto_generichash_blake2b_salt_personal(
        out, 2 * KEY_SIZE, data, len(data), key, len(key), _NO_SALT, label
    ):
        raise ValueError("crypto_generichash refused its arguments")
    both: bytes = _ffi.buffer(out)[:]
    return both[:KEY_SIZE], both[KEY_SIZE:]


def _public_split(data: bytes, key: bytes, label: bytes) -> tuple[bytes, bytes]:
    both = _public_blake2b(data, 2 * KEY_SIZE, key, label)
    return both[:KEY_SIZE], both[KEY_SIZE:]


def _direct_agrees() -> bool:
    try:
        cases = [(b"", 32, bytes(range(32)), LABEL_CHAIN_HEADER), (b"abc" * 50, 16, b"", LABEL_X3DH)]
        split = (b"dh", bytes(range(32)), LABEL_ROOT)
        return _direct_split(*split) == _public_split(*split) and all(
            _direct_blake2b(*case) == _public_blake2b(*case) for case in cases
        )
    except Exception:
        return False


#: True where ``_blake2b`` calls libsodium through cffi directly (found and self-checked).
DIRECT_BLAKE2B = _ffi is not None and _direct_agrees()

_blake2b: Callable[[bytes, int, bytes, bytes], bytes] = _direct_blake2b if DIRECT_BLAKE2B else _public_blake2b
_split: Callable[[bytes, bytes, bytes], tuple[bytes, bytes]] = (
    _direct_split if DIRECT_BLAKE2B else _public_split
)


def kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message key): the symmetric-key ratchet step (KDF_CK), the two
    halves of BLAKE2b-512 keyed by the chain key."""
    if len(chain_key) != KEY_SIZE:
        raise ValueError("a chain key is 32 bytes")
    return _split(b"", chain_key, LABEL_CHAIN)


def kdf_root(root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    """(next root key, chain key): the DH ratchet step (KDF_RK).

    The two halves of BLAKE2b-512 keyed by the root key, over the DH output.
    Post-compromise security needs the output to stay secret to whoever knows the root
    key but not the DH output: that is BLAKE2b as a hash of a secret input, the role
    HKDF-Extract plays in Signal's KDF_RK.
    """
    if len(root_key) != KEY_SIZE:
        raise ValueError("a root key is 32 bytes")
    return _split(dh_output, root_key, LABEL_ROOT)


def kdf_header_key(first_chain_key: bytes) -> bytes:
    """The key that authenticates every header of one chain, from the chain's first key."""
    return _blake2b(b"", KEY_SIZE, first_chain_key, LABEL_CHAIN_HEADER)


def kdf_x3dh(dh_outputs: bytes) -> bytes:
    """X3DH's SK: BLAKE2b-256 of F || DH1 || DH2 || DH3 [|| DH4] (F = 32 0xFF bytes)."""
    return _blake2b(X3DH_PREFIX + dh_outputs, KEY_SIZE, b"", LABEL_X3DH)


def kdf_session(shared_key: bytes, associated_data: bytes) -> bytes:
    """The session's first root key: BLAKE2b over X3DH's AD, keyed by X3DH's SK. Every
    key of the session comes from it, so AD is bound into all of them once (Signal binds
    it by passing it to every encryption instead)."""
    if len(shared_key) != KEY_SIZE:
        raise ValueError("a shared key is 32 bytes")
    return _blake2b(associated_data, KEY_SIZE, shared_key, LABEL_SESSION)


def header_tag(header_key: bytes, header: bytes) -> bytes:
    """16-byte MAC over a message header, under its chain's header key."""
    return _blake2b(header, TAG_SIZE, header_key, LABEL_HEADER_TAG)


def store_key(identity_secret: bytes) -> bytes:
    """The key that seals what the client keeps on disk besides its identity (sessions,
    prekeys): BLAKE2b keyed by the identity's private key, under its own label. Whoever
    can read the identity key file (and knows its passphrase, if it has one) can open
    them; nobody else."""
    if len(identity_secret) != KEY_SIZE:
        raise ValueError("an identity key is 32 bytes")
    return _blake2b(b"", KEY_SIZE, identity_secret, LABEL_STORE)


HISTORY_TAG_SIZE = 16  # 128 bits: an index, not a MAC; collisions at 2**64 rows do not happen


def history_keys(identity_secret: bytes) -> tuple[bytes, bytes]:
    """(seal key, index key) for the client's history: the two halves of BLAKE2b-512 keyed
    by the identity's private key, under the history's own label. The seal key seals each
    row (SecretBox); the index key makes the keyed hashes the rows are found by
    (``history_tag``), so the file names no conversation in plain text. Independent of
    ``store_key``: a leaked sessions key opens no history, and the other way round."""
    if len(identity_secret) != KEY_SIZE:
        raise ValueError("an identity key is 32 bytes")
    return _split(b"", identity_secret, LABEL_HISTORY)


def history_tag(index_key: bytes, name: bytes) -> bytes:
    """The keyed hash a history row is indexed by (a conversation's name, an own message's
    id): equal names give equal tags, and without the index key a tag says nothing about
    its name, not even which of a few guessed nicks it is."""
    if len(index_key) != KEY_SIZE:
        raise ValueError("an index key is 32 bytes")
    return _blake2b(name, HISTORY_TAG_SIZE, index_key, LABEL_HISTORY_TAG)

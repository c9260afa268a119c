"""XEdDSA: Ed25519-style signatures made and checked with X25519 keys. Pure: no I/O.

Signal's "The XEdDSA and VXEdDSA Signature Schemes", revision 1 (Trevor Perrin, 2016),
section 3, on libsodium's edwards25519 group operations (through PyNaCl). The identity
key stays X25519, so fingerprints and safety numbers stay Signal-compatible, and the same
key signs the prekeys that X3DH publishes through the relay.

Nothing here is new cryptography. The glue the spec defines is written out below and
held to libsodium in the tests: ``calculate_key_pair`` (an X25519 private key becomes an
Edwards scalar whose public point has sign bit 0, so a verifier who knows only the
Montgomery u-coordinate can rebuild it) and the u -> y conversion.

Known-answer vectors (``tests/vectors/xeddsa.json``): the one public signing vector
found with its Z, from libsignal-protocol-c's ``xeddsa_fast_test`` (Signal's C code by
the spec's author). That code hashes the unreduced clamped k, not ``a = k mod q``, into
the nonce when kB's sign bit is 0; its vector has sign bit 1, where the two agree. The
sign-bit-0 case is pinned by self-generated vectors (labelled so), which the tests also
check against an independent pure-Python rendering of the spec's pseudocode. Published
signatures of Signal's older curve25519 scheme (sign bit kept in s) must be refused.

Where this is stricter than the spec, on purpose (an honest signer is never affected):

* ``s`` must be fully reduced (``s < q``, as RFC 8032 and libsodium's Ed25519 require),
  not merely ``s < 2**253``: otherwise ``s + q`` is a second valid signature of the
  same message (malleability).
* ``R`` and the rebuilt ``A`` must pass ``crypto_core_ed25519_is_valid_point``: canonical
  encoding, on the curve, not of small order, in the prime-order subgroup. Every honest
  ``R = rB`` and every X25519 public key made from a clamped scalar passes.
"""

from __future__ import annotations

import hmac

import nacl.bindings as sodium
import nacl.utils
from nacl.public import PrivateKey, PublicKey

from e2echat.errors import LocalProtocolError

SIGNATURE_SIZE = 64
RANDOM_SIZE = 64

# The field and group orders of Curve25519 / edwards25519 (spec section 2.3 and 2.6).
_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493

# hash_1(X) = SHA-512((2**256 - 1 - 1) encoded little-endian || X) (spec section 2.5): a
# prefix no Ed25519 hash input can start with (it would be an invalid point encoding), so
# the nonce hash can never collide with the challenge hash h = SHA-512(R || A || M).
_HASH1_PREFIX = b"\xfe" + b"\xff" * 31


def _reduce(digest: bytes) -> bytes:
    """A 64-byte hash output as a canonical 32-byte scalar mod q."""
    return sodium.crypto_core_ed25519_scalar_reduce(digest)


def _clamp(k: bytes) -> bytes:
    # X25519 clamping (RFC 7748): libsodium's X25519 clamps internally and PyNaCl stores
    # the raw 32 bytes, so the Edwards side must clamp them itself to get the same scalar.
    clamped = bytearray(k)
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    return bytes(clamped)


def calculate_key_pair(private: PrivateKey) -> tuple[bytes, bytes]:
    """The Edwards public key ``A`` (sign bit 0) and scalar ``a`` (mod q) of an X25519 key.

    Spec section 3 (``calculate_key_pair``). ``A`` is the point whose y-coordinate the
    X25519 public key's u-coordinate maps to; when ``kB`` has sign bit 1, ``-k`` is used
    instead, since ``-kB`` has the same y and sign bit 0.

    .. danger:: ``a`` is the private key in another form: never log, store or send it.
    """
    k = _clamp(private.encode())
    # A clamped k is below 2**255, so libsodium's _noclamp (which only clears bit 255)
    # multiplies by k itself, the same k X25519 uses.
    edwards = sodium.crypto_scalarmult_ed25519_base_noclamp(k)
    k_mod_q = _reduce(k + bytes(32))
    if edwards[31] & 0x80:
        return edwards[:31] + bytes([edwards[31] & 0x7F]), sodium.crypto_core_ed25519_scalar_negate(k_mod_q)
    return edwards, k_mod_q


def xeddsa_sign(private: PrivateKey, message: bytes, random64: bytes | None = None) -> bytes:
    """Sign ``message`` with an X25519 private key; a 64-byte signature ``R || s``.

    ``random64`` is the spec's ``Z``: 64 bytes from libsodium's generator unless given.

    .. danger:: Pass ``random64`` only in tests. The nonce hashes the key, the message and
       ``Z``, so a repeated ``Z`` is not the key-leaking disaster it is in plain ECDSA, but
       a fixed ``Z`` makes signatures deterministic and gives up the protection the spec's
       randomisation adds against fault and side-channel attacks on the nonce.
    """
    z = nacl.utils.random(RANDOM_SIZE) if random64 is None else random64
    if len(z) != RANDOM_SIZE:
        raise LocalProtocolError(detail=f"XEdDSA needs {RANDOM_SIZE} random bytes, got {len(z)}")
    public_point, a = calculate_key_pair(private)
    r = _reduce(sodium.crypto_hash_sha512(_HASH1_PREFIX + a + message + z))
    # r = 0 (probability 2**-252) would make libsodium raise rather than return rB = O.
    big_r = sodium.crypto_scalarmult_ed25519_base_noclamp(r)
    h = _reduce(sodium.crypto_hash_sha512(big_r + public_point + message))
    s = sodium.crypto_core_ed25519_scalar_add(r, sodium.crypto_core_ed25519_scalar_mul(h, a))
    return big_r + s


def montgomery_to_edwards(u: int) -> bytes:
    """The Edwards point encoding (sign bit 0) for a Montgomery u-coordinate ``u < p``.

    Spec section 2.2 / ``convert_mont``: ``y = (u - 1) / (u + 1) mod p``. The one field
    division is done on Python ints (Fermat inversion), since PyNaCl exposes no field
    arithmetic. ``u = p - 1`` makes the divisor 0; its "inverse" 0 gives y = 0, a point
    of order 4, which verification's validity check then refuses.
    """
    y = (u - 1) * pow(u + 1, _P - 2, _P) % _P
    return y.to_bytes(32, "little")


def _scalar_is_canonical(s: bytes) -> bool:
    # Not constant-time, and need not be: s is public (part of the signature).
    return int.from_bytes(s, "little") < _Q


def xeddsa_verify(public: PublicKey, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is an XEdDSA signature of ``message`` by ``public``'s owner.

    Never raises on arguments of the right types: a signature of the wrong length, an
    off-curve or small-order key or ``R``, an unreduced ``s``, all give ``False``.

    .. danger:: A ``True`` proves only that the holder of the X25519 private key signed
       these bytes. Bind every context (purpose label, who, which prekey) into
       ``message``: the signature itself says nothing about what the bytes mean.
    """
    if len(signature) != SIGNATURE_SIZE:
        return False
    u = int.from_bytes(public.encode(), "little")
    big_r, s = signature[:32], signature[32:]
    # Spec: "if u >= p or R.y >= 2**|p| or s >= 2**|q|: return false". R's range check is
    # part of is_valid_point (canonical encoding); s is held to s < q (see module docs).
    if u >= _P or not _scalar_is_canonical(s):
        return False
    # s = 0 would make sB the identity, which libsodium refuses to compute. No one can
    # make such a signature, not even the key holder: it needs r = -h·a where h hashes
    # rB, a fixed point of SHA-512.
    if not any(s):
        return False
    public_point = montgomery_to_edwards(u)
    # Canonical, on the curve, not of small order, in the prime-order subgroup: a u on
    # the twist or of small order (0, 1, p - 1, ...) stops here.
    if not sodium.crypto_core_ed25519_is_valid_point(public_point):
        return False
    # R_check below is always a canonical encoding of a point in the prime-order subgroup,
    # so the final comparison already refuses any other malformed R, except one: the
    # identity, which the key holder gets by using r = 0. libsodium's Ed25519 refuses
    # such signatures (small-order R) and so does this.
    if not sodium.crypto_core_ed25519_is_valid_point(big_r):
        return False
    h = _reduce(sodium.crypto_hash_sha512(big_r + public_point + message))
    # h = 0 (probability 2**-252 for a hash output) would make hA the identity, which
    # libsodium refuses; refusing it here keeps "never raises" unconditional.
    if not any(h):
        return False
    check = sodium.crypto_core_ed25519_sub(
        sodium.crypto_scalarmult_ed25519_base_noclamp(s),
        sodium.crypto_scalarmult_ed25519_noclamp(h, public_point),
    )
    return hmac.compare_digest(check, big_r)

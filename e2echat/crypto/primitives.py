"""The two primitives every message uses, called without their wrappers' Python layers.

A room message to 49 people makes 49 chain steps and 49 encryptions on the sender, and
one of each on every recipient; the Python around each C call cost about as much as the
call itself. Nothing here is new cryptography: each function calls the very C function
the public API calls, with the same arguments, and tests pin each to that public API (and
to published test vectors) byte for byte.

* ``hmac_sha256``: ``hmac.new(key, message, "sha256").digest()``. ``hmac.new`` is a
  Python class around ``_hashlib.hmac_new`` (OpenSSL's HMAC); this calls that function
  directly, as the ``hmac`` module itself does.
* ``aead_encrypt`` / ``aead_decrypt``: XChaCha20-Poly1305 (IETF), what
  ``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt`` and ``..._decrypt`` do:
  the same libsodium functions through PyNaCl's own cffi module, keeping every length
  check that protects memory (libsodium reads exactly 24 bytes of nonce and 32 of key,
  so shorter ones must never reach it). The ratchet's messages use it, with their header as the
  associated data (Signal's construction; a secretbox has no associated data).

``_hashlib`` and ``nacl._sodium`` are private modules of CPython and PyNaCl. If either is
missing, or a self-check at import (a published HMAC vector, and a box the public API
opens) disagrees, the public API is used instead: slower, never wrong.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

# Importing nacl.bindings also initialises libsodium (sodium_init), which the direct
# calls below rely on.
import nacl.bindings
import nacl.exceptions

KEY_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
NONCE_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
MAC_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
_SIZES = "XChaCha20-Poly1305 needs a 24-byte nonce and a 32-byte key"


def _public_hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, "sha256").digest()


_public_aead_encrypt: Callable[[bytes, bytes, bytes, bytes], bytes] = (
    nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
)
_public_aead_decrypt: Callable[[bytes, bytes, bytes, bytes], bytes] = (
    nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt
)

try:
    import _hashlib

    _openssl_hmac: Any = _hashlib.hmac_new
except (ImportError, AttributeError):  # a Python built without OpenSSL
    _openssl_hmac = None
try:
    import nacl._sodium as _sodium  # type: ignore[import-not-found]

    _ffi: Any = _sodium.ffi
    _lib: Any = _sodium.lib
except (ImportError, AttributeError):  # a PyNaCl laid out differently
    _ffi = _lib = None


def _direct_hmac_sha256(key: bytes, message: bytes) -> bytes:
    digest: bytes = _openssl_hmac(key, message, digestmod="sha256").digest()
    return digest


def _direct_aead_encrypt(message: bytes, associated: bytes, nonce: bytes, key: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise nacl.exceptions.ValueError(_SIZES)
    size = len(message) + MAC_SIZE
    out = _ffi.new("unsigned char[]", size)
    null = _ffi.NULL
    encrypt = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    if encrypt(out, null, message, len(message), associated, len(associated), null, nonce, key) != 0:
        raise nacl.exceptions.CryptoError("encryption failed")
    result: bytes = _ffi.buffer(out, size)[:]
    return result


def _direct_aead_decrypt(sealed: bytes, associated: bytes, nonce: bytes, key: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise nacl.exceptions.ValueError(_SIZES)
    size = len(sealed) - MAC_SIZE
    if size < 0:
        raise nacl.exceptions.CryptoError("shorter than the authentication tag")
    out = _ffi.new("unsigned char[]", max(1, size))
    null = _ffi.NULL
    decrypt = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt
    if decrypt(out, null, null, sealed, len(sealed), associated, len(associated), nonce, key) != 0:
        raise nacl.exceptions.CryptoError("the message does not authenticate")
    result: bytes = _ffi.buffer(out, size)[:]
    return result


def _hmac_agrees() -> bool:
    """RFC 4231 test case 2, through the direct call."""
    try:
        digest = _direct_hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    except Exception:
        return False
    return digest.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def _aead_agrees() -> bool:
    """The direct AEAD is the public API's, and each opens the other's."""
    key, nonce, message, associated = bytes(range(32)), bytes(range(24)), b"e2echat self-check", b"ad"
    try:
        sealed = _direct_aead_encrypt(message, associated, nonce, key)
        return (
            sealed == _public_aead_encrypt(message, associated, nonce, key)
            and _public_aead_decrypt(sealed, associated, nonce, key) == message
            and _direct_aead_decrypt(sealed, associated, nonce, key) == message
        )
    except Exception:
        return False


#: True where the direct calls are in use (both private modules found and self-checked).
DIRECT_HMAC = _openssl_hmac is not None and _hmac_agrees()
DIRECT_AEAD = _ffi is not None and _aead_agrees()

hmac_sha256: Callable[[bytes, bytes], bytes] = _direct_hmac_sha256 if DIRECT_HMAC else _public_hmac_sha256
"""HMAC-SHA256 of ``message`` under ``key`` (RFC 2104)."""

aead_encrypt: Callable[[bytes, bytes, bytes, bytes], bytes] = (
    _direct_aead_encrypt if DIRECT_AEAD else _public_aead_encrypt
)
"""XChaCha20-Poly1305 (``crypto_aead_xchacha20poly1305_ietf_encrypt``) of ``message``
with ``associated`` data: ciphertext, then the tag (16 bytes). ``nacl.exceptions.ValueError``
(a ``CryptoError``) for a wrong-sized nonce or key."""

aead_decrypt: Callable[[bytes, bytes, bytes, bytes], bytes] = (
    _direct_aead_decrypt if DIRECT_AEAD else _public_aead_decrypt
)
"""The plaintext of ``aead_encrypt``'s output; ``CryptoError`` if it does not authenticate
(with these associated data)."""

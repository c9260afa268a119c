"""The two primitives every message uses, called without their wrappers' Python layers.

A room message to 49 people makes 49 chain steps (two HMACs each) and 49 encryptions on
the sender, and one of each on every recipient; the Python around each C call cost about
as much as the call itself. Nothing here is new cryptography: each function calls the very
C function the public API calls, with the same arguments, and tests pin each to that
public API (and to published test vectors) byte for byte.

* ``hmac_sha256``: ``hmac.new(key, message, "sha256").digest()``. ``hmac.new`` is a
  Python class around ``_hashlib.hmac_new`` (OpenSSL's HMAC); this calls that function
  directly, as the ``hmac`` module itself does.
* ``secretbox`` / ``secretbox_open``: what ``nacl.bindings.crypto_secretbox_easy`` and
  ``..._open_easy`` do: the same libsodium functions through PyNaCl's own cffi module,
  keeping every length check that protects memory (libsodium reads exactly 24 bytes of
  nonce and 32 of key, so shorter ones must never reach it).

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

KEY_SIZE = nacl.bindings.crypto_secretbox_KEYBYTES
NONCE_SIZE = nacl.bindings.crypto_secretbox_NONCEBYTES
MAC_SIZE = nacl.bindings.crypto_secretbox_MACBYTES
_SIZES = "a secretbox needs a 24-byte nonce and a 32-byte key"


def _public_hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, "sha256").digest()


_public_secretbox: Callable[[bytes, bytes, bytes], bytes] = nacl.bindings.crypto_secretbox_easy
_public_secretbox_open: Callable[[bytes, bytes, bytes], bytes] = nacl.bindings.crypto_secretbox_open_easy

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


def _direct_secretbox(message: bytes, nonce: bytes, key: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise nacl.exceptions.ValueError(_SIZES)
    size = len(message) + MAC_SIZE
    out = _ffi.new("unsigned char[]", size)
    if _lib.crypto_secretbox_easy(out, message, len(message), nonce, key) != 0:
        raise nacl.exceptions.CryptoError("encryption failed")
    result: bytes = _ffi.buffer(out, size)[:]
    return result


def _direct_secretbox_open(sealed: bytes, nonce: bytes, key: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise nacl.exceptions.ValueError(_SIZES)
    size = len(sealed) - MAC_SIZE
    if size < 0:
        raise nacl.exceptions.CryptoError("shorter than the authentication tag")
    out = _ffi.new("unsigned char[]", max(1, size))
    if _lib.crypto_secretbox_open_easy(out, sealed, len(sealed), nonce, key) != 0:
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


def _secretbox_agrees() -> bool:
    """The direct box is the public API's box, and each opens the other's."""
    key, nonce, message = bytes(range(32)), bytes(range(24)), b"e2echat self-check"
    try:
        sealed = _direct_secretbox(message, nonce, key)
        return (
            sealed == _public_secretbox(message, nonce, key)
            and _public_secretbox_open(sealed, nonce, key) == message
            and _direct_secretbox_open(sealed, nonce, key) == message
        )
    except Exception:
        return False


#: True where the direct calls are in use (both private modules found and self-checked).
DIRECT_HMAC = _openssl_hmac is not None and _hmac_agrees()
DIRECT_SECRETBOX = _ffi is not None and _secretbox_agrees()

hmac_sha256: Callable[[bytes, bytes], bytes] = _direct_hmac_sha256 if DIRECT_HMAC else _public_hmac_sha256
"""HMAC-SHA256 of ``message`` under ``key`` (RFC 2104)."""

secretbox: Callable[[bytes, bytes, bytes], bytes] = (
    _direct_secretbox if DIRECT_SECRETBOX else _public_secretbox
)
"""XSalsa20-Poly1305 (``crypto_secretbox_easy``): tag (16 bytes), then ciphertext.
``nacl.exceptions.ValueError`` (a ``CryptoError``) for a wrong-sized nonce or key."""

secretbox_open: Callable[[bytes, bytes, bytes], bytes] = (
    _direct_secretbox_open if DIRECT_SECRETBOX else _public_secretbox_open
)
"""The plaintext of ``secretbox``'s output; ``CryptoError`` if it does not authenticate."""

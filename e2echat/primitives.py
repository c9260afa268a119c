"""The two primitives every message uses, called without their wrappers' Python layers.

A room message to 49 people runs each of these 49 times per message, on the sender and on
every recipient, and the Python around the C call cost about as much as the call itself.
Nothing here is new cryptography: each function calls the very C function the public API
calls, with the same arguments, and tests pin each to that public API (and to published
test vectors) byte for byte.

* ``hmac_sha256``: ``hmac.new(key, message, "sha256").digest()``. ``hmac.new`` is a
  Python class around ``_hashlib.hmac_new`` (OpenSSL's HMAC); this calls that function
  directly. Where Python was built without OpenSSL, it is ``hmac.digest``.
* ``secretbox`` / ``secretbox_open``: what ``nacl.bindings.crypto_secretbox_easy`` and
  ``..._open_easy`` do: the same libsodium functions through PyNaCl's own cffi module,
  keeping every length check that protects memory (libsodium reads exactly 24 bytes of
  nonce and 32 of key, so shorter ones must never reach it).
"""

from __future__ import annotations

import hmac

import nacl.bindings
from nacl._sodium import ffi, lib  # type: ignore[import-not-found]  # PyNaCl's cffi module
from nacl.exceptions import CryptoError

KEY_SIZE = nacl.bindings.crypto_secretbox_KEYBYTES
NONCE_SIZE = nacl.bindings.crypto_secretbox_NONCEBYTES
MAC_SIZE = nacl.bindings.crypto_secretbox_MACBYTES

try:
    from _hashlib import hmac_new as _openssl_hmac
except ImportError:  # a Python built without OpenSSL

    def hmac_sha256(key: bytes, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under ``key`` (RFC 2104)."""
        return hmac.digest(key, message, "sha256")

else:

    def hmac_sha256(key: bytes, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under ``key`` (RFC 2104)."""
        return _openssl_hmac(key, message, "sha256").digest()


def secretbox(message: bytes, nonce: bytes, key: bytes) -> bytes:
    """XSalsa20-Poly1305: tag (16 bytes), then ciphertext, as ``crypto_secretbox_easy``."""
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise ValueError("a secretbox needs a 24-byte nonce and a 32-byte key")
    size = len(message) + MAC_SIZE
    out = ffi.new("unsigned char[]", size)
    if lib.crypto_secretbox_easy(out, message, len(message), nonce, key) != 0:
        raise CryptoError("encryption failed")
    result: bytes = ffi.buffer(out, size)[:]
    return result


def secretbox_open(sealed: bytes, nonce: bytes, key: bytes) -> bytes:
    """The plaintext of ``secretbox``'s output; ``CryptoError`` if it does not authenticate."""
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise ValueError("a secretbox needs a 24-byte nonce and a 32-byte key")
    size = len(sealed) - MAC_SIZE
    if size < 0:
        raise CryptoError("shorter than the authentication tag")
    out = ffi.new("unsigned char[]", max(1, size))
    if lib.crypto_secretbox_open_easy(out, sealed, len(sealed), nonce, key) != 0:
        raise CryptoError("the message does not authenticate")
    result: bytes = ffi.buffer(out, size)[:]
    return result

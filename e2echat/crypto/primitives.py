"""The AEAD every message uses, called without its wrapper's Python layer.

A room message to 49 people makes 49 encryptions on the sender, and one decryption on
every recipient; the Python around each C call cost about as much as the call itself.
Nothing here is new cryptography: each function calls the very C function the public API
calls, with the same arguments, and tests pin each to that public API byte for byte.

* ``aead_encrypt`` / ``aead_decrypt``: XChaCha20-Poly1305 (IETF), what
  ``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt`` and ``..._decrypt`` do:
  the same libsodium functions through PyNaCl's own cffi module, keeping every length
  check that protects memory (libsodium reads exactly 24 bytes of nonce and 32 of key,
  so shorter ones must never reach it). The ratchet's messages use it, with their header as the
  associated data (Signal's construction; a secretbox has no associated data).

``nacl._sodium`` is a private module of PyNaCl. If it is missing, or a self-check at
import (a box the public API opens) disagrees, the public API is used instead: slower,
never wrong.
"""

from __future__ import annotations

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


_public_aead_encrypt: Callable[[bytes, bytes, bytes, bytes], bytes] = (
    nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
)
_public_aead_decrypt: Callable[[bytes, bytes, bytes, bytes], bytes] = (
    nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt
)

try:
    import nacl._sodium as _sodium  # type: ignore[import-not-found]

    _ffi: Any = _sodium.ffi
    _lib: Any = _sodium.lib
except (ImportError, AttributeError):  # a PyNaCl laid out differently
    _ffi = _lib = None


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


#: True where the direct calls are in use (the private module found and self-checked).
DIRECT_AEAD = _ffi is not None and _aead_agrees()


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

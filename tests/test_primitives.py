"""The direct calls in ``primitives`` are the public API's calls, byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
import sys
import types

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.exceptions import CryptoError

from e2echat.crypto import primitives

# RFC 4231, test cases 1, 2 and 6 (a key longer than the block size), HMAC-SHA-256.
RFC_4231 = [
    (bytes([0x0B] * 20), b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        bytes([0xAA] * 131),
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
]


@pytest.mark.parametrize(("key", "message", "expected"), RFC_4231)
def test_hmac_sha256_gives_the_rfc_4231_vectors(key: bytes, message: bytes, expected: str) -> None:
    assert primitives.hmac_sha256(key, message).hex() == expected


@given(st.binary(min_size=1, max_size=100), st.binary(max_size=300))
def test_hmac_sha256_is_the_stdlib_hmac(key: bytes, message: bytes) -> None:
    assert primitives.hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).digest()


@given(st.binary(max_size=2000), st.binary(max_size=100))
def test_aead_is_pynacls_xchacha20poly1305_both_ways(message: bytes, associated: bytes) -> None:
    key, nonce = os.urandom(32), os.urandom(24)
    sealed = primitives.aead_encrypt(message, associated, nonce, key)
    assert sealed == nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(message, associated, nonce, key)
    assert primitives.aead_decrypt(sealed, associated, nonce, key) == message


def test_aead_decrypt_refuses_what_does_not_authenticate() -> None:
    key, nonce = os.urandom(32), os.urandom(24)
    sealed = primitives.aead_encrypt(b"attack at dawn", b"header", nonce, key)
    for index in (0, len(sealed) - 17, len(sealed) - 16, len(sealed) - 1):  # ciphertext and tag
        tampered = bytearray(sealed)
        tampered[index] ^= 1
        with pytest.raises(CryptoError):
            primitives.aead_decrypt(bytes(tampered), b"header", nonce, key)
    for associated in (b"headeR", b"header\x00", b""):
        with pytest.raises(CryptoError):
            primitives.aead_decrypt(sealed, associated, nonce, key)
    with pytest.raises(CryptoError):
        primitives.aead_decrypt(sealed, b"header", nonce, os.urandom(32))
    with pytest.raises(CryptoError):
        primitives.aead_decrypt(sealed, b"header", os.urandom(24), key)
    for short in (b"", sealed[:15], sealed[-16:]):  # shorter than a tag; a bare tag that is wrong
        with pytest.raises(CryptoError):
            primitives.aead_decrypt(short, b"header", nonce, key)


WRONG_SIZES = [(32, 32), (23, 32), (25, 32), (0, 32), (24, 31), (24, 33), (24, 0)]


@pytest.mark.parametrize(("nonce_size", "key_size"), WRONG_SIZES)
def test_wrong_sized_nonces_and_keys_never_reach_libsodium(nonce_size: int, key_size: int) -> None:
    # libsodium reads exactly 24 bytes of nonce and 32 of key: a shorter buffer would be
    # read past its end.
    nonce, key = bytes(nonce_size), bytes(key_size)
    # A CryptoError, as PyNaCl raises: the session turns it into a dropped message.
    with pytest.raises(CryptoError, match="24-byte nonce and a 32-byte key"):
        primitives.aead_encrypt(b"text", b"", nonce, key)
    with pytest.raises(CryptoError, match="24-byte nonce and a 32-byte key"):
        primitives.aead_decrypt(bytes(40), b"", nonce, key)


def _fresh_copy(monkeypatch: pytest.MonkeyPatch, **replaced: object) -> types.ModuleType:
    """primitives.py imported anew with some modules replaced (None: not importable)."""
    for name, module in replaced.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("primitives_copy", primitives.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    return copy


def _works(copy: types.ModuleType) -> None:
    for key, message, expected in RFC_4231:
        assert copy.hmac_sha256(key, message).hex() == expected
    key, nonce = os.urandom(32), os.urandom(24)
    sealed = copy.aead_encrypt(b"still right", b"ad", nonce, key)
    assert sealed == nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"still right", b"ad", nonce, key
    )
    assert copy.aead_decrypt(sealed, b"ad", nonce, key) == b"still right"


def test_the_direct_calls_are_in_use_here() -> None:
    assert primitives.DIRECT_HMAC and primitives.DIRECT_AEAD


def test_without_the_private_modules_the_public_api_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _fresh_copy(monkeypatch, _hashlib=None, **{"nacl._sodium": None})
    assert not copy.DIRECT_HMAC and not copy.DIRECT_AEAD
    _works(copy)


def test_a_private_module_that_answers_wrongly_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Say a new Python changed what _hashlib.hmac_new returns: the self-check at import sees
    # a wrong MAC, and the public hmac module is used instead.
    wrong = types.SimpleNamespace(digest=lambda: bytes(32))
    copy = _fresh_copy(monkeypatch, _hashlib=types.SimpleNamespace(hmac_new=lambda *a, **k: wrong))
    assert not copy.DIRECT_HMAC and copy.DIRECT_AEAD
    _works(copy)

"""The direct calls in ``primitives`` are the public API's calls, byte for byte."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import nacl
import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.exceptions import CryptoError

from e2echat.crypto import primitives


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
    key, nonce = os.urandom(32), os.urandom(24)
    sealed = copy.aead_encrypt(b"still right", b"ad", nonce, key)
    assert sealed == nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        b"still right", b"ad", nonce, key
    )
    assert copy.aead_decrypt(sealed, b"ad", nonce, key) == b"still right"


def test_the_direct_calls_are_in_use_here() -> None:
    assert primitives.DIRECT_AEAD


def test_without_the_private_modules_the_public_api_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _fresh_copy(monkeypatch, **{"nacl._sodium": None})
    assert not copy.DIRECT_AEAD
    _works(copy)


def test_a_private_module_that_answers_wrongly_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Say a new PyNaCl's cffi module sealed differently: the self-check at import sees a
    # box the public API does not open, and the public API is used instead.
    import nacl._sodium as real  # type: ignore[import-not-found]

    wrong_lib = types.SimpleNamespace(
        crypto_aead_xchacha20poly1305_ietf_encrypt=lambda *args: 0,  # "succeeds", writes nothing
        crypto_aead_xchacha20poly1305_ietf_decrypt=real.lib.crypto_aead_xchacha20poly1305_ietf_decrypt,
    )
    wrong = types.SimpleNamespace(ffi=real.ffi, lib=wrong_lib)
    monkeypatch.setattr(nacl, "_sodium", wrong)  # what ``import nacl._sodium as ...`` reads
    copy = _fresh_copy(monkeypatch, **{"nacl._sodium": wrong})
    assert not copy.DIRECT_AEAD
    _works(copy)

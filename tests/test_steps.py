"""The ratchet's fused steps (``steps``) give what the KDFs and the AEAD they fuse give,
byte for byte, and refuse what those refuse."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import nacl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.exceptions import CryptoError

from e2echat.crypto import kdf, primitives, steps

keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=24, max_size=24)
HEADER = bytes([1]) + bytes(range(32)) + bytes(8)  # as long as a ratchet message's header
AUTHENTICATED = len(HEADER) + kdf.TAG_SIZE


def test_the_direct_steps_are_in_use_here() -> None:
    assert steps.DIRECT_STEPS
    assert steps.seal is steps._direct_seal and steps.open_next is steps._direct_open


@given(keys, keys, st.binary(max_size=64), nonces, st.binary(max_size=1000))
def test_seal_is_the_composition_it_replaces(
    chain_key: bytes, header_key: bytes, header: bytes, nonce: bytes, plaintext: bytes
) -> None:
    next_chain, message = steps.seal(chain_key, header_key, header, nonce, plaintext)
    assert (next_chain, message) == steps._composed_seal(chain_key, header_key, header, nonce, plaintext)
    # ... which is, spelled out:
    expected_next, message_key = kdf.kdf_chain(chain_key)
    authenticated = header + kdf.header_tag(header_key, header)
    assert next_chain == expected_next
    assert message == authenticated + nonce + primitives.aead_encrypt(
        plaintext, authenticated, nonce, message_key
    )


@given(keys, keys, nonces, st.binary(max_size=1000))
def test_open_next_opens_what_seal_sealed(
    chain_key: bytes, header_key: bytes, nonce: bytes, plaintext: bytes
) -> None:
    next_chain, message = steps.seal(chain_key, header_key, HEADER, nonce, plaintext)
    assert steps.open_next(chain_key, message, AUTHENTICATED) == (next_chain, plaintext)
    assert steps._composed_open(chain_key, message, AUTHENTICATED) == (next_chain, plaintext)


def _tampered(message: bytes) -> list[bytes]:
    """``message`` with one bit flipped in each of its bytes, cut short, or extended."""
    flipped = [message[:at] + bytes([message[at] ^ 1]) + message[at + 1 :] for at in range(len(message))]
    return [*flipped, message[:-1], message + b"\x00", message[: AUTHENTICATED + 24 + 15], b""]


@pytest.mark.parametrize("open_next", [steps._direct_open, steps._composed_open], ids=["direct", "composed"])
def test_every_tampered_byte_is_refused(open_next: object) -> None:
    assert callable(open_next)
    chain_key = os.urandom(32)
    _, message = steps.seal(chain_key, os.urandom(32), HEADER, os.urandom(24), b"attack at dawn")
    for tampered in _tampered(message):
        with pytest.raises(CryptoError):
            open_next(chain_key, tampered, AUTHENTICATED)
    with pytest.raises(CryptoError):
        open_next(os.urandom(32), message, AUTHENTICATED)  # another chain
    next_chain, _ = kdf.kdf_chain(chain_key)
    with pytest.raises(CryptoError):
        open_next(next_chain, message, AUTHENTICATED)  # a later step of the same chain


@pytest.mark.parametrize(
    ("chain", "header", "nonce"), [(31, 32, 24), (33, 32, 24), (32, 0, 24), (32, 32, 32)]
)
def test_wrong_sized_keys_and_nonces_never_reach_libsodium(chain: int, header: int, nonce: int) -> None:
    # libsodium reads exactly 32 bytes of each key and 24 of the nonce: a shorter buffer
    # would be read past its end.
    with pytest.raises(CryptoError, match="header key are 32 bytes, a nonce 24"):
        steps.seal(bytes(chain), bytes(header), HEADER, bytes(nonce), b"text")
    if chain != 32:
        with pytest.raises(CryptoError, match="header key are 32 bytes, a nonce 24"):
            steps.open_next(bytes(chain), bytes(200), AUTHENTICATED)


def _fresh_copy(monkeypatch: pytest.MonkeyPatch, **replaced: object) -> types.ModuleType:
    """steps.py imported anew with some modules replaced (None: not importable)."""
    for name, module in replaced.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("steps_copy", steps.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    return copy


def _works(copy: types.ModuleType) -> None:
    chain_key, header_key, nonce = os.urandom(32), os.urandom(32), os.urandom(24)
    sealed = copy.seal(chain_key, header_key, HEADER, nonce, b"still right")
    assert sealed == steps._composed_seal(chain_key, header_key, HEADER, nonce, b"still right")
    assert copy.open_next(chain_key, sealed[1], AUTHENTICATED) == (sealed[0], b"still right")


def test_without_the_private_module_the_composition_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _fresh_copy(monkeypatch, **{"nacl._sodium": None})
    assert not copy.DIRECT_STEPS
    _works(copy)


def test_a_private_module_that_answers_wrongly_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import nacl._sodium as sodium  # type: ignore[import-not-found]

    def wrong_hash(out: object, *args: object) -> int:
        sodium.lib.crypto_generichash_blake2b_salt_personal(out, *args)
        sodium.ffi.memmove(out, bytes(8), 8)  # a different key than the public API's
        return 0

    lib = types.SimpleNamespace(
        crypto_generichash_blake2b_salt_personal=wrong_hash,
        crypto_aead_xchacha20poly1305_ietf_encrypt=sodium.lib.crypto_aead_xchacha20poly1305_ietf_encrypt,
        crypto_aead_xchacha20poly1305_ietf_decrypt=sodium.lib.crypto_aead_xchacha20poly1305_ietf_decrypt,
    )
    wrong = types.SimpleNamespace(ffi=sodium.ffi, lib=lib)
    # ``import nacl._sodium as x`` takes the package's attribute when there is one
    monkeypatch.setattr(nacl, "_sodium", wrong)
    copy = _fresh_copy(monkeypatch, **{"nacl._sodium": wrong})
    assert copy._direct_seal is not None  # found, and refused for its answers
    assert not copy.DIRECT_STEPS
    _works(copy)

"""The ratchet's fused steps (``steps``) give what the KDFs and the AEAD they fuse give,
byte for byte, and refuse what those refuse."""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
import types

import nacl
import nacl.bindings
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
    assert steps.copy_sealer is steps._direct_copies


def _public_copy(
    tail: bytes,
    chain_key: bytes,
    header_key: bytes,
    prefix: bytes,
    counters: tuple[int, int, int],
    nonce: bytes,
) -> tuple[bytes, bytes]:
    """A copy sealed through PyNaCl's public bindings alone, spelled out."""
    previous, counter, number = counters
    both = nacl.bindings.crypto_generichash_blake2b_salt_personal(
        b"", digest_size=64, key=chain_key, person=kdf.LABEL_CHAIN
    )
    header = prefix + struct.pack(">II", previous, counter)
    tag = nacl.bindings.crypto_generichash_blake2b_salt_personal(
        header, digest_size=16, key=header_key, person=kdf.LABEL_HEADER_TAG
    )
    plaintext = struct.pack(">Q", number) + tail
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, header + tag, nonce, both[32:]
    )
    return both[:32], header + tag + nonce + ciphertext


prefixes = st.binary(min_size=steps.PREFIX_SIZE, max_size=steps.PREFIX_SIZE)
counters = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))


@given(
    st.binary(max_size=1000),
    st.lists(st.tuples(keys, keys, prefixes, counters, nonces), min_size=1, max_size=4),
)
def test_a_copy_sealer_gives_what_the_public_bindings_give(
    tail: bytes, copies: list[tuple[bytes, bytes, bytes, tuple[int, int, int], bytes]]
) -> None:
    # several copies from one sealer, each with the next nonce: each leaves nothing
    # behind for the next
    direct, composed = steps._direct_copies, steps._composed_copy_sealer
    assert direct is not None
    pool = b"".join(nonce for *_, nonce in copies)
    seal_direct, seal_composed = direct(tail, pool), composed(tail, pool)
    for chain_key, header_key, prefix, (previous, counter, number), nonce in copies:
        expected = _public_copy(tail, chain_key, header_key, prefix, (previous, counter, number), nonce)
        arguments = (chain_key, header_key, prefix, previous, counter, number)
        assert seal_direct(*arguments) == expected
        assert seal_composed(*arguments) == expected


@given(keys, keys, prefixes, nonces, st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_a_copy_opens_as_the_next_message_of_its_chain(
    chain_key: bytes, header_key: bytes, prefix: bytes, nonce: bytes, tail: bytes, number: int
) -> None:
    next_chain, message = steps.copy_sealer(tail, nonce)(chain_key, header_key, prefix, 3, 4, number)
    opened = (next_chain, struct.pack(">Q", number) + tail)
    assert steps.open_next(chain_key, message, AUTHENTICATED) == opened


sealers = pytest.mark.parametrize(
    "sealer", [steps._direct_copies, steps._composed_copy_sealer], ids=["direct", "composed"]
)


@sealers
def test_a_copy_sealer_uses_each_nonce_once_then_refuses(sealer: steps.CopySealer) -> None:
    pool = os.urandom(2 * 24)
    seal_copy = sealer(b"text", pool)
    messages = [seal_copy(bytes(32), bytes(32), bytes(33), 0, 0, 0)[1] for _ in range(2)]
    assert [message[AUTHENTICATED : AUTHENTICATED + 24] for message in messages] == [pool[:24], pool[24:]]
    with pytest.raises(CryptoError, match="no nonce left"):
        seal_copy(bytes(32), bytes(32), bytes(33), 0, 0, 0)
    with pytest.raises(CryptoError, match="no nonce left"):
        sealer(b"text", b"")(bytes(32), bytes(32), bytes(33), 0, 0, 0)
    for cut in (bytes(23), bytes(25)):
        with pytest.raises(CryptoError, match="24 bytes each"):
            sealer(b"text", cut)


@pytest.mark.parametrize(("chain", "header"), [(31, 32), (33, 32), (32, 0), (32, 31)])
def test_a_copy_sealer_lets_no_wrong_size_reach_libsodium(chain: int, header: int) -> None:
    assert steps._direct_copies is not None
    seal_copy = steps._direct_copies(b"text", bytes(24))
    with pytest.raises(CryptoError, match="header key are 32 bytes"):
        seal_copy(bytes(chain), bytes(header), bytes(33), 0, 0, 0)


@sealers
@pytest.mark.parametrize("prefix", [32, 34])
def test_a_copy_sealer_refuses_a_wrong_sized_header(sealer: steps.CopySealer, prefix: int) -> None:
    # struct would pad or cut it: a header not the ratchet's, silently
    with pytest.raises(CryptoError, match="prefix is 33 bytes"):
        sealer(b"text", bytes(24))(bytes(32), bytes(32), bytes(prefix), 0, 0, 0)


@sealers
@pytest.mark.parametrize("counters", [(2**32, 0, 0), (0, 2**32, 0), (0, 0, 2**64), (-1, 0, 0), (0, 0, -1)])
def test_a_copy_sealer_refuses_numbers_out_of_range(
    sealer: steps.CopySealer, counters: tuple[int, int, int]
) -> None:
    # never wrapped round: a counter that wrapped would reuse a header, a number a receipt
    with pytest.raises(struct.error):
        sealer(b"text", bytes(24))(bytes(32), bytes(32), bytes(33), *counters)


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


@pytest.mark.parametrize(
    "size", [0, steps.SCRATCH_PLAINTEXT - 1, steps.SCRATCH_PLAINTEXT, steps.SCRATCH_PLAINTEXT + 1, 130_000]
)
def test_open_next_opens_in_its_buffer_and_beyond_it(size: int) -> None:
    # Up to SCRATCH_PLAINTEXT in the buffer made once, beyond it in one of their own.
    chain_key, plaintext = os.urandom(32), os.urandom(size)
    next_chain, message = steps.seal(chain_key, os.urandom(32), HEADER, os.urandom(24), plaintext)
    assert steps.open_next(chain_key, message, AUTHENTICATED) == (next_chain, plaintext)
    assert steps._composed_open(chain_key, message, AUTHENTICATED) == (next_chain, plaintext)


def test_open_next_answers_alike_with_its_buffer_in_use_or_after_a_refusal() -> None:
    # Its buffer taken (as by another thread) or given back after a forgery: the same answers.
    chain_key = os.urandom(32)
    next_chain, message = steps.seal(chain_key, os.urandom(32), HEADER, os.urandom(24), b"twice")
    pool = next(  # (the list whose pop the direct open_next takes its buffer with)
        cell.cell_contents.__self__
        for cell in steps._direct_open.__closure__ or ()
        if isinstance(getattr(cell.cell_contents, "__self__", None), list)
    )
    taken = pool.pop()
    try:
        assert steps._direct_open(chain_key, message, AUTHENTICATED) == (next_chain, b"twice")
    finally:
        pool.append(taken)
    with pytest.raises(CryptoError):
        steps._direct_open(chain_key, message[:-1] + bytes([message[-1] ^ 1]), AUTHENTICATED)
    assert pool == [taken]  # given back after the refusal
    assert steps._direct_open(chain_key, message, AUTHENTICATED) == (next_chain, b"twice")
    _, view, _, _ = taken
    assert view[: 2 * 32] == bytes(64)  # the keys wiped after use


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
    prefix = HEADER[: steps.PREFIX_SIZE]
    copy_sealed = copy.copy_sealer(b"right", nonce)(chain_key, header_key, prefix, 1, 2, 3)
    assert copy_sealed == steps._composed_copy_sealer(b"right", nonce)(chain_key, header_key, prefix, 1, 2, 3)


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
    assert copy.copy_sealer is copy._composed_copy_sealer
    _works(copy)


@pytest.mark.parametrize(
    "failing", ["crypto_generichash_blake2b_salt_personal", "crypto_aead_xchacha20poly1305_ietf_encrypt"]
)
def test_a_copy_sealer_checks_what_libsodium_returns(failing: str) -> None:
    import nacl._sodium as sodium

    lib = types.SimpleNamespace(
        crypto_generichash_blake2b_salt_personal=sodium.lib.crypto_generichash_blake2b_salt_personal,
        crypto_aead_xchacha20poly1305_ietf_encrypt=sodium.lib.crypto_aead_xchacha20poly1305_ietf_encrypt,
    )
    setattr(lib, failing, lambda *_: -1)
    seal_copy = steps._direct_copy_sealer(sodium.ffi, lib)(b"text", bytes(24))
    with pytest.raises(CryptoError):
        seal_copy(bytes(32), bytes(32), bytes(33), 0, 0, 0)

"""The ratchet's two per-message steps, each in one go: a fast path beside ``kdf`` and
``primitives``. Pure (no I/O).

* ``seal``: a chain step, the header tag and the AEAD of one outgoing message;
* ``open_next``: a chain step and the AEAD of the message next in a receiving chain;
* ``copy_sealer``: ``seal`` for the copies of one room message, one per recipient, each
  in its own chain: the same plaintext but for its first 8 bytes (the copy's number).

Each is defined by the composition of ``kdf.kdf_chain``, ``kdf.header_tag`` and
``primitives.aead_*`` it replaces (``_composed_seal``, ``_composed_open``), and gives the
very same bytes. A room message makes one ``seal`` per recipient and one ``open_next`` on
each recipient, and as separate calls the Python around the three C functions (a buffer,
a copy and the slicing of each result) cost as much as the functions themselves. Here
the three calls share one buffer and the message key never leaves it. Nothing here is
new cryptography: the same libsodium functions through PyNaCl's own cffi module, with
the checks that keep libsodium from reading past a buffer (it reads exactly 32 bytes of
each key and 24 of the nonce). A self-check at import holds the direct steps to the
composition, which is used instead if PyNaCl's private module is missing or disagrees.

``copy_sealer`` goes one step further, as a room message to 49 makes 49 copies: one
buffer for the whole message, laid out as the copy's message is (header, tag, nonce,
ciphertext) beside the plaintext, with the message's common part written into it once.
Per copy, one ``struct.pack_into`` writes the header, the next of the nonces the sealer
was given (drawn for all the copies in one call; each used once, and none cut short)
and the copy's number in place; libsodium writes the keys, the tag and the ciphertext in place (the associated
data is read where it lies, header || tag); two copies come out (the next chain key, the
message). Why it is safe: every pointer is into that buffer at an offset fixed when it
is made, for a length that fits in it (checked by ``_direct_copy_sealer``'s layout, and
by the self-check and the tests against the composition); the only other memory
libsodium reads is the two 32-byte keys, whose sizes are checked on every call (they
are fixed by construction in the ratchet: this is where a wrong one would stop); the
header's counters and the number go through ``struct``, which refuses a value out of
range rather than wrapping it; each return code is checked. The message key stays in
the buffer, overwritten by the next copy's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import nacl.bindings
import nacl.exceptions

from e2echat.crypto.kdf import LABEL_CHAIN, LABEL_HEADER_TAG, TAG_SIZE, header_tag, kdf_chain
from e2echat.crypto.primitives import KEY_SIZE, MAC_SIZE, NONCE_SIZE, aead_decrypt, aead_encrypt

_NO_SALT = bytes(nacl.bindings.crypto_generichash_SALTBYTES)
_SIZES = "a chain key and a header key are 32 bytes, a nonce 24"
#: a ratchet message's header: version || ratchet key (the prefix, 33 bytes) || PN || N
PREFIX_SIZE = 33
_COUNTERS = struct.Struct(">II")
HEADER_SIZE = PREFIX_SIZE + _COUNTERS.size
# Plaintexts up to this size (a screenful of text, with room) are opened in a buffer made
# once (see _direct_steps); larger ones, parts of files, in one of their own.
SCRATCH_PLAINTEXT = 20 * 1024
#: a copy's plaintext starts with its number
_NUMBER = struct.Struct(">Q")


def _composed_seal(
    chain_key: bytes, header_key: bytes, header: bytes, nonce: bytes, plaintext: bytes
) -> tuple[bytes, bytes]:
    next_chain, message_key = kdf_chain(chain_key)
    authenticated = header + header_tag(header_key, header)
    return next_chain, authenticated + nonce + aead_encrypt(plaintext, authenticated, nonce, message_key)


def _composed_open(chain_key: bytes, message: bytes, authenticated_size: int) -> tuple[bytes, bytes]:
    next_chain, message_key = kdf_chain(chain_key)
    nonce_end = authenticated_size + NONCE_SIZE
    nonce = message[authenticated_size:nonce_end]
    return next_chain, aead_decrypt(message[nonce_end:], message[:authenticated_size], nonce, message_key)


def _nonce_check(nonces: bytes) -> None:
    if len(nonces) % NONCE_SIZE:
        raise nacl.exceptions.ValueError("nonces are 24 bytes each")


_NO_NONCE = "no nonce left: a copy sealer seals as many copies as it was given nonces"


def _composed_copy_sealer(tail: bytes, nonces: bytes) -> SealCopy:
    _nonce_check(nonces)
    starts = iter(range(0, len(nonces), NONCE_SIZE))

    def seal_copy(
        chain_key: bytes, header_key: bytes, prefix: bytes, previous: int, counter: int, number: int
    ) -> tuple[bytes, bytes]:
        at = next(starts, None)
        if at is None:
            raise nacl.exceptions.ValueError(_NO_NONCE)
        if len(prefix) != PREFIX_SIZE:
            raise nacl.exceptions.ValueError("a header's prefix is 33 bytes")
        header = prefix + _COUNTERS.pack(previous, counter)
        nonce = nonces[at : at + NONCE_SIZE]
        return _composed_seal(chain_key, header_key, header, nonce, _NUMBER.pack(number) + tail)

    return seal_copy


Seal = Callable[[bytes, bytes, bytes, bytes, bytes], tuple[bytes, bytes]]
Open = Callable[[bytes, bytes, int], tuple[bytes, bytes]]
#: ``seal_copy(chain_key, header_key, prefix, PN, N, number)``: see ``copy_sealer``
SealCopy = Callable[[bytes, bytes, bytes, int, int, int], tuple[bytes, bytes]]
CopySealer = Callable[[bytes, bytes], SealCopy]


def _direct_steps(ffi: Any, lib: Any) -> tuple[Seal, Open]:
    """The direct steps, over PyNaCl's cffi module. Closures: in these two hot functions
    every name is a local, not a global and an attribute looked up on each call."""
    new, buffer, null = ffi.new, ffi.buffer, ffi.NULL
    generichash = lib.crypto_generichash_blake2b_salt_personal
    encrypt = lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    decrypt = lib.crypto_aead_xchacha20poly1305_ietf_decrypt
    key_size, nonce_size, mac_size, tag_size = KEY_SIZE, NONCE_SIZE, MAC_SIZE, TAG_SIZE
    keys_end = 2 * KEY_SIZE  # the buffer starts with the next chain key || the message key
    tag_end = keys_end + TAG_SIZE
    no_salt, label_chain, label_tag = _NO_SALT, LABEL_CHAIN, LABEL_HEADER_TAG
    sizes, value_error, crypto_error = _SIZES, nacl.exceptions.ValueError, nacl.exceptions.CryptoError

    def seal(
        chain_key: bytes, header_key: bytes, header: bytes, nonce: bytes, plaintext: bytes
    ) -> tuple[bytes, bytes]:
        if len(chain_key) != key_size or len(header_key) != key_size or len(nonce) != nonce_size:
            raise value_error(sizes)
        size = len(plaintext)
        # the keys, then the header tag, which the ciphertext (at least as long:
        # MAC_SIZE >= TAG_SIZE) overwrites once it is copied out
        out = new("unsigned char[]", keys_end + size + mac_size)
        after_keys = out + keys_end
        if generichash(out, keys_end, null, 0, chain_key, key_size, no_salt, label_chain) or generichash(
            after_keys, tag_size, header, len(header), header_key, key_size, no_salt, label_tag
        ):
            raise crypto_error("crypto_generichash refused its arguments")
        view = buffer(out)
        authenticated = header + view[keys_end:tag_end]
        message_key = out + key_size
        if encrypt(
            after_keys, null, plaintext, size, authenticated, len(authenticated), null, nonce, message_key
        ):
            raise crypto_error("encryption failed")
        return view[:key_size], authenticated + nonce + view[keys_end:]

    # The usual message is opened in a buffer made once (next chain key || message key ||
    # plaintext), with its view and pointers; its keys are wiped after each use. Taken from
    # a pool of one (list.pop and append are atomic): a second thread (libsodium's calls
    # let go of the GIL) finds it empty and makes its own, as for a large message.
    scratch = new("unsigned char[]", keys_end + SCRATCH_PLAINTEXT)
    pool = [(scratch, buffer(scratch), scratch + keys_end, scratch + key_size)]
    take, give_back, wipe = pool.pop, pool.append, bytes(keys_end)

    def open_next(chain_key: bytes, message: bytes, authenticated_size: int) -> tuple[bytes, bytes]:
        nonce_end = authenticated_size + nonce_size
        size = len(message) - nonce_end - mac_size
        if len(chain_key) != key_size:
            raise value_error(sizes)
        if size < 0 or authenticated_size < 0:
            raise crypto_error("shorter than the authentication tag")
        scratch = None
        if size <= SCRATCH_PLAINTEXT:
            try:  # noqa: SIM105 (contextlib.suppress costs more than the buffer saves)
                scratch = take()
            except IndexError:  # in use (another thread)
                pass
        if scratch is None:  # (a part of a file, or the pool's one in use: a buffer of its own)
            out = new("unsigned char[]", keys_end + size)
            view, plaintext_at, message_key = buffer(out), out + keys_end, out + key_size
        else:
            out, view, plaintext_at, message_key = scratch
        try:
            if generichash(out, keys_end, null, 0, chain_key, key_size, no_salt, label_chain):
                raise crypto_error("crypto_generichash refused its arguments")
            failed = decrypt(
                plaintext_at,
                null,
                null,
                message[nonce_end:],
                size + mac_size,
                message,  # its first authenticated_size bytes (fewer than it has: size >= 0)
                authenticated_size,
                message[authenticated_size:nonce_end],
                message_key,
            )
            next_chain, plaintext = view[:key_size], view[keys_end : keys_end + size]
        finally:
            view[:keys_end] = wipe  # the keys: the next chain key is the caller's now
            if scratch is not None:
                give_back(scratch)
        if failed:
            raise crypto_error("the message does not authenticate")
        return next_chain, plaintext

    return seal, open_next


def _direct_copy_sealer(ffi: Any, lib: Any) -> CopySealer:
    """``copy_sealer`` over PyNaCl's cffi module (see the module's docstring)."""
    new, buffer, null = ffi.new, ffi.buffer, ffi.NULL
    generichash = lib.crypto_generichash_blake2b_salt_personal
    encrypt = lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    key_size, nonce_size, tag_size, header_size = KEY_SIZE, NONCE_SIZE, TAG_SIZE, HEADER_SIZE
    keys_end = 2 * KEY_SIZE  # the buffer: next chain key || message key || the message
    tag_at = keys_end + HEADER_SIZE
    nonce_at = tag_at + TAG_SIZE
    ciphertext_at = nonce_at + NONCE_SIZE
    authenticated_size = HEADER_SIZE + TAG_SIZE
    no_salt, label_chain, label_tag = _NO_SALT, LABEL_CHAIN, LABEL_HEADER_TAG
    sizes, value_error, crypto_error = _SIZES, nacl.exceptions.ValueError, nacl.exceptions.CryptoError
    no_nonce = _NO_NONCE

    def copy_sealer(tail: bytes, nonces: bytes) -> SealCopy:
        _nonce_check(nonces)
        pool_size, at = len(nonces), 0
        size = _NUMBER.size + len(tail)
        message_end = ciphertext_at + size + MAC_SIZE
        # ... || the plaintext: number || tail
        out = new("unsigned char[]", message_end + size)
        view = buffer(out)
        view[message_end + _NUMBER.size :] = tail
        # header (prefix, PN, N), the tag's place, the nonce, the ciphertext's place, number
        in_place = struct.Struct(f">{PREFIX_SIZE}sII{TAG_SIZE}x{NONCE_SIZE}s{size + MAC_SIZE}xQ")
        if keys_end + in_place.size + len(tail) != len(view):  # what pack_into writes fits
            raise RuntimeError("the copy sealer's layout is wrong")
        write = in_place.pack_into
        message_key, header, tag = out + key_size, out + keys_end, out + tag_at
        nonce_in, ciphertext, plaintext = out + nonce_at, out + ciphertext_at, out + message_end

        def seal_copy(
            chain_key: bytes, header_key: bytes, prefix: bytes, previous: int, counter: int, number: int
        ) -> tuple[bytes, bytes]:
            nonlocal at
            start = at
            if start >= pool_size:  # (a nonce cut short would be padded with zeros)
                raise value_error(no_nonce)
            at = start + nonce_size
            if len(chain_key) != key_size or len(header_key) != key_size:
                raise value_error(sizes)
            if len(prefix) != PREFIX_SIZE:
                raise value_error("a header's prefix is 33 bytes")
            # struct.error for a counter or number out of range
            write(view, keys_end, prefix, previous, counter, nonces[start:at], number)
            if generichash(out, keys_end, null, 0, chain_key, key_size, no_salt, label_chain) or generichash(
                tag, tag_size, header, header_size, header_key, key_size, no_salt, label_tag
            ):
                raise crypto_error("crypto_generichash refused its arguments")
            if encrypt(
                ciphertext, null, plaintext, size, header, authenticated_size, null, nonce_in, message_key
            ):
                raise crypto_error("encryption failed")
            return view[:key_size], view[keys_end:message_end]

        return seal_copy

    return copy_sealer


try:
    import nacl._sodium as _sodium  # type: ignore[import-not-found]

    _direct_seal, _direct_open = _direct_steps(_sodium.ffi, _sodium.lib)
    _direct_copies: CopySealer | None = _direct_copy_sealer(_sodium.ffi, _sodium.lib)
except (ImportError, AttributeError):  # a PyNaCl laid out differently
    _direct_seal = _direct_open = None  # type: ignore[assignment]
    _direct_copies = None


def _direct_agrees() -> bool:
    chain_key, header_key, nonce = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 88))
    header = b"e2echat self-check header"
    try:
        for plaintext in (b"", b"e2echat self-check"):
            sealed = _direct_seal(chain_key, header_key, header, nonce, plaintext)
            if sealed != _composed_seal(chain_key, header_key, header, nonce, plaintext):
                return False
            message, size = sealed[1], len(header) + TAG_SIZE
            opened = (sealed[0], plaintext)
            if (
                _direct_open(chain_key, message, size) != opened
                or _composed_open(chain_key, message, size) != opened
            ):
                return False
            assert _direct_copies is not None
            prefix, arguments = bytes(range(100, 100 + PREFIX_SIZE)), (7, 2**32 - 1, 2**64 - 1)
            sealed = _direct_copies(plaintext, nonce)(chain_key, header_key, prefix, *arguments)
            if sealed != _composed_copy_sealer(plaintext, nonce)(chain_key, header_key, prefix, *arguments):
                return False
        return True
    except Exception:
        return False


#: True where the steps call libsodium through cffi directly (found and self-checked).
DIRECT_STEPS = _direct_seal is not None and _direct_agrees()

seal: Callable[[bytes, bytes, bytes, bytes, bytes], tuple[bytes, bytes]] = (
    _direct_seal if DIRECT_STEPS else _composed_seal
)
"""``seal(chain_key, header_key, header, nonce, plaintext)`` -> (next chain key, message):
message = header || tag || nonce || ciphertext, where (next chain key, message key) =
``kdf_chain(chain_key)``, tag = ``header_tag(header_key, header)`` and the ciphertext is
the AEAD of ``plaintext`` under the message key with header || tag as associated data."""

open_next: Callable[[bytes, bytes, int], tuple[bytes, bytes]] = (
    _direct_open if DIRECT_STEPS else _composed_open
)
"""``open_next(chain_key, message, authenticated_size)`` -> (next chain key, plaintext):
``seal``'s message opened under the next message key of ``chain_key``, its first
``authenticated_size`` bytes (header || tag) as associated data. ``CryptoError`` if it
does not authenticate."""

copy_sealer: CopySealer = _direct_copies if DIRECT_STEPS and _direct_copies else _composed_copy_sealer
"""``copy_sealer(tail, nonces)`` -> ``seal_copy``, for the copies of one message whose
plaintexts are number (8 bytes, big-endian) || ``tail``: ``seal_copy(chain_key,
header_key, prefix, PN, N, number)`` is ``seal(chain_key, header_key, prefix || PN || N,
nonce, number || tail)`` (PN and N 4 bytes each, big-endian; the prefix 33 bytes), its
nonce the next 24 bytes of ``nonces``, each used once: when they are used up it refuses.
One ``seal_copy`` serves one message's copies, one after another (not from two threads)."""

"""The Double Ratchet (Signal's "The Double Ratchet Algorithm", revision 1), after X3DH.

Pure (no I/O). One ``Ratchet`` is our end of the session with one peer. State, as in the
spec: our ratchet key pair DHs, their ratchet key DHr, root key RK, sending and receiving
chain keys CKs / CKr, message numbers Ns / Nr, the previous sending chain's length PN,
and the skipped message keys (kept in a ``SkippedKeys`` budget shared by all sessions).
A DH ratchet step happens whenever the direction of talk changes (a message arrives
under a ratchet key we have not seen); KDFs are in ``kdf``; byte layouts and labels in
docs/RATCHET.md.

Message = version (1) || ratchet key (32) || PN (4, big-endian) || N (4) || header tag
(16) || nonce (24) || XChaCha20-Poly1305 ciphertext (len + 16), its associated data the
57 bytes before the nonce. The header tag is BLAKE2b-128 keyed by a per-chain *header
key* over the 41 header bytes before it.

Why XChaCha20-Poly1305 (libsodium's ``crypto_aead_xchacha20poly1305_ietf``), where the
rest of e2echat seals with XSalsa20-Poly1305 (``crypto_secretbox``): the Double Ratchet's
ENCRYPT takes associated data (the header), and secretbox has none. XChaCha20-Poly1305
is the AEAD of the same family: ChaCha20 is Salsa20's successor by the same author, the
same Poly1305, the same 192-bit nonce (safe to draw at random). AES-based AEADs
(AEGIS-256) are faster still but constant-time only with AES instructions; we do not
take that risk for a few tenths of a microsecond.

X3DH's associated data AD (both identity keys and nicks) is bound into the root key
once, when the session starts: RK0 = BLAKE2b(AD) keyed by SK. Every later key comes from
RK0 through PRFs, so two parties who disagree on AD share no key at all and nothing one
sends authenticates for the other: what Signal gets by passing AD to every encryption,
for no cost per message.

Two checks guard a message, for two purposes:

* The header tag is for the receiver to check before it derives a single message key.
  The chain's header key is known up front (for a new ratchet key, after one DH and one
  root KDF), so a forged header, however large its counters, is refused after at most
  one DH, three BLAKE2b calls (root KDF, header key, tag) and no chain step. Only a
  header that really comes from the peer (or from someone holding the session's state)
  can make us derive skipped keys, and even then at most ``MAX_SKIP`` + 1 chain steps.
* The AEAD authenticates the body and, as its associated data, the header and the tag.

So the tag need only be checked where believing the header would cost something: a new
ratchet key, a gap, a late message, a replay (``ReplayError`` and ``SkippedTooMany`` are
only ever said of an authentic header). The message that comes next in the current
receiving chain (N = Nr, nearly every message) costs one chain step whatever its header
says, the step any message costs, and its header is authenticated by the AEAD with the
body: the tag check is skipped there. A forgery of such a message is refused by the AEAD
after that one chain step, exactly as a forged body with a true header would be.
Cost: one BLAKE2b call per message for the sender, none on that path for the receiver,
and 16 bytes.

Why no header encryption (the spec's section 4): the relay already sees who talks to
whom, when and how much; hiding ratchet keys and counters would add little and cost a
trial decryption per message (against the current and next header keys). A possible
later step, as the format is versioned.

Every failed decrypt leaves the state untouched: new chain keys and skipped keys are
computed in locals and committed only after the AEAD has opened.
"""

from __future__ import annotations

import hmac
import struct
from typing import NamedTuple

import nacl.bindings
import nacl.exceptions
from nacl.public import PrivateKey, PublicKey

from e2echat.crypto.kdf import TAG_SIZE, header_tag, kdf_chain, kdf_header_key, kdf_root, kdf_session
from e2echat.crypto.primitives import MAC_SIZE, NONCE_SIZE, aead_decrypt
from e2echat.crypto.skipped import Entry, SkippedKeys
from e2echat.crypto.steps import HEADER_SIZE, PREFIX_SIZE, SealCopy, open_next, seal
from e2echat.errors import BadRatchetState, DecryptionError, LocalProtocolError, ReplayError, SkippedTooMany

MESSAGE_VERSION = 1
_VERSION = bytes([MESSAGE_VERSION])
# Most message keys one incoming message may make us derive and skip, over both its old
# and its new chain: bounds the CPU a message can cost (1000 chain steps, ~1.5 ms) and is
# far more than a relay that works ever loses. Beyond it: ``SkippedTooMany``.
MAX_SKIP = 1000
# Counters are 32-bit on the wire: 4 billion messages one way without a reply.
MAX_COUNTER = 2**32 - 1
_COUNTERS = struct.Struct(">II")
KEY_SIZE = 32
_KEY_END = 1 + KEY_SIZE  # the ratchet key is message[1:33]
_HEADER_END = _KEY_END + _COUNTERS.size  # 41
assert (_KEY_END, _HEADER_END) == (PREFIX_SIZE, HEADER_SIZE)  # steps.copy_sealer writes headers too
_TAG_END = _HEADER_END + TAG_SIZE  # 57
_NONCE_END = _TAG_END + NONCE_SIZE  # 81
MIN_MESSAGE = _NONCE_END + MAC_SIZE  # 97: an empty plaintext
STATE_VERSION = 2
_STATE_COUNTERS = struct.Struct(">III")
_COUNT = struct.Struct(">I")
_STATE_FIXED = 2 + 2 * KEY_SIZE + _STATE_COUNTERS.size  # version, flags, DHs, RK, counters
_ENTRY_SIZE = 3 * KEY_SIZE + _COUNT.size
_N_AT = _HEADER_END - _COUNT.size  # N, the header's last field


class Opened(NamedTuple):
    """A message that authenticated. (A named tuple: one per message, and cheap.)"""

    plaintext: bytes
    #: its number N in its chain
    counter: int
    #: how many earlier messages this one skipped (they may arrive late)
    skipped: int
    #: True if it arrived late, under a skipped key
    late: bool


def _dh(private: PrivateKey, public: bytes) -> bytes:
    # libsodium refuses a low-order point (all-zero output) with an error.
    return nacl.bindings.crypto_scalarmult(bytes(private), public)


class Ratchet:
    """Our end of a Double Ratchet session with ``peer``. Make one with ``initiator``
    (after ``x3dh.initiate``), ``responder`` (after ``x3dh.respond``) or ``from_bytes``."""

    __slots__ = (
        "_budget",
        "_ckr",
        "_cks",
        "_dhr",
        "_dhs",
        "_hkr",
        "_hks",
        "_nr",
        "_ns",
        "_owner",
        "_pn",
        "_prev_dhr",
        "_prev_hkr",
        "_receiving",
        "_rk",
        "_send_prefix",
        "peer",
    )

    def __init__(self, peer: str, budget: SkippedKeys, our_ratchet_key: PrivateKey) -> None:
        self.peer = peer
        self._budget = budget
        self._owner = budget.register()
        self._rk = b""
        self._set_sending(our_ratchet_key, None)
        self._set_receiving(None)
        self._ckr: bytes | None = None
        self._hkr: bytes | None = None
        self._prev_dhr: bytes | None = None
        self._prev_hkr: bytes | None = None
        self._ns = self._nr = self._pn = 0

    def _set_receiving(self, their_ratchet_key: bytes | None) -> None:
        self._dhr = their_ratchet_key
        # What every message under their ratchet key starts with, the version and the key
        # (open_in_chain: one check for both); None while there is none.
        self._receiving = None if their_ratchet_key is None else _VERSION + their_ratchet_key

    def _set_sending(self, our_ratchet_key: PrivateKey, chain_key: bytes | None) -> None:
        self._dhs = our_ratchet_key
        self._send_prefix = bytes([MESSAGE_VERSION]) + bytes(our_ratchet_key.public_key)
        self._cks = chain_key
        self._hks = None if chain_key is None else kdf_header_key(chain_key)

    @classmethod
    def initiator(
        cls,
        shared_key: bytes,
        associated_data: bytes,
        their_ratchet_key: PublicKey,
        budget: SkippedKeys,
        *,
        peer: str,
        our_ratchet_key: PrivateKey | None = None,
    ) -> Ratchet:
        """Alice: SK and AD from ``x3dh.initiate``; their ratchet key is Bob's signed
        prekey. She can send at once. ``our_ratchet_key`` is for known-answer tests."""
        _check_key(shared_key)
        ours = PrivateKey.generate() if our_ratchet_key is None else our_ratchet_key
        state = cls(peer, budget, ours)
        try:
            state._rk, chain = kdf_root(
                kdf_session(shared_key, associated_data), _dh(ours, bytes(their_ratchet_key))
            )
        except nacl.exceptions.CryptoError:
            budget.release(state._owner)
            raise DecryptionError(peer=peer, detail="their signed prekey is not a valid point") from None
        state._set_sending(ours, chain)
        state._set_receiving(bytes(their_ratchet_key))
        return state

    @classmethod
    def responder(
        cls,
        shared_key: bytes,
        associated_data: bytes,
        our_signed_prekey: PrivateKey,
        budget: SkippedKeys,
        *,
        peer: str,
    ) -> Ratchet:
        """Bob: SK and AD from ``x3dh.respond``; his first ratchet key is his signed
        prekey. He can send only after Alice's first message has arrived."""
        _check_key(shared_key)
        state = cls(peer, budget, our_signed_prekey)
        state._rk = kdf_session(shared_key, associated_data)
        return state

    @property
    def can_send(self) -> bool:
        return self._cks is not None

    @property
    def missing(self) -> int:
        """Skipped messages whose keys we still hold."""
        return self._budget.count(self._owner)

    def close(self) -> None:
        """Forget this session's skipped keys (the session is being dropped)."""
        self._budget.release(self._owner)

    # -- the per-message path: kept lean (no objects made but the output) ----------------

    def encrypt(self, plaintext: bytes, nonce: bytes | None = None) -> bytes:
        """One message to the peer under the next message key. ``nonce``: 24 bytes from
        libsodium's RNG by default; pass one only to draw many at once, or in tests."""
        cks, hks = self._cks, self._hks
        if cks is None or hks is None:
            raise LocalProtocolError(detail=f"no sending chain to {self.peer} until they write first")
        counter = self._ns
        if counter >= MAX_COUNTER:
            raise LocalProtocolError(detail="sending chain exhausted")
        if nonce is None:
            nonce = nacl.bindings.randombytes(NONCE_SIZE)
        self._cks, message = seal(
            cks, hks, self._send_prefix + _COUNTERS.pack(self._pn, counter), nonce, plaintext
        )
        self._ns = counter + 1
        return message

    def seal_copy(self, seal_copy: SealCopy, number: int) -> bytes:
        """``encrypt`` for one copy of a message to many: its plaintext ``number`` (8 bytes)
        || what ``seal_copy`` (``steps.copy_sealer``) was made for."""
        cks, hks = self._cks, self._hks
        if cks is None or hks is None:
            raise LocalProtocolError(detail=f"no sending chain to {self.peer} until they write first")
        counter = self._ns
        if counter >= MAX_COUNTER:
            raise LocalProtocolError(detail="sending chain exhausted")
        self._cks, message = seal_copy(cks, hks, self._send_prefix, self._pn, counter, number)
        self._ns = counter + 1
        return message

    def open_in_chain(self, message: bytes) -> bytes | None:
        """``decrypt`` for nearly every message, in one go: one that comes next in the
        current receiving chain. Its plaintext, the session moved on; None for any other
        message and for one that does not open, with nothing changed: ``decrypt`` then
        takes it, and says why. (As in ``decrypt``, the AEAD alone authenticates it.)"""
        ckr, receiving = self._ckr, self._receiving
        if (
            ckr is None
            or receiving is None
            or len(message) < MIN_MESSAGE
            or not message.startswith(receiving)  # the version and their ratchet key
        ):
            return None
        (counter,) = _COUNT.unpack_from(message, _N_AT)
        if counter != self._nr:
            return None
        try:
            ckr, plaintext = open_next(ckr, message, _TAG_END)
        except nacl.exceptions.CryptoError:
            return None
        self._ckr, self._nr = ckr, counter + 1
        return plaintext

    def decrypt(self, message: bytes) -> Opened:
        """Authenticate and decrypt one message. On any failure the state is unchanged.

        Raises ``ReplayError`` for a message already decrypted, ``SkippedTooMany`` for a
        genuine one after too long a gap, ``DecryptionError`` for anything else."""
        if len(message) < MIN_MESSAGE:
            raise DecryptionError(peer=self.peer, detail="message too short")
        if message[0] != MESSAGE_VERSION:
            raise DecryptionError(peer=self.peer, detail=f"unsupported message version {message[0]}")
        previous_length, counter = _COUNTERS.unpack_from(message, _KEY_END)
        ratchet_key = message[1:_KEY_END]
        ckr = self._ckr
        if counter == self._nr and ckr is not None and ratchet_key == self._dhr:
            # The next message in the receiving chain: the AEAD alone authenticates it.
            try:
                ckr, plaintext = open_next(ckr, message, _TAG_END)
            except nacl.exceptions.CryptoError:
                raise DecryptionError(peer=self.peer, detail="bad authentication tag") from None
            self._ckr, self._nr = ckr, counter + 1
            return Opened(plaintext, counter, 0, False)

        hkr = self._hkr
        if ratchet_key == self._dhr and ckr is not None and hkr is not None:
            self._check_tag(hkr, message)
            if counter < self._nr:
                return self._open_skipped(ratchet_key, counter, message)
            gap = counter - self._nr
            if gap > MAX_SKIP:
                raise SkippedTooMany(peer=self.peer, skipped=gap, limit=MAX_SKIP)
            skipped: list[Entry] = []
            for number in range(self._nr, counter):
                ckr, key = kdf_chain(ckr)
                skipped.append((ratchet_key, number, hkr, key))
            ckr, message_key = kdf_chain(ckr)
            plaintext = self._open(message_key, message)
            # Authenticated: only now does the session move on.
            self._ckr, self._nr = ckr, counter + 1
            if skipped:
                self._budget.add(self._owner, skipped)
            return Opened(plaintext, counter, gap, False)

        kept = self._budget.get(self._owner, ratchet_key, counter)
        if kept is not None:  # late, from an earlier chain
            self._check_tag(kept[0], message)
            return self._open_skipped(ratchet_key, counter, message)
        if ratchet_key == self._prev_dhr and self._prev_hkr is not None:
            self._check_tag(self._prev_hkr, message)
            raise ReplayError(peer=self.peer, counter=counter)
        return self._ratchet_and_open(ratchet_key, previous_length, counter, message)

    def _check_tag(self, header_key: bytes, message: bytes) -> None:
        tag = header_tag(header_key, message[:_HEADER_END])
        if not hmac.compare_digest(tag, message[_HEADER_END:_TAG_END]):
            raise DecryptionError(peer=self.peer, detail="the header does not authenticate")

    def _open(self, message_key: bytes, message: bytes) -> bytes:
        try:
            return aead_decrypt(
                message[_NONCE_END:], message[:_TAG_END], message[_TAG_END:_NONCE_END], message_key
            )
        except nacl.exceptions.CryptoError:
            raise DecryptionError(peer=self.peer, detail="bad authentication tag") from None

    def _open_skipped(self, ratchet_key: bytes, counter: int, message: bytes) -> Opened:
        kept = self._budget.get(self._owner, ratchet_key, counter)
        if kept is None:  # opened already, or its key was evicted (same answer: libsignal's)
            raise ReplayError(peer=self.peer, counter=counter)
        plaintext = self._open(kept[1], message)
        self._budget.discard(self._owner, ratchet_key, counter)
        return Opened(plaintext, counter, 0, True)

    # -- the DH ratchet step (the direction of talk changed) -------------------------------

    def _ratchet_and_open(
        self,
        ratchet_key: bytes,
        previous_length: int,
        counter: int,
        message: bytes,
    ) -> Opened:
        try:
            root, new_ckr = kdf_root(self._rk, _dh(self._dhs, ratchet_key))
        except nacl.exceptions.CryptoError:
            raise DecryptionError(peer=self.peer, detail="invalid ratchet key") from None
        new_hkr = kdf_header_key(new_ckr)
        self._check_tag(new_hkr, message)
        # From here on the header is the peer's: its counters may be believed (bounded).
        skipped: list[Entry] = []
        old_chain, old_key, old_hkr = self._ckr, self._dhr, self._hkr
        if old_chain is not None and old_key is not None and old_hkr is not None:
            if previous_length < self._nr:
                raise DecryptionError(peer=self.peer, detail="header contradicts earlier messages")
            gap = previous_length - self._nr + counter
            if gap > MAX_SKIP:
                raise SkippedTooMany(peer=self.peer, skipped=gap, limit=MAX_SKIP)
            for number in range(self._nr, previous_length):
                old_chain, key = kdf_chain(old_chain)
                skipped.append((old_key, number, old_hkr, key))
        elif counter > MAX_SKIP:
            raise SkippedTooMany(peer=self.peer, skipped=counter, limit=MAX_SKIP)
        chain = new_ckr
        for number in range(counter):
            chain, key = kdf_chain(chain)
            skipped.append((ratchet_key, number, new_hkr, key))
        chain, message_key = kdf_chain(chain)
        plaintext = self._open(message_key, message)

        # Authenticated. Commit: the receiving half, then a fresh key pair for sending.
        ours = PrivateKey.generate()
        self._rk, send_chain = kdf_root(root, _dh(ours, ratchet_key))
        self._prev_dhr, self._prev_hkr = self._dhr, self._hkr
        self._set_receiving(ratchet_key)
        self._ckr, self._hkr, self._nr = chain, new_hkr, counter + 1
        self._pn, self._ns = self._ns, 0
        self._set_sending(ours, send_chain)
        if skipped:
            self._budget.add(self._owner, skipped)
        return Opened(plaintext, counter, len(skipped), False)

    # -- persistence ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole state, skipped keys included: secret, so seal it before storing.

        version (1) || flags (1) || DHs private || RK (32 each) || Ns || Nr
        || PN (4 each) || [DHr] || [CKr || HKr] || [CKs || HKs] || [previous DHr || its HK]
        || count (4) || count x (ratchet key || N (4) || HK || MK); flags say which
        bracketed parts are present (bits 0..3, in that order)."""
        flags = 0
        parts = [b""]
        for bit, present in enumerate(
            [(self._dhr,), (self._ckr, self._hkr), (self._cks, self._hks), (self._prev_dhr, self._prev_hkr)]
        ):
            if all(value is not None for value in present):
                flags |= 1 << bit
                parts.extend(value for value in present if value is not None)
        entries = self._budget.entries(self._owner)
        head = bytes([STATE_VERSION, flags]) + bytes(self._dhs) + self._rk
        parts[0] = head + _STATE_COUNTERS.pack(self._ns, self._nr, self._pn)
        parts.append(_COUNT.pack(len(entries)))
        parts.extend(key + _COUNT.pack(number) + hk + mk for key, number, hk, mk in entries)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, budget: SkippedKeys, *, peer: str) -> Ratchet:
        """A session saved by ``to_bytes``, its skipped keys put back under ``budget``.
        Raises ``BadRatchetState`` for anything but exactly a well-formed state."""

        def bad(detail: str) -> BadRatchetState:
            return BadRatchetState(peer=peer, detail=detail)

        if type(data) is not bytes or len(data) < _STATE_FIXED + _COUNT.size:
            raise bad("too short")
        if data[0] != STATE_VERSION:
            raise bad(f"unknown state version {data[0]}")
        flags = data[1]
        if flags & ~0b1111 or (flags & 0b0010 and not flags & 0b0001):
            raise bad("invalid flags")
        sizes = [KEY_SIZE, 2 * KEY_SIZE, 2 * KEY_SIZE, 2 * KEY_SIZE]
        optional = sum(size for bit, size in enumerate(sizes) if flags >> bit & 1)
        count_at = _STATE_FIXED + optional
        if len(data) < count_at + _COUNT.size:
            raise bad("truncated")
        (count,) = _COUNT.unpack_from(data, count_at)
        if len(data) != count_at + _COUNT.size + count * _ENTRY_SIZE:
            raise bad("wrong length")
        dhs, root = data[2 : 2 + KEY_SIZE], data[2 + KEY_SIZE : 2 + 2 * KEY_SIZE]
        ns, nr, pn = _STATE_COUNTERS.unpack_from(data, 2 + 2 * KEY_SIZE)
        fields = [data[at : at + KEY_SIZE] for at in range(_STATE_FIXED, count_at, KEY_SIZE)]
        state = cls(peer, budget, PrivateKey(dhs))
        state._rk, state._ns, state._nr, state._pn = root, ns, nr, pn
        if flags & 0b0001:
            state._set_receiving(fields.pop(0))
        if flags & 0b0010:
            state._ckr, state._hkr = fields.pop(0), fields.pop(0)
        if flags & 0b0100:
            state._cks, state._hks = fields.pop(0), fields.pop(0)
        if flags & 0b1000:
            state._prev_dhr, state._prev_hkr = fields.pop(0), fields.pop(0)
        entries: list[Entry] = []
        for at in range(count_at + _COUNT.size, len(data), _ENTRY_SIZE):
            (number,) = _COUNT.unpack_from(data, at + KEY_SIZE)
            hk_at = at + KEY_SIZE + _COUNT.size
            entries.append(
                (
                    data[at : at + KEY_SIZE],
                    number,
                    data[hk_at : hk_at + KEY_SIZE],
                    data[hk_at + KEY_SIZE : hk_at + 2 * KEY_SIZE],
                )
            )
        budget.add(state._owner, entries)
        return state


def _check_key(key: bytes) -> None:
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise LocalProtocolError(detail=f"a shared key is {KEY_SIZE} bytes")

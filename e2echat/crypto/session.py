"""Per-peer crypto session: key agreement, one KDF chain per direction, counters, replay.

Pure (no I/O). The construction, and why, is in docs/PROTOCOL.md (section 8); in short:

* Both sides order the two parties by (identity key, session key, nick): "first" and
  "second". DH1 = DH(IK_first, EK_second), DH2 = DH(EK_first, IK_second),
  DH3 = DH(EK_first, EK_second).
* HKDF-SHA256(DH1 || DH2 || DH3, info = label + both parties' nick, IK and EK) gives
  64 bytes: the sending chain key of "first", then that of "second".
* Each message key is HMAC-SHA256(chain, 0x01); the next chain key HMAC-SHA256(chain,
  0x02) (Signal's symmetric-key ratchet). A message key encrypts one message with
  XSalsa20-Poly1305 (libsodium's ``crypto_secretbox``, what ``nacl.secret.SecretBox``
  wraps) and is then forgotten.
* Body = version (1 byte) || counter (8 bytes, big-endian) || nonce (24) || tag (16) || ct,
  exactly what ``SecretBox(key).encrypt`` gives after the header.
  The counter selects the key, so altering it makes decryption fail; the plaintext
  repeats counter, sender, recipient and kind, which are checked after decryption.
* Plaintext = the UTF-8 JSON object {"from", "to", "kind", "n", "text", "dir"[, "sent"]
  [, "acks"]}: sender, recipient, kind, counter, text, the sender's directory hash, the
  sender's clock when it encrypted the message (whole seconds since the Unix epoch; only
  in messages with text, and absent from older clients' ones), and for a receipt the
  counters it acknowledges. Inside the encryption, "sent" is the sender's word and no
  one else's: a relay that holds a message back cannot make it look fresh.
* What a body whose counter jumps ahead may cost us, and the keys kept for messages
  skipped, is bounded in chains.py, under a budget shared by all sessions of a client.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import nacl.bindings
import nacl.exceptions
from nacl.public import PrivateKey, PublicKey

# MAX_SKIP and chain_step are re-exported: they are part of what a session is.
from e2echat.crypto.chains import MAX_SKIP as MAX_SKIP
from e2echat.crypto.chains import KeyBudget, ReceivingChain
from e2echat.crypto.chains import chain_step as chain_step
from e2echat.crypto.primitives import MAC_SIZE, NONCE_SIZE, secretbox, secretbox_open
from e2echat.errors import DecryptionError, LocalProtocolError

LABEL = b"e2echat v1"
BODY_VERSION = 1
_HEADER = struct.Struct(">BQ")
# Where the SecretBox's own output (tag, then ciphertext) starts in a body.
_SEALED_START = _HEADER.size + NONCE_SIZE
# Longest message text, in UTF-8 bytes: a screenful, and far below grammar.MAX_BODY.
MAX_TEXT = 16 * 1024


class Kind(StrEnum):
    ROOM = "room"
    PRIVATE = "private"
    #: an acknowledgement of messages received (``acks``: their counters); no text
    RECEIPT = "receipt"


_KINDS = {kind.value: kind for kind in Kind}

# Counters one receipt may acknowledge: a busy minute of room chat, not a denial of service.
MAX_ACKS = 1000


@dataclass(frozen=True)
class Party:
    """One side of a session, as the directory names it."""

    nick: str
    identity_key: PublicKey
    session_key: PublicKey

    def sort_key(self) -> tuple[bytes, bytes, bytes]:
        return bytes(self.identity_key), bytes(self.session_key), self.nick.encode("utf-8")


class Plaintext(NamedTuple):
    """A message that decrypted and authenticated. (A named tuple, not a frozen dataclass:
    as immutable, and one is made for every message received, at a third of the cost.)"""

    sender: str
    recipient: str
    kind: Kind
    counter: int
    text: str
    #: How many earlier messages from this peer were skipped by this one (a gap).
    skipped: int = 0
    #: True if this message fills an earlier gap (it arrived late).
    late: bool = False
    #: the sender's directory hash (hex), empty if it sent none
    directory_hash: str = ""
    #: for a receipt: the counters of our messages it acknowledges
    acks: tuple[int, ...] = ()
    #: when the sender encrypted it, by its clock (Unix time, seconds); None if not said
    sent: int | None = None


# Send times a plaintext may carry: any Unix time in seconds that a float holds exactly.
MAX_SENT = 2**53


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int, salt: bytes = b"") -> bytes:
    """RFC 5869 HKDF with HMAC-SHA256, from the stdlib."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    blocks, previous = [], b""
    for index in range(1, -(-length // 32) + 1):
        previous = hmac.new(prk, previous + info + bytes([index]), hashlib.sha256).digest()
        blocks.append(previous)
    return b"".join(blocks)[:length]


def _dh(private: PrivateKey, public: PublicKey) -> bytes:
    # libsodium refuses low-order points (an all-zero shared secret) with an error.
    return nacl.bindings.crypto_scalarmult(bytes(private), bytes(public))


def encode_party(party: Party) -> bytes:
    nick = party.nick.encode("utf-8")
    return bytes([len(nick)]) + nick + bytes(party.identity_key) + bytes(party.session_key)


class PeerSession:
    """Our end of the session with one peer, for the life of one pair of connections."""

    def __init__(
        self,
        our_nick: str,
        our_identity: PrivateKey,
        our_session: PrivateKey,
        their: Party,
        *,
        budget: KeyBudget | None = None,
    ) -> None:
        """``budget`` holds the receiving keys kept (see chains.py): one for all the
        sessions of a client; by default, one of the session's own."""
        self.ours = Party(our_nick, our_identity.public_key, our_session.public_key)
        self.theirs = their
        we_are_first = self.ours.sort_key() < their.sort_key()
        try:
            if we_are_first:
                dh1 = _dh(our_identity, their.session_key)
                dh2 = _dh(our_session, their.identity_key)
                first, second = self.ours, their
            else:
                dh1 = _dh(our_session, their.identity_key)
                dh2 = _dh(our_identity, their.session_key)
                first, second = their, self.ours
            dh3 = _dh(our_session, their.session_key)
        except nacl.exceptions.CryptoError:
            raise DecryptionError(peer=their.nick, detail="their keys are invalid") from None
        info = LABEL + b" chains" + encode_party(first) + encode_party(second)
        okm = hkdf_sha256(dh1 + dh2 + dh3, info=info, length=64)
        first_chain, second_chain = okm[:32], okm[32:]
        self._send_chain = first_chain if we_are_first else second_chain
        receive_chain = second_chain if we_are_first else first_chain
        self._send_counter = 0
        self._receiving = ReceivingChain(their.nick, receive_chain, KeyBudget() if budget is None else budget)
        # The start of every plaintext we send this peer (see ``seal``).
        self._inner_head = ('{"from":' + _json(our_nick) + ',"to":' + _json(their.nick) + ',"kind":').encode()

    @property
    def peer(self) -> str:
        return self.theirs.nick

    @property
    def missing(self) -> int:
        """Messages from this peer skipped over and not (yet) arrived."""
        return self._receiving.missing

    def close(self) -> None:
        """The session is over: forget the receiving keys kept in the budget."""
        self._receiving.close()

    @property
    def next_counter(self) -> int:
        """The counter the next message we encrypt will carry."""
        return self._send_counter

    def encrypt(
        self,
        text: str,
        kind: Kind,
        *,
        directory_hash: str = "",
        acks: tuple[int, ...] = (),
        sent: int | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        """One message for this peer, carrying our ``directory_hash`` (see
        ``directory_digest``) and the time it was ``sent``. ``nonce`` is for deterministic
        tests only."""
        prepared = prepare(text, kind, directory_hash=directory_hash, acks=acks, sent=sent)
        return self.seal(prepared, random_nonces(1)[0] if nonce is None else nonce)

    def seal(self, prepared: Prepared, nonce: bytes) -> bytes:
        """``prepared`` (see ``prepare``) for this peer under the next message key.

        ``nonce`` must be 24 random bytes (``random_nonces``) or, in tests, fixed ones.
        Each message key seals exactly one message, so the nonce need not be unique; it is
        random anyway, as margin against a bug that ever reused a key."""
        counter = self._send_counter
        self._send_chain, message_key = chain_step(self._send_chain)
        self._send_counter = counter + 1
        # Byte for byte what json.dumps of {"from", "to", "kind", "n", "text", "dir"
        # [, "sent"][, "acks"]} gives (a test checks): only "n" differs from one message to
        # the next.
        plaintext = b"%b%b%d%b" % (self._inner_head, prepared.kind_and_n, counter, prepared.tail)
        return _HEADER.pack(BODY_VERSION, counter) + nonce + secretbox(plaintext, nonce, message_key)

    def decrypt(self, body: bytes) -> Plaintext:
        """Authenticate and decrypt one body. On any failure our state is unchanged."""
        if len(body) < _SEALED_START + MAC_SIZE:
            raise DecryptionError(peer=self.peer, detail="message too short")
        version, counter = _HEADER.unpack_from(body)
        if version != BODY_VERSION:
            raise DecryptionError(peer=self.peer, detail=f"unsupported message version {version}")

        receiving = self._receiving
        skipped = max(0, counter - receiving.next_counter)
        message_key, late = receiving.message_key(counter)
        plaintext = self._open(message_key, body, counter, skipped=skipped, late=late)
        # Authenticated: only now does the session move on.
        receiving.commit(counter)
        return plaintext

    def _open(self, message_key: bytes, body: bytes, counter: int, *, skipped: int, late: bool) -> Plaintext:
        try:
            raw = secretbox_open(body[_SEALED_START:], body[_HEADER.size : _SEALED_START], message_key)
        except nacl.exceptions.CryptoError:
            raise DecryptionError(peer=self.peer, detail="bad authentication tag") from None
        try:
            inner = json.loads(raw.decode("utf-8"))
            sender, recipient, kind = inner["from"], inner["to"], _KINDS[inner["kind"]]
            inner_counter, text = inner["n"], inner["text"]
            text.encode("utf-8")  # no lone surrogates: they would crash the display
            directory_hash = inner.get("dir", "")
            if not isinstance(directory_hash, str) or len(directory_hash) > 64:
                raise ValueError("directory hash")
            sent = inner.get("sent")
            if sent is not None and (type(sent) is not int or not 0 <= sent < MAX_SENT):
                raise ValueError("sent")
            acks = inner.get("acks", ())  # only receipts carry them
            if acks != () and (
                not isinstance(acks, list)
                or len(acks) > MAX_ACKS
                or not all(type(ack) is int and 0 <= ack < 2**64 for ack in acks)
            ):
                raise ValueError("acks")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise DecryptionError(peer=self.peer, detail="malformed plaintext") from None
        # The keys already bind both parties and the direction; these checks make a
        # mismatch (a bug, or a peer lying inside its own ciphertext) loud, not silent.
        if (
            sender != self.theirs.nick
            or recipient != self.ours.nick
            or type(inner_counter) is not int
            or inner_counter != counter
        ):
            raise DecryptionError(peer=self.peer, detail="header does not match its contents")
        return Plaintext(
            sender, recipient, kind, counter, text, skipped, late, directory_hash, tuple(acks), sent
        )


@dataclass(frozen=True)
class Prepared:
    """One message, JSON-encoded once for all its recipients (see ``prepare``)."""

    kind: Kind
    #: ``"room","n":`` (the kind's value, then the key of the counter that follows it)
    kind_and_n: bytes
    #: ``,"text":...,"dir":...[,"sent":...][,"acks":[...]]}``
    tail: bytes


def prepare(
    text: str,
    kind: Kind,
    *,
    directory_hash: str = "",
    acks: tuple[int, ...] = (),
    sent: int | None = None,
) -> Prepared:
    """The parts of a message's plaintext that are the same for every recipient. A room
    message to 49 people differs per recipient only in "to" and "n", so the text is
    JSON-encoded once, not 49 times. ``sent`` is our clock now (Unix time, seconds).
    Raises ``LocalProtocolError`` for a text over MAX_TEXT (and ``UnicodeEncodeError`` for
    one UTF-8 cannot carry)."""
    if len(text.encode("utf-8")) > MAX_TEXT:
        raise LocalProtocolError(detail=f"message longer than {MAX_TEXT} bytes")
    tail = ',"text":' + _json(text) + ',"dir":' + _json(directory_hash)
    if sent is not None:
        if not 0 <= sent < MAX_SENT:
            raise LocalProtocolError(detail=f"send time {sent} out of range")
        tail += f',"sent":{int(sent)}'
    if acks:
        tail += ',"acks":' + json.dumps(list(acks), separators=(",", ":"))
    return Prepared(kind, (_json(kind.value) + ',"n":').encode("utf-8"), (tail + "}").encode("utf-8"))


def seal_all(messages: list[tuple[PeerSession, Prepared]]) -> list[tuple[str, bytes]]:
    """(peer, body) for each (session, prepared message), each under the session's next
    message key, with the nonces drawn in one call."""
    nonces = random_nonces(len(messages))
    return [(s.peer, s.seal(prepared, nonce)) for (s, prepared), nonce in zip(messages, nonces, strict=True)]


def random_nonces(count: int) -> list[bytes]:
    """``count`` nonces of 24 random bytes from libsodium, drawn in one call: a room
    message needs one per recipient, and one call is far cheaper than ``count``."""
    pool = nacl.bindings.randombytes(NONCE_SIZE * count)
    return [pool[start : start + NONCE_SIZE] for start in range(0, len(pool), NONCE_SIZE)]


def _json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def directory_digest(entries: list[Party]) -> str:
    """SHA-256 (hex) of a view of the directory: every (nick, identity key, session key),
    sorted by nick, each length-prefixed. Two people who see the same directory get the
    same digest; a relay showing them different keys for anyone cannot make them agree."""
    ordered = sorted(entries, key=lambda party: party.nick)
    return digest_of_encoded([encode_party(party) for party in ordered])


def digest_of_encoded(encoded_in_nick_order: list[bytes]) -> str:
    """``directory_digest`` for entries already encoded (and sorted): lets a client keep the
    encodings and rehash a directory of thousands after each join in microseconds."""
    return hashlib.sha256(LABEL + b" directory" + b"".join(encoded_in_nick_order)).hexdigest()

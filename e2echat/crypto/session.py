"""Our sessions with one peer: X3DH to start one, the Double Ratchet to run it, and the
message format inside it. Pure (no I/O).

The construction, and why, is in docs/PROTOCOL.md and docs/RATCHET.md; in short:

* A ``PeerSession`` holds every session with one peer (their identity key and nick):
  the current one first, then up to ``MAX_SESSIONS`` - 1 earlier ones. It survives
  reconnects and restarts (``to_bytes``, sealed by the caller), so there is no re-keying.
* We start a session with X3DH over their prekey bundle (``start``). Until they answer,
  every body we send is a *prekey message*: type 2 || our identity key || our ephemeral
  (base) key || signed prekey id || has one-time prekey (1) || its id || a ratchet message.
  Once one of their messages opens in it, bodies are plain ratchet messages (type 1,
  which is the ratchet's own version byte).
* A prekey message we receive starts a session (the responder's X3DH) unless its base key
  names one we have; its one-time prekey is then deleted, and the base key remembered
  (``MAX_BASE_KEYS`` of them), so that a replay cannot start the session again.
* When both sides start a session at once, each ends up with two; a message opens in
  whichever it was sealed in, and that one becomes current. They converge on one.
* Plaintext = n (8) || kind (1) || flags (1) || sent (8) || directory hash (32) || ack
  count (2) || room length (1) || acks (8 each) || room (UTF-8) || text (UTF-8, the
  rest); big-endian. The room is named only in room messages (their room, which the
  receiver checks is one of its own, the sender a member). n is our number for
  the message (receipts acknowledge it; it keeps counting across sessions with the
  peer); kind 0 room, 1 private, 2 receipt, 3 status (an away message, client/status.py:
  never acknowledged, never kept in a mailbox), 4 file (a part of a file transfer: its
  "text" is bytes, see client/fileparts.py); flags bit 0: "sent" is there (the sender's
  clock when it encrypted, whole seconds since the Unix epoch), bit 1: the directory
  hash is there (a room message's: the sender's view of the room's members,
  crypto/identity.py ``room_view``); an absent field is zeros; a
  receipt's acks are the numbers it acknowledges. Inside the encryption, "sent" is the
  sender's word and no one else's: a relay that holds a message back cannot make it look
  fresh. Binary, and packed once per message (``prepare``) for all its recipients: per
  recipient only n is written, and reading one takes a ``struct`` call (two with acks),
  not a JSON parse.
  Sender and recipient are not in it: the session's AD, bound into every key, names
  both (identity keys and nicks), so a message that opens in our session with a peer is
  from that peer, to us.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import nacl.bindings
from nacl.public import PrivateKey, PublicKey

from e2echat.crypto import x3dh
from e2echat.crypto.prekeys import OurPrekeys
from e2echat.crypto.primitives import NONCE_SIZE
from e2echat.crypto.ratchet import MESSAGE_VERSION, Ratchet
from e2echat.crypto.skipped import SkippedKeys
from e2echat.crypto.steps import SealCopy, copy_sealer
from e2echat.crypto.xeddsa import xeddsa_verify
from e2echat.errors import (
    BadPrekeyBundle,
    BadPrekeySignature,
    BadRatchetState,
    DecryptionError,
    LocalProtocolError,
    ReplayError,
    SkippedTooMany,
)

LABEL = b"e2echat v2"
PREKEY_MESSAGE = 2
RATCHET_MESSAGE = MESSAGE_VERSION
# type, identity key, base key, signed prekey id, has a one-time prekey, its id
_PREKEY_HEADER = struct.Struct(">B32s32sIBI")
PREKEY_HEADER_SIZE = _PREKEY_HEADER.size
# Sessions kept per peer: the current one and a few earlier ones, for messages sealed in
# them that are still on their way (both sides started a session at once, say).
MAX_SESSIONS = 4
# Base keys of first messages remembered per peer: a replayed first message whose
# session was since dropped must not start it again. (A first message also needs our
# signed prekey, forgotten after at most three weeks, and its one-time prekey, if any,
# which is deleted at first use.)
MAX_BASE_KEYS = 1000
# X25519 reads a public key modulo this prime and ignores its top bit (RFC 7748), so a
# key has aliases: with the top bit set, or (for tiny values) plus the prime.
_FIELD_PRIME = 2**255 - 19
# Longest message text, in UTF-8 bytes: a screenful, and far below grammar.MAX_BODY.
MAX_TEXT = 16 * 1024
# Longest part of a file transfer, in bytes: a 120 KiB chunk and its head, with room to
# spare under grammar.MAX_BODY (128 KiB) for the ratchet's header, the nonce and the tag.
MAX_DATA = 120 * 1024 + 256
_STATE_FORMAT = 1
_STATE_HEAD = struct.Struct(">B32sQBH")  # format, their identity, next number, sessions, base keys
_SESSION_HEAD = struct.Struct(">32sB")  # base key, prekey header length
_LENGTH = struct.Struct(">I")


class Kind(StrEnum):
    ROOM = "room"
    PRIVATE = "private"
    #: an acknowledgement of messages received (``acks``: their counters); no text
    RECEIPT = "receipt"
    #: the sender's away message, or that it is back (client/status.py); no receipt
    STATUS = "status"
    #: a part of a file transfer (an offer, a chunk, an answer): bytes (``data``), no text
    FILE = "file"


#: a kind's number in a plaintext is its index here
_KINDS = (Kind.ROOM, Kind.PRIVATE, Kind.RECEIPT, Kind.STATUS, Kind.FILE)
_KIND_NUMBERS = {kind: number for number, kind in enumerate(_KINDS)}

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

    #: the peer and us: the parties of the session it opened in (no field says them)
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
    #: for a room message: the room, by the sender's word inside the encryption
    room: str = ""
    #: for a part of a file transfer: its bytes (``text`` is empty)
    data: bytes = b""


#: ``Plaintext``'s fields after sender and recipient, as a plain tuple (``PeerSession.read``)
Fields = tuple[Kind, int, str, int, bool, str, tuple[int, ...], int | None, str, bytes]

# Send times a plaintext may carry: any Unix time in seconds that a float holds exactly.
MAX_SENT = 2**53

# n, kind, flags, sent, directory hash, ack count, room length: what precedes the acks,
# the room and the text
_INNER = struct.Struct(">QBBQ32sHB")
# Longest room name, in UTF-8 bytes (its length is one byte).
MAX_ROOM = 255
_INNER_SIZE = _INNER.size
_N = struct.Struct(">Q")
_HAS_SENT = 0b01
_HAS_DIRECTORY = 0b10
_UNKNOWN_FLAGS = ~(_HAS_SENT | _HAS_DIRECTORY)
_USUAL_FLAGS = _HAS_SENT | _HAS_DIRECTORY
_KIND_COUNT = len(_KINDS)
_FILE_NUMBER = _KIND_NUMBERS[Kind.FILE]
_ROOM_NUMBER = _KIND_NUMBERS[Kind.ROOM]
_NO_DIRECTORY = bytes(32)
_ROOM_KIND = Kind.ROOM  # (read per message: a module constant costs less than the enum's)


def encode_party(party: Party) -> bytes:
    nick = party.nick.encode("utf-8")
    return bytes([len(nick)]) + nick + bytes(party.identity_key) + bytes(party.session_key)


class _Session:
    """One X3DH + Double Ratchet session with the peer."""

    __slots__ = ("base_key", "prekey_header", "ratchet")

    def __init__(self, ratchet: Ratchet, base_key: bytes, prekey_header: bytes) -> None:
        self.ratchet = ratchet
        #: the initiator's ephemeral key: names the session in prekey messages
        self.base_key = base_key
        #: ours to put before every body until the peer answers in this session (or b"")
        self.prekey_header = prekey_header


class PeerSession:
    """Every session we have with one peer (``their_nick`` with ``their_identity``).

    ``dirty`` (shared by all of a client's peers) collects the nicks whose state changed
    and should be saved; ``budget`` holds the skipped keys of every session of a client;
    ``prekeys`` are ours, for the first messages others send us."""

    def __init__(
        self,
        our_nick: str,
        our_identity: PrivateKey,
        their_nick: str,
        their_identity: PublicKey,
        *,
        budget: SkippedKeys,
        prekeys: OurPrekeys,
        dirty: set[str] | None = None,
    ) -> None:
        self.our_nick = our_nick
        self._identity = our_identity
        self.peer = their_nick
        self.identity_key = their_identity
        self._budget = budget
        self._prekeys = prekeys
        self._dirty = set() if dirty is None else dirty
        self._sessions: list[_Session] = []
        # The current session went unanswered too long: the next message starts a new one
        # (see ``drop_unanswered``); the old one still reads what comes in it.
        self._restart = False
        self._base_keys: OrderedDict[bytes, None] = OrderedDict()
        #: the number our next message to them carries (receipts acknowledge it)
        self.next_counter = 0
        # The peer's last directory hash, raw and in hex: see _hex
        self._last_raw, self._last_hex = b"", ""

    @property
    def can_send(self) -> bool:
        """True once there is a session to send in: we started one, or they did (and it
        is not one given up as unanswered)."""
        return bool(self._sessions) and not self._restart

    @property
    def confirmed(self) -> bool:
        """True once the peer has answered in the current session (no prekey header)."""
        return bool(self._sessions) and not self._sessions[0].prekey_header

    @property
    def missing(self) -> int:
        """Messages from this peer skipped over and not (yet) arrived."""
        return sum(session.ratchet.missing for session in self._sessions)

    def close(self) -> None:
        """Drop every session with the peer, and the skipped keys they kept."""
        for session in self._sessions:
            session.ratchet.close()
        self._sessions.clear()

    def drop_unanswered(self) -> bool:
        """Give up sending in the current session if the peer has never answered in it (a
        first message they could not read: the relay gave out their one-time prekey
        twice, say): the next message starts a new one. The session is kept for reading,
        in case they answer in it after all (their receipt was only slow); if they do, it
        serves again. True if it was given up."""
        if not self._sessions or not self._sessions[0].prekey_header or self._restart:
            return False
        self._restart = True
        return True

    def _changed(self) -> None:
        self._dirty.add(self.peer)

    def _push(self, session: _Session) -> None:
        self._restart = False
        self._sessions.insert(0, session)
        for dropped in self._sessions[MAX_SESSIONS:]:
            dropped.ratchet.close()
        del self._sessions[MAX_SESSIONS:]
        self._changed()

    # -- starting a session ---------------------------------------------------------------

    def _check_identity(self, bundle: x3dh.PrekeyBundle) -> None:
        if bytes(bundle.identity_key) != bytes(self.identity_key):
            raise BadPrekeyBundle(
                nick=self.peer, detail="it is for another identity key than the directory shows"
            )

    def check(self, bundle: x3dh.PrekeyBundle) -> None:
        """What ``start`` checks of a bundle, without starting a session: raises
        ``BadPrekeyBundle`` (or ``BadPrekeySignature``) if it is not the peer's."""
        self._check_identity(bundle)
        message = x3dh.signed_prekey_message(bundle.signed_prekey_id, bundle.signed_prekey)
        if not xeddsa_verify(bundle.identity_key, message, bundle.signed_prekey_signature):
            raise BadPrekeySignature(nick=self.peer, prekey_id=bundle.signed_prekey_id)

    def start(self, bundle: x3dh.PrekeyBundle, *, ephemeral: PrivateKey | None = None) -> None:
        """Start a session from the peer's prekey bundle (as the relay gave it); it becomes
        the current one. Raises ``BadPrekeySignature`` if the signed prekey is not signed
        by their identity key, ``BadPrekeyBundle`` if the bundle is for another identity
        key or unusable. ``ephemeral`` is for known-answer tests only."""
        self._check_identity(bundle)
        started = x3dh.initiate(
            self._identity,
            bundle,
            xeddsa_verify,
            our_nick=self.our_nick,
            their_nick=self.peer,
            ephemeral=ephemeral,
        )
        try:
            ratchet = Ratchet.initiator(
                started.shared_key,
                started.associated_data,
                bundle.signed_prekey,
                self._budget,
                peer=self.peer,
            )
        except DecryptionError as exc:
            raise BadPrekeyBundle(nick=self.peer, detail=exc.detail) from None
        one_time = started.one_time_prekey_id
        header = _PREKEY_HEADER.pack(
            PREKEY_MESSAGE,
            bytes(self._identity.public_key),
            bytes(started.ephemeral_key),
            started.signed_prekey_id,
            one_time is not None,
            one_time or 0,
        )
        self._push(_Session(ratchet, bytes(started.ephemeral_key), header))

    # -- sending --------------------------------------------------------------------------

    def encrypt(
        self,
        text: str,
        kind: Kind,
        *,
        directory_hash: str = "",
        acks: tuple[int, ...] = (),
        sent: int | None = None,
        room: str = "",
        nonce: bytes | None = None,
    ) -> bytes:
        """One message for this peer. ``nonce`` is for deterministic tests only."""
        prepared = prepare(text, kind, directory_hash=directory_hash, acks=acks, sent=sent, room=room)
        return self.seal(prepared, random_nonces(1)[0] if nonce is None else nonce)

    def take_counter(self) -> int:
        """The number for our next message to them (see ``seal_numbered``)."""
        counter = self.next_counter
        self.next_counter = counter + 1
        self._changed()
        return counter

    def seal_copy(self, seal_copy: SealCopy) -> tuple[int, bytes]:
        """A copy of a message to many (``Prepared.copies``) in the current session, under
        the number for our next message to them: (that number, the body). One call a
        recipient of a room message: ``take_counter`` and ``seal_numbered`` in one."""
        if not self._sessions:
            raise LocalProtocolError(detail=f"no session with {self.peer} yet")
        session = self._sessions[0]
        counter = self.next_counter
        body = session.ratchet.seal_copy(seal_copy, counter)
        self.next_counter = counter + 1
        self._dirty.add(self.peer)
        header = session.prekey_header
        return counter, header + body if header else body

    def seal(self, prepared: Prepared, nonce: bytes) -> bytes:
        """``prepared`` (see ``prepare``) in the current session, numbered next."""
        return self.seal_numbered(prepared, self.take_counter(), nonce)

    def seal_numbered(self, prepared: Prepared, counter: int, nonce: bytes) -> bytes:
        """``prepared`` in the current session, carrying ``counter`` (from
        ``take_counter``). ``nonce``: 24 bytes from ``random_nonces`` (or fixed, in tests).
        Raises ``LocalProtocolError`` if there is no session yet (see ``start``)."""
        if not self._sessions:
            raise LocalProtocolError(detail=f"no session with {self.peer} yet")
        session = self._sessions[0]
        body = session.ratchet.encrypt(_N.pack(counter) + prepared.after_n, nonce)
        self._dirty.add(self.peer)  # (what _changed does, without the call: once a copy)
        return session.prekey_header + body if session.prekey_header else body

    # -- receiving ------------------------------------------------------------------------

    def decrypt(self, body: bytes) -> Plaintext:
        """Authenticate and decrypt one body. If it does not authenticate, our state is
        unchanged. One that does but whose plaintext is malformed (the peer's own doing)
        is refused all the same; in a session we have, the ratchet has moved past it by
        then (a replay of it is a ``ReplayError``), while a first message starts nothing.

        Raises ``ReplayError`` for a message already read, ``SkippedTooMany`` for one after
        too long a gap, ``DecryptionError`` for anything else."""
        return Plaintext(self.peer, self.our_nick, *self.read(body))

    def read(self, body: bytes) -> Fields:
        """``decrypt``, its answer as a plain tuple: the fields of ``Plaintext`` after
        sender and recipient, in its order. Once per message received: the message next
        in the current session's receiving chain (nearly every one) is opened and parsed
        in one go, without an object made on the way; the rest go the long way."""
        sessions = self._sessions
        if sessions:
            current = sessions[0]
            raw = current.ratchet.open_in_chain(body)
            if raw is not None:  # what _opened does for the current session
                current.prekey_header = b""
                self._restart = False
                self._dirty.add(self.peer)
                # The usual plaintext, a room's (a send time and a view, no acks), is read
                # here: of _parse's checks only the send time's bound and the room's end
                # are left for it. Anything else goes to _parse.
                try:
                    counter, kind_number, flags, sent, directory, acks, room_size = _INNER.unpack_from(raw)
                except struct.error:  # too short to say
                    return self._parse(raw, 0, False)
                room_end = _INNER_SIZE + room_size
                if (
                    flags == _USUAL_FLAGS
                    and kind_number == _ROOM_NUMBER
                    and not acks
                    and sent < MAX_SENT
                    and room_end <= len(raw)
                ):
                    try:  # strict UTF-8: no lone surrogates (they would crash the display)
                        room = raw[_INNER_SIZE:room_end].decode("utf-8")
                        text = raw[room_end:].decode("utf-8")
                    except ValueError:
                        raise DecryptionError(peer=self.peer, detail="malformed plaintext") from None
                    view = self._last_hex if directory == self._last_raw else self._hex(directory)
                    return _ROOM_KIND, counter, text, 0, False, view, (), sent, room, b""
                return self._parse(raw, 0, False)
        kind = body[0] if body else None
        if kind != RATCHET_MESSAGE:
            if kind == PREKEY_MESSAGE:
                return self._decrypt_first(body)
            named = "none" if kind is None else kind
            raise DecryptionError(peer=self.peer, detail=f"unsupported message type {named}")
        failure: DecryptionError | None = None
        for index, session in enumerate(sessions):
            try:
                opened = session.ratchet.decrypt(body)
            except (ReplayError, SkippedTooMany):
                raise  # its header authenticated in this session: nothing else to try
            except DecryptionError as exc:
                failure = failure or exc
                continue
            return self._opened(index, opened.plaintext, opened.skipped, opened.late)
        raise failure or DecryptionError(peer=self.peer, detail="no session with them yet")

    def _decrypt_first(self, body: bytes) -> Fields:
        if len(body) < PREKEY_HEADER_SIZE:
            raise DecryptionError(peer=self.peer, detail="first message too short")
        _, identity, base_key, signed_id, has_one_time, one_time_id = _PREKEY_HEADER.unpack_from(body)
        inner = body[PREKEY_HEADER_SIZE:]
        if identity != bytes(self.identity_key):
            raise DecryptionError(peer=self.peer, detail="a first message under another identity key")
        # Only the encoding libsodium makes: a replay with its base key re-encoded would
        # otherwise be new to the base-key memory, and start its session a second time.
        if int.from_bytes(base_key, "little") >= _FIELD_PRIME:
            raise DecryptionError(peer=self.peer, detail="a first message with a malformed base key")
        for index, session in enumerate(self._sessions):
            if session.base_key == base_key:  # a session we have: the header is only a reminder
                opened = session.ratchet.decrypt(inner)
                return self._opened(index, opened.plaintext, opened.skipped, opened.late)
        if base_key in self._base_keys or self._prekeys.seen(base_key):
            raise ReplayError(peer=self.peer, counter=0)
        signed = self._prekeys.signed(signed_id)
        if signed is None:
            raise DecryptionError(
                peer=self.peer, detail=f"a first message under an unknown signed prekey #{signed_id}"
            )
        if has_one_time not in (0, 1):
            raise DecryptionError(peer=self.peer, detail="malformed first message")
        one_time = None
        if has_one_time:
            one_time = self._prekeys.one_time(one_time_id)
            if one_time is None:
                raise DecryptionError(
                    peer=self.peer,
                    detail=f"a first message under one-time prekey #{one_time_id}, used already: a replay, "
                    "or the relay handed it out twice",
                )
        shared_key, associated_data = x3dh.respond(
            self._identity,
            signed,
            one_time,
            their_identity=self.identity_key,
            their_ephemeral=PublicKey(base_key),
            our_nick=self.our_nick,
            their_nick=self.peer,
        )
        ratchet = Ratchet.responder(shared_key, associated_data, signed, self._budget, peer=self.peer)
        try:
            opened = ratchet.decrypt(inner)
            plaintext = self._parse(opened.plaintext, opened.skipped, opened.late)
        except DecryptionError:
            ratchet.close()
            raise
        # Authenticated: the session is theirs. Its one-time prekey can never serve again.
        if one_time is not None:
            self._prekeys.use_one_time(one_time_id)
        self._base_keys[base_key] = None
        while len(self._base_keys) > MAX_BASE_KEYS:
            self._base_keys.popitem(last=False)
        # Remembered with our prekeys too: they outlive this peer's sessions (dropped when
        # the peer is forgotten, or pushed out), and a replay must still be refused then.
        self._prekeys.remember(base_key, signed_id)
        self._push(_Session(ratchet, base_key, b""))
        return plaintext

    def _opened(self, index: int, raw: bytes, skipped: int, late: bool) -> Fields:
        # The ratchet has moved on already (the AEAD opened); a malformed plaintext inside
        # an authentic message is the peer's fault, and is refused all the same.
        if index:  # they are using an earlier session: it becomes the current one
            self._sessions.insert(0, self._sessions.pop(index))
        self._sessions[0].prekey_header = b""  # they answered in it: it is established
        self._restart = False
        self._dirty.add(self.peer)
        return self._parse(raw, skipped, late)

    def _parse(self, raw: bytes, skipped: int, late: bool) -> Fields:
        # Every plaintext but the usual one in the current chain (``read`` reads that).
        try:
            counter, kind_number, flags, sent, directory, ack_count, room_size = _INNER.unpack_from(raw)
            data = b""
            acks_end = _INNER_SIZE + 8 * ack_count
            room_end = acks_end + room_size
            if (
                kind_number >= _KIND_COUNT
                or flags & _UNKNOWN_FLAGS
                or (sent >= MAX_SENT if flags & _HAS_SENT else sent)
                or (not flags & _HAS_DIRECTORY and directory != _NO_DIRECTORY)
                or ack_count > MAX_ACKS
                or (room_size and kind_number != _ROOM_NUMBER)
                or room_end > len(raw)
            ):
                raise ValueError("malformed")
            # (struct.error if the acks are cut short)
            acks = struct.unpack_from(f">{ack_count}Q", raw, _INNER_SIZE) if ack_count else ()
            # strict UTF-8: no lone surrogates (they would crash the display)
            room = raw[acks_end:room_end].decode("utf-8") if room_size else ""
            if kind_number == _FILE_NUMBER:
                text, data = "", raw[room_end:]
            else:
                text = raw[room_end:].decode("utf-8")
        except (ValueError, struct.error):  # UnicodeDecodeError is a ValueError
            raise DecryptionError(peer=self.peer, detail="malformed plaintext") from None
        if flags & _HAS_DIRECTORY:
            view = self._last_hex if directory == self._last_raw else self._hex(directory)
        else:
            view = ""
        return (
            _KINDS[kind_number],
            counter,
            text,
            skipped,
            late,
            view,
            acks,
            sent if flags & _HAS_SENT else None,
            room,
            data,
        )

    def _hex(self, directory: bytes) -> str:
        # A peer's directory hash changes only when the directory does: remember the last.
        if directory != self._last_raw:
            self._last_raw, self._last_hex = directory, directory.hex()
        return self._last_hex

    # -- persistence ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole state with this peer: secret, so seal it before storing.

        format (1) || their identity key (32) || next number (8) || sessions (1) ||
        base keys (2) || base keys (32 each) || per session, current first: base key (32)
        || prekey header length (1) || prekey header || state length (4) || ratchet state."""
        parts = [
            _STATE_HEAD.pack(
                _STATE_FORMAT,
                bytes(self.identity_key),
                self.next_counter,
                len(self._sessions),
                len(self._base_keys),
            ),
            *self._base_keys,
        ]
        for session in self._sessions:
            state = session.ratchet.to_bytes()
            header = session.prekey_header
            parts += [
                _SESSION_HEAD.pack(session.base_key, len(header)),
                header,
                _LENGTH.pack(len(state)),
                state,
            ]
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        our_nick: str,
        our_identity: PrivateKey,
        their_nick: str,
        budget: SkippedKeys,
        prekeys: OurPrekeys,
        dirty: set[str] | None = None,
    ) -> PeerSession:
        """A peer's state saved by ``to_bytes``. Raises ``BadRatchetState``."""

        def bad(detail: str) -> BadRatchetState:
            return BadRatchetState(peer=their_nick, detail=detail)

        try:
            version, identity, counter, sessions, base_keys = _STATE_HEAD.unpack_from(data)
        except struct.error:
            raise bad("truncated") from None
        if version != _STATE_FORMAT:
            raise bad(f"unknown format {version}")
        peer = cls(
            our_nick,
            our_identity,
            their_nick,
            PublicKey(identity),
            budget=budget,
            prekeys=prekeys,
            dirty=dirty,
        )
        peer.next_counter = counter
        try:
            at = _STATE_HEAD.size
            for _ in range(base_keys):
                key = data[at : at + 32]
                if len(key) != 32:
                    raise bad("truncated")
                peer._base_keys[key] = None
                at += 32
            for _ in range(sessions):
                base_key, header_size = _SESSION_HEAD.unpack_from(data, at)
                at += _SESSION_HEAD.size
                header = data[at : at + header_size]
                if header_size not in (0, PREKEY_HEADER_SIZE) or len(header) != header_size:
                    raise bad("bad prekey header")
                at += header_size
                (size,) = _LENGTH.unpack_from(data, at)
                at += _LENGTH.size
                state = data[at : at + size]
                at += size
                ratchet = Ratchet.from_bytes(state, budget, peer=their_nick)
                peer._sessions.append(_Session(ratchet, base_key, header))
            if at != len(data) or len(peer._sessions) > MAX_SESSIONS:
                raise bad("wrong length")
        except (struct.error, BadRatchetState) as exc:
            # The sessions read before the damage have put their skipped keys into the
            # budget every peer shares: they must leave with the rest.
            peer.close()
            if isinstance(exc, BadRatchetState):
                raise
            raise bad("truncated") from None
        return peer


@dataclass(frozen=True)
class Prepared:
    """One message, packed once for all its recipients (see ``prepare``)."""

    kind: Kind
    #: the plaintext after n: kind, flags, sent, directory hash, acks, text
    after_n: bytes

    def copies(self, count: int, nonces: bytes | None = None) -> SealCopy:
        """What seals ``count`` copies of this message, one per recipient
        (``PeerSession.seal_copy``), one after another, with nonces drawn in one call.
        ``nonces`` (24 bytes a copy) are for deterministic tests only."""
        return copy_sealer(
            self.after_n, nacl.bindings.randombytes(NONCE_SIZE * count) if nonces is None else nonces
        )


def prepare(
    text: str,
    kind: Kind,
    *,
    directory_hash: str = "",
    acks: tuple[int, ...] = (),
    sent: int | None = None,
    room: str = "",
) -> Prepared:
    """The parts of a message's plaintext that are the same for every recipient: all but
    n, which ``seal_numbered`` writes. ``directory_hash``: hex, 32 bytes (or empty);
    ``sent`` is our clock now (Unix time, seconds); ``room`` names a room message's room.
    Raises ``LocalProtocolError`` for a text over MAX_TEXT or a field out of range (and
    ``UnicodeEncodeError`` for a text UTF-8 cannot carry)."""
    if kind is Kind.FILE:
        raise LocalProtocolError(detail="a part of a file transfer is bytes: see prepare_data")
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_TEXT:
        raise LocalProtocolError(detail=f"message longer than {MAX_TEXT} bytes")
    flags = 0
    if sent is not None:
        if not 0 <= sent < MAX_SENT:
            raise LocalProtocolError(detail=f"send time {sent} out of range")
        flags |= _HAS_SENT
    directory = _NO_DIRECTORY
    if directory_hash:
        try:
            directory = bytes.fromhex(directory_hash)
        except ValueError:
            directory = b""
        if len(directory) != len(_NO_DIRECTORY):
            raise LocalProtocolError(detail="a directory hash is 32 bytes, in hex")
        flags |= _HAS_DIRECTORY
    if len(acks) > MAX_ACKS or not all(0 <= ack < 2**64 for ack in acks):
        raise LocalProtocolError(detail=f"a receipt acknowledges at most {MAX_ACKS} numbers below 2**64")
    named = room.encode("utf-8")
    if named and kind is not Kind.ROOM:
        raise LocalProtocolError(detail="only a room message names a room")
    if len(named) > MAX_ROOM:
        raise LocalProtocolError(detail=f"a room name is at most {MAX_ROOM} bytes")
    head = _INNER.pack(0, _KIND_NUMBERS[kind], flags, int(sent or 0), directory, len(acks), len(named))
    packed_acks = struct.pack(f">{len(acks)}Q", *acks)
    return Prepared(kind, head[_N.size :] + packed_acks + named + encoded)


def prepare_data(data: bytes) -> Prepared:
    """A part of a file transfer (``Kind.FILE``): bytes, no send time, no directory hash
    (a file's parts are not shown, and a chunk should not pay 40 bytes it does not use).
    Raises ``LocalProtocolError`` for more than MAX_DATA bytes."""
    if len(data) > MAX_DATA:
        raise LocalProtocolError(detail=f"a part of a file transfer is at most {MAX_DATA} bytes")
    head = _INNER.pack(0, _FILE_NUMBER, 0, 0, _NO_DIRECTORY, 0, 0)
    return Prepared(Kind.FILE, head[_N.size :] + data)


def seal_all(messages: list[tuple[PeerSession, Prepared]]) -> list[tuple[str, bytes]]:
    """(peer, body) for each (session, prepared message), each under the session's next
    message key, with the nonces drawn in one call."""
    nonces = random_nonces(len(messages))
    return [(s.peer, s.seal(prepared, nonce)) for (s, prepared), nonce in zip(messages, nonces, strict=True)]


def seal_copies(peers: list[PeerSession], seal_copy: SealCopy) -> list[tuple[int, bytes]]:
    """``peer.seal_copy(seal_copy)`` for each of ``peers``, in order: a room message's
    copies, one a recipient, in one call (what ``PeerSession.seal_copy`` does, inline)."""
    copies = []
    for peer in peers:
        sessions = peer._sessions
        if not sessions:
            raise LocalProtocolError(detail=f"no session with {peer.peer} yet")
        session = sessions[0]
        counter = peer.next_counter
        body = session.ratchet.seal_copy(seal_copy, counter)
        peer.next_counter = counter + 1
        peer._dirty.add(peer.peer)
        header = session.prekey_header
        copies.append((counter, header + body if header else body))
    return copies


def random_nonces(count: int) -> list[bytes]:
    """``count`` nonces of 24 random bytes from libsodium, drawn in one call: a room
    message needs one per recipient, and one call is far cheaper than ``count``."""
    pool = nacl.bindings.randombytes(NONCE_SIZE * count)
    return [pool[start : start + NONCE_SIZE] for start in range(0, len(pool), NONCE_SIZE)]


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

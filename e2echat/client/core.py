"""The client's protocol state machine, without any I/O.

Bytes from the relay go in through ``receive_data`` and come out as events for the UI;
what to write to the relay collects in ``data_to_send()``. ``send_room`` and
``send_private`` encrypt a message separately for each recipient with that peer's
``PeerSession``. The asyncio shell in client.py only moves bytes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

import nacl.exceptions
import nacl.utils
from nacl.public import PrivateKey

from e2echat.client.events import (  # re-exported: the UI's vocabulary
    Event,
    KeyChanged,
    KeyPinned,
    MessageReceived,
    MessagesMissing,
    PeerJoined,
    PeerLeft,
    Registered,
    RegistrationFailed,
    RelayClosing,
    RelayError,
    SecurityWarning,
    SendReport,
    SplitView,
)
from e2echat.client.receipts import RECEIPT_TIMEOUT, DeliveryReport, DeliveryTracker, Message
from e2echat.client.trust import KnownPeers, Trust
from e2echat.crypto.identity import fingerprint, registration_proof, safety_number
from e2echat.crypto.session import (
    MAX_ACKS,
    MAX_TEXT,
    Kind,
    Party,
    PeerSession,
    Prepared,
    digest_of_encoded,
    encode_party,
    prepare,
    seal_all,
)
from e2echat.errors import (
    CommandError,
    DecryptionError,
    LocalProtocolError,
    RemoteProtocolError,
)
from e2echat.wire import messages as m
from e2echat.wire.framing import MAX_FRAME, FrameDecoder, encode_frame

__all__ = [
    "ClientCore",
    "ClientState",
    "DeliveryReport",
    "Event",
    "KeyChanged",
    "KeyPinned",
    "MessageReceived",
    "MessagesMissing",
    "PeerJoined",
    "PeerLeft",
    "Registered",
    "RegistrationFailed",
    "RelayClosing",
    "RelayError",
    "SecurityWarning",
    "SendReport",
    "SplitView",
]

log = logging.getLogger("e2echat.client.core")


class ClientState(Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_WELCOME = "await-welcome"
    AWAIT_DIRECTORY = "await-directory"
    ONLINE = "online"
    CLOSED = "closed"


# Receipts go out about this often, at most (the rest wait for the next tick): each gap is
# drawn between 0.5 and 1.5 of it. A quiet chat gets its receipt at once; a busy room gets
# one receipt per sender a second, not one per message.
RECEIPT_INTERVAL = 1.0


def receipt_gap() -> float:
    """How long until the next batch of receipts may go: 0.5 to 1.5 RECEIPT_INTERVAL, at
    random (from libsodium, as all randomness here; the spread has no security role)."""
    return RECEIPT_INTERVAL * (0.5 + nacl.utils.random(1)[0] / 256)


# Leave room in each frame for the JSON around the envelopes.
_FRAME_BUDGET = MAX_FRAME - 4096


class ClientCore:
    def __init__(
        self,
        nick: str,
        identity: PrivateKey,
        session_key: PrivateKey,
        known_peers: KnownPeers | None = None,
        *,
        password: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        receipt_timeout: float = RECEIPT_TIMEOUT,
    ) -> None:
        if not m.is_valid_nick(nick):
            raise LocalProtocolError(detail=f"invalid nick {nick!r}: {m.NICK_RULE}")
        self.nick = nick
        self.state = ClientState.AWAIT_CHALLENGE
        self._identity = identity
        self._session_key = session_key
        self._decoder = FrameDecoder()
        self._outgoing = bytearray()
        self._sessions: dict[str, PeerSession] = {}
        self._unusable: set[str] = set()  # peers whose keys cannot make a session
        self._notices: list[Event] = []
        self._arrival_events: list[
            Event
        ] = []  # while the directory arrives in parts  # found while sending; handed out with the next events
        #: nick -> the keys the relay says they have, for everyone else online
        self.directory: dict[str, m.PeerInfo] = {}
        self._next_id = 1
        #: who the last room message left out because their key changed
        self.left_out: list[str] = []
        self._password = password
        self._clock = clock
        self.deliveries = DeliveryTracker(receipt_timeout)
        self._acks_due: dict[str, list[int]] = {}
        self._receipts_due_at = 0.0
        self.known_peers = known_peers if known_peers is not None else KnownPeers()
        self._retired_session_keys: set[bytes] = set()
        # Hashes of our recent views of the directory. A message encrypted just before its
        # sender saw a join or leave carries the previous view; 64 views is ample for that
        # race and still catches a relay that keeps two views apart.
        self._recent_views: deque[str] = deque(maxlen=64)
        ours = Party(nick, identity.public_key, session_key.public_key)
        self._encoded_entries: dict[str, bytes] = {nick: encode_party(ours)}
        self._split_warned: set[tuple[str, str]] = set()
        # Trust states and room recipients, cached: a room message to hundreds must not
        # compare hundreds of keys. Dropped when the directory, a session or a pin changes.
        self._trust_cache: dict[str, Trust] = {}
        self._room_cache: tuple[list[str], list[str]] | None = None  # (recipients, withheld)
        self._cached_for: tuple[KnownPeers, int] | None = None
        self._refresh_view()

    # -- bytes in, bytes out --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the relay. Raises ``RemoteProtocolError`` if the relay breaks
        the protocol; the connection is then useless and must be closed."""
        events: list[Event] = []
        for frame in self._decoder.receive_data(data):
            # Most frames are deliveries in the relay's one canonical form: those skip
            # the strict decoder (decode_deliver accepts nothing it would refuse).
            fast = m.decode_deliver(frame) if self.state is ClientState.ONLINE else None
            if fast is not None:
                events.extend(self._deliver(*fast))
            else:
                events.extend(self._handle(m.decode_message(frame)))
        self._send_receipts()
        return self._take_notices() + events if self._notices else events

    def _take_notices(self) -> list[Event]:
        notices, self._notices = self._notices, []
        return notices

    @property
    def settled(self) -> bool:
        """The relay has answered for every message, and every recipient has confirmed
        (or is known not to have got it)."""
        return self.deliveries.settled

    @property
    def pending(self) -> dict[int, Message]:
        """Messages the relay has not yet answered for, by id."""
        return self.deliveries.awaiting_relay

    def ping(self) -> None:
        """Ask the relay whether it is still there (it answers with a pong)."""
        self._write(m.Ping())

    def tick(self) -> list[Event]:
        """Call now and then: reports messages whose receipts are overdue."""
        self._send_receipts()
        return self._take_notices() + list(self.deliveries.expire(self._clock()))

    def abandon(self, reason: str) -> list[Event]:
        """The connection is gone: report every message not yet confirmed."""
        return list(self.deliveries.abandon(reason))

    def flush_receipts(self) -> None:
        """Acknowledge everything that arrived, now: the connection is about to close, and
        a message we read must not be reported to its sender as never confirmed."""
        self._send_receipts(force=True)

    def _send_receipts(self, *, force: bool = False) -> None:
        """Acknowledge what arrived: one frame (a ``send`` with id 0) holding a receipt for
        each sender, at most about every RECEIPT_INTERVAL, so that receipts in a busy room cost
        a few frames a second, not one per message (they count against the relay's rate
        limit like anything else)."""
        if not self._acks_due or self.state is not ClientState.ONLINE:
            return
        now = self._clock()
        if not force and now < self._receipts_due_at:
            return  # tick() sends them shortly
        # The next batch is due after 0.5 to 1.5 intervals, at random: in a busy room a
        # message reaches everyone at once, and fixed intervals would keep everyone's
        # receipts in step, a burst of work for every client (and the relay) at once.
        self._receipts_due_at = now + receipt_gap()
        receipts: list[tuple[PeerSession, Prepared]] = []
        for nick, counters in self._acks_due.items():
            session = self._session_with(nick)
            # Nothing goes to a nick whose key changed, not even a receipt.
            if session is None or self.trust(nick) is Trust.CHANGED:
                continue
            for start in range(0, len(counters), MAX_ACKS):
                acks = tuple(counters[start : start + MAX_ACKS])
                receipts.append(
                    (session, prepare("", Kind.RECEIPT, directory_hash=self._recent_views[-1], acks=acks))
                )
        self._acks_due.clear()
        self._write_in_frames(0, seal_all(receipts))

    def _write_in_frames(self, message_id: int, envelopes: list[tuple[str, bytes]]) -> None:
        """``Send`` frames carrying ``envelopes`` ((recipient, body) pairs), each frame under
        the size and item limits."""
        count = len(envelopes)
        if not count:
            return
        if (
            count <= m.MAX_ITEMS
            and sum([len(body) for _, body in envelopes]) * 4 // 3 + 96 * count <= _FRAME_BUDGET
            and len({to for to, _ in envelopes}) == count
        ):  # the usual case, a room message: everything fits in one frame
            self._outgoing += encode_frame(m.encode_send(message_id, envelopes))
            return
        batch: list[tuple[str, bytes]] = []
        names: set[str] = set()  # the relay refuses a frame naming one recipient twice
        size = 0
        for to, body in envelopes:
            envelope_size = len(to) + (len(body) * 4) // 3 + 64
            full = size + envelope_size > _FRAME_BUDGET or len(batch) == m.MAX_ITEMS
            if batch and (full or to in names):
                self._outgoing += encode_frame(m.encode_send(message_id, batch))
                batch, names, size = [], set(), 0
            batch.append((to, body))
            names.add(to)
            size += envelope_size
        if batch:
            self._outgoing += encode_frame(m.encode_send(message_id, batch))

    def _write(self, message: m.Message) -> None:
        self._outgoing += encode_frame(m.encode_message(message))

    # -- sending ----------------------------------------------------------------------------

    @property
    def peers(self) -> list[str]:
        """Everyone else online, sorted."""
        return sorted(self.directory)

    def trust(self, nick: str) -> Trust:
        """How far the key the directory shows for ``nick`` is trusted."""
        self._check_caches()
        trust = self._trust_cache.get(nick)
        if trust is None:
            trust = self.known_peers.state(nick, self._peer(nick).identity_key)
            self._trust_cache[nick] = trust
        return trust

    def withheld(self) -> list[str]:
        """Peers online whose identity key changed: nothing is sent to them until accepted."""
        return [nick for nick in self.peers if self.trust(nick) is Trust.CHANGED]

    def _check_caches(self) -> None:
        """Drop the cached trust states and room recipients if any pin changed since."""
        peers, generation = self.known_peers, self.known_peers.generation
        cached_for = self._cached_for
        if cached_for is None or cached_for[0] is not peers or cached_for[1] != generation:
            self._forget_caches()
            self._cached_for = (peers, generation)

    def _forget_caches(self) -> None:
        self._trust_cache.clear()
        self._room_cache = None

    def _room_recipients(self) -> tuple[list[str], list[str]]:
        """(everyone a room message goes to, everyone withheld for a changed key), sorted."""
        self._check_caches()
        if self._room_cache is None:
            blocked = self.withheld()
            recipients = [nick for nick in self.peers if nick not in blocked and self._session_with(nick)]
            # _session_with may have found a peer unusable (and forgotten the caches).
            self._room_cache = (recipients, blocked)
        return self._room_cache

    def send_room(self, text: str) -> int:
        """Encrypt ``text`` for everyone else online whose key is not in doubt.
        Returns the message id; ``left_out`` then names those left out."""
        self._require_online()
        recipients, blocked = self._room_recipients()
        self.left_out = list(blocked)
        if not recipients:
            if blocked:
                raise CommandError(
                    detail=f"not sent: the key of {', '.join(sorted(blocked))} changed and was not "
                    "accepted (see /verify and /trust)"
                )
            raise CommandError(detail="nobody else is online; the message was not sent")
        return self._send(text, Kind.ROOM, recipients)

    def send_private(self, recipient: str, text: str) -> int:
        self._require_online()
        if recipient == self.nick:
            raise CommandError(detail="that is you; /msg sends to someone else")
        if recipient not in self.directory:
            raise CommandError(detail=f"{recipient} is not online (see /who); the message was not sent")
        if self.trust(recipient) is Trust.CHANGED:
            raise CommandError(
                detail=f"not sent: {recipient}'s key changed; nothing is sent to {recipient} until "
                f"you accept the new key with /trust {recipient}"
            )
        if self._session_with(recipient) is None:
            raise CommandError(detail=f"no secure session with {recipient}; the message was not sent")
        return self._send(text, Kind.PRIVATE, [recipient])

    # -- trust ------------------------------------------------------------------------------

    def _peer(self, nick: str) -> m.PeerInfo:
        peer = self.directory.get(nick)
        if peer is None:
            raise CommandError(detail=f"{nick} is not online (see /who)")
        return peer

    def safety_number(self, nick: str) -> str:
        peer = self._peer(nick)
        return safety_number(self._identity.public_key, self.nick, peer.identity_key, nick)

    def accept_key(self, nick: str) -> None:
        """Pin the key the directory now shows for ``nick`` (clears verification)."""
        self.known_peers.accept(nick, self._peer(nick).identity_key)
        self._refresh_view()

    def set_verified(self, nick: str, verified: bool) -> None:
        peer = self._peer(nick)
        if self.trust(nick) is Trust.CHANGED:
            raise CommandError(detail=f"{nick}'s key changed: accept it first with /trust {nick}")
        self.known_peers.see(nick, peer.identity_key)
        self.known_peers.set_verified(nick, peer.identity_key, verified)

    def _require_online(self) -> None:
        if self.state is not ClientState.ONLINE:
            raise CommandError(detail="not connected to the relay; the message was not sent")

    def _send(self, text: str, kind: Kind, recipients: list[str]) -> int:
        if not text:
            raise CommandError(detail="empty message not sent")
        if not m.is_utf8(text):
            raise CommandError(detail="the message is not valid Unicode; not sent")
        if len(text.encode("utf-8")) > MAX_TEXT:
            raise CommandError(detail=f"message too long (the limit is {MAX_TEXT} bytes); not sent")
        message_id = self._next_id
        self._next_id += 1
        # The text is JSON-encoded once and the nonces drawn in one call; per recipient
        # there remain the chain step and the encryption itself.
        prepared = prepare(text, kind, directory_hash=self._recent_views[-1])
        sessions = [self._sessions[nick] for nick in recipients]
        counters = {session.peer: session.next_counter for session in sessions}
        self._write_in_frames(message_id, seal_all([(session, prepared) for session in sessions]))
        preview = text if len(text) <= 40 else text[:39] + "…"
        self.deliveries.sent(message_id, kind is Kind.PRIVATE, counters, self._clock(), preview)
        return message_id

    # -- receiving --------------------------------------------------------------------------

    def _handle(self, message: m.Message) -> list[Event]:
        if isinstance(message, m.Error):
            if self.state is not ClientState.ONLINE:
                self.state = ClientState.CLOSED
                return [RegistrationFailed(message.code, message.text)]
            return [RelayError(message.code, message.text)]
        if isinstance(message, m.Bye):
            self.state = ClientState.CLOSED
            return [RelayClosing(message.reason)]
        if self.state is ClientState.AWAIT_CHALLENGE and isinstance(message, m.Challenge):
            return self._answer_challenge(message)
        if self.state is ClientState.AWAIT_WELCOME and isinstance(message, m.Welcome):
            return self._welcome(message)
        if self.state is ClientState.AWAIT_DIRECTORY and isinstance(message, m.Directory):
            return self._directory(message.peers, message.more)
        if self.state is ClientState.ONLINE:
            if isinstance(message, m.Deliver):
                return self._deliver(message.sender, message.body)
            if isinstance(message, m.PeerJoined):
                return self._joined(message.peer)
            if isinstance(message, m.PeerLeft):
                return self._left(message.nick)
            if isinstance(message, m.Routed):
                return self._routed(message)
            if isinstance(message, m.Ping):
                self._write(m.Pong())
                return []
            if isinstance(message, m.Pong):
                return []
        raise RemoteProtocolError(
            detail=f"relay sent an unexpected {message.TYPE!r} message ({self.state.value})"
        )

    def _answer_challenge(self, challenge: m.Challenge) -> list[Event]:
        session_public = self._session_key.public_key
        if challenge.password_required and self._password is None:
            self.state = ClientState.CLOSED
            return [
                RegistrationFailed(
                    "password_required",
                    "this relay needs a password: pass --password-file FILE or set E2ECHAT_RELAY_PASSWORD",
                )
            ]
        password = self._password if challenge.password_required and self._password else b""
        try:
            proof = registration_proof(self._identity, challenge, bytes(session_public), password)
        except nacl.exceptions.CryptoError:
            raise RemoteProtocolError(detail="the relay's key is invalid") from None
        self._write(m.Register(self.nick, self._identity.public_key, session_public, proof))
        self.state = ClientState.AWAIT_WELCOME
        return []

    def _welcome(self, welcome: m.Welcome) -> list[Event]:
        if welcome.nick != self.nick:
            raise RemoteProtocolError(detail=f"relay welcomed {welcome.nick!r}, not {self.nick!r}")
        self.state = ClientState.AWAIT_DIRECTORY
        return self._directory(welcome.peers, welcome.more)

    def _directory(self, peers: tuple[m.PeerInfo, ...], more: bool) -> list[Event]:
        for peer in peers:
            self._arrival_events.extend(self._add_peer(peer, refresh=False))
        if more:
            return []
        self.state = ClientState.ONLINE
        self._refresh_view()  # once, not once per peer: the directory may be thousands long
        events, self._arrival_events = self._arrival_events, []
        return [Registered(self.nick, tuple(self.peers)), *events]

    def _add_peer(self, peer: m.PeerInfo, *, refresh: bool = True) -> list[Event]:
        if peer.nick == self.nick:
            raise RemoteProtocolError(detail="relay listed our own nick as a peer")
        known = self.directory.get(peer.nick)
        if known == peer:
            return []  # announced again with the same keys: keep the session and its counters
        if bytes(peer.session_key) in self._retired_session_keys:
            # A real client makes a fresh session key for every connection. The same key
            # again would restart a session at counter 0: a way to replay old messages.
            return [
                SecurityWarning(
                    f"the relay announced {peer.nick} again with a session key already used; "
                    "ignored (a replay attempt?)"
                )
            ]
        events: list[Event] = self._retire(peer.nick) if known is not None else []
        self.directory[peer.nick] = peer
        self._forget_caches()
        self._encoded_entries[peer.nick] = encode_party(Party(peer.nick, peer.identity_key, peer.session_key))
        self._unusable.discard(peer.nick)
        if refresh:
            self._refresh_view()
        trust, first_contact = self.known_peers.see(peer.nick, peer.identity_key)
        if first_contact:
            events.append(KeyPinned(peer.nick))
        elif trust is Trust.CHANGED:
            pin = self.known_peers.get(peer.nick)
            assert pin is not None
            events.append(
                KeyChanged(peer.nick, fingerprint(pin.identity_key), fingerprint(peer.identity_key))
            )
        # The session itself (three X25519 operations) is made when first needed: a newcomer
        # to a relay with thousands online must not pay for every pair up front.
        return events

    def _session_with(self, nick: str) -> PeerSession | None:
        """The session with ``nick``, made on first use; None if there can be none."""
        session = self._sessions.get(nick)
        if session is not None or self.state is not ClientState.ONLINE:
            return session
        peer = self.directory.get(nick)
        if peer is None or nick in self._unusable:
            return None
        party = Party(peer.nick, peer.identity_key, peer.session_key)
        try:
            session = PeerSession(self.nick, self._identity, self._session_key, party)
        except DecryptionError as exc:
            self._unusable.add(nick)
            self._forget_caches()
            self._notices.append(SecurityWarning(f"cannot talk to {nick} securely: {exc}"))
            return None
        self._sessions[nick] = session
        return session

    def _joined(self, peer: m.PeerInfo) -> list[Event]:
        if self.directory.get(peer.nick) == peer:
            return []  # the same person, announced again: nothing new
        events = self._add_peer(peer)
        if peer.nick not in self.directory:
            return events  # refused (see _add_peer)
        return [PeerJoined(peer.nick), *events]

    def _left(self, nick: str) -> list[Event]:
        if nick not in self.directory:
            return []
        return [PeerLeft(nick), *self._retire(nick)]

    def _retire(self, nick: str) -> list[Event]:
        """``nick``'s session ends (they left, or came back with other keys)."""
        peer = self.directory.pop(nick)
        self._forget_caches()
        del self._encoded_entries[nick]
        self._refresh_view()
        self._retired_session_keys.add(bytes(peer.session_key))
        # Dropping the session forgets its chain keys: forward secrecy for this pair.
        self._sessions.pop(nick, None)
        # Acknowledgements owed in the old session must not be sent in a new one (counters
        # restart there), and no receipt from a new session may confirm an old copy.
        self._acks_due.pop(nick, None)
        return list(self.deliveries.peer_left(nick))

    def _deliver(self, sender: str, body: bytes) -> list[Event]:
        session = self._sessions.get(sender) or self._session_with(sender)
        if session is None:
            return [
                SecurityWarning(f"dropped a message claiming to be from {sender}, who has no session with us")
            ]
        try:
            plaintext = session.decrypt(body)
        except DecryptionError as exc:
            log.info("dropped a message that did not authenticate")
            return [SecurityWarning(f"{exc}; it was dropped")]
        events: list[Event] = []
        if plaintext.skipped:
            events.append(MessagesMissing(plaintext.sender, plaintext.skipped))
        if plaintext.kind is Kind.RECEIPT:
            # A receipt from a key we do not accept confirms nothing. (Belt and braces: a
            # changed key gets no copies and a replaced session's copies fail in _retire,
            # so no receipt from one can match today; this keeps it so if that changes.)
            if self.trust(plaintext.sender) is not Trust.CHANGED:
                events.extend(self.deliveries.acknowledged(plaintext.sender, list(plaintext.acks)))
            return events
        trust = self.trust(plaintext.sender)
        if trust is not Trust.CHANGED:  # nothing is owed to a key we do not accept, even later
            self._acks_due.setdefault(plaintext.sender, []).append(plaintext.counter)
        if (
            plaintext.directory_hash != self._recent_views[-1]  # the usual case, checked first
            and plaintext.directory_hash not in self._recent_views
            and (plaintext.sender, plaintext.directory_hash) not in self._split_warned
        ):
            self._split_warned.add((plaintext.sender, plaintext.directory_hash))
            events.append(SplitView(plaintext.sender))
        private = plaintext.kind is Kind.PRIVATE
        events.append(MessageReceived(plaintext.sender, plaintext.text, private, trust, plaintext.late))
        return events

    def _refresh_view(self) -> None:
        # Called on every join and leave, so it must stay cheap with thousands online: the
        # entries' encodings are kept (see _add_peer, _retire); only sorting and hashing
        # are redone.
        encoded = self._encoded_entries
        self._recent_views.append(digest_of_encoded([encoded[nick] for nick in sorted(encoded)]))

    def forget_keys(self) -> None:
        """The connection is over: drop every session and with them all chain keys. (The
        session private key goes with this object; Python cannot wipe memory.)"""
        self._sessions.clear()
        self._forget_caches()
        self.state = ClientState.CLOSED

    def _routed(self, routed: m.Routed) -> list[Event]:
        return list(self.deliveries.routed(routed.id, routed.delivered, routed.missing, routed.refused))

"""The relay's directory and routing decisions, without any I/O.

``RelayCore`` is told about connections and the messages they send, and answers with
actions: ``Outgoing(conn, message)`` to write, ``Close(conn, reason)`` to hang up. The
asyncio shell in relay.py carries them out. It never sees a message key: ciphertext
bodies pass through unopened.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum

import nacl.exceptions
import nacl.utils
from nacl.public import Box, PrivateKey

from e2echat.wire.messages import (
    CHALLENGE_SIZE,
    Bye,
    Challenge,
    Deliver,
    Directory,
    Error,
    Message,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    Ping,
    Pong,
    Register,
    Routed,
    Routes,
    Send,
    Welcome,
    encode_directory,
    encode_peer,
    encode_welcome,
    printable_reason,
)

ConnId = int
# Directory entries per frame: about 140 bytes each on the wire, so 2,000 make ~280 KiB.
DIRECTORY_CHUNK = 2000


@dataclass(frozen=True)
class Outgoing:
    conn: ConnId
    message: Message
    #: the message already encoded (exactly ``encode_message(message)``), when the core
    #: had the parts at hand; written instead of encoding ``message`` again
    payload: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One message to many connections (presence): encoded once, written to each."""

    conns: list[ConnId]
    message: Message

    def expand(self) -> list[Outgoing]:
        return [Outgoing(conn, self.message) for conn in self.conns]


@dataclass(frozen=True, slots=True)
class Fanout:
    """A ``send``'s ciphertexts, each to its recipient's connection as a ``deliver`` from
    ``sender``; the bodies are still base64, as they came."""

    sender: str
    routes: list[tuple[ConnId, bytes]]

    def expand(self) -> list[Outgoing]:
        return [
            Outgoing(conn, Deliver(self.sender, base64.b64decode(body, validate=True)))
            for conn, body in self.routes
        ]


@dataclass(frozen=True)
class Close:
    """Hang up on ``conn``; ``reason`` is for the relay's log (never message content)."""

    conn: ConnId
    reason: str


Action = Outgoing | Broadcast | Fanout | Close


def one_by_one(actions: list[Action]) -> list[Outgoing | Close]:
    """The actions with every bulk one spelled out, one ``Outgoing`` per connection: how
    tests and the test suite's hostile relay look at what the relay writes."""
    flat: list[Outgoing | Close] = []
    for action in actions:
        flat.extend(action.expand() if isinstance(action, Broadcast | Fanout) else [action])
    return flat


class ConnState(Enum):
    AWAIT_REGISTER = "await-register"
    ONLINE = "online"


@dataclass
class _Connection:
    conn: ConnId
    state: ConnState
    # Per-connection key and challenge; dropped once registration succeeds.
    relay_key: PrivateKey | None
    challenge: bytes
    peer: PeerInfo | None = None


def _digest(secret: bytes) -> bytes:
    # Compare digests, not the secrets: compare_digest is constant-time only for inputs of
    # equal length, and the length of a password is part of the secret.
    return hashlib.sha256(b"e2echat relay password" + secret).digest()


class TokenBucket:
    """Allows ``rate`` events a second on average and bursts of ``burst``. Time is passed
    in, so it is tested without sleeping."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class RelayCore:
    #: if set, clients must put it in their registration proof
    password: bytes | None = None
    _connections: dict[ConnId, _Connection] = field(default_factory=dict)
    #: nick -> connection, for everyone registered
    online: dict[str, ConnId] = field(default_factory=dict)
    #: nick -> directory entry, and the same encoded, in the order they came online
    _peers: dict[str, PeerInfo] = field(default_factory=dict)
    _encoded_peers: dict[str, bytes] = field(default_factory=dict)

    def connect(self, conn: ConnId) -> list[Action]:
        relay_key = PrivateKey.generate()
        challenge = nacl.utils.random(CHALLENGE_SIZE)
        self._connections[conn] = _Connection(conn, ConnState.AWAIT_REGISTER, relay_key, challenge)
        return [Outgoing(conn, Challenge(relay_key.public_key, challenge, self.password is not None))]

    def is_registered(self, conn: ConnId) -> bool:
        record = self._connections.get(conn)
        return record is not None and record.state is ConnState.ONLINE

    def nick_of(self, conn: ConnId) -> str | None:
        record = self._connections.get(conn)
        return record.peer.nick if record and record.peer else None

    def receive(self, conn: ConnId, message: Message | Routes) -> list[Action]:
        record = self._connections.get(conn)
        if record is None:
            return []
        if isinstance(message, Error):
            return [Close(conn, f"client reported error {message.code}")]
        if record.state is ConnState.AWAIT_REGISTER:
            if isinstance(message, Register):
                return self._register(record, message)
            return self.refuse(conn, "not_registered", "register before sending anything else")
        if isinstance(message, Routes):
            return self._route(record, message)
        if isinstance(message, Send):
            return self._route(record, Routes.of(message))
        if isinstance(message, Ping):
            return [Outgoing(conn, Pong())]
        if isinstance(message, Pong):
            return []
        return self.refuse(conn, "protocol", f"unexpected {type(message).TYPE!r} message")

    def refuse(self, conn: ConnId, code: str, text: str) -> list[Action]:
        """An error frame to the offender, then hang up on it (and on nobody else)."""
        text = printable_reason(text)
        return [Outgoing(conn, Error(code, text)), Close(conn, f"{code}: {text}")]

    def refused(self, conn: ConnId, message: Message | Routes) -> list[Action]:
        """``message`` was not forwarded (over the rate limit): tell the sender exactly
        which recipients did not get it."""
        if isinstance(message, Send):
            message = Routes.of(message)
        if isinstance(message, Routes):
            recipients = tuple(to for to, _ in message.items)
            return [Outgoing(conn, Routed(message.id, (), (), refused=recipients))]
        return []

    def disconnect(self, conn: ConnId) -> list[Action]:
        record = self._connections.pop(conn, None)
        if record is None or record.peer is None:
            return []
        if self.online.get(record.peer.nick) != conn:
            return []
        del self.online[record.peer.nick]
        del self._peers[record.peer.nick]
        del self._encoded_peers[record.peer.nick]
        return [Broadcast(list(self.online.values()), PeerLeft(record.peer.nick))]

    def shutdown(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        for conn in list(self._connections):
            actions.append(Outgoing(conn, Bye(reason)))
            actions.append(Close(conn, "relay shutting down"))
        return actions

    def _register(self, record: _Connection, message: Register) -> list[Action]:
        conn = record.conn
        assert record.relay_key is not None
        try:
            opened = Box(record.relay_key, message.identity_key).decrypt(message.proof)
        except nacl.exceptions.CryptoError:
            opened = b""
        expected = record.challenge + bytes(message.session_key)
        if not hmac.compare_digest(opened[: len(expected)], expected):
            return self.refuse(conn, "bad_proof", "registration proof did not verify")
        given_password = opened[len(expected) :]
        if self.password is not None and not hmac.compare_digest(
            _digest(given_password), _digest(self.password)
        ):
            return self.refuse(
                conn, "bad_password", "wrong or missing relay password (ask whoever runs the relay)"
            )
        if message.nick in self.online:
            return self.refuse(conn, "nick_taken", f"nick {message.nick!r} is already online; choose another")
        peer = PeerInfo(message.nick, message.identity_key, message.session_key)
        record.state, record.peer, record.relay_key = ConnState.ONLINE, peer, None
        # A big directory goes in several frames, each well under MAX_FRAME. The entries
        # are kept encoded, so a join costs copying the directory, not encoding it.
        others, encoded = list(self._peers.values()), list(self._encoded_peers.values())
        starts = range(0, len(others), DIRECTORY_CHUNK) if others else [0]
        actions: list[Action] = []
        for start in starts:
            end = start + DIRECTORY_CHUNK
            peers, parts, more = tuple(others[start:end]), encoded[start:end], end < len(others)
            if start == 0:
                welcome = Welcome(peer.nick, peers, more)
                actions.append(Outgoing(conn, welcome, encode_welcome(peer.nick, parts, more=more)))
            else:
                actions.append(Outgoing(conn, Directory(peers, more), encode_directory(parts, more=more)))
        actions.append(Broadcast(list(self.online.values()), PeerJoined(peer)))
        self.online[peer.nick] = conn
        self._peers[peer.nick] = peer
        self._encoded_peers[peer.nick] = encode_peer(peer)
        return actions

    def _route(self, record: _Connection, message: Routes) -> list[Action]:
        assert record.peer is not None
        sender = record.peer.nick
        items = message.items
        if len({to for to, _ in items}) != len(items):
            # Many copies to one person would let one frame make the relay write thousands.
            return self.refuse(record.conn, "protocol", "a send names the same recipient twice")
        online = self.online
        routes: list[tuple[ConnId, bytes]] = []
        delivered: list[str] = []
        missing: list[str] = []
        for to, body in items:
            target = online.get(to)
            if target is None or to == sender:
                missing.append(to)
            else:
                routes.append((target, body))
                delivered.append(to)
        routed = Outgoing(record.conn, Routed(message.id, tuple(delivered), tuple(missing)))
        return [Fanout(sender, routes), routed] if routes else [routed]

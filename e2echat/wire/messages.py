"""Wire messages: one frozen dataclass per type, each with its table of wire fields.

Pure (no I/O). A frame's payload is a UTF-8 JSON object ``{"v": 2, "type": ..., ...}``;
binary values (keys, challenges, ciphertexts) are standard base64 strings. The format is
written down in docs/PROTOCOL.md.

Every message validates itself when built, so a bad value fails where it is made, not
where it is sent. Each type's ``WIRE`` table says, once, which fields it has on the wire,
in order: the name on the wire, the attribute it fills and its ``Kind`` (how the value is
written in JSON; fields.py). The strict codec (codec.py) encodes and decodes every type
from these tables alone; the rules the values follow are in grammar.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nacl.public import PublicKey

from e2echat.wire.fields import (
    BINARY,
    ENVELOPES,
    FLAG,
    INT,
    KEY,
    NICK,
    NICKS,
    NUMBER,
    PEER,
    PEERS,
    TEXT,
    Holds,
    Kind,
    Record,
    check_items,
    check_key,
    check_positive,
    check_reason,
    check_tables,
    on_wire,
)
from e2echat.wire.grammar import (
    CHALLENGE_SIZE,
    CODE_PATTERN,
    CODE_RULE,
    MAX_BODY,
    MAX_ITEMS,
    MAX_PROOF,
    NICK_PATTERN,
    SESSION_PROOF_SIZE,
    check_bytes,
    check_id,
    check_nick,
    require,
)

# -- the objects inside messages ----------------------------------------------------------


@dataclass(frozen=True)
class PeerInfo(Record):
    """One directory entry: who is online and the keys the relay says they have."""

    WIRE = (
        on_wire("nick", NICK),
        on_wire("identity_key", KEY),
        on_wire("session_key", KEY),
    )
    nick: str
    identity_key: PublicKey
    session_key: PublicKey

    def __post_init__(self) -> None:
        check_nick(self.nick)
        check_key(self.identity_key, "identity key")
        check_key(self.session_key, "session key")


@dataclass(frozen=True)
class Envelope(Record):
    """One recipient's ciphertext inside a ``Send``. The body is opaque to the relay."""

    WIRE = (on_wire("to", NICK), on_wire("body", BINARY))
    to: str
    body: bytes

    def __post_init__(self) -> None:
        check_nick(self.to, "recipient")
        check_bytes(self.body, "body", limit=MAX_BODY)


OBJECT_KINDS: dict[Kind, Holds] = {
    PEER: Holds(PeerInfo, "peer", array=False),
    PEERS: Holds(PeerInfo, "peer", array=True),
    ENVELOPES: Holds(Envelope, "envelope", array=True),
}


# -- the messages -------------------------------------------------------------------------


class Message(Record):
    """Base of every wire message."""

    #: the value of its "type" field
    TYPE: ClassVar[str]


@dataclass(frozen=True)
class Challenge(Message):
    """relay -> client, first: prove you hold your keys. ``relay_key`` is the relay's
    long-term key, the same on every connection (clients pin it); ``challenge`` is new on
    each."""

    TYPE: ClassVar[str] = "challenge"
    WIRE = (
        on_wire("relay_key", KEY),
        on_wire("challenge", BINARY),
        on_wire("password", FLAG, attr="password_required"),
    )
    relay_key: PublicKey
    challenge: bytes
    #: the relay wants its password inside the registration proof
    password_required: bool = False

    def __post_init__(self) -> None:
        check_key(self.relay_key, "relay key")
        check_bytes(self.challenge, "challenge", size=CHALLENGE_SIZE)
        require(isinstance(self.password_required, bool), "password_required must be a bool")


@dataclass(frozen=True)
class Register(Message):
    """client -> relay: nick, keys, and a proof of each key: a Box from the identity key
    over the challenge (and the password), and one from the session key."""

    TYPE: ClassVar[str] = "register"
    WIRE = (
        on_wire("nick", NICK),
        on_wire("identity_key", KEY),
        on_wire("session_key", KEY),
        on_wire("proof", BINARY),
        on_wire("session_proof", BINARY),
    )
    nick: str
    identity_key: PublicKey
    session_key: PublicKey
    #: made with the identity key (crypto/identity.py)
    proof: bytes
    #: made with the session key
    session_proof: bytes

    def __post_init__(self) -> None:
        check_nick(self.nick)
        check_key(self.identity_key, "identity key")
        check_key(self.session_key, "session key")
        check_bytes(self.proof, "proof", limit=MAX_PROOF)
        check_bytes(self.session_proof, "session proof", size=SESSION_PROOF_SIZE)


@dataclass(frozen=True)
class Welcome(Message):
    """relay -> client: registered; here is everyone else online, and how fast you may send."""

    TYPE: ClassVar[str] = "welcome"
    WIRE = (
        on_wire("nick", NICK),
        on_wire("rate", NUMBER),
        on_wire("burst", NUMBER),
        on_wire("byte_rate", NUMBER),
        on_wire("byte_burst", NUMBER),
        on_wire("peers", PEERS),
        on_wire("more", FLAG),
    )
    nick: str
    #: the relay's rate limits for this connection, two token buckets: frames a second and
    #: how many at once, bytes a second and how many at once. The client paces itself to them.
    rate: float
    burst: float
    byte_rate: float
    byte_burst: float
    peers: tuple[PeerInfo, ...]
    #: the directory continues in ``Directory`` messages (it is too big for one frame)
    more: bool = False

    def __post_init__(self) -> None:
        check_nick(self.nick)
        for name in ("rate", "burst", "byte_rate", "byte_burst"):
            check_positive(getattr(self, name), name)
        check_items(self.peers, PeerInfo, "peers")
        require(isinstance(self.more, bool), "more must be a bool")


@dataclass(frozen=True)
class Directory(Message):
    """relay -> client, right after a ``Welcome`` with ``more``: the rest of the directory."""

    TYPE: ClassVar[str] = "directory"
    WIRE = (on_wire("peers", PEERS), on_wire("more", FLAG))
    peers: tuple[PeerInfo, ...]
    more: bool = False

    def __post_init__(self) -> None:
        check_items(self.peers, PeerInfo, "peers")
        require(isinstance(self.more, bool), "more must be a bool")


@dataclass(frozen=True)
class PeerJoined(Message):
    """relay -> client: someone came online."""

    TYPE: ClassVar[str] = "joined"
    WIRE = (on_wire("peer", PEER),)
    peer: PeerInfo

    def __post_init__(self) -> None:
        require(isinstance(self.peer, PeerInfo), "peer must be a PeerInfo")


@dataclass(frozen=True)
class PeerLeft(Message):
    """relay -> client: someone went offline."""

    TYPE: ClassVar[str] = "left"
    WIRE = (on_wire("nick", NICK),)
    nick: str

    def __post_init__(self) -> None:
        check_nick(self.nick)


@dataclass(frozen=True)
class Send(Message):
    """client -> relay: forward each envelope to its recipient."""

    TYPE: ClassVar[str] = "send"
    WIRE = (on_wire("id", INT), on_wire("items", ENVELOPES))
    id: int
    items: tuple[Envelope, ...]

    def __post_init__(self) -> None:
        check_id(self.id)
        check_items(self.items, Envelope, "items")
        require(len(self.items) > 0, "a send needs at least one envelope")


@dataclass(frozen=True)
class Deliver(Message):
    """relay -> client: a ciphertext the relay says ``sender`` sent you."""

    TYPE: ClassVar[str] = "deliver"
    WIRE = (on_wire("from", NICK, attr="sender"), on_wire("body", BINARY))
    sender: str
    body: bytes

    def __post_init__(self) -> None:
        check_nick(self.sender, "sender")
        check_bytes(self.body, "body", limit=MAX_BODY)


@dataclass(frozen=True)
class Routed(Message):
    """relay -> client: what the relay did with ``Send`` number ``id``.

    This is the relay's word only; end-to-end receipts are a separate, authenticated
    matter. It lets a sender learn at once that a recipient was offline.
    """

    TYPE: ClassVar[str] = "routed"
    WIRE = (
        on_wire("id", INT),
        on_wire("delivered", NICKS),
        on_wire("missing", NICKS),
        on_wire("refused", NICKS),
    )
    id: int
    delivered: tuple[str, ...]
    missing: tuple[str, ...]
    #: recipients the relay would not forward to: the sender is over its rate limit, or
    #: the recipient has fallen behind in reading what the relay sends it
    refused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_id(self.id)
        groups = (self.delivered, self.missing, self.refused)
        try:  # the relay makes one per send: first a quick look at the whole
            if all(type(group) is tuple and len(group) <= MAX_ITEMS for group in groups) and all(
                map(NICK_PATTERN.match, self.delivered + self.missing + self.refused)
            ):
                return
        except TypeError:  # a name that is not a string
            pass
        for group, what in zip(groups, ("delivered", "missing", "refused"), strict=True):
            check_items(group, str, what)
            for nick in group:
                check_nick(nick)  # raises, naming the bad one


@dataclass(frozen=True)
class Error(Message):
    """either way: something went wrong; ``code`` is for programs, ``text`` for people."""

    TYPE: ClassVar[str] = "error"
    WIRE = (on_wire("code", TEXT), on_wire("text", TEXT))
    code: str
    text: str

    def __post_init__(self) -> None:
        require(
            isinstance(self.code, str) and CODE_PATTERN.match(self.code) is not None,
            f"error code must be {CODE_RULE}",
        )
        check_reason(self.text, "error text")


@dataclass(frozen=True)
class Bye(Message):
    """relay -> client: the relay is shutting down."""

    TYPE: ClassVar[str] = "bye"
    WIRE = (on_wire("reason", TEXT),)
    reason: str

    def __post_init__(self) -> None:
        check_reason(self.reason, "reason")


@dataclass(frozen=True)
class Ping(Message):
    """either way: are you there? Answered with ``Pong``; keeps an idle connection alive."""

    TYPE: ClassVar[str] = "ping"
    WIRE = ()


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    WIRE = ()


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Challenge,
        Register,
        Welcome,
        Directory,
        PeerJoined,
        PeerLeft,
        Send,
        Deliver,
        Routed,
        Error,
        Bye,
        Ping,
        Pong,
    )
}


check_tables(PeerInfo, Envelope, *MESSAGE_TYPES.values())

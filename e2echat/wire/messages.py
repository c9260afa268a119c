"""Wire messages: one frozen dataclass per type, each with its table of wire fields.

Pure (no I/O). A frame's payload is a UTF-8 JSON object ``{"v": 2, "type": ..., ...}``;
binary values (keys, challenges, ciphertexts) are standard base64 strings. The format is
written down in docs/PROTOCOL.md. The objects inside messages (a directory entry, an
envelope, prekeys, a bundle) are in objects.py.

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
    BUNDLES,
    ENVELOPES,
    FLAG,
    INT,
    KEY,
    MEMBERS,
    NICK,
    NICKS,
    NUMBER,
    ONE_TIME_PREKEYS,
    PEER,
    PEERS,
    ROOM,
    ROOMS,
    SIGNED_PREKEY,
    TEXT,
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
    DEFAULT_MAILBOX_TTL,
    DEFAULT_ROOM,
    EXPIRED_REASONS,
    MAX_BODY,
    MAX_FETCH,
    MAX_ITEMS,
    MAX_PROOF,
    MAX_PUBLISH,
    MAX_ROOMS,
    NICK_PATTERN,
    RELAY_ID_SIZE,
    SESSION_PROOF_SIZE,
    check_bytes,
    check_id,
    check_nick,
    check_room,
    check_time,
    require,
)
from e2echat.wire.objects import Bundle, Envelope, Member, OneTimePrekey, PeerInfo, SignedPrekey


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
    over the challenge (and the password), and one from the session key. With them, the
    signed prekey: anyone who sees us join can start a session with us at once. And the
    rooms we are in: the relay makes our memberships exactly these before it welcomes us."""

    TYPE: ClassVar[str] = "register"
    WIRE = (
        on_wire("nick", NICK),
        on_wire("identity_key", KEY),
        on_wire("session_key", KEY),
        on_wire("proof", BINARY),
        on_wire("session_proof", BINARY),
        on_wire("signed_prekey", SIGNED_PREKEY),
        on_wire("rooms", ROOMS),
    )
    nick: str
    identity_key: PublicKey
    session_key: PublicKey
    #: made with the identity key (crypto/identity.py)
    proof: bytes
    #: made with the session key
    session_proof: bytes
    #: kept by the relay as if published (the relay does not check its signature)
    signed_prekey: SignedPrekey
    #: the rooms we are in (our profile's word, not the relay's): 0 to MAX_ROOMS, each once
    rooms: tuple[str, ...] = (DEFAULT_ROOM,)

    def __post_init__(self) -> None:
        check_nick(self.nick)
        check_key(self.identity_key, "identity key")
        check_key(self.session_key, "session key")
        check_bytes(self.proof, "proof", limit=MAX_PROOF)
        check_bytes(self.session_proof, "session proof", size=SESSION_PROOF_SIZE)
        require(isinstance(self.signed_prekey, SignedPrekey), "signed_prekey must be a SignedPrekey")
        check_items(self.rooms, str, "rooms", limit=MAX_ROOMS)
        for room in self.rooms:
            check_room(room)
        require(len(set(self.rooms)) == len(self.rooms), "a register names the same room twice")


@dataclass(frozen=True)
class Welcome(Message):
    """relay -> client: registered; here is everyone online who shares a room with you
    (your contacts), how fast you may send, and how many of your one-time prekeys the
    relay holds."""

    TYPE: ClassVar[str] = "welcome"
    WIRE = (
        on_wire("nick", NICK),
        on_wire("rate", NUMBER),
        on_wire("burst", NUMBER),
        on_wire("byte_rate", NUMBER),
        on_wire("byte_burst", NUMBER),
        on_wire("prekeys", INT),
        on_wire("peers", PEERS),
        on_wire("more", FLAG),
        on_wire("mailbox_ttl", NUMBER),
        on_wire("relay_id", BINARY),
    )
    nick: str
    #: the relay's rate limits for this connection, two token buckets: frames a second and
    #: how many at once, bytes a second and how many at once. The client paces itself to them.
    rate: float
    burst: float
    byte_rate: float
    byte_burst: float
    #: one-time prekeys the relay holds for this nick and identity key (0 if none): the
    #: client publishes more when they run low
    prekeys: int
    peers: tuple[PeerInfo, ...]
    #: the directory continues in ``Directory`` messages (it is too big for one frame)
    more: bool = False
    #: seconds the relay keeps a message in a mailbox: a sender that hears nothing of one
    #: for longer (plus a margin) reports it not delivered
    mailbox_ttl: float = DEFAULT_MAILBOX_TTL
    #: this relay's mailboxes (RELAY_ID_SIZE random bytes): another id at the same
    #: address means they were lost (a relay kept in memory restarted)
    relay_id: bytes = bytes(RELAY_ID_SIZE)

    def __post_init__(self) -> None:
        check_nick(self.nick)
        for name in ("rate", "burst", "byte_rate", "byte_burst", "mailbox_ttl"):
            check_positive(getattr(self, name), name)
        check_bytes(self.relay_id, "relay_id", size=RELAY_ID_SIZE)
        check_id(self.prekeys, "prekeys")
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
    """relay -> client: a contact (someone who shares a room with you) came online."""

    TYPE: ClassVar[str] = "joined"
    WIRE = (on_wire("peer", PEER),)
    peer: PeerInfo

    def __post_init__(self) -> None:
        require(isinstance(self.peer, PeerInfo), "peer must be a PeerInfo")


@dataclass(frozen=True)
class PeerLeft(Message):
    """relay -> client: a contact went offline."""

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
    matter. It lets a sender learn at once that a recipient was away or unknown.
    """

    TYPE: ClassVar[str] = "routed"
    WIRE = (
        on_wire("id", INT),
        on_wire("delivered", NICKS),
        on_wire("queued", NICKS),
        on_wire("missing", NICKS),
        on_wire("full", NICKS),
        on_wire("refused", NICKS),
    )
    id: int
    #: forwarded at once: they are online
    delivered: tuple[str, ...]
    #: kept in their mailbox (they are away), and on disk first if the relay has a store
    queued: tuple[str, ...] = ()
    #: not kept: the relay has never known them, or they are the sender
    missing: tuple[str, ...] = ()
    #: not kept: their mailbox, or the relay's room for mailboxes, is full
    full: tuple[str, ...] = ()
    #: recipients the relay would not forward to: the sender is over its rate limit, or
    #: the recipient has fallen behind in reading what the relay sends it
    refused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_id(self.id)
        groups = (self.delivered, self.queued, self.missing, self.full, self.refused)
        try:  # the relay makes one per send: first a quick look at the whole
            if all(type(group) is tuple and len(group) <= MAX_ITEMS for group in groups) and all(
                NICK_PATTERN.match(nick) for group in groups for nick in group
            ):
                return
        except TypeError:  # a name that is not a string
            pass
        for group, what in zip(groups, ("delivered", "queued", "missing", "full", "refused"), strict=True):
            check_items(group, str, what)
            for nick in group:
                check_nick(nick)  # raises, naming the bad one


@dataclass(frozen=True)
class Mail(Message):
    """relay -> client: a ciphertext kept in your mailbox while you were away: ``sender``
    sent it, the relay queued it at ``queued_at`` (its clock, Unix seconds: its word only).
    Mailbox items come in ``seq`` order; ``Ack`` them to have the relay forget them."""

    TYPE: ClassVar[str] = "mail"
    WIRE = (
        on_wire("seq", INT),
        on_wire("from", NICK, attr="sender"),
        on_wire("queued_at", NUMBER),
        on_wire("body", BINARY),
    )
    seq: int
    sender: str
    queued_at: float
    body: bytes

    def __post_init__(self) -> None:
        check_id(self.seq, "seq")
        check_nick(self.sender, "sender")
        check_time(self.queued_at, "queued_at")
        check_bytes(self.body, "body", limit=MAX_BODY)


@dataclass(frozen=True)
class Expired(Message):
    """relay -> client, a mailbox item like ``Mail``: your message ``id`` to ``to`` was kept
    in their mailbox and is gone unread: ``reason`` is ``expired`` (its time to live ran
    out), ``evicted`` (the relay forgot ``to``, away longest when it knew too many
    identities: see the relay's ``bundles`` bound) or ``key_changed`` (the nick registered
    again with another identity key; no relay of this version says it: it refuses that
    while messages wait, but a client still reads it)."""

    TYPE: ClassVar[str] = "expired"
    WIRE = (on_wire("seq", INT), on_wire("id", INT), on_wire("to", NICK), on_wire("reason", TEXT))
    seq: int
    id: int
    to: str
    reason: str

    def __post_init__(self) -> None:
        check_id(self.seq, "seq")
        check_id(self.id)
        check_nick(self.to, "to")
        require(self.reason in EXPIRED_REASONS, f"reason must be one of {', '.join(EXPIRED_REASONS)}")


@dataclass(frozen=True)
class Ack(Message):
    """client -> relay: every mailbox item up to and including ``seq`` is handled (shown
    and kept): forget them, and send the next ones."""

    TYPE: ClassVar[str] = "ack"
    WIRE = (on_wire("seq", INT),)
    seq: int

    def __post_init__(self) -> None:
        check_id(self.seq, "seq")


@dataclass(frozen=True)
class Members(Message):
    """relay -> client: the whole membership of ``room``: who is online (``peers``, not
    you) and who is known to the relay but offline (``away``: a room message is for them
    too, its copy waits in their mailbox). Sent for each of your rooms after the
    directory and before any mailbox item, and as the answer to a ``Join``; ``more``:
    another ``members`` for the same room follows."""

    TYPE: ClassVar[str] = "members"
    WIRE = (
        on_wire("room", ROOM),
        on_wire("peers", PEERS),
        on_wire("away", MEMBERS),
        on_wire("more", FLAG),
    )
    room: str
    peers: tuple[PeerInfo, ...]
    away: tuple[Member, ...]
    more: bool = False

    def __post_init__(self) -> None:
        check_room(self.room)
        check_items(self.peers, PeerInfo, "peers")
        check_items(self.away, Member, "away")
        require(isinstance(self.more, bool), "more must be a bool")
        nicks = {peer.nick for peer in self.peers}
        nicks.update(member.nick for member in self.away)
        require(len(nicks) == len(self.peers) + len(self.away), "a members list names the same nick twice")


@dataclass(frozen=True)
class Join(Message):
    """client -> relay: make me a member of ``room`` (made if new). Answered with
    ``Members``, or an ``Error`` "too_many_rooms"."""

    TYPE: ClassVar[str] = "join"
    WIRE = (on_wire("room", ROOM),)
    room: str

    def __post_init__(self) -> None:
        check_room(self.room)


@dataclass(frozen=True)
class Part(Message):
    """client -> relay: I leave ``room``. Not answered."""

    TYPE: ClassVar[str] = "part"
    WIRE = (on_wire("room", ROOM),)
    room: str

    def __post_init__(self) -> None:
        check_room(self.room)


@dataclass(frozen=True)
class Entered(Message):
    """relay -> client: ``peer`` (online) just joined ``room``, one of yours. Before any
    later delivery from them."""

    TYPE: ClassVar[str] = "entered"
    WIRE = (on_wire("room", ROOM), on_wire("peer", PEER))
    room: str
    peer: PeerInfo

    def __post_init__(self) -> None:
        check_room(self.room)
        require(isinstance(self.peer, PeerInfo), "peer must be a PeerInfo")


@dataclass(frozen=True)
class Parted(Message):
    """relay -> client: ``nick`` left ``room``, one of yours."""

    TYPE: ClassVar[str] = "parted"
    WIRE = (on_wire("room", ROOM), on_wire("nick", NICK))
    room: str
    nick: str

    def __post_init__(self) -> None:
        check_room(self.room)
        check_nick(self.nick)


@dataclass(frozen=True)
class Publish(Message):
    """client -> relay: keep these prekeys for others to start sessions with me. The
    signed prekey replaces the one the relay held; the one-time prekeys join those it
    holds (the oldest go if there are too many), or with ``replace`` take their place.
    Answered with ``Prekeys``."""

    TYPE: ClassVar[str] = "publish"
    WIRE = (
        on_wire("signed_prekey", SIGNED_PREKEY),
        on_wire("one_time", ONE_TIME_PREKEYS),
        on_wire("replace", FLAG),
    )
    signed_prekey: SignedPrekey
    one_time: tuple[OneTimePrekey, ...]
    #: drop every one-time prekey held for me first: I no longer hold their private halves
    replace: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.signed_prekey, SignedPrekey), "signed_prekey must be a SignedPrekey")
        require(isinstance(self.replace, bool), "replace must be a bool")
        check_items(self.one_time, OneTimePrekey, "one-time prekeys", limit=MAX_PUBLISH)
        ids = {prekey.id for prekey in self.one_time}
        require(len(ids) == len(self.one_time), "a publish has two one-time prekeys with the same id")


@dataclass(frozen=True)
class Prekeys(Message):
    """relay -> client: how many of your one-time prekeys the relay now holds. The answer
    to ``Publish``; also sent unasked when handing them out leaves fewer than the relay's
    low mark."""

    TYPE: ClassVar[str] = "prekeys"
    WIRE = (on_wire("count", INT),)
    count: int

    def __post_init__(self) -> None:
        check_id(self.count, "count")


@dataclass(frozen=True)
class Fetch(Message):
    """client -> relay: the prekey bundles of these people. Answered with ``Bundles``."""

    TYPE: ClassVar[str] = "fetch"
    WIRE = (on_wire("nicks", NICKS),)
    nicks: tuple[str, ...]

    def __post_init__(self) -> None:
        check_items(self.nicks, str, "nicks", limit=MAX_FETCH)
        require(len(self.nicks) > 0, "a fetch needs at least one nick")
        for nick in self.nicks:
            check_nick(nick)
        require(len(set(self.nicks)) == len(self.nicks), "a fetch names the same nick twice")


@dataclass(frozen=True)
class Bundles(Message):
    """relay -> client: the answer to a ``Fetch``: a bundle for each nick the relay has
    one for, and the others in ``missing``. The relay's word only: the client checks each
    signed prekey's signature, and that it names no nick more often than it was asked
    about (a nick never answered leaves its copies to time out)."""

    TYPE: ClassVar[str] = "bundles"
    WIRE = (on_wire("bundles", BUNDLES), on_wire("missing", NICKS))
    bundles: tuple[Bundle, ...]
    missing: tuple[str, ...]

    def __post_init__(self) -> None:
        check_items(self.bundles, Bundle, "bundles", limit=MAX_FETCH)
        check_items(self.missing, str, "missing", limit=MAX_FETCH)
        for nick in self.missing:
            check_nick(nick)
        answered = len(self.bundles) + len(self.missing)
        require(answered <= MAX_FETCH, f"an answer names at most {MAX_FETCH} nicks")


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
        Mail,
        Expired,
        Ack,
        Members,
        Join,
        Part,
        Entered,
        Parted,
        Publish,
        Prekeys,
        Fetch,
        Bundles,
        Error,
        Bye,
        Ping,
        Pong,
    )
}


check_tables(*MESSAGE_TYPES.values())

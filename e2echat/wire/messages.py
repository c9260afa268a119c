"""Wire messages: one frozen dataclass per type, strict decode and encode.

Pure (no I/O). A frame's payload is a UTF-8 JSON object ``{"v": 1, "type": ..., ...}``;
binary values (keys, challenges, ciphertexts) are standard base64 strings. The format is
written down in docs/PROTOCOL.md.

Every message validates itself when built, so a bad value fails where it is made, not
where it is sent. ``decode_message`` accepts exactly the documented shape: unknown types,
unknown or missing fields, duplicate keys, wrong JSON types, bad base64 and wrong key
sizes all raise ``RemoteProtocolError`` and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from nacl.public import PublicKey

from e2echat.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1

NICK_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")
NICK_RULE = "1–32 characters: letters, digits, '_', '-' or '.'"
KEY_SIZE = 32
CHALLENGE_SIZE = 32
# A relay password: a passphrase, not a file.
MAX_PASSWORD = 512
# The proof is a Box over challenge + session key + password: 64 bytes, the password, and
# 40 of nonce and tag.
MAX_PROOF = 64 + MAX_PASSWORD + 40
# One ciphertext: a message of up to session.MAX_TEXT (16 KiB) plus its header, nonce, tag
# and the metadata around the text, with room for JSON's escaping of control characters
# (up to 6 bytes each).
MAX_BODY = 128 * 1024
# Free text the relay sends (error and shutdown reasons): a line, not a document.
MAX_REASON = 512
# Enough for every recipient of a room message on a busy relay; frames stay under
# MAX_FRAME anyway, and the client splits larger rooms across frames.
MAX_ITEMS = 10_000
MAX_ID = 2**63 - 1
_CODE_PATTERN = re.compile(r"[a-z_]{1,32}\Z")


def is_utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates like \\ud800),
    which would crash whoever later prints or encodes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_nick(nick: object) -> bool:
    return isinstance(nick, str) and NICK_PATTERN.match(nick) is not None


def _require(ok: bool, detail: str) -> None:
    if not ok:
        raise LocalProtocolError(detail=detail)


def _check_nick(nick: object, what: str = "nick") -> None:
    _require(is_valid_nick(nick), f"invalid {what} {nick!r}: {NICK_RULE}")


def _check_key(key: object, what: str) -> None:
    _require(isinstance(key, PublicKey), f"{what} must be an X25519 public key")


def _check_bytes(value: object, what: str, *, size: int | None = None, limit: int = 0) -> None:
    _require(isinstance(value, bytes), f"{what} must be bytes")
    assert isinstance(value, bytes)
    if size is not None:
        _require(len(value) == size, f"{what} must be {size} bytes, not {len(value)}")
    else:
        _require(0 < len(value) <= limit, f"{what} must be 1 to {limit} bytes")


def _check_id(value: object) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID,
        f"message id must be an integer from 0 to {MAX_ID}",
    )


def _check_reason(value: object, what: str) -> None:
    _require(
        isinstance(value, str) and len(value) <= MAX_REASON,
        f"{what} must be a string of at most {MAX_REASON} characters",
    )


def _check_items(value: object, kind: type, what: str) -> None:
    _require(
        isinstance(value, tuple)
        and len(value) <= MAX_ITEMS
        and all(isinstance(item, kind) for item in value),
        f"{what} must be a tuple of at most {MAX_ITEMS} {kind.__name__}",
    )


# -- the messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerInfo:
    """One directory entry: who is online and the keys the relay says they have."""

    nick: str
    identity_key: PublicKey
    session_key: PublicKey

    def __post_init__(self) -> None:
        _check_nick(self.nick)
        _check_key(self.identity_key, "identity key")
        _check_key(self.session_key, "session key")


@dataclass(frozen=True)
class Envelope:
    """One recipient's ciphertext inside a ``Send``. The body is opaque to the relay."""

    to: str
    body: bytes

    def __post_init__(self) -> None:
        _check_nick(self.to, "recipient")
        _check_bytes(self.body, "body", limit=MAX_BODY)


class Message:
    """Base of every wire message."""

    TYPE: ClassVar[str]


@dataclass(frozen=True)
class Challenge(Message):
    """relay -> client, first: prove you hold your identity key."""

    TYPE: ClassVar[str] = "challenge"
    relay_key: PublicKey
    challenge: bytes
    #: the relay wants its password inside the registration proof
    password_required: bool = False

    def __post_init__(self) -> None:
        _check_key(self.relay_key, "relay key")
        _check_bytes(self.challenge, "challenge", size=CHALLENGE_SIZE)
        _require(isinstance(self.password_required, bool), "password_required must be a bool")


@dataclass(frozen=True)
class Register(Message):
    """client -> relay: nick, keys, and a Box from the identity key over the challenge."""

    TYPE: ClassVar[str] = "register"
    nick: str
    identity_key: PublicKey
    session_key: PublicKey
    proof: bytes

    def __post_init__(self) -> None:
        _check_nick(self.nick)
        _check_key(self.identity_key, "identity key")
        _check_key(self.session_key, "session key")
        _check_bytes(self.proof, "proof", limit=MAX_PROOF)


@dataclass(frozen=True)
class Welcome(Message):
    """relay -> client: registered; here is everyone else online."""

    TYPE: ClassVar[str] = "welcome"
    nick: str
    peers: tuple[PeerInfo, ...]
    #: the directory continues in ``Directory`` messages (it is too big for one frame)
    more: bool = False

    def __post_init__(self) -> None:
        _check_nick(self.nick)
        _check_items(self.peers, PeerInfo, "peers")
        _require(isinstance(self.more, bool), "more must be a bool")


@dataclass(frozen=True)
class Directory(Message):
    """relay -> client, right after a ``Welcome`` with ``more``: the rest of the directory."""

    TYPE: ClassVar[str] = "directory"
    peers: tuple[PeerInfo, ...]
    more: bool = False

    def __post_init__(self) -> None:
        _check_items(self.peers, PeerInfo, "peers")
        _require(isinstance(self.more, bool), "more must be a bool")


@dataclass(frozen=True)
class PeerJoined(Message):
    """relay -> client: someone came online."""

    TYPE: ClassVar[str] = "joined"
    peer: PeerInfo

    def __post_init__(self) -> None:
        _require(isinstance(self.peer, PeerInfo), "peer must be a PeerInfo")


@dataclass(frozen=True)
class PeerLeft(Message):
    """relay -> client: someone went offline."""

    TYPE: ClassVar[str] = "left"
    nick: str

    def __post_init__(self) -> None:
        _check_nick(self.nick)


@dataclass(frozen=True)
class Send(Message):
    """client -> relay: forward each envelope to its recipient."""

    TYPE: ClassVar[str] = "send"
    id: int
    items: tuple[Envelope, ...]

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_items(self.items, Envelope, "items")
        _require(len(self.items) > 0, "a send needs at least one envelope")


@dataclass(frozen=True)
class Deliver(Message):
    """relay -> client: a ciphertext the relay says ``sender`` sent you."""

    TYPE: ClassVar[str] = "deliver"
    sender: str
    body: bytes

    def __post_init__(self) -> None:
        _check_nick(self.sender, "sender")
        _check_bytes(self.body, "body", limit=MAX_BODY)


@dataclass(frozen=True)
class Routed(Message):
    """relay -> client: what the relay did with ``Send`` number ``id``.

    This is the relay's word only; end-to-end receipts are a separate, authenticated
    matter. It lets a sender learn at once that a recipient was offline.
    """

    TYPE: ClassVar[str] = "routed"
    id: int
    delivered: tuple[str, ...]
    missing: tuple[str, ...]
    #: recipients the relay would not forward to (the sender is over its rate limit)
    refused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_id(self.id)
        groups = (self.delivered, self.missing, self.refused)
        try:  # the relay makes one per send: first a quick look at the whole
            if all(type(group) is tuple and len(group) <= MAX_ITEMS for group in groups) and all(
                map(NICK_PATTERN.match, self.delivered + self.missing + self.refused)
            ):
                return
        except TypeError:  # a name that is not a string
            pass
        for group, what in zip(groups, ("delivered", "missing", "refused"), strict=True):
            _check_items(group, str, what)
            for nick in group:
                _check_nick(nick)  # raises, naming the bad one


@dataclass(frozen=True)
class Error(Message):
    """either way: something went wrong; ``code`` is for programs, ``text`` for people."""

    TYPE: ClassVar[str] = "error"
    code: str
    text: str

    def __post_init__(self) -> None:
        _require(
            isinstance(self.code, str) and _CODE_PATTERN.match(self.code) is not None,
            "error code must be 1–32 lowercase letters or '_'",
        )
        _check_reason(self.text, "error text")


@dataclass(frozen=True)
class Bye(Message):
    """relay -> client: the relay is shutting down."""

    TYPE: ClassVar[str] = "bye"
    reason: str

    def __post_init__(self) -> None:
        _check_reason(self.reason, "reason")


@dataclass(frozen=True)
class Ping(Message):
    """either way: are you there? Answered with ``Pong``; keeps an idle connection alive."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"


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


# -- encoding -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _peer_fields(peer: PeerInfo) -> dict[str, Any]:
    return {
        "nick": peer.nick,
        "identity_key": _b64(bytes(peer.identity_key)),
        "session_key": _b64(bytes(peer.session_key)),
    }


def _fields(message: Message) -> dict[str, Any]:
    if isinstance(message, Challenge):
        return {
            "relay_key": _b64(bytes(message.relay_key)),
            "challenge": _b64(message.challenge),
            "password": message.password_required,
        }
    if isinstance(message, Register):
        return {
            "nick": message.nick,
            "identity_key": _b64(bytes(message.identity_key)),
            "session_key": _b64(bytes(message.session_key)),
            "proof": _b64(message.proof),
        }
    if isinstance(message, PeerJoined):
        return {"peer": _peer_fields(message.peer)}
    if isinstance(message, PeerLeft):
        return {"nick": message.nick}
    if isinstance(message, Send):
        return {
            "id": message.id,
            "items": [{"to": e.to, "body": _b64(e.body)} for e in message.items],
        }
    if isinstance(message, Deliver):
        return {"from": message.sender, "body": _b64(message.body)}
    if isinstance(message, Routed):
        return {
            "id": message.id,
            "delivered": list(message.delivered),
            "missing": list(message.missing),
            "refused": list(message.refused),
        }
    if isinstance(message, Error):
        return {"code": message.code, "text": message.text}
    if isinstance(message, Bye):
        return {"reason": message.reason}
    if isinstance(message, Ping | Pong):
        return {}
    raise LocalProtocolError(detail=f"cannot encode {type(message).__name__}")


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_message(message: Message) -> bytes:
    """The payload of one frame (without the length prefix)."""
    if isinstance(message, Welcome):
        return encode_welcome(message.nick, [encode_peer(p) for p in message.peers], more=message.more)
    if isinstance(message, Directory):
        return encode_directory([encode_peer(p) for p in message.peers], more=message.more)
    if isinstance(message, Routed):
        return encode_routed(message)
    return _json({"v": PROTOCOL_VERSION, "type": message.TYPE, **_fields(message)})


# The relay's hot paths build frames from parts it keeps, so that a join does not re-encode
# the whole directory and a delivery does not re-encode its ciphertext. Each gives exactly
# the bytes ``encode_message`` gives for the same message (tested).


def encode_peer(peer: PeerInfo) -> bytes:
    """One directory entry as JSON, for ``encode_welcome`` and ``encode_directory``."""
    return _json(_peer_fields(peer))


def encode_welcome(nick: str, encoded_peers: Sequence[bytes], *, more: bool = False) -> bytes:
    _check_nick(nick)
    head = b'{"v":%d,"type":"welcome","nick":"%s","peers":[' % (PROTOCOL_VERSION, nick.encode("ascii"))
    return head + b",".join(encoded_peers) + (b'],"more":true}' if more else b'],"more":false}')


def encode_routed(message: Routed) -> bytes:
    """The relay answers every send with one: its names are nicks, which JSON writes as
    they are, so the lists are joined rather than encoded."""
    delivered, missing, refused = (
        ('"' + '","'.join(group) + '"').encode("ascii") if group else b""
        for group in (message.delivered, message.missing, message.refused)
    )
    return b'{"v":%d,"type":"routed","id":%d,"delivered":[%b],"missing":[%b],"refused":[%b]}' % (
        PROTOCOL_VERSION,
        message.id,
        delivered,
        missing,
        refused,
    )


def encode_directory(encoded_peers: Sequence[bytes], *, more: bool = False) -> bytes:
    head = b'{"v":%d,"type":"directory","peers":[' % PROTOCOL_VERSION
    return head + b",".join(encoded_peers) + (b'],"more":true}' if more else b'],"more":false}')


DELIVER_TAIL = b'"}'


def deliver_head(sender: str) -> bytes:
    """A ``deliver`` payload is ``deliver_head(sender) + base64 body + DELIVER_TAIL``."""
    _check_nick(sender, "sender")
    return b'{"v":%d,"type":"deliver","from":"%s","body":"' % (PROTOCOL_VERSION, sender.encode("ascii"))


# -- decoding -----------------------------------------------------------------------------


def _invalid(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail=printable_reason(detail))


def printable_reason(text: str) -> str:
    """``text`` made safe to put in an ``Error`` or ``Bye``: valid UTF-8 (lone surrogates
    escaped) and no longer than MAX_REASON. Details may quote what a peer sent."""
    safe = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text
    )
    safe = safe.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= MAX_REASON else safe[: MAX_REASON - 1] + "…"


class _Fields:
    """Reads the fields of one JSON object, each exactly once, and no others."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise _invalid(f"{where} must be a JSON object")
        self._obj: dict[str, Any] = obj
        self._used: set[str] = set()
        self.where = where

    def _get(self, name: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
        if name not in self._obj:
            raise _invalid(f"{self.where} is missing field {name!r}")
        self._used.add(name)
        value = self._obj[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise _invalid(f"{self.where} field {name!r} must be {kind_name}")
        return value

    def text(self, name: str) -> str:
        value: str = self._get(name, str, "a string")
        if not is_utf8(value):
            raise _invalid(f"{self.where} field {name!r} is not valid Unicode (lone surrogate)")
        return value

    def flag(self, name: str) -> bool:
        value: bool = self._get(name, bool, "true or false")
        return value

    def integer(self, name: str) -> int:
        value: int = self._get(name, int, "an integer")
        return value

    def array(self, name: str) -> list[Any]:
        value: list[Any] = self._get(name, list, "an array")
        if len(value) > MAX_ITEMS:
            raise _invalid(f"{self.where} field {name!r} has more than {MAX_ITEMS} items")
        return value

    def binary(self, name: str) -> bytes:
        encoded = self.text(name)
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"{self.where} field {name!r} is not valid base64") from None

    def key(self, name: str) -> PublicKey:
        raw = self.binary(name)
        if len(raw) != KEY_SIZE:
            raise _invalid(f"{self.where} field {name!r} must be a {KEY_SIZE}-byte key")
        return PublicKey(raw)

    def nicks(self, name: str) -> tuple[str, ...]:
        items = self.array(name)
        if not all(isinstance(item, str) for item in items):
            raise _invalid(f"{self.where} field {name!r} must be an array of strings")
        return tuple(items)

    def done(self) -> None:
        extra = sorted(set(self._obj) - self._used)
        if extra:
            raise _invalid(f"{self.where} has unknown field(s): {', '.join(repr(x) for x in extra)}")


def _decode_peer(obj: object) -> PeerInfo:
    f = _Fields(obj, "peer")
    peer = PeerInfo(f.text("nick"), f.key("identity_key"), f.key("session_key"))
    f.done()
    return peer


def _decode_envelope(obj: object) -> Envelope:
    f = _Fields(obj, "envelope")
    envelope = Envelope(f.text("to"), f.binary("body"))
    f.done()
    return envelope


def _build(cls: type[Message], f: _Fields) -> Message:
    if cls is Challenge:
        return Challenge(f.key("relay_key"), f.binary("challenge"), f.flag("password"))
    if cls is Register:
        return Register(f.text("nick"), f.key("identity_key"), f.key("session_key"), f.binary("proof"))
    if cls is Welcome:
        return Welcome(f.text("nick"), tuple(_decode_peer(p) for p in f.array("peers")), f.flag("more"))
    if cls is Directory:
        return Directory(tuple(_decode_peer(p) for p in f.array("peers")), f.flag("more"))
    if cls is PeerJoined:
        return PeerJoined(_decode_peer(f._get("peer", dict, "an object")))
    if cls is PeerLeft:
        return PeerLeft(f.text("nick"))
    if cls is Send:
        return Send(f.integer("id"), tuple(_decode_envelope(e) for e in f.array("items")))
    if cls is Deliver:
        return Deliver(f.text("from"), f.binary("body"))
    if cls is Routed:
        return Routed(f.integer("id"), f.nicks("delivered"), f.nicks("missing"), f.nicks("refused"))
    if cls is Error:
        return Error(f.text("code"), f.text("text"))
    if cls is Bye:
        return Bye(f.text("reason"))
    if cls is Ping:
        return Ping()
    if cls is Pong:
        return Pong()
    raise LocalProtocolError(detail=f"no decoder for {cls.__name__}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _invalid(f"duplicate field {key!r}")
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise _invalid(f"{name} is not valid JSON")


def decode_message(payload: bytes) -> Message:
    """Parse one frame's payload. Raises ``RemoteProtocolError`` for anything else."""
    return _message_from(_parse(payload))


def _parse(payload: bytes) -> Any:
    try:
        obj = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except RemoteProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid("payload is not a UTF-8 JSON object") from None
    return obj


def _message_from(obj: Any) -> Message:
    f = _Fields(obj, "message")
    version = f.integer("v")
    if version != PROTOCOL_VERSION:
        raise _invalid(f"unsupported protocol version {version} (this is version {PROTOCOL_VERSION})")
    type_name = f.text("type")
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise _invalid(f"unknown message type {type_name[:40]!r}")
    f.where = f"{type_name!r} message"
    try:
        message = _build(cls, f)
    except LocalProtocolError as exc:
        raise _invalid(exc.detail or str(exc)) from None
    f.done()
    return message


# -- the relay's view of a send -----------------------------------------------------------

# The longest base64 text that can hold a body of MAX_BODY bytes.
_MAX_BODY_BASE64 = -(-MAX_BODY // 3) * 4
# A send exactly as ``encode_send`` writes it, every field checked in one pass of the
# regex engine. A recipient is a nick; a body is base64 characters, then at most two '=',
# which with a length that is a multiple of 4 (checked per body) is exactly what
# ``b64decode(..., validate=True)`` accepts. Neither can hold '"', '{', '}' or ',', so the
# separators below occur only between fields and items. (Possessive quantifiers: nothing
# here ever needs to backtrack.)
_SEND_ITEM = rb'\{"to":"[A-Za-z0-9_.-]{1,32}+","body":"[A-Za-z0-9+/]*+={0,2}+"\}'
_CANONICAL_SEND = re.compile(
    rb'\{"v":%d,"type":"send","id":(0|[1-9][0-9]{0,18}+),"items":\[(%b(?:,%b)*+)\]\}'
    % (PROTOCOL_VERSION, _SEND_ITEM, _SEND_ITEM)
)
_FIRST_TO, _LAST_END = len(b'{"to":"'), len(b'"}')
_NEXT_ITEM, _BODY = b'"},{"to":"', b'","body":"'


@dataclass(frozen=True, slots=True)
class Routes:
    """A ``send`` as the relay reads it: (recipient, body) pairs, the bodies left in base64.

    The relay never opens a body, so it checks that each is valid base64 of the allowed
    size and writes it on as it came, instead of decoding and re-encoding it per delivery.
    """

    id: int
    #: (recipient, body as base64 text in ASCII bytes)
    items: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, send: Send) -> Routes:
        return cls(send.id, tuple((e.to, base64.b64encode(e.body)) for e in send.items))


def _base64_size(text: bytes) -> int:
    return len(text) // 4 * 3 - (2 if text.endswith(b"==") else 1 if text.endswith(b"=") else 0)


def _fast_routes(payload: bytes) -> Routes | None:
    """A ``send`` in the form clients write it, checked without JSON decoding or a
    Python-level check per character; None for anything else (other spacing, field
    order, escapes), which the strict decoder then accepts or explains."""
    form = _CANONICAL_SEND.fullmatch(payload)
    if form is None:
        return None
    ident = int(form[1])
    items = form[2][_FIRST_TO:-_LAST_END].split(_NEXT_ITEM)
    if ident > MAX_ID or len(items) > MAX_ITEMS:
        return None
    routes = []
    for item in items:
        to, body = item.split(_BODY)
        size = len(body)
        # Only a body near the limit needs its decoded size worked out.
        if not size or size % 4 or (size > _MAX_BODY_BASE64 - 4 and _base64_size(body) > MAX_BODY):
            return None
        routes.append((to.decode("ascii"), body))
    return Routes(ident, tuple(routes))


def decode_for_relay(payload: bytes) -> Message | Routes:
    """``decode_message``, except that a ``send`` comes back as ``Routes``. Accepts and
    refuses exactly what ``decode_message`` does."""
    routes = _fast_routes(payload)
    if routes is not None:
        return routes
    message = decode_message(payload)
    return Routes.of(message) if isinstance(message, Send) else message


# -- fast paths for the two hot messages ------------------------------------------------
#
# A room message to N people is one ``send`` with N envelopes, and each recipient gets a
# ``deliver``. Building and validating a dataclass per envelope and going through the
# general JSON encoder and the strict decoder cost several times the encryption itself,
# so these two have a direct form. Each is pinned by tests to the general one: the same
# bytes out, and nothing accepted that ``decode_message`` refuses.


@functools.lru_cache(maxsize=4096)
def _envelope_head(to: str) -> bytes:
    _check_nick(to, "recipient")
    return b'{"to":"%b","body":"' % to.encode("ascii")


def encode_send(message_id: int, items: Sequence[tuple[str, bytes]]) -> bytes:
    """``encode_message(Send(message_id, (Envelope(to, body), ...)))``, byte for byte,
    without building the dataclasses. Checks what they check (an invalid nick or body, or
    a bad id or count, raises ``LocalProtocolError``). A valid nick and base64 need no JSON
    escaping, so the payload is assembled from pieces; each nick's piece is made (and the
    nick checked) once, not once per message."""
    _check_id(message_id)
    _require(0 < len(items) <= MAX_ITEMS, f"a send needs 1 to {MAX_ITEMS} envelopes")
    b64 = binascii.b2a_base64
    head = _envelope_head  # checks the nick (once per nick: it is cached)
    parts = []
    for to, body in items:
        if type(to) is not str:
            _check_nick(to, "recipient")  # raises
        if type(body) is not bytes or not 0 < len(body) <= MAX_BODY:
            _check_bytes(body, "body", limit=MAX_BODY)  # raises
        parts.append(head(to) + b64(body, newline=False))
    items_json = b'"},'.join(parts) + b'"}'
    return b'{"v":%d,"type":"send","id":%d,"items":[%b]}' % (PROTOCOL_VERSION, message_id, items_json)


# A deliver exactly as ``encode_message`` writes it: this head, the base64 body, '"}'.
_CANONICAL_DELIVER_HEAD = re.compile(
    rb'\{"v":%d,"type":"deliver","from":"([A-Za-z0-9_.-]{1,32})","body":"' % PROTOCOL_VERSION
)


def decode_deliver(payload: bytes) -> tuple[str, bytes] | None:
    """(sender, body) if ``payload`` is a ``deliver`` in the exact form ``encode_message``
    gives it and ``decode_message`` would accept it; None for anything else, which the
    caller then hands to ``decode_message`` (to decode it, or to refuse it properly)."""
    head = _CANONICAL_DELIVER_HEAD.match(payload)
    if head is None or not payload.endswith(b'"}'):
        return None
    try:
        # The same call the strict decoder makes on the body. It refuses every byte that
        # is not base64 (a quote, a backslash, anything JSON would unescape), so what it
        # takes is a JSON string with nothing to unescape and the payload ends right here.
        body = base64.b64decode(payload[head.end() : -2], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not 0 < len(body) <= MAX_BODY:
        return None
    return head.group(1).decode("ascii"), body

"""The hot paths: the messages sent and received per chat message, read and written
without the general codec.

Pure (no I/O). A room message to N people is one ``send`` with N envelopes, and each
recipient gets a ``deliver``; both are binary (binary.py has the layout and the strict
decoder). Building and validating a dataclass per envelope cost more than the
encryption itself, so:

- the client writes a ``send`` with ``encode_send`` and reads a ``deliver`` with
  ``decode_deliver`` (and a ``mail``, JSON as ever, on its return with ``decode_mail``);
- the relay reads a ``send`` with ``fast_routes`` (as ``Routes``: the bodies are sliced
  out, never opened; relay/intake.py charges a frame before it is read, and a send it
  refuses goes to the strict decoder, which says why), writes each ``deliver`` as
  ``deliver_head(sender)`` + the body as it came, and answers with ``encode_routed``;
- the relay keeps each directory entry encoded (``encode_peer``) and builds welcomes and
  directories from those parts (``encode_welcome``, ``encode_directory``); so too a
  room's members away (``encode_member``) and its member lists (``encode_members``), and
  a join or part of a room, written once for all its members (``encode_entered``,
  ``encode_parted``).

Each is pinned by tests to the codec: the same bytes out, and nothing accepted that
``decode_message`` refuses. A nick is checked against grammar.py's pattern the first
time it is seen, and remembered (``_nick``): nicks repeat in every message.
"""

from __future__ import annotations

import binascii
import functools
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from e2echat.wire.binary import BODY_LENGTH, DELIVER_TAG, SEND_HEAD, SEND_TAG
from e2echat.wire.codec import encode_record, write_number
from e2echat.wire.framing import PREFIX_SIZE, frame_head
from e2echat.wire.grammar import (
    DEFAULT_MAILBOX_TTL,
    MAX_BODY,
    MAX_ID,
    MAX_ITEMS,
    NICK,
    PROTOCOL_VERSION,
    RELAY_ID_SIZE,
    check_bytes,
    check_id,
    check_nick,
    check_room,
    require,
)
from e2echat.wire.messages import Send
from e2echat.wire.objects import Member, PeerInfo

__all__ = [
    "Routes",
    "decode_deliver",
    "decode_deliver_frame",
    "decode_mail",
    "deliver_head",
    "encode_directory",
    "encode_entered",
    "encode_member",
    "encode_members",
    "encode_parted",
    "encode_peer",
    "encode_routed",
    "encode_send",
    "encode_welcome",
    "envelope_head",
    "fast_routes",
    "send_frame",
    "send_recipients",
]

# -- nicks --------------------------------------------------------------------------------

_NICK_BYTES = re.compile(NICK.encode("ascii") + rb"\Z")
# Valid nicks seen, as bytes -> str: a dictionary lookup per nick instead of a pattern
# match and a decode. Bounded (it only ever holds valid nicks, 10,000 or so on a relay):
# when full it starts again.
_NICKS: dict[bytes, str] = {}
_MAX_NICKS = 1 << 15


def _nick(raw: bytes) -> str | None:
    """``raw`` as a nick, if it is one."""
    nick = _NICKS.get(raw)
    if nick is None and _NICK_BYTES.match(raw) is not None:
        if len(_NICKS) >= _MAX_NICKS:
            _NICKS.clear()
        nick = _NICKS[raw] = raw.decode("ascii")
    return nick


# -- the relay's view of a send -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Routes:
    """A ``send`` as the relay reads it: (recipient, body) pairs.

    The relay never opens a body: each is the ciphertext's bytes, sliced out of the frame,
    written on as they came."""

    id: int
    #: (recipient, body)
    items: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, send: Send) -> Routes:
        return cls(send.id, tuple((e.to, e.body) for e in send.items))


def fast_routes(payload: bytes | bytearray | memoryview) -> Routes | None:
    """A ``send`` as ``Routes``, read without building a dataclass per envelope; None for
    anything ``decode_message`` would not read as a send (which it then refuses, or reads
    as another message)."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    size = len(payload)
    if size <= SEND_HEAD.size or payload[0] != SEND_TAG or payload[1] != PROTOCOL_VERSION:
        return None
    ident = SEND_HEAD.unpack_from(payload)[2]
    if ident > MAX_ID:
        return None
    routes = []
    nicks, length_of, length_size = _NICKS, BODY_LENGTH.unpack_from, BODY_LENGTH.size
    at = SEND_HEAD.size
    for _ in range(MAX_ITEMS):  # (at most MAX_ITEMS: one more is refused below)
        end = at + 1 + payload[at]
        to = nicks.get(payload[at + 1 : end]) or _nick(payload[at + 1 : end])
        if to is None or end + length_size > size:
            return None
        (length,) = length_of(payload, end)
        end += length_size
        at = end + length
        if not 0 < length <= MAX_BODY or at > size:
            return None
        routes.append((to, payload[end:at]))
        if at == size:
            return Routes(ident, tuple(routes))
    return None


def send_recipients(payload: bytes) -> tuple[int, tuple[str, ...]] | None:
    """The id and the recipients of a ``send``, read from its lengths alone (its bodies
    skipped, unread and unchecked): what the relay tells the sender of a send it refused
    without decoding it. None if it does not read as a send; it may read one that
    ``fast_routes`` would refuse (a bad body), and then names its recipients all the same."""
    size = len(payload)
    if size <= SEND_HEAD.size or payload[0] != SEND_TAG or payload[1] != PROTOCOL_VERSION:
        return None
    ident = SEND_HEAD.unpack_from(payload)[2]
    if ident > MAX_ID:
        return None
    recipients = []
    at = SEND_HEAD.size
    for _ in range(MAX_ITEMS):
        end = at + 1 + payload[at]
        to = _nick(payload[at + 1 : end])
        if to is None or end + BODY_LENGTH.size > size:
            return None
        at = end + BODY_LENGTH.size + BODY_LENGTH.unpack_from(payload, end)[0]
        recipients.append(to)
        if at >= size:
            return (ident, tuple(recipients)) if at == size else None
    return None


# -- the client's send --------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def envelope_head(to: str) -> bytes:
    """What comes before the body length in an envelope to ``to`` (a valid nick:
    ``LocalProtocolError`` if not), made once per nick."""
    check_nick(to, "recipient")
    return bytes((len(to),)) + to.encode("ascii")


def encode_send(message_id: int, items: Sequence[tuple[str, bytes]]) -> bytes:
    """``encode_message(Send(message_id, (Envelope(to, body), ...)))``, byte for byte,
    without building the dataclasses. Checks what they check (an invalid nick or body, or
    a bad id or count, raises ``LocalProtocolError``); each nick's piece is made (and the
    nick checked) once, not once per message."""
    check_id(message_id)
    require(0 < len(items) <= MAX_ITEMS, f"a send needs 1 to {MAX_ITEMS} envelopes")
    head, length = envelope_head, BODY_LENGTH.pack  # head checks the nick (once: it is cached)
    parts = [SEND_HEAD.pack(SEND_TAG, PROTOCOL_VERSION, message_id)]
    for to, body in items:
        if type(to) is not str:
            check_nick(to, "recipient")  # raises
        if type(body) is not bytes or not 0 < len(body) <= MAX_BODY:
            check_bytes(body, "body", limit=MAX_BODY)  # raises
        parts += (head(to), length(len(body)), body)
    return b"".join(parts)


def send_frame(message_id: int, count: int, pieces: list[bytes], size: int | None = None) -> bytes:
    """``encode_frame(encode_send(message_id, items))`` for ``count`` envelopes already
    written as pieces, after a placeholder: ``pieces[0]`` is replaced by the frame's head
    (its length, then the send's), and for each envelope come ``envelope_head(to)``,
    ``BODY_LENGTH.pack(len(body))`` and the body, bytes of 1 to MAX_BODY (the writer's to
    keep: the pieces are not read here). One join: the frame is copied once. ``size``:
    ``sum(map(len, pieces))`` with the placeholder empty, if the caller has it already."""
    check_id(message_id)
    require(0 < count <= MAX_ITEMS, f"a send needs 1 to {MAX_ITEMS} envelopes")
    require(len(pieces) == 3 * count + 1, "a placeholder, then three pieces to an envelope")
    head = SEND_HEAD.pack(SEND_TAG, PROTOCOL_VERSION, message_id)
    pieces[0] = b""
    if size is None:
        size = sum(map(len, pieces))
    pieces[0] = frame_head(SEND_HEAD.size + size) + head
    return b"".join(pieces)


# -- deliver ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def deliver_head(sender: str) -> bytes:
    """A ``deliver`` payload is ``deliver_head(sender)`` + the body. (Made once per
    sender, not once per send: the relay asks for it with each.)"""
    check_nick(sender, "sender")
    return bytes((DELIVER_TAG, PROTOCOL_VERSION, len(sender))) + sender.encode("ascii")


def decode_deliver(payload: bytes | bytearray | memoryview) -> tuple[str, bytes] | None:
    """(sender, body) if ``payload`` is a ``deliver`` that ``decode_message`` accepts;
    None for anything else, which the caller then hands to ``decode_message`` (to decode
    it, or to refuse it properly)."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    if len(payload) < 4 or payload[0] != DELIVER_TAG or payload[1] != PROTOCOL_VERSION:
        return None
    end = 3 + payload[2]
    sender = _NICKS.get(payload[3:end]) or _nick(payload[3:end])
    body = payload[end:]
    if sender is None or not 0 < len(body) <= MAX_BODY:  # (none if the nick ran past the end)
        return None
    return sender, body


def decode_deliver_frame(data: bytes) -> tuple[str, bytes] | None:
    """``decode_deliver`` of the frame in ``data``, if ``data`` is exactly one whole frame
    (a client's usual read): read in place, without cutting the frame out first. None
    for anything else, which the caller then gives to its ``FrameDecoder``. (No length
    check against MAX_FRAME is needed: a body of at most MAX_BODY keeps it far below.)"""
    if type(data) is not bytes or len(data) < _DELIVER_NICK_AT + 1:
        return None
    # the frame's length, then the payload's tag and version (as one number) and nick length
    length, tag_and_version, nick_size = _deliver_frame_head(data)
    size = PREFIX_SIZE + length
    end = _DELIVER_NICK_AT + nick_size
    if (
        tag_and_version != _DELIVER_TAG_AND_VERSION
        or size != len(data)
        or not 0 < size - end <= MAX_BODY  # (none if the nick ran past the end)
    ):
        return None
    sender = _NICKS.get(data[_DELIVER_NICK_AT:end]) or _nick(data[_DELIVER_NICK_AT:end])
    return None if sender is None else (sender, data[end:])


_deliver_frame_head = struct.Struct(">IHB").unpack_from
_DELIVER_TAG_AND_VERSION = DELIVER_TAG << 8 | PROTOCOL_VERSION
_DELIVER_NICK_AT = PREFIX_SIZE + 3  # after the frame's length, the tag, version and nick length
assert struct.calcsize(">I") == PREFIX_SIZE  # (the frame's length is the first field read)


# -- routed -------------------------------------------------------------------------------

_ROUTED = (
    b'{"v":%d,"type":"routed","id":%%d,"delivered":%%b,"queued":%%b,"missing":%%b,"full":%%b,"refused":%%b}'
    % PROTOCOL_VERSION
)


def _nick_list(nicks: Sequence[str]) -> bytes:
    return ('["' + '","'.join(nicks) + '"]').encode("ascii") if nicks else b"[]"


def encode_routed(
    message_id: int,
    delivered: Sequence[str],
    queued: Sequence[str],
    missing: Sequence[str],
    full: Sequence[str],
    refused: Sequence[str],
) -> bytes:
    """``encode_message(Routed(message_id, delivered, queued, missing, full, refused))``,
    byte for byte, without building the dataclass or checking it: the relay's answer to
    each send, whose id and nicks ``fast_routes`` (or the strict decoder) has read
    already. Only for those: anything else could make a message ``Routed`` refuses."""
    lists = (delivered, queued, missing, full, refused)
    return _ROUTED % (message_id, *[_nick_list(nicks) for nicks in lists])


# -- the relay's directory ----------------------------------------------------------------


def encode_peer(peer: PeerInfo) -> bytes:
    """One directory entry as JSON, for ``encode_welcome`` and ``encode_directory``."""
    return encode_record(peer)


_LIMITS = (b"rate", b"burst", b"byte_rate", b"byte_burst")  # in Welcome's order


def encode_welcome(
    nick: str,
    encoded_peers: Sequence[bytes],
    *,
    rate: float,
    burst: float,
    byte_rate: float,
    byte_burst: float,
    prekeys: int,
    more: bool = False,
    mailbox_ttl: float = DEFAULT_MAILBOX_TTL,
    relay_id: bytes = bytes(RELAY_ID_SIZE),
) -> bytes:
    """``encode_message(Welcome(nick, rate, burst, byte_rate, byte_burst, prekeys, peers,
    more, mailbox_ttl, relay_id))`` from the peers' ``encode_peer``."""
    check_nick(nick)
    check_bytes(relay_id, "relay_id", size=RELAY_ID_SIZE)
    limits = (rate, burst, byte_rate, byte_burst, mailbox_ttl)
    require(
        all(type(x) is float and math.isfinite(x) and x > 0 for x in limits),
        "rates, bursts and the mailbox time to live must be finite floats above 0",
    )
    check_id(prekeys, "prekeys")
    pairs = zip(_LIMITS, limits[:4], strict=True)
    fields = b",".join(b'"%b":%b' % (name, write_number(value)) for name, value in pairs)
    head = b'{"v":%d,"type":"welcome","nick":"%b",%b,"prekeys":%d,"peers":[' % (
        PROTOCOL_VERSION,
        nick.encode("ascii"),
        fields,
        prekeys,
    )
    tail = b'],"more":%b,"mailbox_ttl":%b,"relay_id":"%b"}' % (
        b"true" if more else b"false",
        write_number(mailbox_ttl),
        binascii.b2a_base64(relay_id, newline=False),
    )
    return head + b",".join(encoded_peers) + tail


def encode_directory(encoded_peers: Sequence[bytes], *, more: bool = False) -> bytes:
    """``encode_message(Directory(peers, more))`` from the peers' ``encode_peer``."""
    head = b'{"v":%d,"type":"directory","peers":[' % PROTOCOL_VERSION
    return head + b",".join(encoded_peers) + (b'],"more":true}' if more else b'],"more":false}')


def encode_member(member: Member) -> bytes:
    """A room's member away as JSON, for ``encode_members``."""
    return encode_record(member)


def encode_members(
    room: str, encoded_peers: Sequence[bytes], encoded_away: Sequence[bytes], *, more: bool = False
) -> bytes:
    """``encode_message(Members(room, peers, away, more))`` from the peers' ``encode_peer``
    and the members' ``encode_member`` (each nick once among them: the caller's to keep)."""
    check_room(room)
    head = b'{"v":%d,"type":"members","room":"%b","peers":[' % (PROTOCOL_VERSION, room.encode("ascii"))
    middle = b'],"away":['
    tail = b'],"more":true}' if more else b'],"more":false}'
    return head + b",".join(encoded_peers) + middle + b",".join(encoded_away) + tail


def encode_entered(room: str, encoded_peer: bytes) -> bytes:
    """``encode_message(Entered(room, peer))`` from the peer's ``encode_peer``."""
    check_room(room)
    return b'{"v":%d,"type":"entered","room":"%b","peer":%b}' % (
        PROTOCOL_VERSION,
        room.encode("ascii"),
        encoded_peer,
    )


def encode_parted(room: str, nick: str) -> bytes:
    """``encode_message(Parted(room, nick))``."""
    check_room(room)
    check_nick(nick)
    return b'{"v":%d,"type":"parted","room":"%b","nick":"%b"}' % (
        PROTOCOL_VERSION,
        room.encode("ascii"),
        nick.encode("ascii"),
    )


# -- mail ---------------------------------------------------------------------------------

# A mailbox item's time as ``write_number`` gives it (a float's repr: digits, a fraction,
# perhaps an exponent) or as JSON may give a whole number; either reads as float() reads it.
_TIME = rb"(?:0|[1-9][0-9]{0,15}+)(?:\.[0-9]{1,20}+)?(?:e[-+][0-9]{1,3}+)?"
# A sequence number as JSON writes it: no sign, no leading zero, no more digits than MAX_ID.
_SEQ = rb"0|[1-9][0-9]{0,%d}+" % (len(str(MAX_ID)) - 1)
# The sender: any run of a nick's characters (``_nick`` then checks it against grammar.py).
_SENDER = rb'[^"\\]{1,64}+'
_CANONICAL_MAIL_HEAD = re.compile(
    rb'\{"v":%d,"type":"mail","seq":(%b),"from":"(%b)","queued_at":(%b),"body":"'
    % (PROTOCOL_VERSION, _SEQ, _SENDER, _TIME)
)
_MAIL_TAIL = b'"}'
# check_time's bound: a Unix time, 0 or more, and below this
_MAX_TIME = 2.0**40


def decode_mail(payload: bytes | bytearray | memoryview) -> tuple[int, str, float, bytes] | None:
    """(seq, sender, queued_at, body) if ``payload`` is a ``mail`` in the form
    ``encode_message`` gives it and ``decode_message`` would accept it; None for anything
    else, which the caller then hands to ``decode_message``. A returning client reads its
    whole mailbox this way: thousands of items, one after the other."""
    head = _CANONICAL_MAIL_HEAD.match(payload)
    if head is None or payload[-2:] != _MAIL_TAIL:
        return None
    seq = int(head[1])
    queued_at = float(head[3])
    if seq > MAX_ID or not 0 <= queued_at < _MAX_TIME:
        return None
    try:
        # What the strict decoder's ``b64decode(..., validate=True)`` calls: it refuses every
        # byte that is not base64 (a quote, a backslash: nothing JSON would unescape).
        body = binascii.a2b_base64(payload[head.end() : -2], strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    sender = _nick(bytes(head[2]))
    if sender is None or not 0 < len(body) <= MAX_BODY:
        return None
    return seq, sender, queued_at, body

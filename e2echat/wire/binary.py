"""The two messages that carry ciphertext, ``send`` and ``deliver``, in their binary
layout: the strict encoder and decoder. Pure (no I/O).

Every other message is a JSON object (codec.py). These two are sent for every chat
message (a room message to N people is one ``send`` with N bodies and N ``deliver``s),
and as JSON each body went through base64 on the way out and on the way in: on the
client, decoding the base64 of a ``deliver`` cost as much as decrypting it. So they are
binary, told from JSON by their first byte, a type tag that never starts a JSON text:

    send    = 0x01 || version (1) || id (8) || item ... (1 to MAX_ITEMS, to the end)
    item    = to length (1) || to (ASCII) || body length (4) || body
    deliver = 0x02 || version (1) || from length (1) || from (ASCII) || body (the rest)

Integers are unsigned, big-endian; version is PROTOCOL_VERSION; nicks and bodies follow
the same rules as everywhere (grammar.py: a nick of 1 to NICK_MAX characters of its
alphabet, a body of 1 to MAX_BODY bytes). A payload has exactly one reading: no padding,
no trailing bytes, no other spelling. ``decode_binary`` refuses anything else with
``RemoteProtocolError``, as the JSON decoder does. The hot paths (fastpath.py) read and
write the same layout without building the dataclasses, and tests hold them to this.
"""

from __future__ import annotations

import struct

from e2echat.errors import LocalProtocolError, RemoteProtocolError
from e2echat.wire.grammar import MAX_ITEMS, PROTOCOL_VERSION
from e2echat.wire.messages import Deliver, Message, Send
from e2echat.wire.objects import Envelope

__all__ = [
    "BINARY_TAGS",
    "BODY_LENGTH",
    "DELIVER_TAG",
    "SEND_HEAD",
    "SEND_TAG",
    "decode_binary",
    "encode_deliver",
    "encode_send_message",
]

SEND_TAG = 0x01
DELIVER_TAG = 0x02
#: the first byte of a binary payload; a JSON one starts with '{'
BINARY_TAGS = frozenset((SEND_TAG, DELIVER_TAG))
#: tag, version, id: what comes before a send's items
SEND_HEAD = struct.Struct(">BBQ")
#: an item's body length
BODY_LENGTH = struct.Struct(">I")


def encode_send_message(message: Send) -> bytes:
    """A ``send`` (already checked when it was built) in its binary layout."""
    parts = [SEND_HEAD.pack(SEND_TAG, PROTOCOL_VERSION, message.id)]
    for envelope in message.items:
        to = envelope.to.encode("ascii")
        parts += (bytes((len(to),)), to, BODY_LENGTH.pack(len(envelope.body)), envelope.body)
    return b"".join(parts)


def encode_deliver(message: Deliver) -> bytes:
    """A ``deliver`` (already checked when it was built) in its binary layout."""
    sender = message.sender.encode("ascii")
    return bytes((DELIVER_TAG, PROTOCOL_VERSION, len(sender))) + sender + message.body


def _invalid(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail=detail)


def _nick(payload: bytes, at: int, where: str) -> tuple[str, int]:
    """The length-prefixed nick at ``at`` and where it ends (the dataclass checks it)."""
    end = at + 1 + payload[at]
    if end > len(payload):
        raise _invalid(f"{where} is cut short")
    try:
        return payload[at + 1 : end].decode("ascii"), end
    except UnicodeDecodeError:
        raise _invalid(f"{where} names a nick that is not ASCII") from None


def _send(payload: bytes) -> Send:
    if len(payload) < SEND_HEAD.size:
        raise _invalid("'send' message is cut short")
    _, _, message_id = SEND_HEAD.unpack_from(payload)
    items: list[Envelope] = []
    at, size = SEND_HEAD.size, len(payload)
    while at < size:
        if len(items) == MAX_ITEMS:  # before building more: a MiB holds 150,000 tiny ones
            raise _invalid(f"'send' message has more than {MAX_ITEMS} items")
        to, at = _nick(payload, at, "'send' message")
        if at + BODY_LENGTH.size > size:
            raise _invalid("'send' message is cut short")
        (length,) = BODY_LENGTH.unpack_from(payload, at)
        at += BODY_LENGTH.size
        if at + length > size:
            raise _invalid("'send' message is cut short")
        items.append(Envelope(to, payload[at : at + length]))
        at += length
    return Send(message_id, tuple(items))


def _deliver(payload: bytes) -> Deliver:
    if len(payload) < 3:
        raise _invalid("'deliver' message is cut short")
    sender, at = _nick(payload, 2, "'deliver' message")
    return Deliver(sender, payload[at:])


def decode_binary(payload: bytes | bytearray | memoryview) -> Message:
    """The ``send`` or ``deliver`` in ``payload`` (its first byte one of BINARY_TAGS).
    Raises ``RemoteProtocolError`` for anything but exactly one valid message."""
    data = bytes(payload)
    if len(data) < 2:
        raise _invalid("binary message is cut short")
    if data[1] != PROTOCOL_VERSION:
        raise _invalid(f"unsupported protocol version {data[1]} (this is version {PROTOCOL_VERSION})")
    try:
        return _send(data) if data[0] == SEND_TAG else _deliver(data)
    except LocalProtocolError as exc:  # the dataclass refused a value
        raise _invalid(exc.detail or str(exc)) from None

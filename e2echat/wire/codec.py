"""Strict JSON for wire messages: ``encode_message`` and ``decode_message``.

(``send`` and ``deliver`` are binary, not JSON: both functions hand them to binary.py.)

Pure (no I/O). Both directions are driven by the messages' ``WIRE`` tables (messages.py):
each ``Kind`` has one writer and one reader here, and a type is encoded or decoded by
going down its table; nothing here knows any one message type.

``decode_message`` accepts exactly the documented shape: unknown types, unknown or missing
fields, duplicate keys, wrong JSON types, bad base64, wrong key sizes, lone surrogates and
anything the dataclass refuses all raise ``RemoteProtocolError`` and nothing else.

``encode_message`` gives exactly ``json.dumps(obj, separators=(",", ":"),
ensure_ascii=False)`` of the message's JSON object, fields in table order (tested), but
builds the bytes directly: only free text needs JSON's escaping, since nicks, base64,
numbers and booleans are written as they are.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from nacl.public import PublicKey

from e2echat.errors import LocalProtocolError, RemoteProtocolError
from e2echat.wire.binary import BINARY_TAGS, decode_binary, encode_deliver, encode_send_message
from e2echat.wire.fields import Kind, Record
from e2echat.wire.grammar import KEY_SIZE, MAX_ITEMS, MAX_REASON, PROTOCOL_VERSION, is_utf8
from e2echat.wire.messages import MESSAGE_TYPES, Deliver, Message, Send
from e2echat.wire.objects import OBJECT_KINDS

__all__ = ["decode_message", "encode_message", "encode_record", "printable_reason", "write_number"]

Writer = Callable[[Any], bytes]
#: (value as JSON gave it, where, field name) -> the attribute's value, or raises
Reader = Callable[[Any, str, str], Any]

# -- encoding -----------------------------------------------------------------------------

_b64 = binascii.b2a_base64
# A str as a JSON string, exactly as json.dumps(..., ensure_ascii=False) writes one.
_json_string = json.JSONEncoder(ensure_ascii=False).encode


def _write_text(value: str) -> bytes:
    return _json_string(value).encode("utf-8")


def _write_nick(value: str) -> bytes:
    return b'"%b"' % value.encode("ascii")


def _write_binary(value: bytes) -> bytes:
    return b'"%b"' % _b64(value, newline=False)


def _write_key(value: PublicKey) -> bytes:
    return b'"%b"' % _b64(bytes(value), newline=False)


def _write_flag(value: bool) -> bytes:
    return b"true" if value else b"false"


def _write_int(value: int) -> bytes:
    return b"%d" % value


def write_number(value: float) -> bytes:
    """A number as JSON writes it: a float's repr, or an int's digits (a time may be a
    whole number of seconds: check_time takes either). The decoder reads either back as
    an equal float."""
    if type(value) is int:
        return b"%d" % value
    return float.__repr__(value).encode("ascii")


def _write_nicks(value: tuple[str, ...]) -> bytes:
    return ('["' + '","'.join(value) + '"]').encode("ascii") if value else b"[]"


def _layout(cls: type[Record], *header: bytes) -> tuple[bytes, tuple[tuple[str, Writer], ...]]:
    """A %-template of ``cls``'s JSON object, with the ``header`` members first and a
    ``%b`` for each field's value; and (attribute, writer) for each field."""
    members = [member.replace(b"%", b"%%") for member in header]
    members += [_write_text(row.wire).replace(b"%", b"%%") + b":%b" for row in cls.WIRE]
    template = b"{" + b",".join(members) + b"}"
    return template, tuple((row.attr, _WRITERS[row.kind]) for row in cls.WIRE)


def _object_writer(cls: type[Record]) -> Writer:
    template, fields = _layout(cls)

    def write_object(record: Record) -> bytes:
        return template % tuple([write(getattr(record, attr)) for attr, write in fields])

    return write_object


def _objects_writer(kind: Kind) -> Writer:
    record, _, array = OBJECT_KINDS[kind]
    write = _RECORD_WRITERS[record]
    return (lambda items: b"[" + b",".join(map(write, items)) + b"]") if array else write


_WRITERS: dict[Kind, Writer] = {
    Kind.TEXT: _write_text,
    Kind.NICK: _write_nick,
    Kind.KEY: _write_key,
    Kind.BINARY: _write_binary,
    Kind.FLAG: _write_flag,
    Kind.INT: _write_int,
    Kind.NUMBER: write_number,
    Kind.NICKS: _write_nicks,
    # A room's name is in a grammar that needs no escaping either (grammar.py).
    Kind.ROOM: _write_nick,
    Kind.ROOMS: _write_nicks,
}
_RECORD_WRITERS: dict[type[Record], Writer] = {}
# An object may hold others (a bundle holds prekeys): OBJECT_KINDS lists the kinds of the
# ones inside first, so each writer is made from writers that exist already.
for _kind, _holds in OBJECT_KINDS.items():
    if _holds.record not in _RECORD_WRITERS:
        _RECORD_WRITERS[_holds.record] = _object_writer(_holds.record)
    _WRITERS[_kind] = _objects_writer(_kind)
#: the messages that are binary on the wire (binary.py), not JSON
_BINARY_WRITERS: dict[type[Message], Callable[[Any], bytes]] = {
    Send: encode_send_message,
    Deliver: encode_deliver,
}
_MESSAGE_LAYOUTS = {
    cls: _layout(cls, b'"v":%d' % PROTOCOL_VERSION, b'"type":' + _write_text(name))
    for name, cls in MESSAGE_TYPES.items()
    if cls not in _BINARY_WRITERS
}


def encode_message(message: Message) -> bytes:
    """The payload of one frame (without the length prefix)."""
    layout = _MESSAGE_LAYOUTS.get(type(message))
    if layout is None:
        binary = _BINARY_WRITERS.get(type(message))
        if binary is None:
            raise LocalProtocolError(detail=f"cannot encode {type(message).__name__}")
        return binary(message)
    template, fields = layout
    return template % tuple([write(getattr(message, attr)) for attr, write in fields])


def encode_record(record: Record) -> bytes:
    """An object nested in messages (a directory entry, an envelope, a bundle) as its JSON."""
    return _RECORD_WRITERS[type(record)](record)


# -- decoding -----------------------------------------------------------------------------


def printable_reason(text: str) -> str:
    """``text`` made safe to put in an ``Error`` or ``Bye``: valid UTF-8 (lone surrogates
    escaped) and no longer than MAX_REASON. Details may quote what a peer sent."""
    safe = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text
    )
    safe = safe.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= MAX_REASON else safe[: MAX_REASON - 1] + "…"


def _invalid(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail=printable_reason(detail))


def _wrong(where: str, name: str, what: str) -> RemoteProtocolError:
    return _invalid(f"{where} field {name!r} must be {what}")


def _read_text(value: Any, where: str, name: str) -> str:
    if type(value) is not str:
        raise _wrong(where, name, "a string")
    if not value.isascii() and not is_utf8(value):
        raise _invalid(f"{where} field {name!r} is not valid Unicode (lone surrogate)")
    return value


def _read_nick(value: Any, where: str, name: str) -> str:
    if type(value) is not str:
        raise _wrong(where, name, "a string")
    return value  # the dataclass holds it to the grammar, which is ASCII


def _read_binary(value: Any, where: str, name: str) -> bytes:
    if type(value) is not str:
        raise _wrong(where, name, "a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # also a character that is not ASCII
        raise _invalid(f"{where} field {name!r} is not valid base64") from None


def _read_key(value: Any, where: str, name: str) -> PublicKey:
    raw = _read_binary(value, where, name)
    if len(raw) != KEY_SIZE:
        raise _invalid(f"{where} field {name!r} must be a {KEY_SIZE}-byte key")
    return PublicKey(raw)


def _read_flag(value: Any, where: str, name: str) -> bool:
    if type(value) is not bool:
        raise _wrong(where, name, "true or false")
    return value


def _read_int(value: Any, where: str, name: str) -> int:
    if type(value) is not int:  # not a bool either
        raise _wrong(where, name, "an integer")
    return value


def _read_number(value: Any, where: str, name: str) -> float:
    if type(value) is int:  # JSON has one kind of number: 50 is 50.0
        try:
            return float(value)
        except OverflowError:
            raise _wrong(where, name, "a number a float can hold") from None
    return value  # type: ignore[no-any-return]  # the dataclass holds it to its range (1e999 is inf)


def _read_array(value: Any, where: str, name: str) -> list[Any]:
    if type(value) is not list:
        raise _wrong(where, name, "an array")
    if len(value) > MAX_ITEMS:
        raise _invalid(f"{where} field {name!r} has more than {MAX_ITEMS} items")
    return value


def _read_nicks(value: Any, where: str, name: str) -> tuple[str, ...]:
    items = _read_array(value, where, name)
    if not all(type(item) is str for item in items):
        raise _wrong(where, name, "an array of strings")
    return tuple(items)


_ABSENT: Any = object()
#: per type: its constructor, (wire name, reader) per field, and what errors call it
_Plan = tuple[Callable[..., Record], tuple[tuple[str, Reader], ...], str]
_PLANS: dict[type[Record], _Plan] = {}
_HEADER = ("v", "type")  # read before the message's own fields


def _read_object(cls: type[Record], obj: Any, header: tuple[str, ...] = ()) -> Any:
    """The ``cls`` that the JSON object ``obj`` holds: every field in its table, each read
    by its kind's reader, and no other field (but the ``header`` fields, already read)."""
    build, fields, where = _PLANS[cls]
    if type(obj) is not dict:
        raise _invalid(f"{where} must be a JSON object")
    values = []
    for name, read in fields:
        value = obj.get(name, _ABSENT)
        if value is _ABSENT:
            raise _invalid(f"{where} is missing field {name!r}")
        values.append(read(value, where, name))
    record = build(*values)  # the table lists the dataclass's fields in order
    if len(obj) != len(fields) + len(header):  # then it has a name the table has not
        extra = sorted(set(obj).difference(header, (name for name, _ in fields)))
        raise _invalid(f"{where} has unknown field(s): {', '.join(repr(x) for x in extra)}")
    return record


def _objects_reader(kind: Kind) -> Reader:
    record, _, array = OBJECT_KINDS[kind]

    def read_one(value: Any, where: str, name: str) -> Any:
        if type(value) is not dict:
            raise _wrong(where, name, "an object")
        return _read_object(record, value)

    def read_array(value: Any, where: str, name: str) -> tuple[Any, ...]:
        return tuple([_read_object(record, item) for item in _read_array(value, where, name)])

    return read_array if array else read_one


_READERS: dict[Kind, Reader] = {
    Kind.TEXT: _read_text,
    Kind.NICK: _read_nick,
    Kind.KEY: _read_key,
    Kind.BINARY: _read_binary,
    Kind.FLAG: _read_flag,
    Kind.INT: _read_int,
    Kind.NUMBER: _read_number,
    Kind.NICKS: _read_nicks,
    Kind.ROOM: _read_nick,  # the dataclass holds it to the room grammar
    Kind.ROOMS: _read_nicks,
    **{kind: _objects_reader(kind) for kind in OBJECT_KINDS},
}


def _plan(cls: type[Record], where: str) -> _Plan:
    return cls, tuple((row.wire, _READERS[row.kind]) for row in cls.WIRE), where


_PLANS.update({holds.record: _plan(holds.record, holds.label) for holds in OBJECT_KINDS.values()})
_PLANS.update({cls: _plan(cls, f"{name!r} message") for name, cls in MESSAGE_TYPES.items()})
# The binary messages have one layout: a JSON object naming their type is refused.
_JSON_TYPES = {name: cls for name, cls in MESSAGE_TYPES.items() if cls not in _BINARY_WRITERS}


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


def _parse(payload: bytes | bytearray | memoryview) -> Any:
    try:
        text = str(payload, "utf-8")
    except UnicodeDecodeError:
        raise _invalid("payload is not a UTF-8 JSON object") from None
    except TypeError:  # not bytes-like: our bug, not the peer's
        raise TypeError(f"a payload is bytes-like, not {type(payload).__name__}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RemoteProtocolError:
        raise
    except (ValueError, RecursionError):
        raise _invalid("payload is not a UTF-8 JSON object") from None


def _header(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise _invalid(f"message is missing field {name!r}")
    return obj[name]


def decode_message(payload: bytes | bytearray | memoryview) -> Message:
    """Parse one frame's payload (bytes, or any bytes-like object). Raises
    ``RemoteProtocolError`` for anything but a valid message (and ``TypeError`` for a
    ``payload`` that is not bytes-like at all)."""
    if isinstance(payload, bytes | bytearray | memoryview) and len(payload) and payload[0] in BINARY_TAGS:
        return decode_binary(payload)
    obj = _parse(payload)
    if type(obj) is not dict:
        raise _invalid("message must be a JSON object")
    version = _read_int(_header(obj, "v"), "message", "v")
    if version != PROTOCOL_VERSION:
        raise _invalid(f"unsupported protocol version {version} (this is version {PROTOCOL_VERSION})")
    type_name = _read_text(_header(obj, "type"), "message", "type")
    cls = _JSON_TYPES.get(type_name)
    if cls is None:
        if type_name in MESSAGE_TYPES:
            raise _invalid(f"a {type_name!r} message is binary, not JSON")
        raise _invalid(f"unknown message type {type_name[:40]!r}")
    try:
        message: Message = _read_object(cls, obj, _HEADER)
    except LocalProtocolError as exc:  # the dataclass refused a value
        raise _invalid(exc.detail or str(exc)) from None
    return message

"""What a field on the wire is, and how the values the messages hold are checked.

Pure (no I/O). Each message type (messages.py) has a ``WIRE`` table: one ``Field`` per
field on the wire, in order, each with its ``Kind`` (how the value is written in JSON).
The strict codec (codec.py) has one reader and one writer per ``Kind``. The checks below
are the ones the dataclasses make when they are built; the rules they follow are in
grammar.py.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import ClassVar, NamedTuple

from nacl.public import PublicKey

from e2echat.wire.grammar import MAX_ITEMS, MAX_REASON, require


class Kind(enum.Enum):
    """How a field's value is written in JSON. (What values are allowed is the dataclass's
    business: it checks them when it is built, however it was built.)"""

    TEXT = enum.auto()  # a string: any text UTF-8 can carry
    NICK = enum.auto()  # a string in the nick grammar, which needs no JSON escaping
    KEY = enum.auto()  # base64 of a 32-byte X25519 public key
    BINARY = enum.auto()  # base64 of bytes
    FLAG = enum.auto()  # true or false
    INT = enum.auto()  # an integer (never a boolean)
    NUMBER = enum.auto()  # a finite number, written with a fraction (never a boolean)
    NICKS = enum.auto()  # an array of nicks
    ROOM = enum.auto()  # a string in the room grammar, which needs no JSON escaping
    ROOMS = enum.auto()  # an array of room names
    PEER = enum.auto()  # a ``PeerInfo`` object
    PEERS = enum.auto()  # an array of ``PeerInfo`` objects
    ENVELOPES = enum.auto()  # an array of ``Envelope`` objects
    SIGNED_PREKEY = enum.auto()  # a ``SignedPrekey`` object
    ONE_TIME_PREKEYS = enum.auto()  # an array of ``OneTimePrekey`` objects
    BUNDLES = enum.auto()  # an array of ``Bundle`` objects
    MEMBERS = enum.auto()  # an array of ``Member`` objects


class Field(NamedTuple):
    """One row of a ``WIRE`` table."""

    wire: str  #: its name in the JSON object
    attr: str  #: the dataclass attribute it fills
    kind: Kind


def on_wire(wire: str, kind: Kind, *, attr: str | None = None) -> Field:
    """A table row: the field ``wire``, of ``kind``, fills the attribute of the same name
    (or ``attr``)."""
    return Field(wire, attr or wire, kind)


TEXT, NICK, KEY, BINARY, FLAG, INT = Kind.TEXT, Kind.NICK, Kind.KEY, Kind.BINARY, Kind.FLAG, Kind.INT
NUMBER = Kind.NUMBER
NICKS, PEER, PEERS, ENVELOPES = Kind.NICKS, Kind.PEER, Kind.PEERS, Kind.ENVELOPES
ROOM, ROOMS, MEMBERS = Kind.ROOM, Kind.ROOMS, Kind.MEMBERS
SIGNED_PREKEY, ONE_TIME_PREKEYS, BUNDLES = Kind.SIGNED_PREKEY, Kind.ONE_TIME_PREKEYS, Kind.BUNDLES


class Record:
    """A dataclass with a wire table: a message, or an object nested in one."""

    #: the fields on the wire, in their order there (and the dataclass's)
    WIRE: ClassVar[tuple[Field, ...]]


class Holds(NamedTuple):
    """What a field of an object kind holds."""

    record: type[Record]  #: the dataclass of each object
    label: str  #: what an error calls one
    array: bool  #: an array of them, not just one


def check_tables(*records: type[Record]) -> None:
    """Each table names every attribute of its dataclass once, in the dataclass's order
    (so a decoded object is built positionally), and every wire name once."""
    for cls in records:
        attrs = tuple(row.attr for row in cls.WIRE)
        names = [row.wire for row in cls.WIRE]
        if attrs != tuple(f.name for f in dataclasses.fields(cls)):  # type: ignore[arg-type]
            raise TypeError(f"{cls.__name__}.WIRE does not list its fields in order")
        if len(set(names)) != len(names) or {"v", "type"} & set(names):
            raise TypeError(f"{cls.__name__}.WIRE names a field twice")


# -- the checks the dataclasses make --------------------------------------------------------


def check_key(key: object, what: str) -> None:
    require(isinstance(key, PublicKey), f"{what} must be an X25519 public key")


def check_reason(value: object, what: str) -> None:
    require(
        isinstance(value, str) and len(value) <= MAX_REASON,
        f"{what} must be a string of at most {MAX_REASON} characters",
    )


def check_positive(value: object, what: str) -> None:
    require(
        type(value) is float and math.isfinite(value) and value > 0,
        f"{what} must be a finite float above 0",
    )


def check_items(value: object, kind: type, what: str, limit: int = MAX_ITEMS) -> None:
    require(
        isinstance(value, tuple) and len(value) <= limit and all(isinstance(item, kind) for item in value),
        f"{what} must be a tuple of at most {limit} {kind.__name__}",
    )

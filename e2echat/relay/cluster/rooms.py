"""Room memberships across the relays of a cluster, without any I/O.

Each membership is one key of the ``rooms`` key-value bucket (``member_key``: the room
and the member's nick), whose value names the relay that keeps it (its ``node``), the
member's identity key and since when it is one (``encode_membership``). A membership is
kept by exactly one relay at a time, the one its member last registered on: in that
relay's ``Kept`` (and its store), as on a single relay; every other relay holds it here
(``RemoteRooms``), as the bucket says. A member who registers on another relay takes its
memberships with it (``ClusterCore.claimed`` adopts them, and they are put again under
the new relay's node); the relay that kept them drops them when it sees that.

The key is the nick itself, not its skeleton: a room may hold an away "bob" and an online
"b0b" on one relay too (only nicks online must not look alike).

``ClusterPresence`` is a single relay's ``Presence`` that also lists the other relays'
members of a room, and counts them among a client's contacts.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nacl.public import PublicKey

from e2echat.errors import RemoteProtocolError
from e2echat.relay.actions import ConnId
from e2echat.relay.kept import Kept
from e2echat.relay.paging import Paging
from e2echat.relay.presence import Presence
from e2echat.relay.registration import members_pages
from e2echat.wire.fastpath import encode_member
from e2echat.wire.grammar import KEY_SIZE, is_valid_nick, is_valid_room
from e2echat.wire.objects import Member

#: node id (16 hex digits), nick (length first), identity key, since (Unix time)
_SINCE = struct.Struct(">d")
_NODE_SIZE = 16
#: the first byte of a send's copies for another relay that says what they come after:
#: the revision of the ``rooms`` bucket its relay last wrote, and the send's message id
#: (for a copy queued in a mailbox there), then the ``encode_forward`` request
ORDERED = b"o"
_ORDER = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class Membership:
    """``nick`` (``identity_key``) is a member of ``room`` since ``since``, kept by relay
    ``node``."""

    room: str
    nick: str
    identity_key: bytes
    since: float
    node: str


@dataclass(frozen=True, slots=True)
class SaveMembership:
    """Put ``membership`` (this relay's) in the ``rooms`` bucket."""

    membership: Membership


@dataclass(frozen=True, slots=True)
class DropMembership:
    """``nick`` is no member of ``room`` any more: delete its key, if it is still this
    relay's (another relay's put since is the member's move there, and stays)."""

    room: str
    nick: str


def member_key(room: str, nick: str) -> str:
    """The ``rooms`` bucket's key of ``nick``'s membership of ``room``: both in hex (a key
    is a subject: a room's '.' would split it), the room first."""
    return f"{room.encode('ascii').hex()}.{nick.encode('ascii').hex()}"


def parse_member_key(key: str) -> tuple[str, str]:
    """(room, nick) from ``member_key``; ``RemoteProtocolError`` if it is not one."""
    try:
        room_hex, nick_hex = key.split(".")
        room, nick = bytes.fromhex(room_hex).decode("ascii"), bytes.fromhex(nick_hex).decode("ascii")
    except ValueError:
        raise RemoteProtocolError(detail="a key of the rooms bucket is malformed") from None
    if not is_valid_room(room) or not is_valid_nick(nick):
        raise RemoteProtocolError(detail="a key of the rooms bucket names no valid room or nick")
    return room, nick


def encode_membership(membership: Membership) -> bytes:
    nick = membership.nick.encode("ascii")
    return b"".join(
        (
            membership.node.encode("ascii"),
            bytes((len(nick),)),
            nick,
            membership.identity_key,
            _SINCE.pack(membership.since),
        )
    )


def decode_membership(key: str, value: bytes) -> Membership:
    """The membership under ``key``; ``RemoteProtocolError`` if the value is not one (or
    names another nick than its key)."""
    room, nick = parse_member_key(key)
    raw_node = value[:_NODE_SIZE]
    at = _NODE_SIZE + 1 + len(nick)
    if (
        len(value) != at + KEY_SIZE + _SINCE.size
        or not all(c in b"0123456789abcdef" for c in raw_node)
        or len(raw_node) != _NODE_SIZE
        or value[_NODE_SIZE] != len(nick)
        or value[_NODE_SIZE + 1 : at] != nick.encode("ascii")
    ):
        raise RemoteProtocolError(detail="a membership in the rooms bucket is malformed")
    identity_key = value[at : at + KEY_SIZE]
    (since,) = _SINCE.unpack(value[at + KEY_SIZE :])
    return Membership(room, nick, identity_key, since, raw_node.decode("ascii"))


def encode_ordered(after: int, message_id: int, forward: bytes) -> bytes:
    return ORDERED + _ORDER.pack(after, message_id) + forward


def decode_ordered(payload: bytes) -> tuple[int, int, bytes]:
    """(bucket revision, message id, the forward) from ``encode_ordered``."""
    if payload[:1] != ORDERED or len(payload) < 1 + _ORDER.size:
        raise RemoteProtocolError(detail="an ordered forward is cut short")
    after, message_id = _ORDER.unpack_from(payload, 1)
    return after, message_id, payload[1 + _ORDER.size :]


class RemoteRooms:
    """The memberships the other relays keep, as the ``rooms`` bucket says."""

    def __init__(self) -> None:
        #: room -> nick -> its membership
        self.members: dict[str, dict[str, Membership]] = {}
        #: nick -> its rooms here
        self.rooms_of: dict[str, dict[str, None]] = {}
        #: (room, nick) whose members online here have not been told of it -> since when:
        #: it came while its member was not known online (the nicks bucket may lag behind
        #: this one; ``ClusterCore.tick`` tells them if it does not come)
        self.untold: dict[tuple[str, str], float] = {}
        #: nick -> (identity key, its ``Member`` as ``encode_member`` gives it): made once
        #: for every list of its rooms, as ``Kept.encoded_member`` does for those here
        self._encoded: dict[str, tuple[bytes, bytes]] = {}

    def encoded_member(self, membership: Membership) -> bytes:
        cached = self._encoded.get(membership.nick)
        if cached is None or cached[0] != membership.identity_key:
            member = Member(membership.nick, PublicKey(membership.identity_key))
            cached = self._encoded[membership.nick] = (membership.identity_key, encode_member(member))
        return cached[1]

    def get(self, room: str, nick: str) -> Membership | None:
        return self.members.get(room, {}).get(nick)

    def add(self, membership: Membership) -> Membership | None:
        """Hold ``membership``: the one it replaces, if any."""
        room, nick = membership.room, membership.nick
        members = self.members.setdefault(room, {})
        before = members.get(nick)
        members[nick] = membership
        self.rooms_of.setdefault(nick, {})[room] = None
        return before

    def drop(self, room: str, nick: str) -> Membership | None:
        members = self.members.get(room)
        if members is None or (membership := members.pop(nick, None)) is None:
            return None
        if not members:
            del self.members[room]
        rooms = self.rooms_of[nick]
        del rooms[room]
        if not rooms:
            del self.rooms_of[nick]
            self._encoded.pop(nick, None)
        self.untold.pop((room, nick), None)
        return membership

    def of(self, nick: str) -> list[str]:
        return list(self.rooms_of.get(nick, ()))

    def in_room(self, room: str) -> Iterable[str]:
        return self.members.get(room, {}).keys()

    def node_of(self, nick: str) -> str | None:
        """The relay that keeps ``nick``'s memberships (and so its mailbox), if any."""
        for room in self.rooms_of.get(nick, ()):
            return self.members[room][nick].node
        return None

    def sharing(self, rooms: Iterable[str]) -> dict[str, None]:
        """The other relays' members of ``rooms``, each once."""
        found: dict[str, None] = {}
        for room in rooms:
            found.update(dict.fromkeys(self.members.get(room, ())))
        return found


class ClusterPresence(Presence):
    """A single relay's presence, with the other relays' members of each room (online:
    as the nicks bucket has them, ``peers``; away: by the key their membership names)."""

    def __init__(
        self,
        kept: Kept,
        online: dict[str, ConnId],
        paging: Paging,
        remote: RemoteRooms,
        peers: dict[str, tuple[str, bytes]],
        dropped: list[DropMembership],
    ) -> None:
        super().__init__(kept, online, paging)
        self.remote = remote
        self.peers = peers
        #: where the memberships of identities forgotten here go, for the bucket
        self.dropped = dropped

    def members(self, nick: str, room: str) -> Iterator[bytes]:
        rooms, encoded, kept, remote, peers = self.rooms, self.encoded, self.kept, self.remote, self.peers
        online = [encoded[other] for other in rooms.online_in(room) if other != nick]
        away = [kept.encoded_member(other) for other in rooms.away_in(room)]
        for other in remote.in_room(room):
            entry = peers.get(other)
            if entry is not None:
                online.append(entry[1])
            else:
                away.append(remote.encoded_member(remote.members[room][other]))
        return members_pages(room, online, away)

    def forgotten(self) -> list[tuple[ConnId, bytes]]:
        self.dropped += (DropMembership(room, nick) for room, nick in self.kept.parted)
        return super().forgotten()

    def contacts(self, nick: str) -> dict[str, None]:
        """Everyone online here who shares a room with ``nick`` (of another relay)."""
        found: dict[str, None] = {}
        present = self.rooms.present
        for room in self.remote.rooms_of.get(nick, ()):
            found.update(present.get(room, {}))
        return found

    def to_room(self, room: str, frame: bytes, but: str) -> list[tuple[ConnId, bytes]]:
        return self._to_room(room, frame, but)

    def to(self, nicks: Iterable[str], frame: bytes) -> list[tuple[ConnId, bytes]]:
        return self._to(nicks, frame)

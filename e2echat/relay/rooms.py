"""Rooms on the relay: who is a member of which, and which of them are online. Pure (no
I/O).

A room is its members: made by its first join, gone with its last part. A member away
stays one (its mailbox gets the room's messages) until it parts, or its identity is
forgotten (``Kept``). Each index is kept both ways, so that whatever a join, a part, a
register or a leave asks costs the sizes of the rooms involved, never the number of
rooms, members or people online on the relay:

- ``members``: room -> nick -> since when (Unix seconds), oldest first;
- ``rooms_of``: nick -> its rooms, in the order it joined them;
- ``present``: room -> its members online, in the order they came.

The relay only reads and writes these; who may join (``refusal``) is decided here too.
Making a room costs its maker nothing, and the room outlives them by a month (as long
as their identity is kept), so the relay's bound on rooms would be a month's denial of
new rooms for whoever fills it from throwaway nicks. Each room therefore counts against
the address that made it while it lasts (``founded``), and no address may have more
than ``per_address`` (as ``Sources`` counts connections: an IPv6 /64 is one address).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field

from nacl.public import PublicKey

from e2echat.relay.registration import DIRECTORY_CHUNK
from e2echat.wire.fastpath import encode_entered, encode_member, encode_members, encode_parted, encode_peer
from e2echat.wire.framing import encode_frame
from e2echat.wire.grammar import MAX_ROOMS, NICK_MAX, ROOM_MAX
from e2echat.wire.objects import Member, PeerInfo

# What a join or a part makes the relay write, per member of the room, measured with the
# encoders at the longest nick and room name, so that none is charged less than it costs:
# a join of a big room makes the relay write far more than it read (a room of 10,000
# online: 4 MB for 40 bytes), and is paid for against the sender's byte rate as if that
# much had been sent, in full (``Rooms.join_cost``, ``Rooms.part_cost``).
_KEY = PublicKey(bytes(32))
_NICK, _ROOM = "n" * NICK_MAX, "#" + "r" * ROOM_MAX
#: a member online's entry in a ``members`` list, and its comma (138 bytes for a nick of three)
PEER_ENTRY = len(encode_peer(PeerInfo(_NICK, _KEY, _KEY))) + 1
#: a member away's entry in a ``members`` list, and its comma (77 bytes for a nick of three)
MEMBER_ENTRY = len(encode_member(Member(_NICK, _KEY))) + 1
#: a page of a ``members`` list without its entries (one for every ``DIRECTORY_CHUNK``)
MEMBERS_PAGE = len(encode_frame(encode_members(_ROOM, [], [], more=True)))
#: the ``entered`` each member online is sent when someone joins
ENTERED_FRAME = len(encode_frame(encode_entered(_ROOM, encode_peer(PeerInfo(_NICK, _KEY, _KEY)))))
#: the ``parted`` each member online is sent when someone leaves
PARTED_FRAME = len(encode_frame(encode_parted(_ROOM, _NICK)))
#: what a join costs for each member online of the room, on top of its own size: the
#: member's entry in the answer, and the ``entered`` it is sent (a member away costs
#: ``MEMBER_ENTRY``; a part, ``PARTED_FRAME`` a member online)
JOIN_CHARGE = PEER_ENTRY + ENTERED_FRAME
#: why a join is refused, as the ``Error`` says it (the code is "too_many_rooms")
YOURS_FULL = f"you are in {MAX_ROOMS} rooms already, the most there may be; /part one first"


def relay_full(max_rooms: int) -> str:
    return f"the relay has {max_rooms:,} rooms, the most it keeps; join one that exists"


def address_full(per_address: int) -> str:
    return f"{per_address:,} rooms made from your address still exist, the most one may; join one that exists"


@dataclass
class Change:
    """What a register's room list changed: the rooms joined, those parted, and those
    the relay had no place for (and why not, as ``Rooms.refusal`` says it)."""

    joined: list[str] = field(default_factory=list)
    parted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    why: str = ""


class Rooms:
    def __init__(self, max_rooms: int, per_address: int) -> None:
        #: the most rooms there are on the relay at once (``Limits.max_rooms``), and that
        #: one address may have made (``Limits.rooms_per_address``)
        self.max_rooms = max_rooms
        self.per_address = per_address
        self.members: dict[str, dict[str, float]] = {}
        self.rooms_of: dict[str, dict[str, None]] = {}
        self.present: dict[str, dict[str, None]] = {}
        #: room -> the address that made it, while it lasts; and address -> how many of
        #: those it made. In memory only: the relay keeps no address on disk, so rooms
        #: kept across a restart count against nobody.
        self.maker: dict[str, str] = {}
        self.founded: dict[str, int] = {}
        #: the rooms that exist on the other relays of a cluster (room -> its members
        #: there): joining one makes no room, and the cluster's rooms count against
        #: ``max_rooms`` (relay/cluster/rooms.py)
        self.elsewhere: Mapping[str, Sized] = {}

    def is_member(self, nick: str, room: str) -> bool:
        return nick in self.members.get(room, ())

    def of(self, nick: str) -> list[str]:
        """``nick``'s rooms, in the order it joined them."""
        return list(self.rooms_of.get(nick, ()))

    def refusal(self, nick: str, room: str, address: str) -> str | None:
        """Why ``nick`` (from ``address``) may not join ``room`` (it is not in it): too
        many rooms, its own, its address's or the relay's; None if it may."""
        if len(self.rooms_of.get(nick, ())) >= MAX_ROOMS:
            return YOURS_FULL
        elsewhere = self.elsewhere
        if room in self.members or room in elsewhere:
            return None
        if self.founded.get(address, 0) >= self.per_address:
            return address_full(self.per_address)
        rooms = len(self.members.keys() | elsewhere.keys()) if elsewhere else len(self.members)
        if rooms >= self.max_rooms:
            return relay_full(self.max_rooms)
        return None

    def join_cost(self, nick: str, room: str) -> int:
        """What ``nick`` (online) joining ``room`` makes the relay write, at most: its
        answer lists every other member, and if it is new there, each other member
        online is sent an ``entered``. (The other relays' members of a room are listed
        too, each counted as one online: their ``entered`` is their relay's to write.)"""
        members = len(self.members.get(room, ()))
        online = len(self.present.get(room, ()))
        elsewhere = len(self.elsewhere.get(room, ())) if self.elsewhere else 0
        pages = (1 + (members + elsewhere) // DIRECTORY_CHUNK) * MEMBERS_PAGE + elsewhere * PEER_ENTRY
        if self.is_member(nick, room):  # again: answered, and nobody told
            return pages + (online - 1) * PEER_ENTRY + (members - online) * MEMBER_ENTRY
        return pages + online * JOIN_CHARGE + (members - online) * MEMBER_ENTRY

    def part_cost(self, nick: str, room: str) -> int:
        """What ``nick`` (online) leaving ``room`` makes the relay write, at most: a
        ``parted`` to each other member online (nothing if it is not in it)."""
        if not self.is_member(nick, room):
            return 0
        return (len(self.present.get(room, ())) - 1) * PARTED_FRAME

    # -- changes ------------------------------------------------------------------------------

    def join(self, nick: str, room: str, since: float, *, online: bool, address: str | None = None) -> None:
        """``nick`` is a member of ``room`` from ``since`` (see ``refusal`` first); if
        that makes the room, it counts against ``address`` (None: a room kept across a
        restart, made by nobody the relay knows)."""
        members = self.members.get(room)
        if members is None:
            members = self.members[room] = {}
            if address is not None:
                self.maker[room] = address
                self.founded[address] = self.founded.get(address, 0) + 1
        members[nick] = since
        self.rooms_of.setdefault(nick, {})[room] = None
        if online:
            self.present.setdefault(room, {})[nick] = None

    def part(self, nick: str, room: str) -> bool:
        """``nick`` leaves ``room``: False if it was not in it. The last one out takes the
        room with it."""
        members = self.members.get(room)
        if members is None or members.pop(nick, None) is None:
            return False
        if not members:
            del self.members[room]
            self._unmade(room)
        rooms = self.rooms_of[nick]
        del rooms[room]
        if not rooms:
            del self.rooms_of[nick]
        present = self.present.get(room)
        if present is not None and nick in present:
            del present[nick]
            if not present:
                del self.present[room]
        return True

    def _unmade(self, room: str) -> None:
        """``room`` is gone: it no longer counts against the address that made it."""
        address = self.maker.pop(room, None)
        if address is not None:
            left = self.founded.pop(address) - 1
            if left:
                self.founded[address] = left

    def forget(self, nick: str) -> list[str]:
        """``nick`` is a member of nothing any more: the rooms it was in."""
        rooms = self.of(nick)
        for room in rooms:
            self.part(nick, room)
        return rooms

    def came(self, nick: str) -> None:
        """``nick`` is online: present in each of its rooms."""
        for room in self.rooms_of.get(nick, ()):
            self.present.setdefault(room, {})[nick] = None

    def went(self, nick: str) -> None:
        """``nick`` is offline: still a member, present nowhere."""
        for room in self.rooms_of.get(nick, ()):
            present = self.present[room]
            del present[nick]
            if not present:
                del self.present[room]

    def all_gone(self) -> None:
        """Nobody is online (the relay is stopping)."""
        self.present.clear()

    # -- who hears of what ------------------------------------------------------------------

    def online_in(self, room: str) -> Iterable[str]:
        """The members of ``room`` online, in the order they came."""
        return self.present.get(room, {}).keys()

    def away_in(self, room: str) -> Iterator[str]:
        """The members of ``room`` not online, the oldest members first."""
        present = self.present.get(room, {})
        return (nick for nick in self.members.get(room, ()) if nick not in present)

    def contacts(self, nick: str) -> dict[str, None]:
        """Everyone online who shares a room with ``nick`` (not ``nick``), each once."""
        found: dict[str, None] = {}
        present = self.present
        for room in self.rooms_of.get(nick, ()):
            found.update(present.get(room, {}))
        found.pop(nick, None)
        return found

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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from e2echat.wire.grammar import MAX_ROOMS

#: what a join costs against the sender's byte rate for each member of the room, on top
#: of its own size: its answer lists them all (70 to 140 bytes each), so a join of a big
#: room makes the relay write far more than it read (a room of 10,000: 1.4 MB for 40
#: bytes), and is paid for as if that much had been sent. At most a full bucket.
JOIN_CHARGE = 64
#: why a join is refused, as the ``Error`` says it (the code is "too_many_rooms")
YOURS_FULL = f"you are in {MAX_ROOMS} rooms already, the most there may be; /part one first"


def relay_full(max_rooms: int) -> str:
    return f"the relay has {max_rooms:,} rooms, the most it keeps; join one that exists"


@dataclass
class Change:
    """What a register's room list changed: the rooms joined, those parted, and those
    the relay had no place for."""

    joined: list[str] = field(default_factory=list)
    parted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class Rooms:
    def __init__(self, max_rooms: int) -> None:
        #: the most rooms there are on the relay at once (``Limits.max_rooms``)
        self.max_rooms = max_rooms
        self.members: dict[str, dict[str, float]] = {}
        self.rooms_of: dict[str, dict[str, None]] = {}
        self.present: dict[str, dict[str, None]] = {}

    def is_member(self, nick: str, room: str) -> bool:
        return nick in self.members.get(room, ())

    def of(self, nick: str) -> list[str]:
        """``nick``'s rooms, in the order it joined them."""
        return list(self.rooms_of.get(nick, ()))

    def refusal(self, nick: str, room: str) -> str | None:
        """Why ``nick`` may not join ``room`` (it is not in it): too many rooms, its own
        or the relay's; None if it may."""
        if len(self.rooms_of.get(nick, ())) >= MAX_ROOMS:
            return YOURS_FULL
        if room not in self.members and len(self.members) >= self.max_rooms:
            return relay_full(self.max_rooms)
        return None

    # -- changes ------------------------------------------------------------------------------

    def join(self, nick: str, room: str, since: float, *, online: bool) -> None:
        """``nick`` is a member of ``room`` from ``since`` (see ``refusal`` first)."""
        self.members.setdefault(room, {})[nick] = since
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
